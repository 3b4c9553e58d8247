"""Review 13d: the reader's chunks go straight into the processor (``ShardProcessor.run_with``,
``_take``, ``_feed_lanes``, up to ``READ_AHEAD_CHUNKS`` chunks queued in front of the lanes).

Each test drives ``run_with`` with a reader of its own (a coroutine sending chunks to the
sink, as ``ShardReader.run`` does in the shard's task) and asserts one of the intake's
promises: a slow target bounds what is read, queued chunks reach the target before the shard
is reported ended, a drain never lets the checkpoint pass an unsettled record nor invokes
what was queued, and no combination of filters, lanes, windows or skewed keys deadlocks the
reader against the lanes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.core.filtering.filter_set import compile_filters
from poller.streams.processor import (
    READ_AHEAD_CHUNKS,
    BatchPolicy,
    ChunkSink,
    FailureRouting,
    ShardProcessor,
)
from poller.testing import (
    STREAM_ARN,
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingTarget,
    Slow,
    event_positions,
    success,
)
from poller.types import InvokeResult, ShardEnd, StreamRecord
from tests.component.harness import FAST_BACKOFF, LIMIT, MAPPING, SHARD, puts, records, written
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

Reader = Callable[[ChunkSink], Awaitable[None]]


def make(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    **policy: Any,
) -> ShardProcessor:
    """A processor of SHARD with millisecond retries; ``policy``: BatchPolicy fields."""
    fields: dict[str, Any] = {"batch_size": 2, "window_seconds": 0.0, "backoff": FAST_BACKOFF}
    fields.update(policy)
    return ShardProcessor(
        mapping=MAPPING,
        shard_id=SHARD,
        target=target,
        store=store,
        policy=BatchPolicy(**fields),
        routing=FailureRouting(kind="kinesis", stream_arn=STREAM_ARN, mapping_uuid="uuid"),
        stopping=stopping,
    )


def chunks_of(keys: Sequence[str], size: int) -> list[list[StreamRecord]]:
    """One page of ``keys`` (one record each), cut into chunks of ``size`` records."""
    read = records(FakeStreamApi(), puts(*keys))
    return [read[i : i + size] for i in range(0, len(read), size)]


def invoked(target: RecordingTarget) -> list[str]:
    return target.delivered()


def keys_of(target: RecordingTarget) -> list[str]:
    return [r["kinesis"]["partitionKey"] for e in target.events for r in e.get("Records", [])]


class CountingReader:
    """Sends ``chunks`` in order, then ``ShardEnd`` when ``end``; counts the sends that
    returned (the chunks the processor took)."""

    def __init__(self, chunks: list[list[StreamRecord]], *, end: bool = True) -> None:
        self.chunks, self.end = chunks, end
        self.taken = 0
        self.ended_at: int | None = None

    async def __call__(self, sink: ChunkSink) -> None:
        for chunk in self.chunks:
            await sink.send(chunk)
            self.taken += 1
        if self.end:
            await sink.send(ShardEnd(("child",)))
            self.ended_at = self.taken


async def run(processor: ShardProcessor, reader: Reader) -> ShardEnd | None:
    with anyio.fail_after(LIMIT):
        return await processor.run_with(reader)


class Held:
    """A processor of SHARD in batches of 2 whose target holds every invocation until
    ``release`` is set, and a reader of ``keys`` records (k0, k1...) in chunks of 2;
    ``policy``: more BatchPolicy fields, ``then``: the held invocations' answer."""

    def __init__(
        self, keys: int, *, end: bool = True, then: InvokeResult | None = None, **policy: Any
    ) -> None:
        self.release = anyio.Event()
        self.target = RecordingTarget(Slow(self.release, success() if then is None else then))
        self.store, self.stopping = MemoryCheckpointStore(), anyio.Event()
        self.processor = make(self.target, self.store, self.stopping, batch_size=2, **policy)
        self.reader = CountingReader(chunks_of([f"k{i}" for i in range(keys)], 2), end=end)
        #: What ``run`` returned, once it did.
        self.result: list[ShardEnd | None] = []

    def read(self) -> list[str]:
        """The positions of every record the reader has to send, in order."""
        return [r.position for c in self.reader.chunks for r in c]

    def drain(self) -> None:
        """What the runner does on shutdown: stop, and interrupt the processor's waits."""
        self.stopping.set()
        self.processor.interrupt()

    async def _run(self) -> None:
        self.result.append(await run(self.processor, self.reader))


