"""Input templates (EventBridge Pipes' ``InputTemplate``): what a target receives per record.

Where it sits in the data flow::

    target.input_template (YAML) --compile_template, at load--> Template (or a TemplateError
                                                                naming line and column)
    one record of a batch + PipeVariables --Template.render--> the value sent for that record

A template is one of four shapes, told apart by its first character:

* exactly one placeholder, ``<$.body>``: the value itself (an object stays an object);
* JSON (``{`` or ``[``, or a ``"`` string that is valid JSON): placeholders outside strings
  are JSON values, placeholders inside strings are text;
* anything else is free text: a string, every placeholder written as text.

A placeholder is a JSONPath into the record (``$``, ``.name`` with letters, digits, ``-``,
``_`` and ``/``, ``[n]``; no ``*``) or one of Pipes' reserved variables. Paths see the SQS
``body`` and the Kinesis ``data`` decoded (base64, UTF-8, JSON) as Pipes does; a payload that is
not JSON stays as it came, so a path into it is missing. A missing path is ``null`` where a
JSON value goes and ``""`` in text. Rendering raises for no record but one whose output would
pass any payload's size (:class:`RenderTooLarge`): every failure of decoding is "not JSON",
and a value that cannot be written as text is missing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from poller.core.batching import MAX_PAYLOAD_BYTES

#: The longest template (EventBridge's limit on an InputTemplate).
MAX_TEMPLATE_CHARS: Final = 8192
#: The most placeholders in one template (EventBridge's limit on input variables).
MAX_PLACEHOLDERS: Final = 100
#: The most JSON characters a template may build for one record: no payload can carry more.
MAX_TEXT_CHARS: Final = MAX_PAYLOAD_BYTES
#: The deepest nesting of a template's JSON; deeper templates are refused at load.
MAX_TEMPLATE_DEPTH: Final = 64
#: The deepest nesting of a decoded body or data; deeper payloads count as not JSON, so that
#: what a path returns can always be serialized again by the target.
MAX_DECODED_DEPTH: Final = 256

#: What a target receives for a batch: Lambda's ``{"Records": [...]}``, or Pipes' bare array.
BatchShape = Literal["records", "array"]

#: Pipes' reserved variables, as written between ``<`` and ``>``.
VARIABLES: Final = (
    "aws.pipes.pipe-arn",
    "aws.pipes.pipe-name",
    "aws.pipes.source-arn",
    "aws.pipes.enrichment-arn",
    "aws.pipes.target-arn",
    "aws.pipes.event.ingestion-time",
    "aws.pipes.event",
    "aws.pipes.event.json",
)
#: The variable that is a JSON value, never text (Pipes: "only as the value of a JSON field").
EVENT_JSON: Final = "aws.pipes.event.json"

_STEP = re.compile(r"\.([A-Za-z0-9_/-]+)|\[([0-9]{1,9})\]")
#: Marks a placeholder inside the template's JSON while it is parsed (NUL is refused in
#: templates, so a mark cannot be forged): ``\x00<index>\x00``.
_MARK = re.compile("\x00([0-9]+)\x00")


class TemplateError(ValueError):
    """A template that cannot be compiled; the message names the line and column."""


class _Missing:
    """A path that leads nowhere, or a value that has none."""

    __slots__ = ()


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class PipeVariables:
    """The values of Pipes' reserved variables for one mapping (and one invocation).

    Attributes:
        pipe_arn: ``aws.pipes.pipe-arn``: the event source mapping's ARN.
        pipe_name: ``aws.pipes.pipe-name``: the mapping's name.
        source_arn: ``aws.pipes.source-arn``: the event source's ARN.
        enrichment_arn: ``aws.pipes.enrichment-arn``: poller has no enrichment step, so "".
        target_arn: ``aws.pipes.target-arn``: the target's identifier (URL or handler).
        ingestion_time: ``aws.pipes.event.ingestion-time``: ISO 8601, when the batch was
            handed to the transformer.
    """

    pipe_arn: str = ""
    pipe_name: str = ""
    source_arn: str = ""
    enrichment_arn: str = ""
    target_arn: str = ""
    ingestion_time: str = ""


def ingestion_time(epoch_seconds: float) -> str:
    """``aws.pipes.event.ingestion-time``'s form: ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- Decoding the payload (Pipes' "implicit body data parsing") ------------------------------


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON has no infinity
        raise ValueError(f"{text} is not a JSON number")
    return number


