"""Turns botocore and aiohttp exceptions into poller's error tree.

This is the only module that inspects AWS error codes for sources and stores. Callers get a
``SourceError`` subclass whose type says what to do (recreate the iterator, back off, wait for
the service) and whose message names the call and the code, never record data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from poller.errors import (
    IteratorExpired,
    PositionTrimmed,
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    Throttled,
)

_ITERATOR_CODES = frozenset({"ExpiredIteratorException"})
#: A position older than the stream's retention: the reader moves to TRIM_HORIZON.
_TRIMMED_CODES = frozenset({"TrimmedDataAccessException"})
_THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "KMSThrottlingException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
#: Every code mapped to a kind of its own (the lean read path answers these itself).
KNOWN_CODES = _ITERATOR_CODES | _TRIMMED_CODES | _THROTTLE_CODES | _NOT_FOUND_CODES


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError, or 'Unknown'."""
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def translate_client_error(call: str, exc: ClientError) -> SourceError:
    """Map a source-side ClientError to the SourceError subclass that says what to do."""
    code = error_code(exc)
    message = exc.response.get("Error", {}).get("Message", "")
    text = f"{call} failed with {code}: {message}".rstrip(": ")
    if code in _TRIMMED_CODES:
        return PositionTrimmed(text)
    if code in _ITERATOR_CODES:
        return IteratorExpired(text)
    if code in _THROTTLE_CODES:
        return Throttled(text)
    if code in _NOT_FOUND_CODES:
        return StreamNotFound(text)
    return SourceUnavailable(text)


@asynccontextmanager
async def source_call(call: str) -> AsyncIterator[None]:
    """Wrap one source API call so that only ``SourceError`` escapes it."""
    try:
        yield
    except ClientError as exc:
        raise translate_client_error(call, exc) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise SourceUnavailable(f"{call} could not reach the service: {exc}") from exc
