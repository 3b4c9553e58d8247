"""The component tier's harness: builds the stream engine over the fakes of ``poller.testing``.

Two ways in:

* :func:`make_processor` and :func:`feeding` drive one ``ShardProcessor`` through a memory
  object stream of chunks, as the reader would, with no reader, runner or clock but its own
  (:func:`fed_until`: one chunk, until a condition holds; :func:`fed_to_the_end`: one chunk,
  then the shard's end);
* :func:`make_runner` and :func:`running` run a ``StreamMappingRunner`` over a
  ``FakeStreamApi``. Every runner of this tier is built by :func:`make_runner` alone, so a
  change of the runner's constructor is one edit here;
* :func:`make_supervisor` builds the runner's ``ShardSupervisor`` alone, for tests that start
  and stop one shard's task by hand (:class:`RecordingOwnership` records its releases).

Waits are bounded (:func:`tests.support.waiting.wait_until`, ``anyio.fail_after``): a
regression fails by name in seconds, never hangs the tier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from poller.config import KinesisMapping, parse_settings
from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.filtering import FilterSet
from poller.core.retry_policy import StreamRetryPolicy
from poller.destinations import FailureDestination
from poller.observability.metrics import Metrics, NullMetrics, RecordingMetrics
from poller.ports import StartPosition
from poller.retry import Backoff
from poller.streams import BatchPolicy, FailureRouting, ShardProcessor, StreamMappingRunner
from poller.streams.budget import ReadBudget
from poller.streams.ownership import ShardOwnership, SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import STREAM_ARN, FakeStreamApi, MemoryCheckpointStore, Put
from poller.types import Checkpoint, CheckpointStore, Chunk, ShardEnd, StreamRecord, Target
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

MAPPING = "orders"
SHARD = "shardId-000000000000"
#: Retries in milliseconds: the component tier never waits for production backoffs.
FAST_BACKOFF = Backoff(initial=0.005, maximum=0.02)
#: The longest any single wait of this tier may take before the test fails.
LIMIT = 5.0


# -- records ----------------------------------------------------------------------------------


def records(api: FakeStreamApi, puts: Sequence[Put], shard_id: str = SHARD) -> list[StreamRecord]:
    """``puts`` as a page of ``shard_id`` (added if new), converted by the Kinesis converter."""
    if shard_id not in api.shard_ids:
        api.add_shard(shard_id)
    raws = api.add_page(shard_id, puts)
    return api.converter(shard_id, StartPosition("TRIM_HORIZON"))(raws)


def puts(*keys: str, data: bytes = b"x", arrival: float | None = None) -> list[Put]:
    """One record per key, in order."""
    return [Put(key, data, arrival) for key in keys]


def positions(records: Sequence[StreamRecord]) -> list[str]:
    return [r.position for r in records]


def written(store: MemoryCheckpointStore, shard_id: str = SHARD) -> list[Checkpoint]:
    """Every checkpoint written for ``shard_id``, in order."""
    return [c for m, s, c in store.writes if (m, s) == (MAPPING, shard_id)]


# -- the on-failure destination ----------------------------------------------------------------


class KeepingDestination:
    """An on-failure destination that keeps what it accepts in :attr:`sent`; subclasses make
    :meth:`accept` refuse (raise) or wait."""

    arn = "arn:aws:sqs:us-east-1:123456789012:failures"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def accept(self, record: dict[str, Any]) -> None:
        """Called for each send before the record is kept."""

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        await self.accept(record)
        self.sent.append(record)


# -- one shard processor ----------------------------------------------------------------------


def make_processor(
    *,
    target: Target,
    store: CheckpointStore,
    stopping: anyio.Event,
    batch_size: int = 10,
    parallelization_factor: int = 1,
    tumbling_window_seconds: int = 0,
    retry: StreamRetryPolicy | None = None,
    guard: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    filters: FilterSet | None = None,
    destination: FailureDestination | None = None,
    retention: Callable[[], Awaitable[float | None]] | None = None,
) -> ShardProcessor:
    """A processor of :data:`SHARD` with a zero batching window and millisecond retries;
    ``max_bytes`` stands for Lambda's payload limit, ``destination`` is the on-failure one."""
    policy = BatchPolicy(
        batch_size=batch_size,
        window_seconds=0.0,
        max_bytes=max_bytes,
        backoff=FAST_BACKOFF,
        parallelization_factor=parallelization_factor,
        retry=retry or StreamRetryPolicy(),
        filters=filters,
        tumbling_window_seconds=tumbling_window_seconds,
    )
    return ShardProcessor(
        mapping=MAPPING,
        shard_id=SHARD,
        target=target,
        store=store,
        policy=policy,
        routing=FailureRouting(
            kind="kinesis", stream_arn=STREAM_ARN, mapping_uuid="uuid", destination=destination
        ),
        stopping=stopping,
        metrics=metrics,
        guard=guard,
        retention=retention,
    )


def checkpointed(store: MemoryCheckpointStore) -> str | None:
    """The sequence number :data:`SHARD` is checkpointed at, if any."""
    checkpoint = store.checkpoints.get((MAPPING, SHARD))
    return None if checkpoint is None else checkpoint.sequence_number


def amounts(metrics: RecordingMetrics, hook: str) -> list[int]:
    """The counts of every call of ``hook`` for :data:`MAPPING`, in order."""
    return [call["count"] for call in metrics.calls_to(hook, MAPPING)]


