"""The process-wide read budget: how many bytes of stream records may wait in memory.

Data flow (one :class:`ReadBudget` per service, shared by every shard of every stream
mapping; one :class:`ShardAccount` per running shard task)::

    ShardReader --reserve()--> limit (waits while its share is used up) --> GetRecords(Limit)
        --charge(records read)--> the account holds their bytes
    ShardProcessor --release(records settled: checkpointed, filtered, sent to a destination)
    the shard task ends (drained, crashed, lease lost, cancelled) --close()--> all released

The budget counts *event bytes* (``StreamRecord.size``: what a record adds to the JSON
event), not Python's memory; a record's objects take about as much again, so RSS grows by
roughly one to two times the bytes buffered.

Fairness, kept simple: every running shard task has an equal share (the budget divided by
the open accounts), kept for it whether it uses it or not, so a shard that wakes never waits
for a busy one. Before each GetRecords an account reserves the bytes it asks for, so reads in
flight count too. Its ``Limit`` is the number of records of its average size that fit in the
room left (the smaller of its share minus what it holds, and the budget minus what all hold),
at most the service's maximum. While that room is below half its share (or below
``floor_records``, the batch size, if that is more; or half the largest read, if that is
less) it waits (backpressure) until records settle, so that reads are few and large while
the other half keeps its processor busy. An
account that holds nothing never waits: it reads that much anyway (never more than its
share), so that no shard, a stuck target's included, can starve another. The budget is thus
exceeded only by the error of a read's estimate (records larger than the previous read's),
and, after shards were added while the older ones still hold their larger share, by the
first read of each new shard: at most one response each.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence

import anyio
import structlog

from poller.observability.metrics import Metrics, NullMetrics
from poller.types import StreamRecord

log = structlog.get_logger("poller.streams")

#: A record's size in the event, bytes.
_SIZE = operator.attrgetter("size")
#: The size assumed for a shard's records before its first read: large, so that the first
#: read of a shard is small rather than over its share.
INITIAL_RECORD_BYTES = 4096


class ReadBudget:
    """Bytes of records read and not yet settled, bounded process-wide."""

    def __init__(self, total_bytes: int, *, metrics: Metrics | None = None) -> None:
        if total_bytes < 1:
            raise ValueError(f"read budget must be at least 1 byte, got {total_bytes}")
        self.total = total_bytes
        #: Bytes held by every account: records buffered plus reads in flight.
        self.used = 0
        #: Open accounts: running shard tasks (the share divides among them).
        self.accounts = 0
        self._metrics: Metrics = metrics or NullMetrics()
        #: Accounts waiting to read; among them those whose own share has room but the
        #: budget has not (woken by any release, the others only by their own).
        self._waiting: set[ShardAccount] = set()
        self._waiting_for_room: set[ShardAccount] = set()
        #: Per mapping: [bytes, records] held.
        self._by_mapping: dict[str, list[int]] = {}
        #: Mappings told that a share holds less than one batch (told once each).
        self._told_small: set[str] = set()
        self._metrics.read_budget(self.total, 0)

    def account(
        self, mapping: str, shard_id: str, *, floor_records: int, max_records: int
    ) -> ShardAccount:
        """A new account for a shard task, opened when the task is scheduled (so that shards
        started together share from their first read); :meth:`ShardAccount.close` it when
        the task ends."""
        self.accounts += 1  # the others' shares shrink: no waiter can read sooner
        return ShardAccount(
            self, mapping, shard_id, floor_records=floor_records, max_records=max_records
        )

    @property
    def share(self) -> int:
        """Each open account's fair share, bytes."""
        return self.total // max(1, self.accounts)

    @property
    def room(self) -> int:
        """Bytes not held by anyone (negative while over budget)."""
        return self.total - self.used

    def buffered(self, mapping: str) -> tuple[int, int]:
        """Bytes and records of ``mapping`` read and not settled."""
        size, records = self._by_mapping.get(mapping, (0, 0))
        return size, records

    def _change(self, account: ShardAccount, size: int, records: int) -> None:
        """Account for a change of buffered records (charged, settled, dropped): the gauges
        follow it."""
        mapping = account.mapping
        totals = self._by_mapping.setdefault(mapping, [0, 0])
        totals[0] += size
        totals[1] += records
        self._metrics.read_buffered(mapping, totals[1], totals[0])
        self._hold(account, size)
        self._metrics.read_budget(self.total, self.used)

    def _hold(self, account: ShardAccount, size: int) -> None:
        """Account for a change of held bytes (buffered, or reserved for a read in flight).
        When bytes are freed, wake the account itself and the accounts that wait for the
        budget's room (not those whose share is full: waking every reader on every
        settlement would cost more than the reads). A reservation alone does not update the
        gauges: it is given back when its read returns, and an idle poll's reserve and
        unreserve cancel out (updating the gauges for them cost ~14 % of an idle poll)."""
        self.used += size
        if size < 0:
            account._wake()
            for waiter in list(self._waiting_for_room):
                waiter._wake()

    def _check_share(self, account: ShardAccount, record_bytes: float) -> None:
        """Warn once per mapping when a shard's share holds less than one batch: its reads
        are then cut below ``batch_size`` (a budget set too small for the shards held is
        legal, but silently defeats the batch size). ``record_bytes``: the average record
        of the latest read, per *user* record (``batch_size`` counts those; the account's
        average counts a KPL aggregate once)."""
        batch_bytes = int(account._floor * record_bytes)
        if self.share >= batch_bytes or account.mapping in self._told_small:
            return
        self._told_small.add(account.mapping)
        log.warning(
            "read_budget.share_below_batch",
            mapping=account.mapping,
            share_bytes=self.share,
            batch_bytes=batch_bytes,
            shards=self.accounts,
            hint="raise memory.read_budget_mib to at least 2 x shards x batch_size x record size",
        )

    def _closed(self) -> None:
        self.accounts -= 1
        for waiter in list(self._waiting):  # the others' shares grew
            waiter._wake()


