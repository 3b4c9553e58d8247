"""The SQS runner in provisioned mode over an in-memory queue: ten batches in flight per
poller, ten receives a second per poller, FIFO order with batches in flight side by side, the
ProvisionedPollers gauge as the pollers grow and shrink, the backlog signal, and the drain.

Each test drives the real ``SqsMappingRunner`` through
:class:`~tests.component.sqs_fakes.FakeQueue` (which keeps SQS's FIFO rule: nothing more of a
group while one of its messages is in flight) and a scripted ``RecordingTarget``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog.testing

from poller.config import SqsMapping
from poller.core.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES
from poller.core.scaling import BATCHES_PER_POLLER, RECEIVES_PER_SECOND
from poller.errors import SourceError
from poller.queues import SqsMappingRunner
from poller.queues.ports import BacklogProbe, PacedQueue
from poller.retry import Backoff
from poller.testing import RecordingMetrics, RecordingTarget, Slow, partial_failure, success
from tests.component.sqs_fakes import FakeQueue
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: The longest any single wait of these tests may take before the test fails.
LIMIT = 10.0
FAST_BACKOFF = Backoff(initial=0.005, maximum=0.02)


class BacklogQueue(FakeQueue):
    """A fake queue that also reports its backlog (the visible messages), or fails to."""

    def __init__(self, *args: Any, failing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing
        self.backlog_reads = 0

    async def backlog(self) -> int:
        self.backlog_reads += 1
        if self.failing:
            raise SourceError("GetQueueAttributes failed: the queue does not answer")
        return len(self.remaining()) - len(self.in_flight())


def mapping(queue: FakeQueue, pollers: dict[str, int], **fields: Any) -> SqsMapping:
    return SqsMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "provisioned_poller_config": pollers,
            "function_response_types": ["ReportBatchItemFailures"],
            **fields,
        }
    )


def ticking_clock(step: float) -> Callable[[], float]:
    """A clock that moves ``step`` seconds each time it is read (once per scaling tick)."""
    counter = itertools.count()
    return lambda: next(counter) * step


@asynccontextmanager
async def running(
    queue: FakeQueue,
    target: RecordingTarget,
    *,
    pollers: dict[str, int] | None = None,
    metrics: RecordingMetrics | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    clock: Callable[[], float] | None = None,
    backlog: BacklogProbe | None = None,
    **fields: Any,
) -> AsyncIterator[anyio.Event]:
    """Run a provisioned runner for ``queue`` until the block ends, then shut it down."""
    stopping = anyio.Event()
    extra: dict[str, Any] = {} if clock is None else {"clock": clock, "scale_interval": 0.02}
    runner = SqsMappingRunner(
        mapping(queue, pollers or {"minimum_pollers": 2, "maximum_pollers": 2}, **fields),
        queue=queue,
        target=target,
        stopping=stopping,
        metrics=metrics,
        max_bytes=max_bytes,
        backoff=FAST_BACKOFF,
        backlog=backlog,
        **extra,
    )
    with anyio.fail_after(LIMIT * 3):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            yield stopping
            stopping.set()


def delivered(target: RecordingTarget) -> list[list[str]]:
    return [[r["messageId"] for r in event["Records"]] for event in target.events]


async def deleted(queue: FakeQueue, *message_ids: str) -> None:
    await wait_until(
        lambda: set(message_ids) <= set(queue.deleted), LIMIT, f"{message_ids} deleted", 0.005
    )


def pollers_reported(metrics: RecordingMetrics) -> list[int]:
    return [int(c["pollers"]) for c in metrics.calls_to("provisioned_pollers", "orders")]


# --------------------------------------------------------------------------- in flight


async def test_each_poller_keeps_ten_batches_in_flight_and_no_more() -> None:
    """Two pollers, a function that does not answer yet: 20 single-message batches are in
    flight at once, never 21, and once it answers every message is deleted."""
    queue, target = FakeQueue(), RecordingTarget()
    release = anyio.Event()
    target.script(*(Slow(release) for _ in range(40)))
    ids = [f"m{i}" for i in range(40)]
    for message_id in ids:
        queue.send(message_id)
    async with running(queue, target, batch_size=1):
        await wait_until(lambda: target.in_flight == 20, LIMIT, "20 batches in flight", 0.005)
        await anyio.sleep(0.2)  # room for a 21st, were there any
        assert target.in_flight == 2 * BATCHES_PER_POLLER
        release.set()
        await deleted(queue, *ids)
    assert target.max_in_flight == 2 * BATCHES_PER_POLLER
    assert sorted(queue.deleted) == sorted(ids)


async def test_a_poller_receives_at_most_ten_times_a_second() -> None:
    """An empty queue that answers at once: without the pace two pollers would spin."""
    queue, target = FakeQueue(poll_seconds=0.0), RecordingTarget()
    async with running(queue, target):
        await wait_until(lambda: queue.receives >= 5, LIMIT, "receives", 0.005)
        before, started = queue.receives, anyio.current_time()
        await anyio.sleep(1.0)
        made, took = queue.receives - before, anyio.current_time() - started
    assert made <= 2 * (RECEIVES_PER_SECOND * took + 1)
    assert made >= RECEIVES_PER_SECOND  # the pace, not a stall


# --------------------------------------------------------------------------- FIFO


async def test_fifo_groups_keep_their_order_with_batches_in_flight_side_by_side() -> None:
    """Five groups of ten, one message a batch, a function that takes a little while: many
    batches run at once, yet each group is delivered exactly once, in order. A failed message
    holds back the rest of its group, which comes back in order."""
    queue, target = FakeQueue("orders.fifo"), RecordingTarget()
    groups = "abcde"
    for n in range(10):
        for group in groups:
            queue.send(f"{group}{n}", group=group)

    async def answer(event: dict[str, Any]) -> Any:
        [record] = event["Records"]
        await anyio.sleep(0.01)
        if record["messageId"] == "c4" and record["attributes"]["ApproximateReceiveCount"] == "1":
            return partial_failure("c4")
        return success()

    target = RecordingTarget(default=answer)
    every = [f"{g}{n}" for g in groups for n in range(10)]
    pollers = {"minimum_pollers": 5, "maximum_pollers": 5}
    async with running(queue, target, pollers=pollers, batch_size=1):
        await deleted(queue, *[m for m in every if not m.startswith("c") or m < "c4"])
        queue.expire_visibility()  # c4's visibility ends: its group comes back in order
        await deleted(queue, *every)
    order = [m for batch in delivered(target) for m in batch]
    assert target.max_in_flight > 1, "batches ran side by side"
    for group in groups:
        got = [m for m in order if m[0] == group]
        expected = [f"{group}{n}" for n in range(10)]
        if group == "c":
            expected = expected[:5] + expected[4:]  # c4 twice: failed, then again
        assert got == expected


async def test_fifo_carried_messages_wait_with_a_failed_message_of_their_group() -> None:
    """A receive brings x1 x2 y1 x3 and only two fit in a batch: the batch is settled before
    the poller gathers again, so x3 (carried) never overtakes x2 (failed)."""
    queue, target = FakeQueue("orders.fifo"), RecordingTarget()
    for message_id in ("x1", "x2", "y1", "x3"):
        queue.send(message_id, group=message_id[0])
    two = ENVELOPE_BYTES + queue.size_of("x1") + 1 + queue.size_of("x2")

    async def slow_failure(event: dict[str, Any]) -> Any:
        await anyio.sleep(0.2)  # the poller would gather the carried ones meanwhile
        return partial_failure("x2")

    target.script(slow_failure)
    async with running(queue, target, max_bytes=two):
        await deleted(queue, "x1", "y1")
        assert delivered(target)[:2] == [["x1", "x2"], ["y1"]]
        assert sorted(queue.in_flight()) == ["x2", "x3"]
        queue.expire_visibility()
        await deleted(queue, "x2", "x3")
    assert delivered(target)[2:] == [["x2", "x3"]]


# --------------------------------------------------------------------------- the gauge


async def test_the_gauge_grows_under_load_within_the_maximum_and_shrinks_when_idle() -> None:
    """A clock that moves a second a tick: under load (every batch in flight) the pollers grow
    to the maximum and never past it; idle for 30 (clock) seconds, they fall back to the
    minimum and never below it. Each change is reported on the gauge."""
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    release = anyio.Event()
    target.script(*(Slow(release) for _ in range(60)))
    ids = [f"m{i}" for i in range(60)]
    for message_id in ids:
        queue.send(message_id)
    bounds = {"minimum_pollers": 2, "maximum_pollers": 6}
    async with running(
        queue, target, pollers=bounds, metrics=metrics, clock=ticking_clock(1.0), batch_size=1
    ):
        await wait_until(lambda: pollers_reported(metrics)[-1:] == [6], LIMIT, "6 pollers", 0.01)
        await wait_until(lambda: target.in_flight == 60, LIMIT, "60 batches in flight", 0.01)
        release.set()
        await deleted(queue, *ids)
        await wait_until(lambda: pollers_reported(metrics)[-1:] == [2], LIMIT, "2 pollers", 0.01)
    # one report per poller started, retired, and (at shutdown) stopped
    assert pollers_reported(metrics) == [1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0]
    # the concurrency gauge counts batch slots: ten a poller
    slots = [int(c["pollers"]) for c in metrics.calls_to("sqs_concurrency", "orders")]
    assert slots == [10 * n for n in pollers_reported(metrics)]
    assert sorted(queue.deleted) == sorted(ids)


async def test_the_default_mode_never_reports_provisioned_pollers() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("a")
    stopping = anyio.Event()
    runner = SqsMappingRunner(
        SqsMapping.model_validate(
            {
                "name": "orders",
                "event_source_arn": queue.arn,
                "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            }
        ),
        queue=queue,
        target=target,
        stopping=stopping,
        metrics=metrics,
    )
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await deleted(queue, "a")
            stopping.set()
    assert metrics.calls_to("provisioned_pollers") == []
    assert metrics.calls_to("sqs_concurrency", "orders")


# --------------------------------------------------------------------------- backlog, drain


async def test_the_backlog_is_read_and_a_failed_read_does_not_stop_the_mapping() -> None:
    for failing in (False, True):
        queue = BacklogQueue(failing=failing)
        target = RecordingTarget()
        queue.send("a")
        with structlog.testing.capture_logs() as logs:
            async with running(queue, target, backlog=queue):
                await deleted(queue, "a")
        assert queue.backlog_reads >= 1
        unread = [e for e in logs if e["event"] == "queue.backlog_unread"]
        assert bool(unread) is failing


async def test_shutdown_settles_every_batch_in_flight() -> None:
    """Shutdown with 20 batches in flight (two pollers, ten each): no new receive starts,
    every batch is invoked to its end and deleted, then the runner returns."""
    queue, target = FakeQueue(), RecordingTarget()
    release = anyio.Event()
    target.script(*(Slow(release) for _ in range(30)))
    ids = [f"m{i}" for i in range(30)]
    for message_id in ids:
        queue.send(message_id)
    async with running(queue, target, batch_size=1) as stopping:
        await wait_until(lambda: target.in_flight == 20, LIMIT, "20 in flight", 0.005)
        stopping.set()
        await anyio.sleep(0.05)
        release.set()
    assert len(queue.deleted) == 20
    assert sorted(queue.deleted) == sorted(m for batch in delivered(target) for m in batch)
    assert queue.in_flight() == []


async def test_the_heartbeat_keeps_every_batch_of_a_poller_hidden() -> None:
    """Visibility timeout 1 s, eight single-message batches in flight on two pollers for longer:
    the poller's heartbeat extends all of them, none is delivered twice."""
    queue, target, metrics = FakeQueue(visibility_timeout=1), RecordingTarget(), RecordingMetrics()
    release = anyio.Event()
    target.script(*(Slow(release) for _ in range(8)))
    ids = [f"m{i}" for i in range(8)]
    for message_id in ids:
        queue.send(message_id)
    async with running(queue, target, metrics=metrics, batch_size=1):
        await wait_until(lambda: target.in_flight == 8, LIMIT, "8 batches in flight", 0.005)
        await wait_until(
            lambda: {m for call in queue.visibility_calls for m, _ in call} == set(ids),
            LIMIT,
            "every message extended",
            0.01,
        )
        assert sorted(queue.in_flight()) == sorted(ids)
        release.set()
        await deleted(queue, *ids)
    assert sorted(m for batch in delivered(target) for m in batch) == sorted(ids)


async def test_a_large_maximum_is_warned_about_at_start() -> None:
    queue, target = FakeQueue(), RecordingTarget()
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, pollers={"maximum_pollers": 1001}):
            pass
    [warning] = [e for e in logs if e["event"] == "sqs.provisioned_sizing"]
    assert warning["maximum_pollers"] == 1001
    [started] = [e for e in logs if e["event"] == "mapping.started"]
    assert (started["minimum_pollers"], started["maximum_pollers"]) == (2, 1001)


async def test_a_paced_queue_passes_every_other_call_through() -> None:
    queue = FakeQueue()
    queue.send("a")
    paced = PacedQueue(queue)
    assert paced.name == queue.name
    assert await paced.open() == await queue.open()
    [message] = await paced.receive(10, 0)
    assert await paced.change_visibility([(message, 5)]) == []
    assert queue.visibility_calls == [[("a", 5)]]
    assert await paced.delete([message]) == []
    assert queue.deleted == ["a"]
