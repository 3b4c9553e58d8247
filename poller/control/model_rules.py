"""Wire validation of a request body against botocore's own Lambda service model (Coral's rules).

Data flow::

    a Create/Update body (parsed JSON) --check_request(shape)--> Checked:
        problems (Coral's lines; poller.control.shapes sends them as a ValidationException),
        the body with only the model's members (what the next steps read),
        the names of the members AWS does not know (ignored, as AWS ignores them; logged)

AWS validates a request against its Coral model before any service logic runs: types, string
lengths, number ranges, enums, patterns and required members. The constraints here are read
from botocore's ``service-2.json`` (the same model the SDKs build requests from), so they
cannot drift from what the clients send. The wording is Coral's, as the recordings in
``tests/fixtures/aws-recorded/esm-api.json`` show it::

    1 validation error detected: Value 'invalid' at 'startingPosition' failed to satisfy
    constraint: Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]

A value of the wrong JSON type is no Coral constraint (AWS fails to deserialize it); it is
reported in the same frame as ``Member must be of type <type>``, poller's own wording.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from botocore.loaders import Loader

#: Coral lists an enum in the order of the service's Java set, not the model's; the orders
#: recorded on AWS win over botocore's.
_RECORDED_ENUM_ORDER: dict[str, list[str]] = {
    "EventSourcePosition": ["LATEST", "AT_TIMESTAMP", "TRIM_HORIZON"],
}

# Java's \p{L}, \p{Z}, \p{N} (Unicode letters, separators, numbers), which Python's re lacks:
# inside a character class each becomes its ASCII members plus a private-use stand-in, and a
# value's non-ASCII characters of that category are replaced by the stand-in before matching.
_CATEGORY_STAND_INS = {"L": ("\ue000", "a-zA-Z"), "Z": ("\ue001", " "), "N": ("\ue002", "0-9")}


@dataclass(slots=True)
class Checked:
    """What :func:`check_request` found.

    Attributes:
        problems: Coral's lines, one per broken constraint, in the model's member order.
        known: the body with only the members the model has, and no nulls (AWS reads a null
            as not given).
        unknown: dotted names of the members the model does not have.
    """

    problems: list[str] = field(default_factory=list)
    known: dict[str, Any] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


def check_request(body: Mapping[str, Any], shape: str) -> Checked:
    """Check ``body`` against the request ``shape`` (``CreateEventSourceMappingRequest``, ...).

    Members bound to the URI or the query (``UUID`` of an update) are not body members and
    are neither checked nor kept.
    """
    checked = Checked()
    checked.known = _structure(body, _shapes()[shape], "", "", checked)
    return checked


def check_list(values: list[Any], shape: str, member: str) -> list[str]:
    """Coral's lines for a list bound to the query (``tagKeys`` of UntagResource), which
    :func:`check_request` does not see: its length, then its items' constraints."""
    checked = Checked()
    _list(values, _shapes()[shape], member, "", checked)
    return checked.problems


def coral_message(problems: list[str]) -> str:
    """Coral's message for ``problems``: the count in front, the lines joined by ``; ``."""
    count = len(problems)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(problems)


def coral_line(value: Any, member: str, constraint: str) -> str:
    """One of Coral's lines: ``Value '<v>' at '<member>' failed to satisfy constraint: ...``."""
    shown = "null" if value is None else f"'{java_text(value)}'"
    return f"Value {shown} at '{member}' failed to satisfy constraint: {constraint}"


