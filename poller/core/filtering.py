"""Event filtering: decides which source records reach the target (Lambda ``FilterCriteria``).

Config load compiles each mapping's filter patterns once with :func:`compile_filters`, which
validates them as Lambda does (raising :class:`FilterError` with AWS's message). The pollers
then ask :meth:`FilterSet.matches` about every record they read, shaped as the Lambda event
record, before batching; a record that matches no filter is dropped (the stream iterator moves
past it, SQS deletes it). I/O-free and synchronous.

Patterns use the EventBridge pattern syntax that Lambda documents: fields are AND-ed, the values
of a leaf array are OR-ed, ``$or`` ORs whole sub-patterns, and a leaf matches when any value of
an event array matches. Exact numbers compare by their JSON text (``300``, ``300.0`` and
``3.0e2`` differ); ``numeric`` compares numerically and only matches JSON numbers. The data key
is decoded per source: Kinesis ``data`` is base64 JSON (a pattern on it never matches a record
whose data is not JSON); an SQS ``body`` pattern follows Lambda's body-format table.

Matching follows event-ruler (the engine behind EventBridge) where Lambda's docs are silent:
within an array of objects all fields must match in the same element, and ``exists: false``
(like every operator, it sees leaf values only, never objects) holds only when no element has
the field. A record is parsed at most once, however many filters there are; patterns are
compiled into closures, so matching does no parsing or dispatch on the pattern.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

Source: TypeAlias = Literal["kinesis", "dynamodb", "sqs"]
DataKind: TypeAlias = Literal["none", "object", "value", "both"]

#: The message AWS returns for every invalid pattern; :class:`FilterError` starts with it.
AWS_MESSAGE: Final = "Invalid filter pattern definition."
#: Lambda's default quota of filters per event source mapping (raisable to 10 on AWS).
MAX_FILTERS: Final = 5
#: The longest pattern string Lambda accepts.
MAX_PATTERN_CHARS: Final = 4096
#: Nesting depth of objects in a pattern; deeper is refused (AWS documents no limit).
MAX_NESTING: Final = 64

#: The key each source's data is matched under (DynamoDB has none: records match as delivered).
DATA_KEYS: Final[Mapping[str, str]] = MappingProxyType({"kinesis": "data", "sqs": "body"})

_SOURCES: Final = frozenset({"kinesis", "dynamodb", "sqs"})
_NOT_SUPPORTED: Final = frozenset({"wildcard", "cidr", "exact"})
_LOWER_OPS: Final = frozenset({">", ">="})
_UPPER_OPS: Final = frozenset({"<", "<="})
_NUMERIC_OPS: Final = _LOWER_OPS | _UPPER_OPS | {"="}

_Obj: TypeAlias = Mapping[str, Any]
_Ctx: TypeAlias = tuple[_Obj, ...]
_NodeFn: TypeAlias = Callable[[_Obj, _Ctx], bool]
_ValueFn: TypeAlias = Callable[[Any], bool]

_MISSING: Final[Any] = object()
_NOT_JSON: Final[Any] = object()
_EMPTY: Final[_Obj] = MappingProxyType({})


class FilterError(ValueError):
    """An invalid filter pattern or filter list.

    The message is AWS's text followed by a detail naming what is wrong; ``detail`` and
    ``index`` (0-based position in the filter list, None for list-level errors) carry them apart
    so an API layer can answer with :data:`AWS_MESSAGE` alone, exactly as Lambda does.
    """

    def __init__(self, detail: str, *, index: int | None = None) -> None:
        where = "FilterCriteria" if index is None else f"FilterCriteria.Filters[{index}].Pattern"
        super().__init__(f"{AWS_MESSAGE} {where}: {detail}")
        self.detail = detail
        self.index = index


class _Invalid(Exception):
    """Raised inside pattern compilation; :func:`compile_filters` adds the filter index."""


# --- JSON with number text kept -------------------------------------------------------------


class _JsonFloat(float):
    """A float parsed from JSON that keeps its source text, for exact matching."""

    __slots__ = ("text",)
    text: str


def _parse_float(text: str) -> float:
    value = _JsonFloat(text)
    value.text = text
    return value


def _parse_big_int(text: str) -> int | float:
    """Integers past Python's int-to-str digit limit keep their text as a float."""
    try:
        return int(text)
    except ValueError:
        return _parse_float(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER: Final = json.JSONDecoder(parse_float=_parse_float, parse_constant=_reject_constant)
_BIG_INT_DECODER: Final = json.JSONDecoder(
    parse_float=_parse_float, parse_int=_parse_big_int, parse_constant=_reject_constant
)


def _loads(text: str) -> Any:
    """Strict JSON (no NaN/Infinity) whose floats remember their text.

    Raises:
        ValueError: not JSON. RecursionError: nested too deeply to parse.
    """
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
    return _BIG_INT_DECODER.decode(text)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_text(value: float) -> str:
    """The JSON text of a number: as written for parsed floats, else Python's shortest form."""
    if type(value) is _JsonFloat:
        return value.text
    try:
        return repr(value)
    except ValueError:  # an int past the digit limit: longer than any pattern can hold
        return ""


# --- Event traversal ------------------------------------------------------------------------


_ARRAY: Final = (list, tuple)


def _walk(items: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    """The non-array members of an array, nested arrays flattened (iteratively: events may
    nest deeper than the interpreter's recursion limit)."""
    stack = [iter(items)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, _ARRAY):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _has_leaf(value: Any) -> bool:
    """Whether a field's value holds a leaf: a scalar, or a scalar inside arrays."""
    if isinstance(value, dict) or value is _MISSING:
        return False
    if isinstance(value, _ARRAY):
        return any(not isinstance(v, dict) for v in _walk(value))
    return True


def _objects(value: Any) -> tuple[_Obj, ...]:
    """The objects at a field: the object itself, or the objects inside an array."""
    if isinstance(value, dict):
        return (value,)
    if isinstance(value, _ARRAY):
        return tuple(v for v in _walk(value) if isinstance(v, dict))
    return ()


def _absent_everywhere(key: str, ctx: _Ctx) -> bool:
    """True when no object at this path (in any array element) has a leaf value at ``key``."""
    return not any(_has_leaf(obj.get(key, _MISSING)) for obj in ctx)


# --- Pattern compilation: leaves ------------------------------------------------------------


def _always(_: Any) -> bool:
    return True


@dataclass
class _LeafSpec:
    """The match values of one leaf array, sorted by the value types they can match."""

    strings: set[str] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)
    consts: set[str] = field(default_factory=set)
    string_tests: list[_ValueFn] = field(default_factory=list)
    number_tests: list[_ValueFn] = field(default_factory=list)
    any_tests: list[_ValueFn] = field(default_factory=list)
    exists: bool = False
    absent: bool = False


def _add_literal(spec: _LeafSpec, value: Any, path: str) -> None:
    if isinstance(value, str):
        spec.strings.add(value)
    elif value is None or isinstance(value, bool):
        spec.consts.add(json.dumps(value))
    elif _is_number(value):
        spec.numbers.add(_number_text(value))
    elif isinstance(value, dict):
        _add_operator(spec, value, path)
    else:
        raise _Invalid(
            f'"{path}": match values must be strings, numbers, booleans, null or operator '
            f"objects, not {json.dumps(value)[:40]}"
        )


def _require_string(name: str, arg: Any, path: str) -> str:
    if not isinstance(arg, str):
        raise _Invalid(f'"{path}": "{name}" takes a string')
    return arg


def _add_operator(spec: _LeafSpec, op: dict[str, Any], path: str) -> None:
    if len(op) != 1:
        raise _Invalid(f'"{path}": an operator object has exactly one key, not {sorted(op)}')
    ((name, arg),) = op.items()
    if name == "prefix":
        spec.string_tests.append(_prefix_test(_require_string(name, arg, path)))
    elif name == "suffix":
        spec.string_tests.append(_suffix_test(_require_string(name, arg, path)))
    elif name == "equals-ignore-case":
        spec.string_tests.append(_ignore_case_test(_require_string(name, arg, path)))
    elif name == "numeric":
        spec.number_tests.append(_compile_numeric(arg, path))
    elif name == "anything-but":
        spec.any_tests.append(_compile_anything_but(arg, path))
    elif name == "exists":
        if not isinstance(arg, bool):
            raise _Invalid(f'"{path}": "exists" takes true or false')
        spec.exists |= arg
        spec.absent |= not arg
    elif name in _NOT_SUPPORTED:
        raise _Invalid(f'"{path}": "{name}" is not supported by Lambda event filtering')
    else:
        raise _Invalid(f'"{path}": unknown operator "{name}"')


def _prefix_test(prefix: str) -> _ValueFn:
    return lambda v: bool(v.startswith(prefix))


def _suffix_test(suffix: str) -> _ValueFn:
    return lambda v: bool(v.endswith(suffix))


def _ignore_case_test(text: str) -> _ValueFn:
    lowered = text.lower()
    return lambda v: bool(v.lower() == lowered)


def _bound(value: Any, path: str) -> float:
    """A finite numeric operand as a float (event-ruler compares doubles too)."""
    if not _is_number(value):
        raise _Invalid(f'"{path}": numeric operand {json.dumps(value)[:40]} is not a number')
    try:
        bound = float(value)
    except OverflowError:
        bound = math.inf
    if not math.isfinite(bound):
        raise _Invalid(f'"{path}": numeric operand {_number_text(value)[:40]} is out of range')
    return bound


def _compile_numeric(arg: Any, path: str) -> _ValueFn:
    """``["=", x]``, ``[op, x]``, or a lower bound followed by an upper bound."""
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise _Invalid(f'"{path}": "numeric" takes [operator, number] or a two-sided range')
    ops = arg[0::2]
    for op in ops:
        if not isinstance(op, str) or op not in _NUMERIC_OPS:
            raise _Invalid(f'"{path}": unknown numeric operator {json.dumps(op)[:20]}')
    x = _bound(arg[1], path)
    if len(arg) == 2:
        if ops[0] == "=":
            return lambda v: bool(v == x)
        if ops[0] in _LOWER_OPS:
            return _range_test(x, ops[0] == ">", None, False)
        return _range_test(None, False, x, ops[0] == "<")
    if ops[0] not in _LOWER_OPS or ops[1] not in _UPPER_OPS:
        raise _Invalid(
            f'"{path}": a numeric range is a lower bound (">" or ">=") followed by an upper '
            f'bound ("<" or "<="), not "{ops[0]}" and "{ops[1]}"'
        )
    y = _bound(arg[3], path)
    if x >= y:
        raise _Invalid(
            f'"{path}": the lower bound of a numeric range must be below its upper bound'
        )
    return _range_test(x, ops[0] == ">", y, ops[1] == "<")


def _range_test(lo: float | None, lo_open: bool, hi: float | None, hi_open: bool) -> _ValueFn:
    def test(v: float) -> bool:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    return test


def _compile_anything_but(arg: Any, path: str) -> _ValueFn:
    """A value of another type, or a string/number not among those listed, matches."""
    if isinstance(arg, dict):
        return _anything_but_operator(arg, path)
    values = arg if isinstance(arg, list) else [arg]
    if values and all(isinstance(v, str) for v in values):
        strings = frozenset(values)
        return lambda v: not (isinstance(v, str) and v in strings)
    if values and all(_is_number(v) for v in values):
        numbers = frozenset(_bound(v, path) for v in values)
        return lambda v: not (_is_number(v) and v in numbers)
    raise _Invalid(
        f'"{path}": "anything-but" takes a string, a number, a non-empty list of only strings '
        'or only numbers, or a "prefix", "suffix" or "equals-ignore-case" object'
    )


def _anything_but_operator(op: dict[str, Any], path: str) -> _ValueFn:
    if len(op) != 1:
        raise _Invalid(f'"{path}": an operator object has exactly one key, not {sorted(op)}')
    ((name, arg),) = op.items()
    if name == "equals-ignore-case":
        values = arg if isinstance(arg, list) else [arg]
        if not values or not all(isinstance(v, str) for v in values):
            raise _Invalid(f'"{path}": "equals-ignore-case" takes a string or list of strings')
        lowered = frozenset(v.lower() for v in values)
        return lambda v: not (isinstance(v, str) and v.lower() in lowered)
    if name not in ("prefix", "suffix"):
        raise _Invalid(f'"{path}": "anything-but" does not take "{name}"')
    text = _require_string(name, arg, path)
    if not text:
        raise _Invalid(f'"{path}": an anything-but "{name}" must not be empty')
    inner = _prefix_test(text) if name == "prefix" else _suffix_test(text)
    return lambda v: not (isinstance(v, str) and inner(v))


def _compile_values(values: list[Any], path: str) -> tuple[_ValueFn, bool]:
    """A leaf array as (test of one event value, whether absence of the field matches)."""
    if not values:
        raise _Invalid(f'"{path}": the array of match values is empty')
    spec = _LeafSpec()
    for value in values:
        _add_literal(spec, value, path)
    if spec.exists:
        return _always, spec.absent
    return _value_test(spec), spec.absent


def _value_test(spec: _LeafSpec) -> _ValueFn:
    strings = frozenset(spec.strings)
    others = spec.numbers or spec.consts or spec.string_tests or spec.number_tests
    if not (others or spec.any_tests):
        # Only exact strings, the common case: set lookup, which no non-string can pass.
        return strings.__contains__
    string_test = _string_test(strings, tuple(spec.string_tests))
    number_test = _number_test(frozenset(spec.numbers), tuple(spec.number_tests))
    bools = frozenset(b for b in (True, False) if json.dumps(b) in spec.consts)
    null_ok = "null" in spec.consts

    def typed(v: Any) -> bool:
        if isinstance(v, str):
            return string_test(v)
        if isinstance(v, bool):
            return v in bools
        if isinstance(v, int | float):
            return number_test(v)
        return v is None and null_ok

    any_tests = tuple(spec.any_tests)
    if not any_tests:
        return typed
    return lambda v: typed(v) or any(t(v) for t in any_tests)


def _string_test(strings: frozenset[str], tests: tuple[_ValueFn, ...]) -> _ValueFn:
    if not tests:
        return strings.__contains__
    return lambda v: v in strings or any(t(v) for t in tests)


def _number_test(texts: frozenset[str], tests: tuple[_ValueFn, ...]) -> _ValueFn:
    if not tests:
        return lambda v: _number_text(v) in texts
    if not texts:
        return lambda v: any(t(v) for t in tests)
    return lambda v: _number_text(v) in texts or any(t(v) for t in tests)


# --- Pattern compilation: objects -----------------------------------------------------------


def _leaf_test(key: str, accept: _ValueFn, absent_ok: bool) -> _NodeFn:
    def test(obj: _Obj, ctx: _Ctx) -> bool:
        value = obj.get(key, _MISSING)
        if isinstance(value, _ARRAY):
            found = False
            for item in _walk(value):
                if not isinstance(item, dict):
                    if accept(item):
                        return True
                    found = True
            if found:
                return False
        elif value is not _MISSING and not isinstance(value, dict):
            return accept(value)  # a scalar: a leaf, so absence cannot match
        return absent_ok and _absent_everywhere(key, ctx)

    return test


def _nested_test(key: str, child: _NodeFn) -> _NodeFn:
    empty_ok = child(_EMPTY, ())  # only absence tests can pass on an empty object

    def test(obj: _Obj, ctx: _Ctx) -> bool:
        value = obj.get(key, _MISSING)
        alone = len(ctx) == 1 and ctx[0] is obj
        if isinstance(value, dict) and alone:  # the common case, kept fast
            return child(value, (value,))
        elems = _objects(value)
        sub = elems if alone else tuple(e for o in ctx for e in _objects(o.get(key, _MISSING)))
        if not elems:
            return empty_ok and child(_EMPTY, sub)
        return any(child(elem, sub) for elem in elems)

    return test


def _all_of(tests: tuple[_NodeFn, ...], branches: tuple[_NodeFn, ...]) -> _NodeFn:
    def node(obj: _Obj, ctx: _Ctx) -> bool:
        for test in tests:
            if not test(obj, ctx):
                return False
        return not branches or any(branch(obj, ctx) for branch in branches)

    return node


def _compile_object(pattern: dict[str, Any], path: str, depth: int) -> _NodeFn:
    if depth > MAX_NESTING:
        raise _Invalid(f'"{path}": patterns nest at most {MAX_NESTING} objects deep')
    if not pattern:
        raise _Invalid(f'"{path or "$"}": empty objects are not allowed')
    tests: list[_NodeFn] = []
    branches: tuple[_NodeFn, ...] = ()
    for key, value in pattern.items():
        where = f"{path}.{key}" if path else key
        if key == "$or":
            branches = _compile_or(value, path, depth)
        elif isinstance(value, dict):
            tests.append(_nested_test(key, _compile_object(value, where, depth + 1)))
        elif isinstance(value, list):
            tests.append(_leaf_test(key, *_compile_values(value, where)))
        else:
            raise _Invalid(f'"{where}" must be an array of match values or an object')
    if len(tests) == 1 and not branches:
        return tests[0]
    return _all_of(tuple(tests), branches)


def _compile_or(value: Any, path: str, depth: int) -> tuple[_NodeFn, ...]:
    where = f"{path}.$or" if path else "$or"
    if not isinstance(value, list) or len(value) < 2:
        raise _Invalid(f'"{where}" must be an array of at least two objects')
    if not all(isinstance(branch, dict) for branch in value):
        raise _Invalid(f'"{where}" may contain only objects')
    return tuple(_compile_object(branch, path, depth + 1) for branch in value)


# --- Filters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledFilter:
    """One validated pattern, ready to match.

    Attributes:
        pattern: The pattern as configured.
        index: Its position in the filter list.
        data_kind: How it references the source's data key (``data``/``body``): ``"none"``,
            ``"object"`` (a JSON pattern), ``"value"`` (a leaf array: a plain-string pattern),
            or ``"both"`` (in different ``$or`` branches).
        fields: The top-level fields it references (those inside a top-level ``$or`` too).
        root: The compiled matcher; called with (event view, (event view,)).
    """

    pattern: str
    index: int
    data_kind: DataKind
    fields: frozenset[str]
    root: _NodeFn = field(repr=False, compare=False)

    @property
    def references_data(self) -> bool:
        """Whether the pattern references the data key."""
        return self.data_kind != "none"


def _top_fields(pattern: dict[str, Any]) -> Iterator[str]:
    """Top-level field names of a pattern, including those inside top-level ``$or``."""
    for key, value in pattern.items():
        if key == "$or":
            for branch in value:
                yield from _top_fields(branch)
        else:
            yield key


def _data_refs(pattern: dict[str, Any], key: str) -> Iterator[Any]:
    """Values of ``key`` at the top level of a pattern, including inside top-level ``$or``."""
    if key in pattern:
        yield pattern[key]
    for branch in pattern.get("$or", ()):
        yield from _data_refs(branch, key)


def _data_kind(pattern: dict[str, Any], source: Source) -> DataKind:
    key = DATA_KEYS.get(source)
    refs = [] if key is None else list(_data_refs(pattern, key))
    objects = sum(isinstance(ref, dict) for ref in refs)
    if source == "kinesis" and objects < len(refs):
        raise _Invalid('"data" must be an object: Kinesis data is matched as parsed JSON')
    if not refs:
        return "none"
    if objects == len(refs):
        return "object"
    return "value" if objects == 0 else "both"


def _compile_one(pattern: Any, index: int, source: Source) -> CompiledFilter:
    if not isinstance(pattern, str):
        raise FilterError("a pattern must be a JSON string", index=index)
    if len(pattern) > MAX_PATTERN_CHARS:
        raise FilterError(
            f"the pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_CHARS}",
            index=index,
        )
    try:
        parsed = _loads(pattern)
    except (ValueError, RecursionError) as exc:
        raise FilterError(f"the pattern is not valid JSON ({exc})", index=index) from None
    if not isinstance(parsed, dict):
        kind = "null" if parsed is None else type(parsed).__name__
        raise FilterError(f"the pattern must be a JSON object, not {kind}", index=index)
    try:
        root = _compile_object(parsed, "", 0)
        kind_of_data = _data_kind(parsed, source)
    except _Invalid as exc:
        raise FilterError(str(exc), index=index) from None
    return CompiledFilter(
        pattern=pattern,
        index=index,
        data_kind=kind_of_data,
        fields=frozenset(_top_fields(parsed)),
        root=root,
    )


def compile_filters(
    patterns: Sequence[str], *, source: Source, max_filters: int = MAX_FILTERS
) -> FilterSet:
    """Parse and validate a mapping's filter patterns (``FilterCriteria.Filters[].Pattern``).

    Args:
        patterns: The pattern strings, in order. None at all means no filtering.
        source: The event source the patterns are for; it decides how data is matched.
        max_filters: The filter quota (AWS: 5 by default, raisable to 10).

    Returns:
        The compiled filters.

    Raises:
        FilterError: A pattern is invalid, too long, or there are too many of them.
    """
    if source not in _SOURCES:
        raise ValueError(f"unknown event source {source!r}")
    if isinstance(patterns, str):
        raise FilterError("expected a list of pattern strings, not one string")
    if len(patterns) > max_filters:
        raise FilterError(
            f"{len(patterns)} filters given; an event source mapping takes at most {max_filters}"
        )
    filters = tuple(_compile_one(p, i, source) for i, p in enumerate(patterns))
    return FilterSet(filters, source)


def _decode_kinesis_data(record: _Obj) -> Any:
    """The record's ``kinesis.data`` base64-decoded and parsed, or ``_NOT_JSON``."""
    kinesis = record.get("kinesis")
    raw = kinesis.get("data") if isinstance(kinesis, dict) else None
    if not isinstance(raw, str):
        return _NOT_JSON
    try:
        return _loads(base64.b64decode(raw, validate=True).decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        return _NOT_JSON


def _parse_body(record: _Obj) -> Any:
    """The record's SQS ``body`` parsed as JSON, or ``_NOT_JSON`` for a plain-string body."""
    body = record.get("body")
    if not isinstance(body, str):
        return _NOT_JSON
    try:
        return _loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


class FilterSet:
    """A mapping's compiled filters; a record passes when any filter matches (OR).

    An empty set passes every record. Records are the Lambda event records as delivered:
    ``{"kinesis": {..., "data": <base64>}, "eventSource": ...}``, the DynamoDB Streams record,
    or the SQS message record with its ``body`` string.

    Attributes:
        filters: The compiled filters, in configuration order.
        source: The event source they were compiled for.
        references_data: Whether any pattern references the data key (Kinesis ``data``, SQS
            ``body``), i.e. whether matching decodes record data at all.
    """

    __slots__ = ("_kinesis_meta", "filters", "references_data", "source")

    def __init__(self, filters: tuple[CompiledFilter, ...], source: Source) -> None:
        self.filters = filters
        self.source = source
        self.references_data = any(f.references_data for f in filters)
        # Whether Kinesis patterns look at anything but ``data`` (the view then holds it all).
        self._kinesis_meta = any(f.fields - {"data"} for f in filters)

    def __len__(self) -> int:
        return len(self.filters)

    def matches(self, record: _Obj) -> bool:
        """Whether ``record`` passes the filters. Never raises on odd record contents."""
        if not self.filters:
            return True
        if self.source == "kinesis":
            return self._matches_kinesis(record)
        if self.source == "sqs" and self.references_data:
            return self._matches_sqs(record)
        return any(f.root(record, (record,)) for f in self.filters)

    def _matches_kinesis(self, record: _Obj) -> bool:
        data = _decode_kinesis_data(record) if self.references_data else _NOT_JSON
        view = _kinesis_view(record, data, with_meta=self._kinesis_meta)
        ctx = (view,)
        for f in self.filters:
            if f.references_data and data is _NOT_JSON:
                continue
            if f.root(view, ctx):
                return True
        return False

    def _matches_sqs(self, record: _Obj) -> bool:
        body = _parse_body(record)
        is_json = body is not _NOT_JSON
        json_view = {**record, "body": body} if is_json else record
        for f in self.filters:
            kind = f.data_kind
            if (kind == "object" and not is_json) or (kind == "value" and is_json):
                continue  # Lambda's body-format rule: a JSON/plain mismatch never matches
            view = record if kind == "none" else json_view
            if f.root(view, (view,)):
                return True
        return False


def _kinesis_view(record: _Obj, data: Any, *, with_meta: bool) -> dict[str, Any]:
    """What Kinesis patterns see: ``data`` as parsed JSON beside the record's metadata.

    Metadata is there both as delivered (``kinesis.partitionKey``) and flattened
    (``partitionKey``), the record shape of Lambda's 2022 filtering docs; AWS now documents
    only ``data`` as filterable for Kinesis.
    """
    view: dict[str, Any] = {}
    if with_meta:
        view.update(record)
        kinesis = record.get("kinesis")
        if isinstance(kinesis, dict):
            view.update(kinesis)
    if data is _NOT_JSON:
        view.pop("data", None)  # the base64 text is never matched as ``data``
    else:
        view["data"] = data
    return view