@asynccontextmanager
async def running_held(keys: int, **options: Any) -> AsyncIterator[Held]:
    """A :class:`Held` run in the background; on exit, waits (bounded) for the run to return."""
    held = Held(keys, **options)
    async with anyio.create_task_group() as tg:
        tg.start_soon(held._run)
        yield held


async def test_slow_target_bounds_what_the_inline_reader_takes() -> None:
    """While the target holds its first batch, the reader is held too: the lanes take at most
    a batch each plus one chunk, then READ_AHEAD_CHUNKS chunks queue, and the next send waits
    (it must not return, nor the queue grow past READ_AHEAD_CHUNKS)."""
    async with running_held(40) as held:
        processor = held.processor
        await wait_until(lambda: held.target.events, LIMIT, "the first invocation")
        await wait_until(lambda: len(processor._queued) == READ_AHEAD_CHUNKS, LIMIT, "a full queue")
        taken = held.reader.taken
        for _ in range(50):  # the reader must stay where it is while the batch is in flight
            await anyio.lowlevel.checkpoint()
        assert held.reader.taken == taken
        # In flight (1 chunk) + lane buffer below a batch, plus one chunk (<= 2 chunks) +
        # the queue: nothing more was taken.
        assert taken <= 1 + 2 + READ_AHEAD_CHUNKS
        assert len(processor._queued) <= READ_AHEAD_CHUNKS
        held.release.set()
    assert held.result
    assert held.result[0] is not None
    assert invoked(held.target) == held.read()


async def test_shard_end_behind_queued_chunks_delivers_them_before_the_end() -> None:
    """ShardEnd arrives while chunks are still queued in front of the lanes: every queued
    record is invoked, in order, before SHARD_END is checkpointed and the end returned."""
    async with running_held(6) as held:
        await wait_until(lambda: held.reader.ended_at is not None, LIMIT, "ShardEnd sent")
        assert held.processor._queued, "the test needs chunks queued behind the end"
        assert not any(c.sequence_number == "SHARD_END" for c in written(held.store))
        held.release.set()
    assert held.result == [ShardEnd(("child",))]
    assert invoked(held.target) == held.read()
    assert written(held.store)[-1].sequence_number == "SHARD_END"


async def test_tumbling_window_closes_after_the_queued_records_at_shard_end() -> None:
    """With a tumbling window, the end of the shard closes the window (final invocation) only
    after the records still queued behind the end went into it."""
    async with running_held(6, then=success({"state": {}}), tumbling_window_seconds=3600) as held:
        await wait_until(lambda: held.reader.ended_at is not None, LIMIT, "ShardEnd sent")
        held.release.set()
    assert held.result == [ShardEnd(("child",))]
    events = held.target.events
    finals = [i for i, e in enumerate(events) if e.get("isFinalInvokeForWindow")]
    assert finals, "the window's final invocation"
    with_records = [i for i, e in enumerate(events) if e.get("Records")]
    assert max(with_records) < finals[0]
    assert invoked(held.target) == held.read()


async def test_drain_while_the_reader_waits_for_room_invokes_nothing_queued() -> None:
    """A drain while the reader waits for room: the batch in flight finishes and is
    checkpointed; nothing queued or buffered is invoked afterwards, and the checkpoint stops
    right after the batch in flight (never past an unsettled record)."""
    async with running_held(40, end=False) as held:
        processor = held.processor
        await wait_until(lambda: len(processor._queued) == READ_AHEAD_CHUNKS, LIMIT, "a full queue")
        held.drain()
        held.release.set()
    assert held.result == [None]
    events = held.target.events
    first = event_positions(events[0])
    assert len(events) == 1, "nothing is invoked after the drain but the batch in flight"
    assert written(held.store)[-1].sequence_number == first[-1]


async def test_drain_during_shard_end_wait_does_not_checkpoint_shard_end() -> None:
    """The drain comes while ShardEnd waits behind a full queue: the shard is not reported
    ended (the queued records never settled), so SHARD_END is not written."""
    async with running_held(6) as held:
        processor = held.processor
        await wait_until(lambda: processor._ended is not None, LIMIT, "ShardEnd taken")
        assert processor._queued
        held.drain()
        held.release.set()
    assert held.result == [None]
    assert all(c.sequence_number != "SHARD_END" for c in written(held.store))


async def test_filters_dropping_everything_never_hold_the_reader() -> None:
    """Every record filtered out: nothing queues, the reader reads to the end of the shard,
    and the checkpoint reaches SHARD_END with no invocation."""
    target = RecordingTarget()
    store, stopping = MemoryCheckpointStore(), anyio.Event()
    filters = compile_filters(['{"partitionKey": ["nothing-has-this-key"]}'], source="kinesis")
    processor = make(target, store, stopping, batch_size=2, filters=filters)
    reader = CountingReader(chunks_of([f"k{i}" for i in range(30)], 3))
    assert await run(processor, reader) == ShardEnd(("child",))
    assert target.events == []
    assert written(store)[-1].sequence_number == "SHARD_END"


