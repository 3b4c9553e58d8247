"""Lanes: where a shard's records wait and are cut into batches, one batch in flight per lane.

Data flow::

    ShardProcessor --records (by partition-key hash)--> Lane.extend -> buffer
        Lane: BatchBuilder (count, 6 MB) + batching window -> batch --> deliver(batch, lane)
        Lane: a record no invocation can carry --GiveUp(RecordSizeExceeded)--> give_up
        Lane --took records--> the processor reads on (backpressure)

With ``parallelization_factor`` 1 there is one lane: one batch in flight per shard. With more,
records go to lanes by a stable hash of their partition key, so the order of each key holds
while up to ten batches of a shard are in flight. Batches are cut at ``batch_size``, when the
next record would push the event past 6 MB, or when the batching window (from the batch's
first record) ends. With a window of 0 the batch holds what has been read so far, as Lambda
does. With a tumbling window, a batch also stops at the window's boundary, is not held past
the time the window closes, and an idle lane closes the window when it is due.

A record too large for any invocation (over 6 MB as an event, a tumbling window's fields and
state included) is never invoked: the builder sets it aside, and the lane gives it up at once
(condition ``RecordSizeExceeded``) before it delivers any record behind it, so the shard's
order holds and the checkpoint passes the record only once it is settled.

A lane is handed what it needs (:class:`LaneWiring`: ``deliver``, a view of the tumbling
window, the stop signal), never the processor.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from poller.core.batching import BatchBuilder
from poller.core.retry_policy import GiveUp, oversized
from poller.core.windows import Window, window_of
from poller.streams.stopping import StopSignal
from poller.types import StreamRecord


class WindowView(Protocol):
    """What a lane asks of the shard's tumbling window (``poller.streams.windows``)."""

    @property
    def is_open(self) -> bool:
        """Whether a window is open."""
        ...

    def due(self) -> bool:
        """Whether the open window is due to close on an idle shard."""
        ...

    def close_deadline(self, window: Window | None = None) -> float | None:
        """When (monotonic) ``window`` (by default the open one) should close if idle."""
        ...

    def batch_builder(
        self, first: StreamRecord | None, max_records: int
    ) -> BatchBuilder[StreamRecord]:
        """A builder sized for a batch starting at ``first``."""
        ...

    async def close(self) -> bool:
        """The open window's final invocation; False when shutdown abandoned it."""
        ...


@dataclass(frozen=True, slots=True)
class LaneWiring:
    """What every lane of a shard is handed: its batching limits and narrow callables."""

    batch_size: int
    #: The batching window, seconds (MaximumBatchingWindowInSeconds).
    window_seconds: float
    #: TumblingWindowInSeconds; 0 for none.
    tumbling_window_seconds: int
    windows: WindowView
    #: Carries a batch until all of it is settled; False when shutdown abandoned it.
    deliver: Callable[[Sequence[StreamRecord], int], Awaitable[bool]]
    #: The lane took records from its buffer (the processor may read on).
    took_records: Callable[[], None]
    #: Whether the reader reached the end of a closed shard.
    shard_ended: Callable[[], bool]
    stop: StopSignal
    #: Whether the reader waits for records held to settle (the read budget): a batch is
    #: then sent as it is, since no more records come until one is.
    reads_blocked: Callable[[], bool] = lambda: False
    #: Routes a give-up (the failure router); False when shutdown abandoned it. Without one,
    #: a record too large for any invocation is delivered alone, to fail as the target says.
    give_up: Callable[[GiveUp], Awaitable[bool]] | None = None


