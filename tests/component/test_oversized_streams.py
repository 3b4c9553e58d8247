"""Component tests of records too large for any invocation, and of give-ups for the stream's
retention, on one ShardProcessor over the in-memory fakes (issue 16, item 3 and §2.2 item 5).

A small ``max_bytes`` (``BatchPolicy``'s seam) stands for Lambda's 6 MB: a record whose event
cannot fit it is never invoked, goes to the on-failure destination (or is dropped and counted),
in shard order, and the checkpoint passes it only once that is done.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import structlog

from poller.core.retry_policy import StreamRetryPolicy
from poller.streams import ShardProcessor
from poller.testing import (
    STREAM_ARN,
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingMetrics,
    RecordingTarget,
    event_positions,
    function_error,
    success,
)
from poller.types import Checkpoint, StreamRecord
from tests.component.harness import (
    LIMIT,
    SHARD,
    KeepingDestination,
    amounts,
    checkpointed,
    fed_until,
    feeding,
    make_processor,
    positions,
    puts,
    records,
    written,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: The payload limit of these tests: room for a few small records, not for one of BIG bytes.
MAX_BYTES = 3_000
BIG = b"B" * 4_000


class Destination(KeepingDestination):
    """An on-failure destination that keeps what it accepts; closed (waiting, as a destination
    that does not answer) until ``opened`` is set."""

    def __init__(self, *, opened: bool = True) -> None:
        super().__init__()
        self.opened = anyio.Event()
        if opened:
            self.opened.set()
        self.waiting = 0

    async def accept(self, record: dict[str, Any]) -> None:
        self.waiting += 1
        await self.opened.wait()
        self.waiting -= 1


def processor(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
    *,
    destination: Destination | None = None,
    retry: StreamRetryPolicy | None = None,
    retention: float | None = None,
    tumbling_window_seconds: int = 0,
) -> ShardProcessor:
    """A processor of :data:`SHARD` that cuts at :data:`MAX_BYTES`."""

    async def retention_seconds() -> float | None:
        return retention

    return make_processor(
        target=target,
        store=store,
        stopping=stopping,
        metrics=metrics,
        max_bytes=MAX_BYTES,
        destination=destination,
        retry=retry,
        retention=retention_seconds,
        tumbling_window_seconds=tumbling_window_seconds,
    )


def mixed(api: FakeStreamApi) -> list[StreamRecord]:
    """a, X (too large), b, c: one shard, one partition key, in this order."""
    return records(api, [*puts("a"), *puts("x", data=BIG), *puts("b", "c")])


# -- order and the checkpoint ---------------------------------------------------------------


async def test_an_oversized_record_is_never_invoked_and_the_records_around_it_keep_order(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    metrics = RecordingMetrics()
    a, x, b, c = chunk = mixed(api)
    proc = processor(target, store, stopping, metrics)
    with structlog.testing.capture_logs() as logs:
        async with feeding(proc, stopping) as feed:
            await feed.send(chunk)
            await wait_until(lambda: checkpointed(store) == c.sequence_number, LIMIT, "settled")
            feed.stop()
    assert [event_positions(e) for e in target.events] == [positions([a]), positions([b, c])]
    assert written(store)[-1] == Checkpoint(sequence_number=c.sequence_number)
    # Dropped and counted, never counted as dropped by age or retries (AWS's definition).
    assert amounts(metrics, "records_oversized") == [1]
    assert amounts(metrics, "records_dropped") == []
    (line,) = [e for e in logs if e["event"] == "records.oversized"]
    assert line["first_sequence"] == line["last_sequence"] == x.sequence_number
    assert line["record_bytes"] == [x.size]
    assert line["condition"] == "RecordSizeExceeded"
    assert line["invoke_count"] == 0
    assert BIG.decode() not in repr(logs)  # positions and sizes, never data


async def test_the_checkpoint_never_passes_an_oversized_record_until_its_destination_accepts(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    """The destination does not answer: the record before it is invoked and checkpointed, the
    shard waits at the oversized record (nothing behind it is invoked), then goes on."""
    metrics = RecordingMetrics()
    destination = Destination(opened=False)
    a, x, b, c = chunk = mixed(api)
    proc = processor(target, store, stopping, metrics, destination=destination)
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: destination.waiting == 1, LIMIT, "the give-up waiting")
        await wait_until(lambda: checkpointed(store) == a.sequence_number, LIMIT, "a settled")
        await anyio.sleep(0.05)  # a chance to go wrong: nothing behind X may move meanwhile
        assert [event_positions(e) for e in target.events] == [positions([a])]
        assert checkpointed(store) == a.sequence_number
        destination.opened.set()
        await wait_until(lambda: checkpointed(store) == c.sequence_number, LIMIT, "all settled")
        feed.stop()
    assert [event_positions(e) for e in target.events] == [positions([a]), positions([b, c])]
    assert written(store)[0] == Checkpoint(sequence_number=a.sequence_number)
    assert written(store)[-1] == Checkpoint(sequence_number=c.sequence_number)
    assert [s["KinesisBatchInfo"]["startSequenceNumber"] for s in destination.sent] == [
        x.sequence_number
    ]


async def test_shutdown_while_the_destination_waits_leaves_the_oversized_record_unsettled(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    metrics = RecordingMetrics()
    destination = Destination(opened=False)
    a, _, _, _ = chunk = mixed(api)
    proc = processor(target, store, stopping, metrics, destination=destination)
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: destination.waiting == 1, LIMIT, "the give-up waiting")
        feed.stop()
        destination.opened.set()  # the send in progress completes, as a real one would
    assert checkpointed(store) in (a.sequence_number, chunk[1].sequence_number)
    assert [event_positions(e) for e in target.events] == [positions([a])]


# -- the destination --------------------------------------------------------------------------


async def test_the_destination_gets_a_failure_record_saying_why(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    metrics = RecordingMetrics()
    destination = Destination()
    _, x, _, c = chunk = mixed(api)
    proc = processor(target, store, stopping, metrics, destination=destination)
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == c.sequence_number, "settled"
    )
    (sent,) = destination.sent
    assert sent["requestContext"]["condition"] == "RecordSizeExceeded"
    assert sent["requestContext"]["approximateInvokeCount"] == 0
    assert sent["requestContext"]["functionArn"] == target.function_arn
    assert "responseContext" not in sent
    info = sent["KinesisBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == x.sequence_number
    assert (info["batchSize"], info["shardId"], info["streamArn"]) == (1, SHARD, STREAM_ARN)
    assert amounts(metrics, "records_sent_to_destination") == [1]
    assert amounts(metrics, "records_oversized") == [1]
    assert amounts(metrics, "records_dropped") == []


async def test_consecutive_oversized_records_each_get_their_own_failure_record(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    metrics = RecordingMetrics()
    destination = Destination()
    chunk = records(api, [*puts("x", "y", data=BIG), *puts("a")])
    proc = processor(target, store, stopping, metrics, destination=destination)
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == chunk[2].sequence_number, "done"
    )
    started = [s["KinesisBatchInfo"]["startSequenceNumber"] for s in destination.sent]
    assert started == [chunk[0].sequence_number, chunk[1].sequence_number]
    assert [event_positions(e) for e in target.events] == [positions(chunk[2:])]
    assert amounts(metrics, "records_oversized") == [1, 1]


async def test_a_tumbling_windows_state_can_make_a_record_oversized(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    """The window's state travels with every invocation of its window: once the function's
    state has grown, a record that would fit a plain event fits no invocation of that window,
    and is given up; the record behind it is invoked with the state."""
    metrics = RecordingMetrics()
    destination = Destination()
    state = {"seen": "s" * 800}
    target = RecordingTarget(default=success({"state": state}))
    now = time.time()
    a, x, b = chunk = records(
        api,
        [
            *puts("a", arrival=now),
            *puts("x", data=b"m" * 1_500, arrival=now),
            *puts("b", arrival=now),
        ],
    )
    assert x.size < MAX_BYTES - 500  # a plain event, or a window with an empty state, holds it
    proc = processor(
        target, store, stopping, metrics, destination=destination, tumbling_window_seconds=3_600
    )
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == b.sequence_number, "settled"
    )
    assert [event_positions(e) for e in target.events] == [positions([a]), positions([b])]
    assert target.events[1]["state"] == state
    (sent,) = destination.sent
    assert sent["KinesisBatchInfo"]["startSequenceNumber"] == x.sequence_number
    assert amounts(metrics, "records_oversized") == [1]


# -- retention --------------------------------------------------------------------------------


async def test_a_give_up_for_the_streams_retention_is_not_counted_as_dropped(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    """Infinite maximum age: a record tried once and older than the retention is given up;
    AWS's DroppedEventCount leaves it out, so poller logs it apart and counts it in a series of
    its own."""
    metrics = RecordingMetrics()
    target = RecordingTarget(default=function_error())
    old = time.time() - 7_200
    chunk = records(api, puts("a", arrival=old))
    proc = processor(target, store, stopping, metrics, retention=3_600.0)
    with structlog.testing.capture_logs() as logs:
        async with feeding(proc, stopping) as feed:
            await feed.send(chunk)
            await wait_until(lambda: checkpointed(store) is not None, LIMIT, "given up")
            feed.stop()
    assert len(target.events) == 1  # tried once, then past the retention
    assert amounts(metrics, "records_dropped") == []
    assert amounts(metrics, "records_oversized") == []
    assert amounts(metrics, "records_expired_by_retention") == [1]
    (line,) = [e for e in logs if e["event"] == "records.expired_by_retention"]
    assert line["condition"] == "RecordAgeExceeded"
    assert not [e for e in logs if e["event"] == "records.dropped"]


async def test_a_give_up_for_the_maximum_age_is_counted_as_dropped(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    metrics = RecordingMetrics()
    target = RecordingTarget(default=function_error())
    chunk = records(api, puts("a", arrival=time.time() - 7_200))
    retry = StreamRetryPolicy(maximum_record_age_seconds=3_600)
    proc = processor(target, store, stopping, metrics, retry=retry, retention=86_400.0)
    with structlog.testing.capture_logs() as logs:
        async with feeding(proc, stopping) as feed:
            await feed.send(chunk)
            await wait_until(lambda: checkpointed(store) is not None, LIMIT, "given up")
            feed.stop()
    assert target.events == []  # expired before its first invocation
    assert amounts(metrics, "records_dropped") == [1]
    assert [e["event"] for e in logs if e["event"].startswith("records.")] == ["records.dropped"]
