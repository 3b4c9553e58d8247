"""Review 16 (hostile) of SQS provisioned mode over an in-memory queue: what happens to a
poller's other batches in flight when its receive loop crashes, and whether a receive can
start once shutdown has begun.

Each test drives the real ``SqsMappingRunner`` through
:class:`~tests.component.sqs_fakes.FakeQueue` and a scripted ``RecordingTarget``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from poller.config import SqsMapping
from poller.queues import SqsMappingRunner
from poller.queues.ports import BacklogProbe
from poller.retry import Backoff
from poller.sources.sqs import SqsMessage
from poller.testing import RecordingTarget, Slow
from tests.component.sqs_fakes import FakeQueue
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

LIMIT = 10.0
FAST_BACKOFF = Backoff(initial=0.005, maximum=0.02)


class CrashingQueue(FakeQueue):
    """A fake queue whose receive raises an unexpected error (a bug, not a SourceError) once
    ``crash`` is set, a single time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crash = False

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        if self.crash:
            self.crash = False
            raise RuntimeError("an unexpected bug in the receive path")
        return await super().receive(max_messages, wait_seconds)


class TimedQueue(FakeQueue):
    """A fake queue that records when each receive started."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[float] = []

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        self.started.append(time.monotonic())
        return await super().receive(max_messages, wait_seconds)


async def settled_within(done: Callable[[], bool], limit: float) -> None:
    """Wait until ``done`` holds or ``limit`` seconds pass (the assertions then say which)."""
    with contextlib.suppress(AssertionError):
        await wait_until(done, limit, "settled", 0.01)


def runner_for(
    queue: FakeQueue,
    target: RecordingTarget,
    stopping: anyio.Event,
    backlog: BacklogProbe | None = None,
) -> SqsMappingRunner:
    mapping = SqsMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "provisioned_poller_config": {"minimum_pollers": 2, "maximum_pollers": 2},
            "function_response_types": ["ReportBatchItemFailures"],
            "batch_size": 1,
        }
    )
    return SqsMappingRunner(
        mapping,
        queue=queue,
        target=target,
        stopping=stopping,
        backoff=FAST_BACKOFF,
        backlog=backlog,
    )


async def test_a_poller_crash_lets_its_other_batches_in_flight_finish_and_settle() -> None:
    """Five single-message batches in flight on the pollers; then one poller's receive hits
    an unexpected error. The batches already handed to the function must run to their end and
    be deleted (as the design says: "restarted by _poller after its in-flight batches
    finish"), not be cancelled mid-invoke and left invisible to be delivered a second time
    after the visibility timeout."""
    queue, target = CrashingQueue(visibility_timeout=300), RecordingTarget()
    release = anyio.Event()
    target.script(*(Slow(release) for _ in range(5)))
    ids = [f"m{i}" for i in range(5)]
    for message_id in ids:
        queue.send(message_id)
    stopping = anyio.Event()
    runner = runner_for(queue, target, stopping)
    with anyio.fail_after(LIMIT * 3):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await wait_until(lambda: target.in_flight == 5, LIMIT, "5 batches in flight", 0.005)
            queue.crash = True
            await wait_until(lambda: not queue.crash, LIMIT, "the crash", 0.005)
            await anyio.sleep(0.2)  # the crash's aftermath
            release.set()
            await settled_within(lambda: set(ids) <= set(queue.deleted), LIMIT)
            stopping.set()
    abandoned = sorted(set(queue.in_flight()) - set(queue.deleted))
    assert abandoned == [], f"batches cancelled mid-invoke, left invisible: {abandoned}"
    assert sorted(queue.deleted) == ids


async def test_no_receive_starts_once_shutdown_has_begun() -> None:
    """An empty queue answering at once: each provisioned poller spends most of its time in
    the receive pace's wait (a tenth of a second between receives). Shutdown begins during
    that wait; the pace must not then start a receive (in production a 20 s long poll taking
    messages after SIGTERM, delaying the exit)."""
    late: list[float] = []
    for _ in range(5):  # five shutdowns: each lands in a pace wait most of the time
        queue, target = TimedQueue(poll_seconds=0.0), RecordingTarget()
        stopping = anyio.Event()
        runner = runner_for(queue, target, stopping)
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                await wait_until(lambda: len(queue.started) >= 6, LIMIT, "receives", 0.005)  # noqa: B023
                stopped_at = time.monotonic()
                stopping.set()
        late += [t - stopped_at for t in queue.started if t > stopped_at]
    assert late == [], f"receives started after shutdown began (s after): {late}"


class HangingBacklogQueue(FakeQueue):
    """A fake queue whose backlog read (GetQueueAttributes) hangs, as a call on a partitioned
    network does until the settle client's 30 s read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading = False

    async def backlog(self) -> int:
        self.reading = True
        await anyio.sleep(3600)
        return 0


async def test_a_hanging_backlog_read_does_not_hold_up_shutdown() -> None:
    """Shutdown begins while a backlog read hangs: nothing was handed out by that read, so the
    runner must not wait for it; it returns as soon as its (no) batches have settled."""
    queue, target = HangingBacklogQueue(), RecordingTarget()
    stopping = anyio.Event()
    runner = runner_for(queue, target, stopping, backlog=queue)
    returned_after: float | None = None
    with anyio.move_on_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await wait_until(lambda: queue.reading, LIMIT, "a backlog read under way", 0.005)
            stopped_at = time.monotonic()
            stopping.set()
        returned_after = time.monotonic() - stopped_at
    assert returned_after is not None, f"the runner was still running {LIMIT} s after shutdown"
    assert returned_after < LIMIT / 2
