"""Lambda's ESM event counts as both engines report them, on the in-memory fakes: the stream
engine (real reader, processor, delivery) over ``FakeStreamApi`` and the SQS runner over
``FakeQueue``, with the strict ``RecordingMetrics``.

The rules (README "Metrics and health"; AWS's: docs/aws-esm.md §4.2): an empty poll reports
0 polled (a shard, its first); every invocation attempt counts its records as invoked when it
starts, throttles included, and a failed one as failed when it ends; an answer listing any
``batchItemFailures`` fails the whole batch and its distinct listed items go to
``batch_item_failures``; a mapping whose filters let everything through reports 0 filtered;
records sent to the on-failure destination are not dropped, and each refused send is one
delivery failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from poller.core.filtering import compile_filters
from poller.core.retry_policy import StreamRetryPolicy
from poller.errors import DestinationError
from poller.streams import ShardProcessor
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingMetrics,
    RecordingTarget,
    function_error,
    partial_failure,
    success,
)
from poller.types import InvokeResult, Outcome, StreamRecord
from tests.component.harness import (
    LIMIT,
    MAPPING,
    SHARD,
    KeepingDestination,
    amounts,
    fed_until,
    feeding,
    make_processor,
    make_runner,
    mapping_config,
    puts,
    records,
    running,
)
from tests.component.sqs_fakes import TWO_AT_A_TIME, FakeQueue, fake_mapping, runner_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

THROTTLED = InvokeResult(Outcome.THROTTLE, status_code=429, error="Rate exceeded")


def counted(metrics: RecordingMetrics, hook: str) -> int:
    return metrics.count(hook, MAPPING)


def noting(
    metrics: RecordingMetrics, seen: list[tuple[int, int]], then: InvokeResult
) -> Callable[[dict[str, Any]], InvokeResult]:
    """An answer of ``then`` that first notes in ``seen`` what was counted while the
    invocation ran (invoked at its start, failed at its end): (invoked, failed)."""

    def respond(event: dict[str, Any]) -> InvokeResult:
        seen.append(
            (counted(metrics, "records_invoked"), counted(metrics, "records_failed_invoke"))
        )
        return then

    return respond


class Accepting(KeepingDestination):
    """An on-failure destination that refuses the first ``refusals`` sends, then accepts."""

    def __init__(self, refusals: int = 0) -> None:
        super().__init__()
        self.refusals = refusals

    async def accept(self, record: dict[str, Any]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise DestinationError("throttled by the queue")


def processor(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
    *,
    retry: StreamRetryPolicy | None = None,
    filters: str | None = None,
    destination: Accepting | None = None,
) -> ShardProcessor:
    """A processor of one shard: batches of up to 10 sent at once, millisecond retries."""
    return make_processor(
        target=target,
        store=store,
        stopping=stopping,
        metrics=metrics,
        retry=retry,
        filters=None if filters is None else compile_filters([filters], source="kinesis"),
        destination=destination,
    )


def settled_all(store: MemoryCheckpointStore, chunk: list[StreamRecord]) -> bool:
    checkpoint = store.checkpoints.get((MAPPING, SHARD))
    return checkpoint is not None and checkpoint.sequence_number == chunk[-1].sequence_number


# -- streams ------------------------------------------------------------------------------------


async def test_streams_an_idle_shard_reports_zero_polled_from_its_first_read(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    api.add_shard(SHARD)
    runner = make_runner(
        mapping_config(), api=api, target=target, store=store, stopping=stopping, metrics=metrics
    )
    async with running(runner, stopping):
        await wait_until(
            lambda: len([c for c in api.calls if c[0] == "get_records"]) >= 3, LIMIT, "three reads"
        )
    assert amounts(metrics, "records_polled") == [0]  # the first empty read creates the series
    assert target.events == []


async def test_streams_a_throttle_then_a_success_is_invoked_twice_and_failed_once(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    chunk = records(api, puts("a", "b", "c"))
    seen: list[tuple[int, int]] = []
    target.script(noting(metrics, seen, THROTTLED), noting(metrics, seen, success()))
    await fed_until(
        processor(target, store, stopping, metrics),
        stopping,
        chunk,
        lambda: settled_all(store, chunk),
        "the batch settled",
    )
    assert seen == [(3, 0), (6, 3)]
    assert (counted(metrics, "records_invoked"), counted(metrics, "records_failed_invoke")) == (
        6,
        3,
    )
    assert [c["outcome"] for c in metrics.calls_to("invocation")] == ["throttle", "success"]


async def test_streams_a_partial_response_listing_one_of_ten_fails_ten_and_lists_one(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    chunk = records(api, puts(*"abcdefghij"))
    target.script(partial_failure(chunk[4].position))
    retry = StreamRetryPolicy(report_batch_item_failures=True)
    await fed_until(
        processor(target, store, stopping, metrics, retry=retry),
        stopping,
        chunk,
        lambda: settled_all(store, chunk),
        "the batch settled",
    )
    assert amounts(metrics, "records_failed_invoke") == [10]
    assert amounts(metrics, "batch_item_failures") == [1]
    # The first attempt had ten records; the retry, from the listed record on, six.
    assert amounts(metrics, "records_invoked") == [10, 6]


async def test_streams_filters_that_match_every_record_report_zero_filtered(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    matching = json.dumps({"data": {"kind": ["order"]}})
    chunk = records(api, puts("a", "b", data=b'{"kind": "order"}'))
    later = records(api, puts("c", data=b'{"kind": "refund"}'))
    proc = processor(target, store, stopping, metrics, filters=matching)
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await feed.send(later)
        await wait_until(lambda: settled_all(store, later), LIMIT, "both chunks settled")
        feed.stop()
    assert amounts(metrics, "records_filtered") == [0, 1]


async def test_streams_without_filters_report_no_filtered_series(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    chunk = records(api, puts("a", "b"))
    await fed_until(
        processor(target, store, stopping, metrics),
        stopping,
        chunk,
        lambda: settled_all(store, chunk),
        "the batch settled",
    )
    assert metrics.calls_to("records_filtered") == []


async def test_streams_records_given_up_without_a_destination_are_dropped(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    chunk = records(api, puts("a", "b"))
    target.script(function_error())
    retry = StreamRetryPolicy(maximum_retry_attempts=0)
    await fed_until(
        processor(target, store, stopping, metrics, retry=retry),
        stopping,
        chunk,
        lambda: settled_all(store, chunk),
        "given up and settled",
    )
    assert (
        counted(metrics, "records_dropped"),
        counted(metrics, "records_sent_to_destination"),
    ) == (
        2,
        0,
    )


async def test_streams_records_sent_to_a_destination_are_not_dropped_and_refusals_count_each(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    """AWS drops the records when the destination refuses; poller waits and sends again (no
    loss), so a refusal is one delivery failure per attempt and never a dropped record."""
    chunk = records(api, puts("a", "b"))
    target.script(function_error())
    destination = Accepting(refusals=1)
    retry = StreamRetryPolicy(maximum_retry_attempts=0)
    proc = processor(target, store, stopping, metrics, retry=retry, destination=destination)
    await fed_until(proc, stopping, chunk, lambda: settled_all(store, chunk), "sent and settled")
    assert len(destination.sent) == 1
    assert counted(metrics, "records_sent_to_destination") == 2
    assert counted(metrics, "records_dropped") == 0
    assert metrics.calls_to("destination_delivery_failed") == [
        {"mapping": MAPPING, "destination_type": "sqs"}
    ]


# -- SQS ----------------------------------------------------------------------------------------


def sqs_running(
    queue: FakeQueue, target: RecordingTarget, metrics: RecordingMetrics, **fields: Any
) -> AbstractAsyncContextManager[None]:
    mapping = fake_mapping(queue, **TWO_AT_A_TIME, **fields)
    return runner_running(mapping, queue, target, limit=LIMIT, metrics=metrics)


async def all_deleted(queue: FakeQueue, *message_ids: str) -> None:
    await wait_until(
        lambda: set(message_ids) <= set(queue.deleted), LIMIT, f"{message_ids} deleted", 0.002
    )


async def test_sqs_a_throttle_then_a_success_is_invoked_twice_and_failed_once() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    for message_id in "abc":
        queue.send(message_id)
    seen: list[tuple[int, int]] = []
    target.script(noting(metrics, seen, THROTTLED), noting(metrics, seen, success()))
    async with sqs_running(queue, target, metrics):
        await all_deleted(queue, *"abc")
    assert seen == [(3, 0), (6, 3)]
    assert (counted(metrics, "records_invoked"), counted(metrics, "records_failed_invoke")) == (
        6,
        3,
    )
    assert counted(metrics, "records_deleted") == 3


async def test_sqs_a_partial_response_listing_one_of_ten_fails_ten_and_lists_one() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    ids = [f"m{i}" for i in range(10)]
    for message_id in ids:
        queue.send(message_id)
    target.script(partial_failure("m4"))
    async with sqs_running(queue, target, metrics, batch_size=10):
        await all_deleted(queue, *(i for i in ids if i != "m4"))
        queue.expire_visibility()
        await all_deleted(queue, "m4")
    assert amounts(metrics, "records_failed_invoke") == [10]
    assert amounts(metrics, "batch_item_failures") == [1]
    assert amounts(metrics, "records_invoked") == [10, 1]
    assert counted(metrics, "records_deleted") == 10


async def test_sqs_filters_that_match_every_message_report_zero_filtered() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("a", body=json.dumps({"kind": "order"}))
    pattern = json.dumps({"body": {"kind": ["order"]}})
    async with sqs_running(
        queue, target, metrics, filter_criteria={"filters": [{"pattern": pattern}]}
    ):
        await all_deleted(queue, "a")
    assert amounts(metrics, "records_filtered") == [0]
    assert counted(metrics, "records_invoked") == 1


async def test_sqs_an_empty_receive_reports_zero_polled() -> None:
    """Lambda's PolledEventCount is 0 for an empty poll: the series exists from the first
    receive of an idle queue (the count is made in poller/queues/intake.py)."""
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    async with sqs_running(queue, target, metrics):
        await wait_until(lambda: queue.receives >= 2, LIMIT, "two empty receives", 0.002)
        await wait_until(lambda: metrics.calls_to("records_polled"), LIMIT, "a polled count", 0.002)
    assert set(amounts(metrics, "records_polled")) == {0}
