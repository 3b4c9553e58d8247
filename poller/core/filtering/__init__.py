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

Modules, in the order a pattern goes through them: :mod:`.syntax` (sources, limits, errors),
:mod:`.json_text` (JSON whose numbers keep their text), :mod:`.values` (a leaf's match values),
:mod:`.events` (walking a record), :mod:`.patterns` (one pattern) and :mod:`.filter_set` (the
mapping's list, and matching). Names with a leading underscore are private to this package.
"""

from __future__ import annotations

from poller.core.filtering.filter_set import FilterSet, compile_filters
from poller.core.filtering.patterns import CompiledFilter
from poller.core.filtering.syntax import (
    AWS_MESSAGE,
    DATA_KEYS,
    MAX_FILTERS,
    MAX_NESTING,
    MAX_PATTERN_CHARS,
    DataKind,
    FilterError,
    Source,
)

__all__ = [
    "AWS_MESSAGE",
    "DATA_KEYS",
    "MAX_FILTERS",
    "MAX_NESTING",
    "MAX_PATTERN_CHARS",
    "CompiledFilter",
    "DataKind",
    "FilterError",
    "FilterSet",
    "Source",
    "compile_filters",
]
