"""Hostile review of issue 16, item 2 (Lambda's event counts): the cases the engines' own
tests leave out, on the real ShardProcessor and SqsMappingRunner over the in-memory fakes.

The invariant behind each: an attempt counts its records as invoked at its start and, when it
did not succeed, as failed at its end; so failed never exceeds invoked, an attempt the lease
fence stops counts nothing, and a partial batch response fails the whole batch once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from poller.config import SqsMapping
from poller.core.retry_policy import StreamRetryPolicy
from poller.errors import LeaseLost
from poller.queues import SqsMappingRunner
from poller.retry import Backoff
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingMetrics,
    RecordingTarget,
    Slow,
    event_positions,
    function_error,
    success,
)
from poller.types import InvokeResult
from tests.component.harness import (
    LIMIT,
    MAPPING,
    feeding,
    make_processor,
    puts,
    records,
    written,
)
from tests.component.sqs_fakes import FakeQueue
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def total(metrics: RecordingMetrics, hook: str, mapping: str = MAPPING) -> int:
    return sum(call["count"] for call in metrics.calls_to(hook, mapping))


class Lease:
    def __init__(self) -> None:
        self.lost = False

    def __call__(self) -> None:
        if self.lost:
            raise LeaseLost("lease taken by replica-b")


async def test_streams_an_attempt_the_lease_fence_stops_counts_nothing(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """The first attempt fails and the lease is lost meanwhile: the retry is fenced off
    before it starts, so the records count as invoked once and failed once."""
    lease, metrics = Lease(), RecordingMetrics()

    def fail_and_lose(event: dict[str, Any]) -> InvokeResult:
        lease.lost = True
        return function_error()

    target = RecordingTarget()
    target.script(fail_and_lose)
    chunk = records(api, puts("a", "b"))
    proc = make_processor(
        target=target, store=store, stopping=stopping, guard=lease, metrics=metrics
    )
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await feed.finished()
    assert len(target.events) == 1
    assert total(metrics, "records_invoked") == 2
    assert total(metrics, "records_failed_invoke") == 2
    assert written(store) == []


async def test_streams_a_drain_during_a_failing_invocation_counts_it_once(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """Shutdown comes while an invocation is in flight; it finishes (failing) and the retry
    is abandoned: invoked once, failed once, at its end, and nothing settled."""
    metrics, release = RecordingMetrics(), anyio.Event()
    target = RecordingTarget()
    target.script(Slow(release, function_error()))
    chunk = records(api, puts("a", "b", "c"))
    proc = make_processor(target=target, store=store, stopping=stopping, metrics=metrics)
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: target.in_flight == 1, LIMIT, "in flight")
        assert total(metrics, "records_invoked") == 3  # at its start
        assert total(metrics, "records_failed_invoke") == 0
        feed.stop()
        release.set()
        await feed.finished()
    assert len(target.events) == 1
    assert total(metrics, "records_invoked") == 3
    assert total(metrics, "records_failed_invoke") == 3
    assert written(store) == []


async def test_streams_bisection_counts_every_half_and_never_fails_more_than_it_invoked(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    metrics = RecordingMetrics()
    chunk = records(api, puts("a", "b", "c", "d"))
    bad = chunk[2].position

    def answer(event: dict[str, Any]) -> InvokeResult:
        return function_error() if bad in event_positions(event) else success()

    target = RecordingTarget(default=answer)
    retry = StreamRetryPolicy(maximum_retry_attempts=1, bisect_on_function_error=True)
    proc = make_processor(
        target=target, store=store, stopping=stopping, metrics=metrics, retry=retry
    )
    async with feeding(proc, stopping) as feed:
        await feed.send(chunk)
        await wait_until(
            lambda: (
                written(store) and written(store)[-1].sequence_number == chunk[3].sequence_number
            ),
            LIMIT,
            "settled",
        )
        feed.stop()
    sent = sum(len(e["Records"]) for e in target.events)
    failed = sum(len(e["Records"]) for e in target.events if bad in event_positions(e))
    assert total(metrics, "records_invoked") == sent
    assert total(metrics, "records_failed_invoke") == failed
    assert total(metrics, "records_dropped") == 1


# -- SQS ------------------------------------------------------------------------------------------


@asynccontextmanager
async def sqs_running(
    queue: FakeQueue, target: RecordingTarget, metrics: RecordingMetrics
) -> AsyncIterator[None]:
    stopping = anyio.Event()
    mapping = SqsMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "scaling_config": {"maximum_concurrency": 2},
            "function_response_types": ["ReportBatchItemFailures"],
        }
    )
    runner = SqsMappingRunner(
        mapping,
        queue=queue,
        target=target,
        stopping=stopping,
        metrics=metrics,
        backoff=Backoff(initial=0.005, maximum=0.02),
    )
    with anyio.fail_after(LIMIT * 2):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            yield
            stopping.set()


async def test_sqs_fifo_hold_back_counts_the_whole_batch_failed_once_and_reinvokes_the_rest() -> (
    None
):
    """FIFO [x1, x2, y1]; the first answer lists x1. The whole batch counts as failed (3), one
    item as listed; y1 is deleted, x1 and x2 go back together and are invoked again (invoked
    3 + 2), and the second answer succeeds."""
    queue, metrics = FakeQueue("orders.fifo"), RecordingMetrics()
    queue.send("x1", group="x")
    queue.send("x2", group="x")
    queue.send("y1", group="y")
    target = RecordingTarget()
    target.script(
        lambda event: success(
            {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
        )
    )
    async with sqs_running(queue, target, metrics):
        await wait_until(lambda: "y1" in queue.deleted, LIMIT, "y1 deleted", 0.002)
        # y1 is deleted after x1 and x2 were given back (BatchProcessor.process).
        queue.expire_visibility()
        await wait_until(lambda: {"x1", "x2"} <= set(queue.deleted), LIMIT, "x deleted", 0.002)
    assert [len(e["Records"]) for e in target.events] == [3, 2]
    assert total(metrics, "records_invoked", "orders") == 5
    assert total(metrics, "records_failed_invoke", "orders") == 3
    assert total(metrics, "batch_item_failures", "orders") == 1
    assert total(metrics, "records_deleted", "orders") == 3
