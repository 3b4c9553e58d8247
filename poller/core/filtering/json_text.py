"""JSON with number text kept: how patterns and record data are parsed for filtering.

Exact numbers in patterns compare by their JSON text (``300``, ``300.0`` and ``3.0e2`` differ),
so both patterns and event data are parsed by :func:`_loads`, whose floats remember their text.
"""

from __future__ import annotations

import json
from typing import Any, Final


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
