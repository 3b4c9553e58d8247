"""Hostile review of issue 16, item 3 (records too large for any invocation) on the stream
engine: one ShardProcessor over the in-memory fakes, ``max_bytes`` standing for Lambda's 6 MB.

The invariant every test here checks: no event the target receives is larger than
``max_bytes`` (such an invocation can only fail with ``RequestTooLargeException`` and be
retried until the record expires), and every record is settled exactly once, in shard order.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
import structlog

from poller.core.retry_policy import StreamRetryPolicy
from poller.errors import DestinationError, LeaseLost
from poller.streams import ShardProcessor
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingMetrics,
    RecordingTarget,
    event_positions,
    function_error,
    kpl_aggregate,
    partial_failure,
    success,
)
from poller.types import InvokeResult
from tests.component.harness import (
    LIMIT,
    MAPPING,
    SHARD,
    KeepingDestination,
    checkpointed,
    fed_until,
    feeding,
    make_processor,
    puts,
    records,
    written,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

MAX_BYTES = 3_000


def event_bytes(event: dict[str, Any]) -> int:
    """The size of the compact JSON event, as the batch builder measures it."""
    return len(json.dumps(event, separators=(",", ":")).encode())


def processor(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
    *,
    retry: StreamRetryPolicy | None = None,
    tumbling_window_seconds: int = 0,
    parallelization_factor: int = 1,
    destination: KeepingDestination | None = None,
    guard: Lease | None = None,
) -> ShardProcessor:
    """A processor of :data:`SHARD` that cuts at :data:`MAX_BYTES`."""
    return make_processor(
        target=target,
        store=store,
        stopping=stopping,
        metrics=metrics,
        max_bytes=MAX_BYTES,
        retry=retry,
        tumbling_window_seconds=tumbling_window_seconds,
        parallelization_factor=parallelization_factor,
        destination=destination,
        guard=guard,
    )


async def test_a_windowed_retry_after_the_state_grew_never_sends_an_event_over_the_limit(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """[a, x] fit one windowed event with an empty state. The function settles ``a``, lists
    ``x`` in batchItemFailures and returns a larger state: ``x`` alone plus that state no
    longer fits any invocation of the window. ``TumblingWindows.fit`` only re-cuts segments
    of two or more records, so ``x`` is invoked with an event over the limit, again and again
    (Lambda would answer RequestTooLargeException each time) until it expires. It should be
    given up as ``RecordSizeExceeded`` like any record that no invocation can carry."""
    metrics = RecordingMetrics()
    state = {"seen": "s" * 1_500}
    now = time.time()
    a, x = chunk = records(api, [*puts("a", arrival=now), *puts("x", data=b"m" * 900, arrival=now)])
    target = RecordingTarget(default=success({"state": state}))
    target.script(partial_failure(x.sequence_number, state=state))
    retry = StreamRetryPolicy(maximum_retry_attempts=2, report_batch_item_failures=True)
    proc = processor(target, store, stopping, metrics, retry=retry, tumbling_window_seconds=3_600)
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == x.sequence_number, "settled"
    )
    assert event_positions(target.events[0]) == [a.position, x.position]
    assert event_bytes(target.events[0]) <= MAX_BYTES  # the first cut was right
    over = [event_bytes(e) for e in target.events if event_bytes(e) > MAX_BYTES]
    assert over == [], f"events over {MAX_BYTES} bytes were invoked: {over}"
    assert [c["count"] for c in metrics.calls_to("records_oversized", MAPPING)] == [1]


async def test_an_oversized_user_record_inside_a_kpl_aggregate_is_given_up_alone_in_order(
    store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """A KPL aggregate whose middle user record is too large for any invocation (its siblings
    are small): the siblings are invoked, before and after it, the large one is given up and
    counted once, and the checkpoint ends past the whole aggregate."""
    api = FakeStreamApi(deaggregate=True)
    metrics = RecordingMetrics()
    target = RecordingTarget()
    aggregate = kpl_aggregate([("k", b"small-0"), ("k", b"L" * 2_500), ("k", b"small-2")])
    chunk = records(api, [aggregate, *puts("after")])
    first, big, last, after = chunk
    assert big.size > MAX_BYTES > first.size + last.size + after.size
    proc = processor(target, store, stopping, metrics, retry=StreamRetryPolicy())
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == after.sequence_number, "all"
    )
    invoked = [p for e in target.events for p in event_positions(e)]
    assert invoked == [first.position, last.position, after.position]
    assert all(event_bytes(e) <= MAX_BYTES for e in target.events)
    assert [c["count"] for c in metrics.calls_to("records_oversized", MAPPING)] == [1]
    invoked_counts = [c["count"] for c in metrics.calls_to("records_invoked", MAPPING)]
    assert sum(invoked_counts) == 3


class Lease:
    """A guard as the lease coordinator gives one: raises LeaseLost once the lease is gone."""

    def __init__(self) -> None:
        self.lost = False

    def __call__(self) -> None:
        if self.lost:
            raise LeaseLost(f"lease of {SHARD} taken by replica-b")


async def test_a_replica_that_lost_its_lease_does_not_give_up_the_oversized_record(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """[a, X (oversized), b]; the lease passes to another replica while ``a`` is invoked. The
    shard must stop before its next action on the stream's records, as it does before an
    invocation: the new owner gives X up. Here the old owner still sends X's failure record
    (so the destination gets it twice, once from each replica) and settles it, because the
    oversized give-up never calls the guard."""
    lease = Lease()
    destination = KeepingDestination()

    def lose_the_lease(event: dict[str, Any]) -> InvokeResult:
        lease.lost = True
        return success()

    target = RecordingTarget()
    target.script(lose_the_lease)
    a, _, _ = chunk = records(api, [*puts("a"), *puts("x", data=b"B" * 4_000), *puts("b")])
    proc = processor(
        target, store, stopping, RecordingMetrics(), destination=destination, guard=lease
    )
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await feed.finished()
    assert isinstance(feed.error, BaseExceptionGroup)
    assert feed.error.subgroup(lambda e: isinstance(e, LeaseLost)) is not None
    assert [event_positions(e) for e in target.events] == [[a.position]]
    assert destination.sent == []
    assert checkpointed(store) == a.sequence_number


async def test_an_oversized_record_between_bisected_failures_is_given_up_once_in_order(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """[a, b, X (oversized), c, d]; the function fails every batch holding ``b`` or ``d``;
    bisection on, one retry, no destination. ``a`` and ``b`` form the first batch (X cuts it),
    are bisected until ``b`` is dropped; X is given up after them and before any invocation
    of ``c``; ``c`` and ``d`` bisect in turn. Each record is settled once, in shard order,
    and no event counts as failed without having counted as invoked."""
    metrics = RecordingMetrics()
    _, b, x, c, d = chunk = records(
        api, [*puts("a", "b"), *puts("x", data=b"B" * 4_000), *puts("c", "d")]
    )
    failing = {b.position, d.position}

    def answer(event: dict[str, Any]) -> InvokeResult:
        return function_error() if failing & set(event_positions(event)) else success()

    target = RecordingTarget(default=answer)
    retry = StreamRetryPolicy(maximum_retry_attempts=1, bisect_on_function_error=True)
    proc = processor(target, store, stopping, metrics, retry=retry)
    with structlog.testing.capture_logs() as logs:
        async with feeding(proc, stopping) as feed:
            await feed.send(chunk)
            await wait_until(lambda: checkpointed(store) == d.sequence_number, LIMIT, "settled")
            feed.stop()
    assert all(x.position not in event_positions(e) for e in target.events)
    # The story in log order: b dropped, then X given up, then c's first invocation.
    story = [
        (e["event"], e["first_sequence"])
        for e in logs
        if e["event"] in ("records.dropped", "records.oversized", "batch.failed", "batch.processed")
    ]
    b_dropped = story.index(("records.dropped", b.sequence_number))
    x_given_up = story.index(("records.oversized", x.sequence_number))
    c_first = min(
        i
        for i, (event, first) in enumerate(story)
        if event.startswith("batch.") and first in (c.sequence_number,)
    )
    assert b_dropped < x_given_up < c_first
    assert [e["first_sequence"] for e in logs if e["event"] == "records.oversized"] == [
        x.sequence_number
    ]
    invoked = sum(call["count"] for call in metrics.calls_to("records_invoked", MAPPING))
    failed = sum(call["count"] for call in metrics.calls_to("records_failed_invoke", MAPPING))
    assert invoked == sum(len(e["Records"]) for e in target.events)
    assert failed <= invoked
    assert sum(call["count"] for call in metrics.calls_to("records_dropped", MAPPING)) == 2
    assert [call["count"] for call in metrics.calls_to("records_oversized", MAPPING)] == [1]


async def test_with_two_lanes_the_checkpoint_waits_for_an_earlier_record_in_flight(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """Parallelization 2: ``d`` (lane 0) is in flight when X (lane 1, oversized) is given up
    and ``a`` (lane 1) is invoked and settled. The checkpoint must not pass ``d`` until its
    invocation ends; then it moves to ``a``."""
    metrics, release = RecordingMetrics(), anyio.Event()
    d, x, a = chunk = records(api, [*puts("d"), *puts("x", data=b"B" * 4_000), *puts("a")])

    async def answer(event: dict[str, Any]) -> InvokeResult:
        if d.position in event_positions(event):
            await release.wait()  # d's invocation stays in flight until released
        return success()

    target = RecordingTarget(default=answer)
    proc = processor(
        target, store, stopping, metrics, retry=StreamRetryPolicy(), parallelization_factor=2
    )
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(
            lambda: (
                [c["count"] for c in metrics.calls_to("records_oversized", MAPPING)] == [1]
                and any(a.position in event_positions(e) for e in target.events)
            ),
            LIMIT,
            "X given up and a invoked",
        )
        assert [d.position] in [event_positions(e) for e in target.events]
        assert target.in_flight == 1
        assert written(store) == []  # nothing passes d while it is in flight
        release.set()
        await wait_until(lambda: checkpointed(store) == a.sequence_number, LIMIT, "all")
        feed.stop()
    assert all(x.position not in event_positions(e) for e in target.events)


async def test_a_windowed_retry_of_several_records_gives_up_a_head_that_no_longer_fits(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """[a, x, y] in one windowed event with an empty state; the answer settles ``a``, lists
    ``x`` and returns a larger state. ``TumblingWindows.fit`` re-cuts [x, y] with a builder
    that sets ``x`` aside as oversized and takes ``y``, then keeps ``records[:1]``: ``x``,
    the record that no longer fits, is invoked alone over the limit. It should be given up
    (``RecordSizeExceeded``) and ``y`` invoked with the state."""
    metrics = RecordingMetrics()
    state = {"seen": "s" * 1_500}
    now = time.time()
    a, x, y = chunk = records(
        api,
        [
            *puts("a", arrival=now),
            *puts("x", data=b"m" * 900, arrival=now),
            *puts("y", arrival=now),
        ],
    )
    target = RecordingTarget(default=success({"state": state}))
    target.script(partial_failure(x.sequence_number, state=state))
    retry = StreamRetryPolicy(maximum_retry_attempts=2, report_batch_item_failures=True)
    proc = processor(target, store, stopping, metrics, retry=retry, tumbling_window_seconds=3_600)
    await fed_until(
        proc, stopping, chunk, lambda: checkpointed(store) == y.sequence_number, "settled"
    )
    assert event_positions(target.events[0]) == [a.position, x.position, y.position]
    over = [event_bytes(e) for e in target.events if event_bytes(e) > MAX_BYTES]
    assert over == [], f"events over {MAX_BYTES} bytes were invoked: {over}"
    assert [c["count"] for c in metrics.calls_to("records_oversized", MAPPING)] == [1]


class OutageDestination(KeepingDestination):
    """Refuses every send (a destination outage) until ``up``; counts the refusals."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.refusals = 0

    async def accept(self, record: dict[str, Any]) -> None:
        if not self.up:
            self.refusals += 1
            raise DestinationError("SendMessage: ServiceUnavailable")


async def test_a_lease_lost_while_the_destination_is_down_stops_the_oversized_give_up(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """X (oversized) waits for a destination that is down; meanwhile the lease passes to
    another replica, which gives X up itself. When the destination comes back, this replica
    must not send X's failure record too (nor settle it): its next send is fenced, as its next
    invocation would be. Here the send loop never checks the lease: the record goes twice."""
    lease, destination = Lease(), OutageDestination()
    (x,) = chunk = records(api, puts("x", data=b"B" * 4_000))
    proc = processor(
        RecordingTarget(), store, stopping, RecordingMetrics(), destination=destination, guard=lease
    )
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: destination.refusals >= 1, LIMIT, "the destination refusing")
        lease.lost = True
        destination.up = True
        with anyio.move_on_after(LIMIT):
            await feed.finished()
        feed.stop()
    assert destination.sent == [], "a replica without the lease sent the failure record"
    assert checkpointed(store) != x.sequence_number