@pytest.mark.parametrize("window_seconds", [0.0, 0.05])
async def test_skewed_keys_over_many_lanes_keep_order_and_never_deadlock(
    window_seconds: float,
) -> None:
    """Parallelization factor 4, every record on one key but a few, with and without a
    batching window: the one busy lane takes the whole shard's buffer, everything is
    delivered, each key in read order, and the shard ends."""
    target = RecordingTarget()
    store, stopping = MemoryCheckpointStore(), anyio.Event()
    processor = make(
        target,
        store,
        stopping,
        batch_size=3,
        parallelization_factor=4,
        window_seconds=window_seconds,
    )
    keys = ["hot" if i % 7 else f"cold{i}" for i in range(60)]
    reader = CountingReader(chunks_of(keys, 5))
    assert await run(processor, reader) == ShardEnd(("child",))
    read = [r for c in reader.chunks for r in c]
    assert sorted(invoked(target)) == sorted(r.position for r in read)
    by_key: dict[str, list[str]] = {}
    for event in target.events:
        for record in event.get("Records", []):
            kinesis = record["kinesis"]
            by_key.setdefault(kinesis["partitionKey"], []).append(kinesis["sequenceNumber"])
    for key, seen in by_key.items():
        assert seen == [r.position for r in read if r.partition_key == key], key


async def test_reader_failure_leaves_the_checkpoint_behind_unsettled_records() -> None:
    """The reader raises after its chunks were queued behind a batch in flight: the run
    fails (the shard restarts), and the checkpoint never passed a record not invoked."""
    held = Held(12)  # its reader is not run: this one reads its first 4 chunks, then fails
    chunks = held.reader.chunks

    async def reader(sink: ChunkSink) -> None:
        for chunk in chunks[:4]:
            await sink.send(chunk)
        held.release.set()
        raise RuntimeError("GetRecords went wrong")

    with pytest.raises(ExceptionGroup) as raised:
        await run(held.processor, reader)
    assert raised.group_contains(RuntimeError, match="GetRecords went wrong")
    delivered = set(invoked(held.target))
    read = [r.position for c in chunks[:4] for r in c]
    checkpoints = [str(c.sequence_number) for c in written(held.store)]
    if checkpoints:
        passed = read[: read.index(checkpoints[-1]) + 1]
        assert set(passed) <= delivered


class CheckedStore(MemoryCheckpointStore):
    """Asserts at every write that each record up to the checkpoint was invoked and
    answered (``done``), in read order ``read``."""

    def __init__(self, read: list[str], done: set[str]) -> None:
        super().__init__()
        self._read, self._done = read, done

    async def put(self, mapping: str, shard_id: str, checkpoint: Any) -> None:
        position = checkpoint.sequence_number
        upto = (
            self._read if position == "SHARD_END" else self._read[: self._read.index(position) + 1]
        )
        missing = [p for p in upto if p not in self._done]
        assert not missing, f"checkpoint {position} passes unsettled records {missing}"
        await super().put(mapping, shard_id, checkpoint)


