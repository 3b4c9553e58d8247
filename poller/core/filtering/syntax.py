"""Filter syntax: the pattern language's sources, limits and errors (Lambda ``FilterCriteria``).

Shared by every step of :mod:`poller.core.filtering`: config load validates patterns against
these limits and reports :class:`FilterError`; compilation raises :class:`_Invalid` inside a
pattern, which the filter list turns into a ``FilterError`` naming the filter's index.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

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
