"""Event traversal: how a compiled pattern walks a record's fields, arrays and objects.

Compiled patterns (:mod:`.values`, :mod:`.patterns`) see a record as nested objects; this module
flattens arrays without recursion and answers "is there a leaf here" as event-ruler does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, TypeAlias

_Obj: TypeAlias = Mapping[str, Any]
_Ctx: TypeAlias = tuple[_Obj, ...]
_NodeFn: TypeAlias = Callable[[_Obj, _Ctx], bool]
_ValueFn: TypeAlias = Callable[[Any], bool]

_MISSING: Final[Any] = object()
_EMPTY: Final[_Obj] = MappingProxyType({})

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
