"""Reading one shard between two positions, for the operator commands.

Data flow::

    StreamApi (the live adapter) --GetShardIterator(start)--> GetRecords pages
        --api.converter (the live service's event records)--> the records inside the range
        --chunks--> a ChunkSink (the shard processor: ``operations.common.deliver_shard``)

The live reader (:class:`poller.streams.reader.ShardReader`) follows a shard forever; a range
stops: at the first record past its end (``beyond``), at the end of a closed shard, or at the
tip of an open one (nothing left to read now: Kinesis's MillisBehindLatest is 0; DynamoDB
Streams, which reports no lag and may serve empty pages before records, after
:data:`EMPTY_SECONDS_AT_TIP` of empty pages, never after a count of them alone), or after the
record numbered ``last`` when the caller knows the end (a redrive). Records before its start
(``before``) are skipped (a range opened at an earlier position, such as a replay's shard that
started before ``--from``). ``expect_first`` checks that the first record read is the one
asked for: Kinesis serves a trimmed position from the oldest record it still holds, without
an error, so a different first record means the records were trimmed
(:class:`RangeTrimmed`, raised before anything is delivered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from poller.errors import IteratorExpired, SourceError, Throttled
from poller.ports import RecordsPage, StartPosition, StreamApi
from poller.retry import READ_BACKOFF
from poller.streams.processor import ChunkSink
from poller.streams.reader import MIN_CALL_INTERVAL
from poller.types import StreamRecord

#: Consecutive failed reads before a range read gives up (the operation reports it).
MAX_READ_FAILURES = 6
#: Seconds of nothing but empty pages that mean "caught up" where the service reports no lag
#: (DynamoDB Streams): it may serve empty pages before a shard's records, so a count of
#: empty pages alone proves nothing; a run of them this long, from the same shard, does.
EMPTY_SECONDS_AT_TIP = 5.0


class RangeTrimmed(SourceError):
    """The first record of the range is no longer in the shard."""


@dataclass(slots=True)
class RangeRead:
    """What a range read saw (also the replay's progress: its last record)."""

    records: int = 0
    first_sequence: str | None = None
    last_sequence: str | None = None
    last_arrival: float | None = None
    #: True when the shard is closed and was read to its end.
    shard_ended: bool = False
    child_shard_ids: tuple[str, ...] = field(default_factory=tuple)


def sequence_key(sequence: str) -> int:
    """Sequence numbers compare as integers (both services' are decimal strings)."""
    return int(sequence)


async def read_range(
    api: StreamApi,
    shard_id: str,
    start: StartPosition,
    sink: ChunkSink,
    *,
    beyond: Callable[[StreamRecord], bool],
    before: Callable[[StreamRecord], bool] | None = None,
    expect_first: str | None = None,
    last: str | None = None,
    report: RangeRead | None = None,
) -> RangeRead:
    """Send the shard's records from ``start`` until the first one ``beyond`` the range, the
    one numbered ``last`` (a known end: no need to wait for the next), the shard's end or its
    tip; raises ``SourceError`` (``RangeTrimmed``, ``StreamNotFound``...)."""
    seen = report or RangeRead()
    reader = _RangeReader(api, shard_id, start)
    iterator: str | None = await api.get_iterator(shard_id, start)
    convert = api.converter(shard_id, start)
    while iterator is not None:
        page = await reader.page(iterator)
        if page is None:  # a failed read: a new iterator after the last record read
            iterator = await api.get_iterator(shard_id, reader.position)
            continue
        records = convert(page.records) if page.records else []
        if before is not None:
            records = [r for r in records if not before(r)]
        if records and expect_first is not None and seen.first_sequence is None:
            _check_first(records[0], expect_first)
        inside = _until(records, beyond)
        if inside:
            _note(seen, inside)
            await sink.send(inside)
        if len(inside) < len(records) or (inside and inside[-1].sequence_number == last):
            return seen
        iterator = page.next_iterator
        if iterator is None:
            seen.shard_ended = True
            seen.child_shard_ids = page.child_shard_ids
        elif _at_tip(page, api.limit, reader.empty_since):
            return seen
    return seen


class _RangeReader:
    """GetRecords at the service's pace, remembering the position after the last record."""

    def __init__(self, api: StreamApi, shard_id: str, start: StartPosition) -> None:
        self._api = api
        self.position = start
        self._failures = 0
        self._last_call = 0.0
        #: When the current run of empty pages began (None after a page with records).
        self.empty_since: float | None = None

    async def page(self, iterator: str) -> RecordsPage | None:
        """One read; None after a passing failure (raised after ``MAX_READ_FAILURES``)."""
        await anyio.sleep(max(0.0, self._last_call + MIN_CALL_INTERVAL - time.monotonic()))
        self._last_call = time.monotonic()
        try:
            page = await self._api.get_records(iterator)
        except SourceError as exc:
            self._failures += 1
            if self._failures >= MAX_READ_FAILURES:
                raise
            if not isinstance(exc, IteratorExpired | Throttled):
                await anyio.sleep(READ_BACKOFF.delay(self._failures))
            return None
        self._failures = 0
        if page.records:
            last = self._api.sequence_of(page.records[-1])
            self.position = StartPosition("AFTER_SEQUENCE_NUMBER", last)
            self.empty_since = None
        elif self.empty_since is None:
            self.empty_since = time.monotonic()
        return page


def _check_first(first: StreamRecord, expected: str) -> None:
    if first.sequence_number != expected:
        raise RangeTrimmed(
            f"the shard no longer holds sequence number {expected}: its oldest record in "
            f"range is {first.sequence_number} (trimmed by the stream's retention)"
        )


def _until(
    records: list[StreamRecord], beyond: Callable[[StreamRecord], bool]
) -> list[StreamRecord]:
    for index, record in enumerate(records):
        if beyond(record):
            return records[:index]
    return records


def _note(seen: RangeRead, records: list[StreamRecord]) -> None:
    if seen.first_sequence is None:
        seen.first_sequence = records[0].sequence_number
    seen.records += len(records)
    seen.last_sequence = records[-1].sequence_number
    seen.last_arrival = records[-1].arrival_timestamp


def _at_tip(page: RecordsPage, limit: int, empty_since: float | None) -> bool:
    """Nothing more to read now: Kinesis says so (no lag, a short page); DynamoDB Streams,
    which reports no lag, after :data:`EMPTY_SECONDS_AT_TIP` of empty pages in a row."""
    if page.millis_behind_latest is not None:
        return page.millis_behind_latest == 0 and len(page.records) < limit
    return empty_since is not None and time.monotonic() - empty_since >= EMPTY_SECONDS_AT_TIP
