"""The shard reader shared by Kinesis and DynamoDB Streams, over a small per-service adapter.

One :class:`ShardReader` runs per shard. It reads at the service's pace (an idle shard once
per ``idle_interval`` on average, woken on a grid shared by every shard so that idle polls are
served together; a shard that is behind at once; never more than five calls a second),
turns each record into a ``StreamRecord`` with the adapter's converter, and sends the records
of each call, as one chunk, into a bounded stream that the shard's processor consumes. The
bound is the backpressure: a slow function stops the reader. With a read budget
(:mod:`poller.streams.budget`), each read first reserves room in the shard's share, which
sizes its ``Limit``; the reader waits while the share is used up, until records settle.

The reader remembers the last record it handed on. When an iterator expires or a read fails it
recreates the iterator *after that record*; it never goes back to the starting position. At the
end of a closed shard it sends ``ShardEnd`` with the child shard ids (when the service reports
them) and stops.

When that position is older than the stream's retention (the service answers
``PositionTrimmed``: the records after it were trimmed), the reader goes on from the oldest
record the shard still holds (TRIM_HORIZON), as Lambda does, and says so loudly: a
``shard.retention_gap`` warning naming the position, the first record read after the gap and
its age, and the ``retention_gap`` metric. Waiting would not bring those records back, and
would keep the records still held, and the shard's children, blocked forever.

Kinesis documents no such error: for a sequence number older than its retention it reads from
the oldest record held, silently. The gap cannot be seen exactly (sequence numbers are not
contiguous), so when a shard resumes from a checkpoint and its first record is about as old as
the retention, a ``shard.possible_retention_gap`` warning says records were probably trimmed.

What does not depend on how records are fetched (the position, the converter, the page
report, the polled count, the budget's charge, the retention warnings) is
:class:`BaseShardReader`, shared with the enhanced fan-out reader
(:mod:`poller.streams.push_reader`). Every successful read reports its records as polled
(Lambda's ``PolledEventCount``), the shard's first empty read 0; a failed read reports
nothing.

The adapter (:class:`StreamApi`) captures what differs between the services: the names of the
calls and their arguments, the record shape, the poll rate, whether ``MillisBehindLatest``
exists, and how a start instant is honoured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from poller.errors import IteratorExpired, PositionTrimmed, SourceError, Throttled
from poller.observability.metrics import Metrics, NullMetrics
from poller.ports import RecordsPage, StartPosition, StreamApi
from poller.retry import READ_BACKOFF, retrying
from poller.streams.budget import ShardAccount
from poller.types import Chunk, ShardEnd, StreamRecord

log = structlog.get_logger("poller.sources")

#: Both services allow five GetRecords calls per second per shard.
MIN_CALL_INTERVAL = 0.2
#: A first record read this close to the retention's edge (seconds) suggests a silent trim.
RETENTION_EDGE_SECONDS = 300.0
#: Idle shards wake on a shared grid of this many seconds (at most a fifth of the idle
#: interval): shards polled at the same rate are then served together, in a few event-loop
#: turns per tick rather than a turn or two per shard (measured: 0.2 s cuts an idle Kinesis
#: shard's CPU by a quarter against 0.05 s; see benchmarks/idle.py).
IDLE_TICK = 0.2


class BaseShardReader:
    """What every reader of a shard shares, polled (:class:`ShardReader`) or pushed
    (:class:`poller.streams.push_reader.PushShardReader`): the position, the converter, the
    page report, the read budget's charge and the retention-gap warnings. A subclass moves
    the position as its service tells it to."""

    def __init__(
        self,
        api: StreamApi,
        *,
        shard_id: str,
        start: StartPosition,
        on_page: Callable[[RecordsPage], None] | None = None,
        metrics: Metrics | None = None,
        mapping: str = "",
        account: ShardAccount | None = None,
    ) -> None:
        """``account``: the shard's part of the process's read budget, charged with every
        record read and holding the reader back while its share is used up; None reads
        without one."""
        self._api = api
        self._account = account
        self._on_page = on_page
        self._metrics: Metrics = metrics or NullMetrics()
        self._mapping = mapping
        #: An empty read has reported 0 polled (see :meth:`_count_polled`).
        self._reported_empty = False
        #: The position whose records were trimmed, until the first record after the gap.
        self._gap_after: str | None = None
        #: Resuming from a checkpoint: the first record read is checked against the retention.
        self._resumed_from = start.sequence_number
        self.shard_id = shard_id
        self._position = start
        self._convert = api.converter(shard_id, start)
        self.millis_behind_latest: int | None = None
        self._child_ids: tuple[str, ...] = ()
        # The polling reader's pace (unused by a pushed one; kept here so that the polling
        # reader needs no constructor of its own):
        #: The ``Limit`` of the latest read: a page shorter than it means caught up.
        self._limit = api.limit
        self._last_call = 0.0

    def _count_polled(self, chunk: list[StreamRecord]) -> None:
        """Lambda's PolledEventCount for one successful read: its records; 0 for the shard's
        first empty read, so the series exists, flat, from the first good read of an idle
        shard. Later empty reads report nothing: adding 0 again changes no series, and an
        idle shard reads every second."""
        if chunk:
            self._metrics.records_polled(self._mapping, len(chunk))
        elif not self._reported_empty:
            self._reported_empty = True
            self._metrics.records_polled(self._mapping, 0)

    def _report_page(self, page: RecordsPage) -> None:
        """Note what a read tells beside its records: the lag and, at the end, the children."""
        self.millis_behind_latest = page.millis_behind_latest
        if self._on_page is not None:
            self._on_page(page)
        self._child_ids = page.child_shard_ids or self._child_ids

    async def _accept(self, raw: list[dict[str, Any]]) -> list[StreamRecord]:
        """The records of a read (at least one), converted and charged to the budget, after
        the retention checks; the caller moves the position."""
        if self._gap_after is not None:
            self._report_gap_end(raw[0])
        elif self._resumed_from is not None and not self._api.reports_trims:
            # A service that reports trims accepted the checkpoint: nothing was trimmed.
            await self._check_retention_edge(raw[0], self._resumed_from)
        self._resumed_from = None
        chunk = self._convert(raw)
        if self._account is not None:
            self._account.charge(chunk, len(raw))
        return chunk

    def _skip_trimmed(self, exc: PositionTrimmed) -> None:
        """The position is older than the stream's retention: go on from the oldest record
        still held. Logged as an error-level warning and counted; the gap's far end is logged
        with the first record read (:meth:`_report_gap_end`)."""
        lost_after = self._position.sequence_number
        log.warning(
            "shard.retention_gap",
            shard=self.shard_id,
            after_sequence=lost_after,
            error=str(exc),
            resume="TRIM_HORIZON",
            note="records after this position were trimmed by the stream before they were read",
        )
        self._metrics.retention_gap(self._mapping, self.shard_id)
        self._gap_after = lost_after
        self._position = StartPosition("TRIM_HORIZON")

    async def _check_retention_edge(self, first: dict[str, Any], checkpoint: str) -> None:
        """Warn when the first record read after resuming from ``checkpoint`` is about as old
        as the stream's retention: Kinesis reads a trimmed position from the oldest record it
        still holds without an error, so records after the checkpoint were probably lost."""
        retention = await self._api.retention_seconds()
        if retention is None:
            return
        age = time.time() - self._api.arrival_of(first)
        if age < retention - RETENTION_EDGE_SECONDS:
            return
        log.warning(
            "shard.possible_retention_gap",
            shard=self.shard_id,
            after_sequence=checkpoint,
            first_sequence=self._api.sequence_of(first),
            first_arrival_age_s=round(age, 1),
            retention_s=retention,
            note="the first record after the checkpoint is as old as the retention: records "
            "between them may have been trimmed before they were read",
        )

    def _report_gap_end(self, first: dict[str, Any]) -> None:
        """Log the first record read after a retention gap: where the gap ends, and how old
        the oldest record held is (the stream's trim horizon, as far as it can be seen)."""
        arrival = self._api.arrival_of(first)
        log.warning(
            "shard.retention_gap_end",
            shard=self.shard_id,
            after_sequence=self._gap_after,
            first_sequence=self._api.sequence_of(first),
            first_arrival_age_s=round(max(0.0, time.time() - arrival), 1),
        )
        self._gap_after = None


class ShardReader(BaseShardReader):
    """Reads one shard by polling (GetRecords) and sends chunks of records to its processor.

    ``account`` (of the constructor): the shard's part of the process's read budget, which
    sizes each read's ``Limit`` and holds the reader back while its share is used up; None
    reads the service's maximum every time."""

    async def run(self, send: MemoryObjectSendStream[Chunk]) -> None:
        """Read until the shard ends or the task is cancelled."""
        async with send:
            iterator: str | None = await self._new_iterator()
            failures = 0
            while iterator is not None:
                try:
                    page = await self._get_records(iterator)
                except SourceError as exc:
                    failures += 1
                    iterator = await self._recover(exc, failures)
                    continue
                failures = 0
                chunk = await self._take(page)
                self._count_polled(chunk)
                iterator, caught_up = page.next_iterator, self._caught_up(page)
                # Not kept while the processor is busy: only the converted records are
                # (and counted by the read budget), not the raw response as well.
                del page
                if chunk:
                    await send.send(chunk)
                # Not kept while the next read waits for the budget: once settled, its
                # records would stay in memory outside the budget.
                del chunk
                if iterator is not None and caught_up:
                    await _sleep_on_grid(self._last_call, self._api.idle_interval)
            await send.send(ShardEnd(self._child_ids))

    async def _take(self, page: RecordsPage) -> list[StreamRecord]:
        """The records of a read, converted, charged to the budget; the position moves past
        the last record read, whether or not it was kept."""
        raw = page.records
        self._report_page(page)
        if not raw:
            return []
        chunk = await self._accept(raw)
        self._position = StartPosition("AFTER_SEQUENCE_NUMBER", self._api.sequence_of(raw[-1]))
        return chunk

    def _caught_up(self, page: RecordsPage) -> bool:
        """Whether the read reached the tip of the shard (the reader then idles)."""
        return not page.millis_behind_latest and len(page.records) < self._limit

    async def _get_records(self, iterator: str) -> RecordsPage:
        wait = self._last_call + MIN_CALL_INTERVAL - time.monotonic()
        if wait > 0:
            await anyio.sleep(wait)
        account = self._account
        if account is None:
            self._last_call = time.monotonic()
            return await self._api.get_records(iterator)
        # Backpressure: waits while the shard's share of the budget is used up.
        self._limit = min(await account.reserve(), self._api.limit)
        self._last_call = time.monotonic()
        try:
            return await self._api.get_records(iterator, self._limit)
        finally:
            account.unreserve()  # the records read are charged when converted

    async def _recover(self, exc: SourceError, failures: int) -> str:
        """Back off as the error requires, then recreate the iterator after the last record.

        An expired iterator is recreated at once, the first time: it is the normal end of an
        iterator left unused (backpressure). A fresh iterator refused again is not normal (a
        service that keeps refusing the position): that is backed off and logged like any
        read error, not retried at the call rate forever.
        """
        if not isinstance(exc, IteratorExpired) or failures > 1:
            level = log.info if isinstance(exc, Throttled) else log.warning
            level("shard.read_failed", error=str(exc), attempt=failures)
            steps = failures - 1 if isinstance(exc, IteratorExpired) else failures
            await anyio.sleep(READ_BACKOFF.delay(steps))
        return await self._new_iterator()

    async def _new_iterator(self) -> str:
        async def call() -> str:
            try:
                return await self._api.get_iterator(self.shard_id, self._position)
            except PositionTrimmed as exc:
                if self._position.sequence_number is None:
                    raise  # already at the trim horizon: a passing error, retried
                self._skip_trimmed(exc)
                return await self._api.get_iterator(self.shard_id, self._position)

        return await retrying(f"GetShardIterator {self.shard_id}", call, initial=0.5, maximum=30.0)


async def _sleep_on_grid(last_call: float, interval: float) -> None:
    """Sleep until the next idle read is due (:func:`idle_wake`)."""
    now = time.monotonic()  # the event loop's clock (anyio.current_time() costs more)
    await anyio.sleep(idle_wake(last_call, interval, now) - now)


def idle_wake(last_call: float, interval: float, now: float) -> float:
    """When an idle shard reads again: about ``interval`` seconds after its last call began,
    on the nearest tick of the shared grid (at most half a tick, a tenth of the interval,
    early or late). Timed from the call, not from its answer, so that answers served one
    after another after a tick do not slow the cadence; but never sooner than a tick from
    ``now`` (an answer slower than that waits the interval from the answer, as it did)."""
    tick = min(IDLE_TICK, interval / 5)
    if tick <= 0:
        return now + interval
    wake = round((last_call + interval) / tick) * tick
    if wake < now + tick:
        wake = round((now + interval) / tick) * tick
    return wake