class Lane:
    """One partition-key lane: its own buffer, one batch in flight."""

    __slots__ = ("_input_closed", "_wake", "_wiring", "index", "pending")

    def __init__(self, wiring: LaneWiring, index: int) -> None:
        self._wiring = wiring
        self.index = index
        self.pending: deque[StreamRecord] = deque()
        #: The scope of the lane's wait for records, while it waits: cancelled to wake it
        #: (a scope it needs anyway, for the timeout and the stop; an event besides would
        #: cost every idle shard another kilobyte).
        self._wake: anyio.CancelScope | None = None
        self._input_closed = False

    def extend(self, records: list[StreamRecord]) -> None:
        """Records for this lane, in read order."""
        self.pending.extend(records)
        self.wake()

    def wake(self) -> None:
        """Look at the batch again (records came, or the reader stopped reading: send what
        is buffered)."""
        if self._wake is not None:
            self._wake.cancel()

    def close_input(self) -> None:
        """No more records will come: flush what is buffered without waiting for the window."""
        self._input_closed = True
        self.wake()

    async def run(self) -> None:
        """Cut and deliver batches until the input closes and is drained, or shutdown."""
        wiring = self._wiring
        stop, windows = wiring.stop, wiring.windows
        while not stop.is_set:
            batch = await self._next_batch()
            if batch:
                delivered = await wiring.deliver(batch, self.index)
                # Settled now: not kept while the next batch is awaited (its records would
                # stay in memory outside the read budget).
                del batch
                if not delivered:
                    return
            elif stop.is_set:
                return
            elif windows.is_open and (
                windows.due() or (self._input_closed and wiring.shard_ended())
            ):
                # An idle shard past its window's end, or the end of the shard (resharding
                # closes the window before SHARD_END is checkpointed).
                if not await windows.close():
                    return
            elif self._input_closed:
                return

    async def _next_batch(self) -> list[StreamRecord]:
        """The next batch; empty when interrupted, when the input closed with nothing
        buffered, or when the open tumbling window is due to close on an idle shard."""
        wiring = self._wiring
        windows = wiring.windows
        builder = windows.batch_builder(None, wiring.batch_size)
        deadline: float | None = None
        wait_until: float | None
        while True:
            taken = await self._take(builder)
            if taken is None:
                return []
            builder, at_boundary = taken
            if self.pending and not (builder.is_full or at_boundary):
                continue  # ``took_records`` handed this lane more records just now
            if (
                builder.is_full
                or at_boundary
                or self._input_closed
                or (builder.records and wiring.reads_blocked())
            ):
                return builder.records
            if builder.records:
                if deadline is None:
                    deadline = self._batch_deadline(builder.records[0])
                if time.monotonic() >= deadline:
                    return builder.records
                wait_until = deadline
            else:
                if windows.due():
                    return []
                wait_until = windows.close_deadline()  # None: no open window
            if not await self._wait_for_records(wait_until):
                return []

    async def _take(
        self, builder: BatchBuilder[StreamRecord]
    ) -> tuple[BatchBuilder[StreamRecord], bool] | None:
        """Move buffered records into the batch, and give up at once those no invocation can
        carry, before any record behind them is delivered: the shard's order holds.

        Returns the builder (a new one when the batch's first record became known: its window
        sizes the event) and whether the batch stopped at a window's boundary (:meth:`_fill`);
        None when shutdown came during a give-up (the records not given up stay unsettled, to
        be read again after a restart).
        """
        wiring = self._wiring
        if not builder.records and self.pending:
            builder = wiring.windows.batch_builder(self.pending[0], wiring.batch_size)
        at_boundary = self._fill(builder)
        wiring.took_records()
        if builder.oversized:
            for record in builder.oversized:
                if not await self._give_up_oversized(record):
                    return None
            builder.oversized.clear()
            if wiring.stop.is_set:
                # Shutdown came while a give-up waited for its destination: the records behind
                # it are not invoked now (they stay unsettled, to be read again).
                return None
        return builder, at_boundary

    async def _give_up_oversized(self, record: StreamRecord) -> bool:
        """One record too large for any invocation: its own failure record (or, with no
        failure routing wired, delivered alone). False when shutdown abandoned it."""
        wiring = self._wiring
        if wiring.give_up is None:
            return await wiring.deliver([record], self.index)
        return await wiring.give_up(oversized(record))

    def _batch_deadline(self, first: StreamRecord) -> float:
        """When (monotonic) a batch starting at ``first`` is sent, full or not: the end of the
        batching window, and never past the time the record's tumbling window would close."""
        wiring = self._wiring
        deadline = time.monotonic() + wiring.window_seconds
        if wiring.tumbling_window_seconds > 0:
            window = window_of(first, wiring.tumbling_window_seconds)
            deadline = min(deadline, wiring.windows.close_deadline(window) or 0)
        return deadline

    def _fill(self, builder: BatchBuilder[StreamRecord]) -> bool:
        """Move buffered records into the batch; True when the batch stopped at a tumbling
        window's boundary (the next record belongs to another window)."""
        seconds = self._wiring.tumbling_window_seconds
        if seconds <= 0:
            builder.fill_from(self.pending)
            return False
        pending = self.pending
        while pending and not builder.is_full:
            first = builder.records[0] if builder.records else pending[0]
            if window_of(pending[0], seconds) != window_of(first, seconds):
                return True
            if not builder.try_add(pending[0]):
                return False
            pending.popleft()
            if builder.oversized and not builder.records:
                # Set aside, to be given up first; the next record may be in another window,
                # whose state sizes its event: it starts a builder of its own.
                return False
        return False

    async def _wait_for_records(self, deadline: float | None) -> bool:
        """Until records come (or a wake), or ``deadline``; False when the stop ended it."""
        stop = self._wiring.stop
        timeout = math.inf if deadline is None else max(0.0, deadline - time.monotonic())
        with stop.interruptible() as scope:
            self._wake = scope
            try:
                await anyio.sleep(timeout)
            finally:
                self._wake = None
        return not stop.is_set
