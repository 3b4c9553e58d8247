"""The shard processor: batch, invoke, apply Lambda's error handling, settle, checkpoint.

Data flow for one shard (left: the objects; right: their module in ``poller.streams``)::

    reader --chunks--> [bounded stream]
      --> ShardProcessor                      processor: filter, track, dispatch, backpressure
      --(partition-key hash)--> Lane 0..PF-1  lanes: BatchBuilder (count, 6 MB) + batching window
      --batch--> Delivery                     delivery: Target.invoke, StreamRetryPolicy:
                                                        settle / retry / bisect / give up
            <--> TumblingWindows              windows: window, state, final invocation
      --give up--> FailureRouter              failures: on-failure destination, or dropped
      --settled records--> Checkpointer       checkpointer: Watermark -> CheckpointStore.put

The processor is the intake: the reader (which counts what it polled) hands it each chunk
(``send``, called in the reader's own task: no task and no stream between them, which a shard
would pay for in memory at thousands of shards). It tracks every record with the checkpointer
(so the checkpoint cannot pass it until it settles), settles at once the records no filter
matches, and hands the rest to the lanes by a stable hash of their partition key, a chunk at a
time while the lanes' buffers hold less than a batch each; up to ``READ_AHEAD_CHUNKS`` chunks
wait meanwhile, and the reader waits while they do (backpressure). The lanes run in the
processor's task group, one task each. It owns the collaborators and wires them with narrow
callables; none of them holds the processor:

* :mod:`~poller.streams.lanes`: buffers, batch cutting, the batching window;
* :mod:`~poller.streams.delivery`: invocations and Lambda's error handling;
* :mod:`~poller.streams.windows`: tumbling windows (``tumbling_window_seconds`` > 0);
* :mod:`~poller.streams.failures`: routing to the on-failure destination;
* :mod:`~poller.streams.checkpointer`: the watermark and the durable checkpoint;
* :mod:`~poller.streams.stopping`: the shard's stop signal and what it stops.

Shutdown (:class:`~poller.streams.stopping.StopSignal`): when ``stopping`` is set, reading stops
and waiting (for records, between retries, or between sends to a refusing destination) is
abandoned at once, while invocations in progress finish and are checkpointed. The service
cancels what still runs at the drain deadline; those records are re-delivered later.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.filtering import FilterSet
from poller.core.retry_policy import StreamRetryPolicy
from poller.core.windows import MAX_STATE_BYTES
from poller.observability.metrics import Metrics, NullMetrics
from poller.retry import INVOKE_BACKOFF, Backoff
from poller.streams.checkpointer import Checkpointer
from poller.streams.delivery import Delivery, Invoker
from poller.streams.failures import FailureRouter, FailureRouting
from poller.streams.lanes import Lane, LaneWiring
from poller.streams.stopping import Stopping, StopSignal
from poller.streams.windows import OpenWindow, TumblingWindows, WindowSettings
from poller.types import CheckpointStore, Chunk, ShardEnd, StreamRecord, Target

__all__ = ["READ_AHEAD_CHUNKS", "BatchPolicy", "ChunkSink", "FailureRouting", "ShardProcessor"]

log = structlog.get_logger("poller.streams")

#: Chunks (reads) that may wait for the lanes to have room, ahead of them.
READ_AHEAD_CHUNKS = 2


class ChunkSink(Protocol):
    """Where a reader sends its chunks (what it uses of a memory object send stream)."""

    async def send(self, chunk: Chunk) -> None:
        """Hand on one chunk (waits while the processor has no room for it)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How batches are cut, how many are in flight, and how failures are handled."""

    batch_size: int
    window_seconds: float
    max_bytes: int = MAX_PAYLOAD_BYTES
    backoff: Backoff = INVOKE_BACKOFF
    parallelization_factor: int = 1
    retry: StreamRetryPolicy = field(default_factory=StreamRetryPolicy)
    #: FilterCriteria: records no filter matches are never invoked.
    filters: FilterSet | None = None
    #: TumblingWindowInSeconds: 0 for none; else windows of this length (one lane only).
    tumbling_window_seconds: int = 0

    def __post_init__(self) -> None:
        if self.tumbling_window_seconds > 0 and self.parallelization_factor > 1:
            raise ValueError("tumbling windows need a parallelization factor of 1")


class ShardProcessor:
    """Consumes one shard's records through its lanes, and checkpoints the shard."""

    def __init__(
        self,
        *,
        mapping: str,
        shard_id: str,
        target: Target,
        store: CheckpointStore,
        policy: BatchPolicy,
        routing: FailureRouting,
        stopping: Stopping,
        metrics: Metrics | None = None,
        guard: Callable[[], None] | None = None,
        retention: Callable[[], Awaitable[float | None]] | None = None,
        released: Callable[[Sequence[StreamRecord]], None] | None = None,
    ) -> None:
        """``guard`` is called before every invocation and raises to stop the shard (lease
        self-fencing); ``retention`` gives the stream's retention, seconds: the age limit when
        the maximum record age is infinite; ``released`` is told of every record that settles
        (the read budget, :mod:`poller.streams.budget`)."""
        self.mapping = mapping
        self.shard_id = shard_id
        self.policy = policy
        self._metrics: Metrics = metrics or NullMetrics()
        self._stop = StopSignal(stopping)
        self._ended: ShardEnd | None = None
        #: Chunks read, tracked and filtered, waiting for the lanes to have room.
        self._queued: list[list[StreamRecord]] = []
        #: Made only while the reader waits for room (an idle shard then holds none).
        self._room: anyio.Event | None = None
        #: The reader waits for records held to settle (see :meth:`reads_blocked`).
        self._reads_blocked = False
        opened = OpenWindow()
        self._checkpointer = Checkpointer(
            mapping=mapping,
            shard_id=shard_id,
            store=store,
            metrics=self._metrics,
            window_state=opened.encoded,
            released=released,
        )
        invoker = Invoker(target, guard, metrics=self._metrics, mapping=mapping)
        self._windows = TumblingWindows(
            WindowSettings(
                seconds=policy.tumbling_window_seconds,
                max_bytes=policy.max_bytes,
                # Lambda's 1 MB, or less where the store cannot hold that much (a state it
                # cannot checkpoint would stall the shard).
                state_limit=min(MAX_STATE_BYTES, store.window_state_limit),
                backoff=policy.backoff,
                mapping=mapping,
                shard_id=shard_id,
                stream_arn=routing.stream_arn,
            ),
            opened=opened,
            checkpointer=self._checkpointer,
            invoke=invoker,
            metrics=self._metrics,
            stop=self._stop,
        )
        failures = FailureRouter(
            mapping=mapping,
            shard_id=shard_id,
            routing=routing,
            target=target,
            metrics=self._metrics,
            settle=self._checkpointer.settle,
            stop=self._stop,
            guard=guard,
        )
        delivery = self._delivery(policy, failures, invoker, retention)
        wiring = LaneWiring(
            batch_size=policy.batch_size,
            window_seconds=policy.window_seconds,
            tumbling_window_seconds=policy.tumbling_window_seconds,
            windows=self._windows,
            deliver=delivery.deliver,
            took_records=self._notify_room,
            shard_ended=lambda: self._ended is not None,
            stop=self._stop,
            reads_blocked=lambda: self._reads_blocked,
            give_up=failures.give_up,
        )
        self._lanes = [Lane(wiring, i) for i in range(policy.parallelization_factor)]

    def _delivery(
        self,
        policy: BatchPolicy,
        failures: FailureRouter,
        invoker: Invoker,
        retention: Callable[[], Awaitable[float | None]] | None,
    ) -> Delivery:
        retry = policy.retry
        if policy.tumbling_window_seconds > 0:
            retry = dataclasses.replace(retry, require_window_state=True)
        return Delivery(
            mapping=self.mapping,
            shard_id=self.shard_id,
            invoke=invoker,
            retry=retry,
            backoff=policy.backoff,
            windows=self._windows,
            failures=failures,
            settle=self._checkpointer.settle,
            metrics=self._metrics,
            retention=retention,
            stop=self._stop,
        )

    # -- shutdown (semantics: poller.streams.stopping) -------------------------------------

    def interrupt(self) -> None:
        """Called on shutdown, after ``stopping`` is set: abandon every wait; invocations in
        progress carry on."""
        self._stop.interrupt()

    @property
    def stopping(self) -> bool:
        """True once shutdown began."""
        return self._stop.is_set

    # -- intake -----------------------------------------------------------------------------

    async def run(self, receive: MemoryObjectReceiveStream[Chunk]) -> ShardEnd | None:
        """Process the chunks of ``receive`` until the shard ends or shutdown (see
        :meth:`run_with`)."""

        async def forward(sink: ChunkSink) -> None:
            async with receive:
                async for chunk in receive:
                    await sink.send(chunk)
                    if isinstance(chunk, ShardEnd):
                        return
                    # Not kept while the next chunk is awaited (its settled records would
                    # stay in memory, outside the read budget).
                    del chunk

        return await self.run_with(forward)

    async def run_with(self, read: Callable[[ChunkSink], Awaitable[None]]) -> ShardEnd | None:
        """Process the shard while ``read`` (the reader, in this task) sends it chunks, until
        the shard ends or shutdown. Returns the ShardEnd if reached."""
        # Restoring the window's state reads the store, retrying while it is down: a drain
        # must end that wait too, or the shard would hold its lease until the drain deadline.
        with self._stop.interruptible():
            await self._windows.restore()
        if self._stop.is_set:
            return None
        async with anyio.create_task_group() as lanes:
            for lane in self._lanes:
                lanes.start_soon(lane.run, name=f"lane {lane.index}")
            with self._stop.interruptible():
                await read(_Intake(self))
                while self._queued:  # what was read is handed on before the input closes
                    await self._wait_for_room()
            for lane in self._lanes:
                lane.close_input()
        ended = self._ended
        if ended is not None and self._checkpointer.unsettled == 0 and not self._windows.is_open:
            await self._checkpointer.end_shard()
            log.info("shard.ended", child_shards=list(ended.child_shard_ids))
            return ended
        return None

    async def _take(self, chunk: Chunk) -> None:
        """One chunk from the reader: the end of the shard, or records to track, filter and
        queue for the lanes. Waits first while ``READ_AHEAD_CHUNKS`` chunks wait already."""
        while len(self._queued) >= READ_AHEAD_CHUNKS:
            await self._wait_for_room()
        if isinstance(chunk, ShardEnd):
            self._ended = chunk
            return
        self._checkpointer.track(chunk)
        kept = await self._filter(chunk)
        if kept:
            self._queued.append(kept)
        self._feed_lanes()

    def _feed_lanes(self) -> None:
        """Backpressure: hand the lanes the next chunk only while their buffers hold less than
        a batch each."""
        limit = self.policy.batch_size * len(self._lanes)
        while self._queued and sum(len(lane.pending) for lane in self._lanes) < limit:
            self._distribute(self._queued.pop(0))
            if self._room is not None:
                self._room.set()

    async def _wait_for_room(self) -> None:
        """Until a queued chunk goes to the lanes."""
        self._room = room = anyio.Event()
        try:
            await room.wait()
        finally:
            self._room = None

    async def _filter(self, chunk: list[StreamRecord]) -> list[StreamRecord]:
        """Drop records no filter matches: settled at once, so the checkpoint moves past them
        (Lambda: "the iterator advances past them"); they are counted as filtered out, and a
        chunk that every filter let through counts 0 (Lambda: "matching events emit 0")."""
        filters = self.policy.filters
        if filters is None:
            return chunk
        kept: list[StreamRecord] = []
        dropped: list[StreamRecord] = []
        for record in chunk:
            (kept if filters.matches(record.event_record) else dropped).append(record)
        self._metrics.records_filtered(self.mapping, len(dropped))
        if dropped:
            await self._checkpointer.settle(dropped)
        return kept

    def _distribute(self, chunk: list[StreamRecord]) -> None:
        if len(self._lanes) == 1:
            self._lanes[0].extend(chunk)
            return
        count = len(self._lanes)
        by_lane: list[list[StreamRecord]] = [[] for _ in self._lanes]
        for record in chunk:
            # A stable hash (not hash()), so a key's lane does not depend on the process.
            by_lane[zlib.crc32(record.partition_key.encode()) % count].append(record)
        for lane, records in zip(self._lanes, by_lane, strict=True):
            if records:
                lane.extend(records)

    def reads_blocked(self, blocked: bool) -> None:
        """The reader waits (True) for the records it read to settle before reading on (the
        read budget), or reads again (False): while it waits, the lanes send the batches
        they hold at once rather than wait out the batching window for records that cannot
        come."""
        self._reads_blocked = blocked
        if blocked:
            for lane in self._lanes:
                lane.wake()

    def _notify_room(self) -> None:
        """A lane took records from its buffer: the next chunk may fit now."""
        self._feed_lanes()


class _Intake:
    """The processor's side of its reader: what the reader sends goes straight into
    :meth:`ShardProcessor._take`, in the reader's task (``async with`` closes nothing)."""

    __slots__ = ("_processor",)

    def __init__(self, processor: ShardProcessor) -> None:
        self._processor = processor

    async def send(self, chunk: Chunk) -> None:
        await self._processor._take(chunk)

    async def __aenter__(self) -> _Intake:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
