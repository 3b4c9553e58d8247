"""Leaf compilation: a pattern's array of match values becomes one test of an event value.

Literals (strings, numbers by their JSON text, booleans, null) and operators (``prefix``,
``suffix``, ``equals-ignore-case``, ``numeric``, ``anything-but``, ``exists``) are validated as
Lambda does and compiled into closures; :mod:`.patterns` places them at their field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from poller.core.filtering.events import _ValueFn
from poller.core.filtering.json_text import _is_number, _number_text
from poller.core.filtering.syntax import _Invalid

_NOT_SUPPORTED: Final = frozenset({"wildcard", "cidr", "exact"})
_LOWER_OPS: Final = frozenset({">", ">="})
_UPPER_OPS: Final = frozenset({"<", "<="})
_NUMERIC_OPS: Final = _LOWER_OPS | _UPPER_OPS | {"="}


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
