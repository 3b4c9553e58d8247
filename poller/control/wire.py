"""The API's wire details that are neither routing nor operations: request bodies and list
markers.

Data flow::

    request bytes --parse_body--> JSON value --> poller.control.operations
    a page's last UUID --encode_marker--> NextMarker --(the client sends it back)-->
        decode_marker --> the UUID the next page starts after
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from poller.control.errors import ApiError, invalid_parameter

#: How deeply a body may nest arrays and objects. AWS's request shapes nest four levels
#: (``DestinationConfig.OnFailure.Destination``, ``FilterCriteria.Filters[].Pattern``); deeper
#: bodies are refused before anything walks them recursively (Coral's message text): a few
#: hundred levels raise RecursionError there (about a thousand in the parser itself), which
#: would be a 500 with a traceback as deep as the body.
MAX_DEPTH = 32
#: A UUID as markers carry it (any case; compared lower-cased).
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def invalid_content(message: str) -> ApiError:
    """400 ``InvalidRequestContentException``: a body that is not JSON (AWS's code for it)."""
    return ApiError(400, "InvalidRequestContentException", message)


def parse_body(raw: bytes) -> Any:
    """The request's JSON (None for an empty body); 400 InvalidRequestContentException for
    bytes that are not UTF-8 or not JSON, for JSON's non-finite extensions, and for arrays
    and objects nested deeper than MAX_DEPTH."""
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise invalid_content(f"Could not parse request body into json: {_reason(exc)}") from None
    if _depth(value) > MAX_DEPTH:
        raise invalid_content(
            "Could not parse request body into json: arrays and objects are nested deeper "
            f"than {MAX_DEPTH} levels"
        )
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0), walked without
    recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not UTF-8"
    if isinstance(exc, RecursionError):
        return f"arrays and objects are nested deeper than {MAX_DEPTH} levels"
    return str(exc).splitlines()[0]


def encode_marker(last_uuid: str) -> str:
    """The opaque NextMarker for a page that ended with ``last_uuid``."""
    return base64.urlsafe_b64encode(last_uuid.encode()).decode()


def decode_marker(marker: str) -> str:
    """The UUID a marker carries; 400 InvalidParameterValueException for one this API did not
    hand out (a marker is opaque to clients, so anything else is a mistake)."""
    try:
        uuid = base64.urlsafe_b64decode(marker.encode("ascii")).decode("ascii").lower()
    except (UnicodeError, binascii.Error, ValueError):
        uuid = ""
    if not _UUID.fullmatch(uuid):
        raise invalid_parameter(
            "Marker is not valid: pass the NextMarker of an earlier ListEventSourceMappings "
            "answer, unchanged."
        )
    return uuid