def java_text(value: Any) -> str:
    """A JSON value as Java's ``toString`` shows it in Coral's messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(java_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={java_text(v)}" for k, v in value.items()) + "}"
    return str(value)


@cache
def _shapes() -> dict[str, Any]:
    """The shapes of botocore's Lambda model (loaded once)."""
    model: dict[str, Any] = Loader().load_service_model("lambda", "service-2")
    shapes: dict[str, Any] = model["shapes"]
    return shapes


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _structure(
    value: Mapping[str, Any], shape: Mapping[str, Any], path: str, names: str, checked: Checked
) -> dict[str, Any]:
    """Check a structure's members; returns the known, non-null ones."""
    members: Mapping[str, Any] = shape.get("members", {})
    body_members = {name: ref for name, ref in members.items() if ref.get("location") in (None, "")}
    checked.unknown.extend(names + key for key in value if key not in body_members)
    required = set(shape.get("required", ()))
    known: dict[str, Any] = {}
    for name, ref in body_members.items():
        member = path + _camel(name)
        given = value.get(name)
        if given is None:
            if name in required:
                checked.problems.append(coral_line(None, member, "Member must not be null"))
            continue
        kept = _member(given, ref["shape"], member, f"{names}{name}.", checked)
        if kept is not _INVALID:
            known[name] = kept
    return known


#: Marks a member whose value had the wrong type: it is reported and not kept.
_INVALID: Any = object()

_TYPE_WORDS = {
    "string": "string",
    "integer": "integer",
    "long": "integer",
    "boolean": "boolean",
    "timestamp": "timestamp (epoch seconds)",
    "structure": "structure",
    "list": "list",
    "map": "map",
}


def _member(value: Any, shape_name: str, member: str, names: str, checked: Checked) -> Any:
    """Check one member's value against its shape; returns what to keep, or ``_INVALID``."""
    shape = _shapes()[shape_name]
    kind = shape["type"]
    if not _has_type(value, kind):
        checked.problems.append(
            coral_line(value, member, f"Member must be of type {_TYPE_WORDS.get(kind, kind)}")
        )
        return _INVALID
    if kind == "structure":
        return _structure(value, shape, member + ".", names, checked)
    if kind == "list":
        return _list(value, shape, member, names, checked)
    if kind == "map":
        return _map(value, shape, member, checked)
    if kind in ("integer", "long") and isinstance(value, float):
        value = int(value)
    constraints = _scalar_constraints(value, shape_name)
    checked.problems.extend(coral_line(value, member, c) for c in constraints)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return _is_number(value) and (isinstance(value, int) or float(value).is_integer())


#: The epoch seconds a timestamp may be: years 1 to 9999, what a datetime holds. botocore
#: cannot send a time outside them (a Kinesis AT_TIMESTAMP start of -1e300 would fail every
#: GetShardIterator of the running mapping), and Java's Date would not parse them either.
_TIMESTAMP_RANGE = (-62_135_596_800, 253_402_300_799)


def _is_timestamp(value: Any) -> bool:
    """A number of epoch seconds in _TIMESTAMP_RANGE. (Infinity and NaN pass here: the
    models refuse them, with their own words.)"""
    low, high = _TIMESTAMP_RANGE
    return _is_number(value) and (not math.isfinite(value) or low <= value <= high)


#: What JSON value each shape type takes; a type not listed here takes any value.
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "integer": _is_whole,
    "long": _is_whole,
    "boolean": lambda value: isinstance(value, bool),
    "timestamp": _is_timestamp,
    "double": _is_number,
    "float": _is_number,
    "structure": lambda value: isinstance(value, dict),
    "map": lambda value: isinstance(value, dict),
    "list": lambda value: isinstance(value, list),
}


def _has_type(value: Any, kind: str) -> bool:
    check = _TYPE_CHECKS.get(kind)
    return check is None or check(value)


def _list(
    value: list[Any], shape: Mapping[str, Any], member: str, names: str, checked: Checked
) -> list[Any]:
    """A list: its length, then its items. Items that are structures are reported at
    ``member.<n>.member.<field>``; constraints of scalar items are reported at the list, as
    ``Member must satisfy constraint: [...]`` (Coral's two forms)."""
    checked.problems.extend(coral_line(value, member, c) for c in _length(value, shape))
    item_shape = shape["member"]["shape"]
    if _shapes()[item_shape]["type"] != "structure":
        failed = _item_failures(value, item_shape)
        if failed:
            constraint = f"Member must satisfy constraint: [{failed}]"
            checked.problems.append(coral_line(value, member, constraint))
        return list(value)
    kept: list[Any] = []
    for index, item in enumerate(value, start=1):
        item_kept = _member(item, item_shape, f"{member}.{index}.member", names, checked)
        if item_kept is not _INVALID:
            kept.append(item_kept)
    return kept


