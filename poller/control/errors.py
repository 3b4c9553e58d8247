"""The API's errors, as AWS's Lambda service answers them.

Every failure of a control API call is one :class:`ApiError`: the HTTP status, AWS's error
code (sent as ``x-amzn-ErrorType``), and the message. AWS spells the message key differently
per error (``Message`` for ``ResourceNotFoundException``, ``message`` for
``InvalidParameterValueException`` and ``ValidationException``), and adds ``"Type": "User"``
to client errors except ``ValidationException``; :meth:`ApiError.body` reproduces what the
recordings in ``tests/fixtures/aws-recorded/esm-api.json`` show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Codes whose body spells the message key with a capital M (as recorded on AWS).
_CAPITAL_MESSAGE = frozenset(
    {
        "ResourceNotFoundException",
        "ResourceConflictException",
        "ResourceInUseException",
        "ServiceException",
        "TooManyRequestsException",
    }
)
#: Codes whose body has no ``Type`` (Coral's own validation, and the authentication layer's).
_NO_TYPE = frozenset(
    {
        "ValidationException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "AccessDeniedException",
    }
)


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """A failed API call: ``status``, AWS's error ``code`` and its ``message``."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def error_type(self) -> Literal["User", "Service"] | None:
        """The body's ``Type``: ``User`` for client errors, ``Service`` for ours."""
        if self.code in _NO_TYPE:
            return None
        return "Service" if self.status >= 500 else "User"

    def body(self) -> dict[str, str]:
        """The JSON body AWS sends for this error."""
        key = "Message" if self.code in _CAPITAL_MESSAGE else "message"
        body: dict[str, str] = {}
        if self.error_type is not None:
            body["Type"] = self.error_type
        body[key] = self.message
        return body


def invalid_parameter(message: str) -> ApiError:
    """400 ``InvalidParameterValueException``: a value AWS's own checks refuse."""
    return ApiError(400, "InvalidParameterValueException", message)


def validation(message: str) -> ApiError:
    """400 ``ValidationException``: a type, range, enum, length or pattern (Coral's text)."""
    return ApiError(400, "ValidationException", message)


def not_found(message: str = "The resource you requested does not exist.") -> ApiError:
    """404 ``ResourceNotFoundException``."""
    return ApiError(404, "ResourceNotFoundException", message)


def conflict(message: str) -> ApiError:
    """409 ``ResourceConflictException``."""
    return ApiError(409, "ResourceConflictException", message)


def in_use(message: str) -> ApiError:
    """400 ``ResourceInUseException``."""
    return ApiError(400, "ResourceInUseException", message)


def service_error(message: str) -> ApiError:
    """500 ``ServiceException``: ours, and retried by every SDK."""
    return ApiError(500, "ServiceException", message)