@pytest.mark.parametrize("seed", range(16))
async def test_random_shapes_keep_order_and_never_checkpoint_past_an_unsettled_record(
    seed: int,
) -> None:
    """Random chunk sizes, batch sizes, lanes, batching windows, filters and target latency
    (in scheduling points, not time), and a drain at a random moment in half the runs:
    per-key order holds, the checkpoint never passes a record whose invocation has not
    answered, the queue never exceeds READ_AHEAD_CHUNKS, and, undrained, the shard ends with
    every kept record invoked exactly once."""
    import random

    rng = random.Random(seed)
    keys = [rng.choice(["a", "b", "c", "hot", "hot", "hot"]) for _ in range(rng.randint(1, 80))]
    sizes: list[int] = []
    while sum(sizes) < len(keys):
        sizes.append(rng.randint(1, 7))
    read_records = records(FakeStreamApi(), puts(*keys))
    chunks, start = [], 0
    for size in sizes:
        chunks.append(read_records[start : start + size])
        start += size
    chunks = [c for c in chunks if c]
    read = [r.position for r in read_records]
    done: set[str] = set()
    filtered = rng.random() < 0.3
    dropped = {r.position for r in read_records if filtered and r.partition_key == "c"}
    done |= dropped  # settled at once, never invoked

    async def answer(event: dict[str, Any]) -> Any:
        for _ in range(rng.randint(0, 30)):
            await anyio.lowlevel.checkpoint()
        done.update(event_positions(event))
        return success()

    target = RecordingTarget(answer)
    store, stopping = CheckedStore(read, done), anyio.Event()
    policy: dict[str, Any] = {
        "batch_size": rng.randint(1, 6),
        "parallelization_factor": rng.choice([1, 1, 2, 4]),
        "window_seconds": rng.choice([0.0, 0.0, 0.01]),
    }
    if filtered:
        policy["filters"] = compile_filters(
            ['{"partitionKey": [{"anything-but": ["c"]}]}'], source="kinesis"
        )
    processor = make(target, store, stopping, **policy)
    drain_after = rng.randint(0, 200) if rng.random() < 0.5 else None
    peak = 0

    async def reader(sink: ChunkSink) -> None:
        nonlocal peak
        for chunk in chunks:
            await sink.send(chunk)
            peak = max(peak, len(processor._queued))
        await sink.send(ShardEnd(()))

    async def drain() -> None:
        assert drain_after is not None
        for _ in range(drain_after):
            await anyio.lowlevel.checkpoint()
        stopping.set()
        processor.interrupt()

    result: list[ShardEnd | None] = []
    async with anyio.create_task_group() as tg:
        if drain_after is not None:
            tg.start_soon(drain)

        async def go() -> None:
            result.append(await run(processor, reader))

        tg.start_soon(go)
    assert peak <= READ_AHEAD_CHUNKS
    invoked_positions = invoked(target)
    assert len(invoked_positions) == len(set(invoked_positions)), "a record invoked twice"
    assert not set(invoked_positions) & dropped
    by_key: dict[str, list[str]] = {}
    for event in target.events:
        for record in event.get("Records", []):
            kinesis = record["kinesis"]
            by_key.setdefault(kinesis["partitionKey"], []).append(kinesis["sequenceNumber"])
    for key, seen in by_key.items():
        expected = [r.position for r in read_records if r.partition_key == key]
        assert seen == expected[: len(seen)], key
    if drain_after is None or result == [ShardEnd(())]:
        assert result == [ShardEnd(())]
        assert set(invoked_positions) | dropped == set(read)
        assert written(store)[-1].sequence_number == "SHARD_END"


@pytest.mark.parametrize("seed", range(12))
async def test_a_blocked_budget_never_deadlocks_against_queued_chunks(seed: int) -> None:
    """The reader waits, as the read budget makes it, until its unsettled records fall to a
    small budget (``reads_blocked`` True meanwhile), with a batching window of an hour and,
    in some runs, a tumbling window: the lanes send what they hold at once, the queued chunks
    reach them, and the shard ends well within the test's limit."""
    import random

    rng = random.Random(seed)
    keys = [rng.choice(["a", "b", "hot"]) for _ in range(rng.randint(5, 60))]
    read_records = records(FakeStreamApi(), puts(*keys))
    chunks, start = [], 0
    while start < len(read_records):
        size = rng.randint(1, 6)
        chunks.append(read_records[start : start + size])
        start += size
    done: set[str] = set()
    tumbling = rng.random() < 0.4

    async def answer(event: dict[str, Any]) -> Any:
        for _ in range(rng.randint(0, 10)):
            await anyio.lowlevel.checkpoint()
        done.update(event_positions(event))
        return success({"state": {}} if tumbling else None)

    target = RecordingTarget(answer)
    store, stopping = MemoryCheckpointStore(), anyio.Event()
    policy: dict[str, Any] = {"batch_size": rng.randint(2, 8), "window_seconds": 3600.0}
    if tumbling:
        policy["tumbling_window_seconds"] = 3600
    else:
        policy["parallelization_factor"] = rng.choice([1, 2, 3])
    processor = make(target, store, stopping, **policy)
    budget = rng.randint(1, 6)

    sent: list[str] = []

    def unsettled() -> int:
        return len([p for p in sent if p not in done])

    async def reader(sink: ChunkSink) -> None:
        for chunk in chunks:
            if unsettled() > budget:
                processor.reads_blocked(True)
                await wait_until(
                    lambda: unsettled() <= budget,
                    LIMIT,
                    "the reader's records to settle",
                    interval=0.001,
                )
                processor.reads_blocked(False)
            await sink.send(chunk)
            sent.extend(r.position for r in chunk)
        await sink.send(ShardEnd(()))

    assert await run(processor, reader) == ShardEnd(())
    assert sorted(invoked(target)) == sorted(r.position for r in read_records)