def _map(
    value: dict[str, Any], shape: Mapping[str, Any], member: str, checked: Checked
) -> dict[str, Any]:
    """A map of scalars: its size, then ``Map keys`` and ``Map value`` constraints (Coral's)."""
    checked.problems.extend(coral_line(value, member, c) for c in _length(value, shape))
    for part, label, items in (
        ("key", "Map keys", list(value)),
        ("value", "Map value", list(value.values())),
    ):
        failed = _item_failures(items, shape[part]["shape"])
        if failed:
            constraint = f"{label} must satisfy constraint: [{failed}]"
            checked.problems.append(coral_line(value, member, constraint))
    return dict(value)


def _item_failures(items: list[Any], shape_name: str) -> str:
    """The constraints some of ``items`` (scalars of ``shape_name``) break, each once,
    joined by ``, ``; empty when every item passes."""
    kind = _shapes()[shape_name]["type"]
    failed: list[str] = []
    for item in items:
        if _has_type(item, kind):
            failed.extend(_scalar_constraints(item, shape_name))
        else:
            failed.append(f"Member must be of type {_TYPE_WORDS.get(kind, kind)}")
    return ", ".join(dict.fromkeys(failed))


def _length(value: list[Any] | dict[str, Any], shape: Mapping[str, Any]) -> list[str]:
    return _bounds(len(value), shape, "length")


def _bounds(measure: float, shape: Mapping[str, Any], what: str) -> list[str]:
    broken = []
    if "min" in shape and measure < shape["min"]:
        broken.append(f"Member must have {what} greater than or equal to {shape['min']}")
    if "max" in shape and measure > shape["max"]:
        broken.append(f"Member must have {what} less than or equal to {shape['max']}")
    return broken


def _scalar_constraints(value: Any, shape_name: str) -> list[str]:
    """The constraints a scalar breaks: enum, then length, then pattern (strings); range
    (numbers)."""
    shape = _shapes()[shape_name]
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return _bounds(value, shape, "value") if shape["type"] != "timestamp" else []
    broken: list[str] = []
    enum = shape.get("enum")
    if enum is not None and value not in enum:
        order = _RECORDED_ENUM_ORDER.get(shape_name, enum)
        broken.append(f"Member must satisfy enum value set: [{', '.join(order)}]")
    broken.extend(_bounds(len(value), shape, "length"))
    pattern = shape.get("pattern")
    if pattern is not None and not _full_match(pattern, value):
        broken.append(f"Member must satisfy regular expression pattern: {pattern}")
    return broken


def _full_match(pattern: str, value: str) -> bool:
    """Java's ``Pattern.matches``: the whole value, with ``\\p{L|Z|N}`` classes supported."""
    compiled, categories = _python_pattern(pattern)
    if categories:
        value = "".join(_stand_in(char, categories) for char in value)
    return compiled.fullmatch(value) is not None


def _stand_in(char: str, categories: str) -> str:
    if char.isascii():
        return char
    major = unicodedata.category(char)[0]
    return _CATEGORY_STAND_INS[major][0] if major in categories else char


@cache
def _python_pattern(pattern: str) -> tuple[re.Pattern[str], str]:
    """The pattern for Python's re, and the Unicode categories it stands in for."""
    categories = ""
    for major, (stand_in, ascii_members) in _CATEGORY_STAND_INS.items():
        token = f"\\p{{{major}}}"
        if token in pattern:
            pattern = pattern.replace(token, stand_in + ascii_members)
            categories += major
    return re.compile(pattern), categories
