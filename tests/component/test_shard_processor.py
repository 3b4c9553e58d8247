"""Component tests of one ShardProcessor: chunks in through a memory stream, events out to a
recording target, checkpoints into the memory store. Each test runs in milliseconds.

Covers the engine behaviours of issue 12 at the processor's seam: drain, lease fencing, KPL
sub-sequence checkpoints, tumbling windows, parallelization-factor lanes, and retries,
bisection and partial batch responses.
"""

from __future__ import annotations

import base64
import math
import time
import zlib
from typing import Any

import anyio
import pytest

from poller.core.retry_policy import StreamRetryPolicy
from poller.errors import LeaseLost
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingMetrics,
    RecordingTarget,
    Slow,
    event_positions,
    function_error,
    kpl_aggregate,
    partial_failure,
    success,
)
from poller.types import SHARD_END, Checkpoint, InvokeResult, ShardEnd
from tests.component.harness import (
    LIMIT,
    feeding,
    make_processor,
    positions,
    puts,
    records,
    written,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


# -- drain ------------------------------------------------------------------------------------


async def test_drain_finishes_the_batch_in_flight_checkpoints_it_and_invokes_nothing_more(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    release = anyio.Event()
    target.script(Slow(release))
    chunk = records(api, puts("a", "b", "c", "d", "e", "f"))
    processor = make_processor(target=target, store=store, stopping=stopping, batch_size=2)
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: target.in_flight == 1, LIMIT, "the first batch in flight")
        feed.stop()
        release.set()
        await feed.finished()
    assert feed.error is None
    assert feed.result is None
    assert [event_positions(e) for e in target.events] == [positions(chunk[:2])]
    assert written(store) == [Checkpoint(sequence_number=chunk[1].sequence_number)]


async def test_drain_abandons_a_retry_wait_without_checkpointing_the_failed_batch(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    target = RecordingTarget(default=function_error())
    chunk = records(api, puts("a", "b"))
    processor = make_processor(target=target, store=store, stopping=stopping)
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: len(target.events) >= 2, LIMIT, "a retried batch")
        feed.stop()
        await feed.finished()
    assert feed.error is None
    assert feed.result is None
    assert written(store) == []


# -- fencing ----------------------------------------------------------------------------------


class _Lease:
    """A guard as the lease coordinator gives one: raises LeaseLost once the lease is gone."""

    def __init__(self) -> None:
        self.lost = False
        self.checks = 0

    def __call__(self) -> None:
        self.checks += 1
        if self.lost:
            raise LeaseLost("lease of shardId-000000000000 taken by replica-b")


def _lose_after_answering(lease: _Lease, result: InvokeResult) -> Any:
    def answer(event: dict[str, Any]) -> InvokeResult:
        lease.lost = True
        return result

    return answer


async def test_a_lost_lease_stops_the_shard_before_its_next_invocation(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    lease = _Lease()
    target.script(_lose_after_answering(lease, success()))
    chunk = records(api, puts("a", "b", "c", "d", "e", "f"))
    processor = make_processor(
        target=target, store=store, stopping=stopping, batch_size=2, guard=lease
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.finished()
    assert isinstance(feed.error, BaseExceptionGroup)
    assert feed.error.subgroup(lambda e: isinstance(e, LeaseLost)) is not None
    assert len(target.events) == 1
    assert lease.checks == 2
    # The settled batch is checkpointed; nothing after it.
    assert written(store) == [Checkpoint(sequence_number=chunk[1].sequence_number)]


async def test_a_lost_lease_fences_the_retry_of_a_failed_batch_and_checkpoints_nothing(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    lease = _Lease()
    target.script(_lose_after_answering(lease, function_error()))
    chunk = records(api, puts("a", "b"))
    processor = make_processor(target=target, store=store, stopping=stopping, guard=lease)
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.finished()
    assert isinstance(feed.error, BaseExceptionGroup)
    assert feed.error.subgroup(lambda e: isinstance(e, LeaseLost)) is not None
    assert len(target.events) == 1
    assert written(store) == []


# -- KPL sub-sequence checkpoints -------------------------------------------------------------


async def test_a_partly_settled_kpl_aggregate_checkpoints_at_its_sub_sequence(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    api = FakeStreamApi(deaggregate=True)
    chunk = records(
        api, [kpl_aggregate([("k1", b"1"), ("k2", b"2"), ("k3", b"3")]), Put("k4", b"4")]
    )
    aggregate, plain = chunk[0].sequence_number, chunk[3].sequence_number
    assert positions(chunk) == [f"{aggregate}:0", f"{aggregate}:1", f"{aggregate}:2", plain]
    target.script(partial_failure(f"{aggregate}:1"), partial_failure(f"{aggregate}:2"))
    processor = make_processor(
        target=target,
        store=store,
        stopping=stopping,
        retry=StreamRetryPolicy(report_batch_item_failures=True),
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.end()
    assert [event_positions(e) for e in target.events] == [
        positions(chunk),
        positions(chunk[1:]),
        positions(chunk[2:]),
    ]
    assert written(store) == [
        Checkpoint(sequence_number=aggregate, sub_sequence_number=0),
        Checkpoint(sequence_number=aggregate, sub_sequence_number=1),
        Checkpoint(sequence_number=plain),
        Checkpoint(sequence_number=SHARD_END),
    ]


# -- tumbling windows -------------------------------------------------------------------------


def _counting_window(event: dict[str, Any]) -> InvokeResult:
    """A windowed function: counts the window's records in its state."""
    count = event["state"].get("count", 0) + len(event["Records"])
    return success({"state": {"count": count}})


async def test_tumbling_windows_never_span_two_windows_carry_state_and_close_with_a_final_invoke(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    target = RecordingTarget(default=_counting_window)
    first = math.floor(time.time() / 60) * 60 - 600  # windows long closed by the wall clock
    chunk = records(
        api,
        puts("a", "b", "c", arrival=first + 1) + puts("d", "e", arrival=first + 61),
    )
    processor = make_processor(
        target=target, store=store, stopping=stopping, batch_size=2, tumbling_window_seconds=60
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: len(target.events) >= 5, LIMIT, "both windows closed")
        await feed.end()
    assert isinstance(feed.result, ShardEnd)
    window_a = {"start": _iso(first), "end": _iso(first + 60)}
    window_b = {"start": _iso(first + 60), "end": _iso(first + 120)}
    summary = [
        (e["window"], event_positions(e), e["state"], e["isFinalInvokeForWindow"])
        for e in target.events
    ]
    assert summary == [
        (window_a, positions(chunk[0:2]), {}, False),
        (window_a, positions(chunk[2:3]), {"count": 2}, False),
        (window_a, [], {"count": 3}, True),
        (window_b, positions(chunk[3:5]), {}, False),
        (window_b, [], {"count": 2}, True),
    ]
    # Checkpoints inside a window carry its state; the final invocation clears it.
    checkpoints = written(store)
    assert checkpoints[0].window_state is not None
    assert checkpoints[-1] == Checkpoint(sequence_number=SHARD_END)


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- parallelization-factor lanes -------------------------------------------------------------


def _keys_in_distinct_lanes(lanes: int) -> list[str]:
    """One partition key per lane, in lane order (the processor's stable crc32 hash)."""
    by_lane: dict[int, str] = {}
    for n in range(1000):
        key = f"key-{n}"
        by_lane.setdefault(zlib.crc32(key.encode()) % lanes, key)
        if len(by_lane) == lanes:
            return [by_lane[lane] for lane in range(lanes)]
    raise AssertionError("no keys for every lane")


def _partition_keys(event: dict[str, Any]) -> set[str]:
    return {r["kinesis"]["partitionKey"] for r in event["Records"]}


async def test_lanes_keep_each_keys_order_and_a_failing_key_does_not_block_other_lanes(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    good_1, good_2, bad = _keys_in_distinct_lanes(3)

    def fail_bad_key(event: dict[str, Any]) -> InvokeResult:
        return function_error() if bad in _partition_keys(event) else success()

    target = RecordingTarget(default=fail_bad_key)
    first = records(api, puts(good_1, good_2, bad, good_1, good_2, bad))
    second = records(api, puts(good_1, good_2, good_1, good_2))
    processor = make_processor(
        target=target, store=store, stopping=stopping, batch_size=2, parallelization_factor=3
    )
    by_key = {
        key: [r.position for r in first + second if r.partition_key == key]
        for key in (good_1, good_2)
    }
    async with feeding(processor, stopping) as feed:
        await feed.send(first)
        await feed.send(second)

        def delivered(key: str) -> list[str]:
            ok = [e for e in target.events if _partition_keys(e) == {key}]
            return [p for e in ok for p in event_positions(e)]

        await wait_until(
            lambda: all(delivered(k) == by_key[k] for k in by_key),
            LIMIT,
            "every record of the good keys delivered, in order",
        )
        feed.stop()
    # The bad key's lane retried meanwhile and never settled.
    assert sum(1 for e in target.events if bad in _partition_keys(e)) >= 2
    # No checkpoint passes the bad key's first record (the third read).
    assert {c.sequence_number for c in written(store)} <= {
        first[0].sequence_number,
        first[1].sequence_number,
    }
    assert written(store)[-1] == Checkpoint(sequence_number=first[1].sequence_number)


# -- retries, bisection, partial batch responses ----------------------------------------------


async def test_a_function_error_retries_the_same_batch_then_checkpoints_it(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    target.script(function_error(), function_error())
    chunk = records(api, puts("a", "b", "c"))
    processor = make_processor(target=target, store=store, stopping=stopping, metrics=metrics)
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.end()
    assert [event_positions(e) for e in target.events] == [positions(chunk)] * 3
    assert metrics.count("retry") == 2
    assert written(store) == [
        Checkpoint(sequence_number=chunk[2].sequence_number),
        Checkpoint(sequence_number=SHARD_END),
    ]


def _poison() -> str:
    return base64.b64encode(b"poison").decode()


async def test_bisection_isolates_a_poison_record_and_gives_it_up_after_the_retries(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    def fail_poison(event: dict[str, Any]) -> InvokeResult:
        poisoned = any(r["kinesis"]["data"] == _poison() for r in event["Records"])
        return function_error() if poisoned else success()

    target = RecordingTarget(default=fail_poison)
    chunk = records(api, [Put("a", b"ok"), Put("b", b"ok"), Put("c", b"poison"), Put("d", b"ok")])
    processor = make_processor(
        target=target,
        store=store,
        stopping=stopping,
        metrics=metrics,
        retry=StreamRetryPolicy(maximum_retry_attempts=1, bisect_on_function_error=True),
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.end()
    succeeded = [
        p
        for e in target.events
        if fail_poison(e).outcome.value == "success"
        for p in event_positions(e)
    ]
    assert sorted(succeeded) == sorted(positions([chunk[0], chunk[1], chunk[3]]))
    # Bisection narrowed the failure down to the poison record alone.
    assert [chunk[2].position] in [event_positions(e) for e in target.events]
    assert sum(c["count"] for c in metrics.calls_to("records_dropped")) == 1
    assert written(store)[-2:] == [
        Checkpoint(sequence_number=chunk[3].sequence_number),
        Checkpoint(sequence_number=SHARD_END),
    ]


async def test_a_partial_batch_response_settles_before_the_failed_item_and_retries_from_it(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    chunk = records(api, puts("a", "b", "c", "d"))
    target.script(partial_failure(chunk[2].position))
    processor = make_processor(
        target=target,
        store=store,
        stopping=stopping,
        retry=StreamRetryPolicy(report_batch_item_failures=True),
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await feed.end()
    assert [event_positions(e) for e in target.events] == [positions(chunk), positions(chunk[2:])]
    assert written(store) == [
        Checkpoint(sequence_number=chunk[1].sequence_number),
        Checkpoint(sequence_number=chunk[3].sequence_number),
        Checkpoint(sequence_number=SHARD_END),
    ]
