"""Pattern compilation: one pattern string becomes a validated :class:`CompiledFilter`.

Parses the pattern (JSON, numbers' text kept), validates its objects and ``$or`` branches as
Lambda does, and compiles them into closures over the leaf tests of :mod:`.values`, so that
matching a record (:mod:`.filter_set`) does no parsing or dispatch on the pattern.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from poller.core.filtering.events import (
    _ARRAY,
    _EMPTY,
    _MISSING,
    _absent_everywhere,
    _Ctx,
    _NodeFn,
    _Obj,
    _objects,
    _ValueFn,
    _walk,
)
from poller.core.filtering.json_text import _loads
from poller.core.filtering.syntax import (
    DATA_KEYS,
    MAX_NESTING,
    MAX_PATTERN_CHARS,
    DataKind,
    FilterError,
    Source,
    _Invalid,
)
from poller.core.filtering.values import _compile_values


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
