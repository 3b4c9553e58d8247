"""The building blocks every settings model uses: the frozen base, field types, field metadata.

Where it sits in the data flow::

    YAML values --Int / Float / HttpUrl / upper / lower--> typed fields of the models
    meta(aws=..., expected=..., allowed=...) --json_schema_extra--> poller.config.messages

:class:`FrozenModel` makes every section immutable and refuses unknown keys. :func:`meta`
stores, on a field, what the error formatter says about it: the AWS parameter it mirrors, the
accepted form, or an accepted range that ``ge``/``le`` cannot express.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, JsonValue

from poller.config.wording import own_error, show


class FrozenModel(BaseModel):
    """Base of every settings model: immutable, unknown keys rejected, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def meta(
    *, aws: str | None = None, expected: str | None = None, allowed: str | None = None
) -> dict[str, JsonValue]:
    """Field metadata read by the error formatter (and shown in the JSON schema).

    Args:
        aws: the AWS ESM parameter this field mirrors, named in range errors.
        expected: a human description of the accepted form, for pattern errors.
        allowed: the accepted range in words, for a range with a hole that ``ge``/``le``
            cannot express; range errors show it instead of the bounds.
    """
    extra: dict[str, JsonValue] = {}
    if aws:
        extra["aws_name"] = aws
    if expected:
        extra["expected"] = expected
    if allowed:
        extra["allowed"] = allowed
    return extra


def _check_http_url(value: str) -> str:
    """Accept only absolute ``http://`` or ``https://`` URLs with a host."""
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise own_error("url", "{value} is not an http:// or https:// URL", value=repr(value))
    return value


def upper(value: Any) -> Any:
    """Text in upper case, for fields that accept any case; anything else unchanged."""
    return value.upper() if isinstance(value, str) else value


def lower(value: Any) -> Any:
    """Text in lower case, for fields that accept any case; anything else unchanged."""
    return value.lower() if isinstance(value, str) else value


def _no_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number belongs: pydantic would read them as 1 and 0."""
    if isinstance(value, bool):
        raise own_error(
            "bool_number",
            "{value} is not a number; write a number, not true or false",
            value=show(value),
        )
    return value


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
#: A whole number or a number, never a boolean (numeric text, as from ${VAR}, still parses).
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