class Feed:
    """The reader's side of a processor under test: send chunks, end the shard, stop."""

    def __init__(
        self, processor: ShardProcessor, send: MemoryObjectSendStream[Chunk], stopping: anyio.Event
    ) -> None:
        self.processor = processor
        self._send = send
        self._stopping = stopping
        self.done = anyio.Event()
        self.result: ShardEnd | None = None
        self.error: Exception | None = None

    async def send(self, chunk: list[StreamRecord]) -> None:
        with anyio.fail_after(LIMIT):
            await self._send.send(chunk)

    async def end(self, children: tuple[str, ...] = ()) -> None:
        """The reader reached the end of the closed shard."""
        with anyio.fail_after(LIMIT):
            await self._send.send(ShardEnd(children))

    def stop(self) -> None:
        """Shutdown begins (the runner's ``stop`` event)."""
        self._stopping.set()

    async def finished(self) -> None:
        """Wait, bounded, for the processor to return."""
        with anyio.fail_after(LIMIT):
            await self.done.wait()

    async def _run(self, receive: MemoryObjectReceiveStream[Chunk]) -> None:
        try:
            self.result = await self.processor.run(receive)
        except Exception as exc:  # the test inspects it (LeaseLost in a group...)
            self.error = exc
        finally:
            self.done.set()

    async def _stop_intake(self) -> None:
        """What the runner does on shutdown: stop reading, interrupt the processor's waits."""
        await self._stopping.wait()
        await self._send.aclose()
        self.processor.interrupt()


@asynccontextmanager
async def feeding(processor: ShardProcessor, stopping: anyio.Event) -> AsyncIterator[Feed]:
    """Run ``processor`` in the background; on exit, wait (bounded) for it to return."""
    send, receive = anyio.create_memory_object_stream[Chunk](2)
    feed = Feed(processor, send, stopping)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed._run, receive)
        tg.start_soon(feed._stop_intake)
        yield feed
        await feed.finished()
        tg.cancel_scope.cancel()


async def fed_until(
    processor: ShardProcessor,
    stopping: anyio.Event,
    chunk: list[StreamRecord],
    condition: Callable[[], Any],
    what: str,
) -> Feed:
    """Feed ``chunk`` to ``processor``, wait (bounded) until ``condition`` holds, then stop
    it and wait for it to return; the feed, for what it saw."""
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await wait_until(condition, LIMIT, what)
        feed.stop()
    return feed


async def fed_to_the_end(
    processor: ShardProcessor, stopping: anyio.Event, chunk: list[StreamRecord]
) -> Feed:
    """Feed ``chunk`` to ``processor`` and end the (closed) shard; the feed, once it returned."""
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.end()
    return feed


# -- the mapping runner -----------------------------------------------------------------------


def mapping_config(**fields: Any) -> KinesisMapping:
    """A Kinesis mapping read from TRIM_HORIZON; ``fields`` override its settings."""
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/fake"
    settings = parse_settings(
        service_config(
            "http://127.0.0.1:1",
            stream_mapping(MAPPING, arn, "tests.support.recorder:record", **fields),
            checkpoints={"path": "unused.db"},
        )
    )
    mapping = settings.mappings[0]
    assert isinstance(mapping, KinesisMapping)
    return mapping


def make_runner(
    mapping: KinesisMapping,
    *,
    api: FakeStreamApi,
    target: Target,
    store: CheckpointStore,
    stopping: anyio.Event,
    metrics: Metrics | None = None,
    budget: ReadBudget | None = None,
) -> StreamMappingRunner:
    """The one place this tier builds a runner (solo ownership: no leases); ``budget``: a
    read budget its shards read within."""
    return StreamMappingRunner(
        mapping,
        api=api,
        kind="kinesis",
        target=target,
        ownership=SoloOwnership(store, mapping.name),
        stopping=stopping,
        destination=None,
        metrics=metrics,
        budget=budget,
    )


@asynccontextmanager
async def running(runner: StreamMappingRunner, stopping: anyio.Event) -> AsyncIterator[None]:
    """Run ``runner`` until the block ends; then stop it and wait (bounded) for its drain."""
    drained = anyio.Event()

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await runner.run(task_status=task_status)
        finally:
            drained.set()

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(LIMIT):
            await tg.start(run)
        try:
            yield
        finally:
            stopping.set()
            with anyio.fail_after(LIMIT):
                await drained.wait()


# -- the shard supervisor ---------------------------------------------------------------------


class RecordingOwnership(SoloOwnership):
    """Solo ownership of :data:`MAPPING` that records the shards released: a drained shard
    is released, a lost one is not."""

    def __init__(self, store: CheckpointStore) -> None:
        super().__init__(store, MAPPING)
        self.released: list[str] = []

    async def release(self, shard_id: str) -> None:
        self.released.append(shard_id)


def make_supervisor(
    *,
    api: FakeStreamApi,
    target: Target,
    ownership: ShardOwnership,
    stopping: anyio.Event,
) -> ShardSupervisor:
    """The one place this tier builds a shard supervisor: batches of up to 10 records sent
    at once (no batching window), no metrics, no failure destination."""
    return ShardSupervisor(
        mapping_config(batch_size=10, maximum_batching_window_in_seconds=0),
        api=api,
        kind="kinesis",
        target=target,
        ownership=ownership,
        stopping=stopping,
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=lambda: None,
    )