def _no_constant(text: str) -> Any:
    # NaN, Infinity: Python reads them, JSON does not have them.
    raise ValueError(f"{text} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different (a key twice would drop one of its values)."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return dict(pairs)


#: One decoder for every payload: ``json.loads`` with hooks would build a new one per call.
_STRICT_JSON: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(text: str) -> Any:
    """``text`` as JSON, or :data:`MISSING` when it is not strict JSON.

    Not JSON: a syntax error, NaN or an infinity, an integer too long for Python to read,
    or nesting over :data:`MAX_DECODED_DEPTH` (or past the parser's recursion limit).
    """
    try:
        value = _STRICT_JSON.decode(text)
    except (ValueError, RecursionError):
        return MISSING
    # Counting brackets is cheap; only a payload with many of them is walked.
    many_brackets = text.count("[") + text.count("{") > MAX_DECODED_DEPTH
    if many_brackets and isinstance(value, dict | list) and _deeper_than(value, MAX_DECODED_DEPTH):
        return MISSING
    return value


def _base64_json(text: str) -> Any:
    """Kinesis ``data``: base64, then UTF-8, then JSON; :data:`MISSING` at any failure."""
    try:
        return parse_json(base64.b64decode(text, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return MISSING


def decode_record(record: Any) -> tuple[Any, bool]:
    """The record with its SQS ``body`` or Kinesis ``data`` decoded, and whether that payload
    was JSON. A record with neither is returned as it is, and counts as JSON; a payload that
    is not JSON is left as it came (Pipes keeps a Kinesis payload as base64)."""
    if not isinstance(record, dict):
        return record, True
    body = record.get("body")
    if isinstance(body, str):
        parsed = parse_json(body)
        return (record, False) if parsed is MISSING else ({**record, "body": parsed}, True)
    kinesis = record.get("kinesis")
    if isinstance(kinesis, dict) and isinstance(kinesis.get("data"), str):
        parsed = _base64_json(kinesis["data"])
        if parsed is MISSING:
            return record, False
        return {**record, "kinesis": {**kinesis, "data": parsed}}, True
    return record, True


#: One encoder for every value written as text (json.dumps with arguments builds one per call).
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _as_text(value: Any) -> str:
    """A value written into text: a string as it is, anything else as compact JSON, and a
    missing value (or one JSON cannot write) as ""."""
    if isinstance(value, str):
        return value
    if value is MISSING:
        return ""
    try:
        return _COMPACT.encode(value)
    except (TypeError, ValueError, RecursionError):
        return ""


# --- One record's values ---------------------------------------------------------------------


class RenderTooLarge(ValueError):
    """A record's output grew past :data:`MAX_TEXT_CHARS` characters (a template that repeats
    a large value); raised as soon as it does, before more is built."""


class _Scope:
    """What placeholders read for one record; the payload is decoded at most once."""

    __slots__ = ("_decoded", "_sizes", "chars", "record", "variables")

    def __init__(self, record: Any, variables: PipeVariables) -> None:
        self.record = record
        self.variables = variables
        self._decoded: tuple[Any, bool] | None = None
        #: A lower bound of the rendered JSON's length: what the references put in it.
        self.chars = 0
        self._sizes: dict[int, int] = {}  # by id: a value placed many times is measured once

    def count(self, value: Any) -> None:
        """Count a value placed in the output (a string's quotes included, escapes not)."""
        if isinstance(value, str):
            self.count_chars(len(value) + 2)
        elif isinstance(value, dict | list):
            size = self._sizes.get(id(value))
            if size is None:
                size = self._sizes[id(value)] = len(_as_text(value))
            self.count_chars(size)

    def count_chars(self, chars: int) -> None:
        """Count characters of the output; past any payload's size, stop rendering."""
        self.chars += chars
        if self.chars > MAX_TEXT_CHARS:  # stop before building more: no payload can carry it
            raise RenderTooLarge(f"a record of more than {MAX_TEXT_CHARS} characters")

    def decoded(self) -> tuple[Any, bool]:
        if self._decoded is None:
            self._decoded = decode_record(self.record)
        return self._decoded


def _follow(value: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return MISSING
        elif not isinstance(value, dict) or step not in value:
            return MISSING
        value = value[step]
    return value


@dataclass(frozen=True, slots=True)
class _Path:
    """``$`` and its steps; ``decoded`` when the path may reach into ``body`` or ``data``."""

    steps: tuple[str | int, ...]
    decoded: bool

    def read(self, scope: _Scope) -> Any:
        root = scope.decoded()[0] if self.decoded else scope.record
        return _follow(root, self.steps)


def _event_json(scope: _Scope) -> Any:
    record, is_json = scope.decoded()
    return record if is_json else MISSING


#: How each reserved variable reads its value.
_READERS: dict[str, Callable[[_Scope], Any]] = {
    "aws.pipes.pipe-arn": lambda s: s.variables.pipe_arn,
    "aws.pipes.pipe-name": lambda s: s.variables.pipe_name,
    "aws.pipes.source-arn": lambda s: s.variables.source_arn,
    "aws.pipes.enrichment-arn": lambda s: s.variables.enrichment_arn,
    "aws.pipes.target-arn": lambda s: s.variables.target_arn,
    "aws.pipes.event.ingestion-time": lambda s: s.variables.ingestion_time,
    # The event "as received", escaped: its JSON text, payload not decoded.
    "aws.pipes.event": lambda s: _as_text(s.record),
    EVENT_JSON: _event_json,
}


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str

    def read(self, scope: _Scope) -> Any:
        return _READERS[self.name](scope)


_Reference = _Path | _Variable


# --- Compiling -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Placeholder:
    start: int  # offset of "<" in the template
    end: int  # offset just past ">"
    reference: _Reference
    in_string: bool  # inside a JSON string, or in free text: written as text


def _where(text: str, offset: int) -> str:
    """``column C``, or ``line L, column C`` in a template of several lines (1-based)."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"column {column}" if "\n" not in text else f"line {line}, column {column}"


def _error(text: str, offset: int, problem: str) -> TemplateError:
    return TemplateError(f"{_where(text, offset)}: {problem}")


def _parse_path(body: str) -> tuple[str | int, ...] | str:
    """The steps of ``$...``, or the problem with it."""
    steps: list[str | int] = []
    position = 1
    while position < len(body):
        match = _STEP.match(body, position)
        if match is None:
            rest = body[position:]
            if rest.startswith((".*", "[*]")):
                return "the * wildcard is not supported; name the field or index"
            shown = body if len(body) <= 60 else body[:57] + "..."
            return (
                f"bad path {shown!r} at {rest[:20]!r}: use .name (letters, digits, - _ /) or "
                "[index] (at most 9 digits)"
            )
        name, index = match.groups()
        steps.append(int(index) if index is not None else name)
        position = match.end()
    return tuple(steps)


def _reference(text: str, start: int, body: str) -> _Reference:
    """What ``<body>`` refers to; raises TemplateError naming ``start``'s column."""
    if body.startswith("$"):
        steps = _parse_path(body)
        if isinstance(steps, str):
            raise _error(text, start, steps)
        decoded = not steps or steps[0] in ("body", "kinesis")
        return _Path(steps, decoded)
    if body in _READERS:
        return _Variable(body)
    known = ", ".join(f"<{name}>" for name in VARIABLES)
    shown = body if len(body) <= 60 else body[:57] + "..."  # one line, however long
    raise _error(text, start, f"unknown variable <{shown}>; use a path <$...> or one of {known}")


def _scan(text: str, *, json_strings: bool) -> list[_Placeholder]:
    """Every placeholder, in order. With ``json_strings``, double quotes open and close JSON
    strings (backslash escapes honoured); otherwise every placeholder is text."""
    found: list[_Placeholder] = []
    in_string = not json_strings
    position = 0
    while position < len(text):
        char = text[position]
        if char == "<":
            end = _closing(text, position)
            reference = _reference(text, position, text[position + 1 : end])
            found.append(_Placeholder(position, end + 1, reference, in_string))
            position = end + 1
            continue
        if json_strings and char == '"':
            in_string = not in_string
        elif json_strings and in_string and char == "\\":
            position += 1  # the escaped character never closes the string
        position += 1
    if len(found) > MAX_PLACEHOLDERS:
        raise _error(
            text,
            found[MAX_PLACEHOLDERS].start,
            f"{len(found)} placeholders; a template may hold at most {MAX_PLACEHOLDERS}",
        )
    return found


def _closing(text: str, start: int) -> int:
    """The offset of the ``>`` closing the placeholder that opens at ``start``."""
    for position in range(start + 1, len(text)):
        char = text[position]
        if char == ">":
            if position == start + 1:
                raise _error(text, start, "empty placeholder <>")
            return position
        if char in "<\n":
            break
    raise _error(text, start, "unbalanced '<': a placeholder is <$.path> or <aws.pipes...>")


@dataclass(frozen=True, slots=True)
class _Text:
    """A string holding placeholders: literal parts and references, in order."""

    parts: tuple[str | _Reference, ...]

    def render(self, scope: _Scope) -> str:
        pieces: list[str] = []
        for part in self.parts:
            piece = part if isinstance(part, str) else _text_of(part, scope)
            # Counted as each piece is made: a hundred copies of a large value stop at the
            # limit instead of being built (and joined) first.
            scope.count_chars(len(piece))
            pieces.append(piece)
        scope.count_chars(2)  # the quotes
        return "".join(pieces)


#: The paths whose value is the whole payload (Pipes decodes these two fields).
_PAYLOADS: Final = (("body",), ("kinesis", "data"))


def _text_of(reference: _Reference, scope: _Scope) -> str:
    """A reference written as text. A payload that is a bare JSON number is written as it
    was sent: parsing it only lets a path look inside, and a number has no inside ("1.10"
    stays "1.10", not 1.1)."""
    value = reference.read(scope)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and isinstance(reference, _Path) and reference.steps in _PAYLOADS:
        return _payload_text(scope.record, reference.steps)
    return _as_text(value)


def _payload_text(record: dict[str, Any], steps: tuple[str | int, ...]) -> str:
    """The payload's JSON text as sent (decoding succeeded, so every step below holds)."""
    raw = record["body"] if steps == ("body",) else base64.b64decode(record["kinesis"]["data"])
    text = raw if isinstance(raw, str) else raw.decode("utf-8")
    return text.strip(" \t\n\r")


@dataclass(frozen=True, slots=True)
class _Value:
    """A placeholder where a JSON value goes; a missing value is null."""

    reference: _Reference

    def render(self, scope: _Scope) -> Any:
        value = self.reference.read(scope)
        scope.count(value)
        return None if value is MISSING else value


@dataclass(frozen=True, slots=True)
class _Object:
    items: tuple[tuple[str, _Node], ...]

    def render(self, scope: _Scope) -> Any:
        return {key: _render(node, scope) for key, node in self.items}


@dataclass(frozen=True, slots=True)
class _Array:
    items: tuple[_Node, ...]

    def render(self, scope: _Scope) -> Any:
        return [_render(node, scope) for node in self.items]


_Node = _Text | _Value | _Object | _Array | str | int | float | bool | None


def _render(node: _Node, scope: _Scope) -> Any:
    if isinstance(node, _Text | _Value | _Object | _Array):
        return node.render(scope)
    return node  # a literal: immutable, shared by every record


def _text_parts(value: str, placeholders: list[_Placeholder]) -> str | _Text:
    pieces = _MARK.split(value)
    if len(pieces) == 1:
        return value
    parts: list[str | _Reference] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            parts.append(placeholders[int(piece)].reference)
        elif piece:
            parts.append(piece)
    return _Text(tuple(parts))


def _node(value: Any, placeholders: list[_Placeholder]) -> _Node:
    """The parsed template as render nodes; marks become references."""
    if isinstance(value, str):
        whole = _MARK.fullmatch(value)
        if whole is not None and not placeholders[int(whole.group(1))].in_string:
            return _Value(placeholders[int(whole.group(1))].reference)
        return _text_parts(value, placeholders)
    if isinstance(value, dict):
        return _Object(tuple((k, _node(v, placeholders)) for k, v in value.items()))
    if isinstance(value, list):
        return _Array(tuple(_node(v, placeholders) for v in value))
    return value  # type: ignore[no-any-return]  # a number, true, false or null


def _filled(text: str, placeholders: list[_Placeholder], fill: Callable[[int], str]) -> str:
    """``text`` with placeholder ``i`` replaced by ``fill(i)``."""
    pieces: list[str] = []
    last = 0
    for index, placeholder in enumerate(placeholders):
        pieces += [text[last : placeholder.start], fill(index)]
        last = placeholder.end
    pieces.append(text[last:])
    return "".join(pieces)


def _no_event_json_in_text(text: str, placeholder: _Placeholder) -> None:
    reference = placeholder.reference
    if placeholder.in_string and isinstance(reference, _Variable) and reference.name == EVENT_JSON:
        raise _error(
            text, placeholder.start, f"<{EVENT_JSON}> is a JSON value: use it outside quotes"
        )


def _check_json_shape(text: str, placeholders: list[_Placeholder]) -> Any:
    """Refuse what no record could fill into valid JSON; return the template parsed with
    its placeholders as marks.

    First each placeholder is replaced by filler of its own length (``[]`` and spaces for a
    value, so that no number runs into it; ``x`` in a string), so a JSON error's offset is
    the template's own column.
    """
    for placeholder in placeholders:
        if not placeholder.in_string and text[placeholder.end :].lstrip().startswith(":"):
            raise _error(text, placeholder.start, "a placeholder cannot be an object key")
        _no_event_json_in_text(text, placeholder)
    size = [p.end - p.start for p in placeholders]
    filler = _filled(
        text, placeholders, lambda i: ("x" if placeholders[i].in_string else "[]").ljust(size[i])
    )
    too_deep = TemplateError(f"the template nests deeper than {MAX_TEMPLATE_DEPTH} levels")
    try:
        # Strict: NaN, Infinity and 1e999 are not JSON, and a key twice drops a value.
        json.loads(
            filler,
            parse_float=_finite_float,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        problem = f"the template is not valid JSON once filled in: {exc.msg}"
        raise _error(text, exc.pos, problem) from None
    except ValueError as exc:
        raise TemplateError(f"the template is not valid JSON once filled in: {exc}") from None
    except RecursionError:
        raise too_deep from None
    # A mark is a JSON string (a value) or the inside of one (text): \u0000<index>\u0000.
    parsed = json.loads(
        _filled(
            text,
            placeholders,
            lambda i: f"\\u0000{i}\\u0000" if placeholders[i].in_string else f'"\\u0000{i}\\u0000"',
        )
    )
    if isinstance(parsed, dict | list) and _deeper_than(parsed, MAX_TEMPLATE_DEPTH):
        raise too_deep
    _no_keys(text, placeholders, parsed)
    return parsed


def _no_keys(text: str, placeholders: list[_Placeholder], parsed: Any) -> None:
    """Refuse a placeholder inside a quoted object key."""
    if isinstance(parsed, dict):
        for key, value in parsed.items():
            mark = _MARK.search(key)
            if mark is not None:
                placeholder = placeholders[int(mark.group(1))]
                raise _error(text, placeholder.start, "a placeholder cannot be an object key")
            _no_keys(text, placeholders, value)
    elif isinstance(parsed, list):
        for value in parsed:
            _no_keys(text, placeholders, value)


class Template:
    """A compiled input template; :meth:`render` applies it to one record.

    Build one with :func:`compile_template`.
    """

    __slots__ = ("_root", "text")

    def __init__(self, text: str, root: _Node) -> None:
        self.text = text
        self._root = root

    def render(self, record: Any, variables: PipeVariables) -> Any:
        """The value the target receives for ``record``: a JSON value (a missing path is
        null, or "" in text).

        Raises:
            RenderTooLarge: a text would be longer than any payload (the only exception).
        """
        return self.render_sized(record, variables)[0]

    def render_sized(self, record: Any, variables: PipeVariables) -> tuple[Any, int]:
        """:meth:`render`, and a lower bound of the value's length as JSON (what its
        placeholders put in it, each distinct value measured once), without encoding it."""
        scope = _Scope(record, variables)
        return _render(self._root, scope), scope.chars


def compile_template(text: str) -> Template:
    """Compile ``text`` once, at load.

    Raises:
        TemplateError: the template is too long, holds too many placeholders, an unknown
            variable, a bad path, an unbalanced ``<``, a placeholder as an object key,
            ``aws.pipes.event.json`` inside text, or is JSON-shaped and not valid JSON once
            filled in. The message names the line and column.
    """
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(
            f"the template is {len(text)} characters long; at most {MAX_TEMPLATE_CHARS}"
        )
    nul = text.find("\x00") if "\x00" in text else text.lower().find("\\u0000")
    if nul >= 0:
        raise _error(text, nul, "a template cannot hold a NUL character (\\u0000)")
    stripped = text.strip()
    if stripped.startswith(("{", "[", '"')):
        json_shaped = _json_template(text, stripped)
        if json_shaped is not None:
            return json_shaped
    placeholders = _scan(text, json_strings=False)
    if len(placeholders) == 1 and text[placeholders[0].start : placeholders[0].end] == stripped:
        return Template(text, _Value(placeholders[0].reference))
    for placeholder in placeholders:
        _no_event_json_in_text(text, placeholder)
    parts = _filled(text, placeholders, lambda i: f"\x00{i}\x00")
    return Template(text, _text_parts(parts, placeholders))


def _json_template(text: str, stripped: str) -> Template | None:
    """A JSON-shaped template compiled, or None for a ``"``-led one that is not one JSON
    string (it is free text then). An object or array must be valid JSON."""
    placeholders = _scan(text, json_strings=True)
    try:
        parsed = _check_json_shape(text, placeholders)
    except TemplateError:
        if stripped.startswith('"'):
            return None
        raise
    return Template(text, _node(parsed, placeholders))