class ShardAccount:
    """One shard task's part of the budget: reserve before a read, release as records settle."""

    def __init__(
        self,
        budget: ReadBudget,
        mapping: str,
        shard_id: str,
        *,
        floor_records: int,
        max_records: int,
    ) -> None:
        self._budget = budget
        self.mapping = mapping
        self.shard_id = shard_id
        self._floor = max(1, floor_records)
        self._max = max(1, max_records)
        #: Bytes and count of the records read and not settled.
        self.held = 0
        self.records = 0
        #: Bytes reserved for the read in flight.
        self.reserved = 0
        self._closed = False
        self._event: anyio.Event | None = None
        #: Average event bytes per raw record the service returns (a KPL aggregate is one).
        self.average = float(INITIAL_RECORD_BYTES)
        #: Told True when the reader starts waiting for its records to settle, False when it
        #: reads again: the shard's batches must not wait for records it will not read.
        self._blocked_hook: Callable[[bool], None] | None = None

    def on_blocked(self, hook: Callable[[bool], None] | None) -> None:
        """Call ``hook(True)`` when a read waits for this shard's records to settle, and
        ``hook(False)`` when it goes on (the processor then cuts its batches short rather
        than wait out a batching window for records the budget holds back)."""
        self._blocked_hook = hook

    # -- reading ---------------------------------------------------------------------------

    async def reserve(self) -> int:
        """Wait until this account may read, reserve the bytes of the read, and return its
        ``Limit``: records of the average size that fit in the room."""
        if (limit := self.next_limit()) is None:
            limit = await self._wait_for_limit()
        self.unreserve()
        self.reserved = int(limit * self.average)
        self._budget._hold(self, self.reserved)
        return limit

    async def _wait_for_limit(self) -> int:
        """Wait (holding records: they must settle first) until a read may be made."""
        hook = self._blocked_hook
        try:
            while (limit := self.next_limit()) is None:
                if hook is not None:
                    hook(True)
                await self._wait()
            return limit
        finally:
            if hook is not None:
                hook(False)

    async def _wait(self) -> None:
        """Wait for a release that may let this account read (see ``ReadBudget._hold``)."""
        budget = self._budget
        self._event = anyio.Event()
        budget._waiting.add(self)
        if budget.share - self.held - self.reserved >= self._least(budget.share):
            budget._waiting_for_room.add(self)
        try:
            await self._event.wait()
        finally:
            budget._waiting.discard(self)
            budget._waiting_for_room.discard(self)
            self._event = None

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            if self._blocked_hook is not None and self.next_limit() is not None:
                # At once, not when the reader runs: a lane looking now must not cut its
                # batch short for a reader that is about to read.
                self._blocked_hook(False)

    def _least(self, share: int) -> float:
        """The smallest read worth making while records are held, bytes: half the share (so
        that reads are few and large, while the other half keeps the processor busy) and at
        least a floor of records; never more than the share or half the largest read (with
        a large share, reading on early keeps the processor fed)."""
        wanted = max(self._floor * self.average, share / 2)
        return min(wanted, share, self._max * self.average / 2)

    def next_limit(self) -> int | None:
        """The records the next read may ask for, or None while it must wait."""
        budget = self._budget
        share = budget.share
        grant: float = min(share - self.held - self.reserved, budget.room)
        least = self._least(share)
        if grant < least:
            if self.held or self.reserved:
                return None
            grant = least  # holds nothing: one floor read, so that no shard starves another
        return max(1, min(self._max, int(grant // self.average)))

    def unreserve(self) -> None:
        """The read returned (or failed): its reservation is given back."""
        if self.reserved:
            size, self.reserved = self.reserved, 0
            self._budget._hold(self, -size)

    def charge(self, records: list[StreamRecord], read: int) -> None:
        """Hold the bytes of the records of one read (``read``: how many raw records it
        returned, which the average is kept per: a KPL aggregate is one raw record)."""
        size = sum(map(_SIZE, records))
        if read:
            # The latest read's own average: a change of record size is followed at once.
            self.average = max(1.0, size / read)
        if records:
            self._budget._check_share(self, size / len(records))
        if not records or self._closed:
            return
        self.held += size
        self.records += len(records)
        self._budget._change(self, size, len(records))

    # -- settling ----------------------------------------------------------------------------

    def release(self, records: Iterable[StreamRecord]) -> None:
        """These records settled: their bytes are free (never below zero, so a record
        settled twice cannot free another shard's bytes)."""
        if not isinstance(records, Sequence):
            records = list(records)
        size, count = sum(map(_SIZE, records)), len(records)  # in C: once per record settled
        size, count = min(size, self.held), min(count, self.records)
        if size or count:
            self.held -= size
            self.records -= count
            self._budget._change(self, -size, -count)

    def drop(self) -> None:
        """A run of the shard ended (its records are dropped with it): whatever it still
        holds or reserved is free; the account stays open for the next run. The run's hook
        goes too: it is bound to the run's processor, whose buffers it would keep alive,
        uncounted, until the next run sets its own (a crashed run waits out a backoff)."""
        self._blocked_hook = None
        self.unreserve()
        if self.held or self.records:
            size, count = self.held, self.records
            self.held = self.records = 0
            self._budget._change(self, -size, -count)

    def close(self) -> None:
        """The shard task ended: everything is freed and its share goes to the others.
        Idempotent."""
        if self._closed:
            return
        self.drop()
        self._closed = True
        self._budget._closed()
