"""The SQS runner over an in-memory queue: FIFO hold-back, partial batch responses and the
visibility heartbeat, in milliseconds (tests/integration/test_sqs_*.py run the same rules
against moto).

Each test drives the real ``SqsMappingRunner`` (intake, batch, settle, heartbeat) through
:class:`~tests.component.sqs_fakes.FakeQueue` and a ``RecordingTarget`` whose answers it
scripts, then asserts on what the queue saw: deletes, visibility changes, redeliveries.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from poller.config import SqsMapping
from poller.core.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES
from poller.testing import RecordingMetrics, RecordingTarget, Slow, partial_failure, success
from tests.component.sqs_fakes import TWO_AT_A_TIME, FakeQueue, fake_mapping, runner_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: The longest any single wait of these tests may take before the test fails.
LIMIT = 5.0


def mapping(queue: FakeQueue, **fields: Any) -> SqsMapping:
    return fake_mapping(queue, **TWO_AT_A_TIME, **fields)


def running(
    queue: FakeQueue,
    target: RecordingTarget,
    *,
    metrics: RecordingMetrics | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    **fields: Any,
) -> AbstractAsyncContextManager[None]:
    """Run a runner for ``queue`` until the block ends, then shut it down (bounded)."""
    return runner_running(
        mapping(queue, **fields), queue, target, limit=LIMIT, metrics=metrics, max_bytes=max_bytes
    )


def delivered(target: RecordingTarget) -> list[list[str]]:
    """The message ids of each invocation, in order."""
    return [[r["messageId"] for r in event["Records"]] for event in target.events]


def receive_counts(target: RecordingTarget, message_id: str) -> list[str]:
    return [
        r["attributes"]["ApproximateReceiveCount"]
        for event in target.events
        for r in event["Records"]
        if r["messageId"] == message_id
    ]


async def deleted(queue: FakeQueue, *message_ids: str) -> None:
    await wait_until(
        lambda: set(message_ids) <= set(queue.deleted), LIMIT, f"{message_ids} deleted", 0.002
    )


# --------------------------------------------------------------------------- FIFO hold-back


async def test_a_failed_fifo_message_holds_back_its_group_while_other_groups_go_on() -> None:
    queue, target = FakeQueue("orders.fifo"), RecordingTarget()
    for message_id in ("x1", "y1", "x2", "y2", "x3"):
        queue.send(message_id, group=message_id[0])
    target.script(partial_failure("x2"))
    async with running(queue, target):
        await deleted(queue, "x1", "y1", "y2")
        assert delivered(target) == [["x1", "y1", "x2", "y2", "x3"]]
        # x3 was not reported, but comes after x2 in its group: it stays with x2.
        assert sorted(queue.in_flight()) == ["x2", "x3"]
        queue.send("y3", group="y")
        await deleted(queue, "y3")
        assert "x2" not in queue.deleted
        queue.expire_visibility()  # x2's visibility timeout ends: the group comes back in order
        await deleted(queue, "x2", "x3")
    assert delivered(target)[1:] == [["y3"], ["x2", "x3"]]
    assert receive_counts(target, "x2") == ["1", "2"]
    assert queue.remaining() == []


async def test_carried_messages_wait_with_a_failed_message_of_their_group() -> None:
    """A receive brings x1 x2 y1 x3; only two fit in a batch. x2 fails: x3 (carried) must not
    overtake it, while y1 (carried too) starts the next batch."""
    queue, target = FakeQueue("orders.fifo"), RecordingTarget()
    for message_id in ("x1", "x2", "y1", "x3"):
        queue.send(message_id, group=message_id[0])
    two = ENVELOPE_BYTES + queue.size_of("x1") + 1 + queue.size_of("x2")
    target.script(partial_failure("x2"))
    async with running(queue, target, max_bytes=two):
        await deleted(queue, "x1", "y1")
        assert delivered(target) == [["x1", "x2"], ["y1"]]
        assert sorted(queue.in_flight()) == ["x2", "x3"]
        queue.expire_visibility()
        await deleted(queue, "x2", "x3")
    assert delivered(target)[2:] == [["x2", "x3"]]


# --------------------------------------------------------------------------- partial responses


async def test_a_partial_batch_response_deletes_all_but_the_reported_messages() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    for message_id in "abcde":
        queue.send(message_id)
    target.script(partial_failure("b", "d"))
    async with running(queue, target, metrics=metrics):
        await deleted(queue, "a", "c", "e")
        assert sorted(queue.in_flight()) == ["b", "d"]
        assert metrics.count("records_failed_invoke", "orders") == 5  # the whole batch
        assert metrics.count("batch_item_failures", "orders") == 2
        assert metrics.calls_to("invocation", "orders")[0]["outcome"] == "partial_failure"
        queue.expire_visibility()
        await deleted(queue, "b", "d")
    assert delivered(target) == [list("abcde"), ["b", "d"]]


async def test_a_partial_batch_response_naming_an_unknown_message_fails_the_whole_batch() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    for message_id in "abc":
        queue.send(message_id)
    target.script(partial_failure("nope"))
    async with running(queue, target, metrics=metrics):
        await wait_until(
            lambda: metrics.calls_to("invocation", "orders"), LIMIT, "a verdict", 0.002
        )
        assert queue.deleted == []
        assert sorted(queue.in_flight()) == ["a", "b", "c"]
        assert metrics.calls_to("invocation", "orders")[0]["outcome"] == "function_error"
        queue.expire_visibility()
        await deleted(queue, "a", "b", "c")
    assert delivered(target) == [["a", "b", "c"], ["a", "b", "c"]]


async def test_failed_messages_come_back_after_the_configured_backoff() -> None:
    """With visibility_timeout_on_failure, the reported messages are made visible after its
    delay for their receive count, not after the queue's visibility timeout."""
    queue, target = FakeQueue(), RecordingTarget()
    for message_id in "ab":
        queue.send(message_id)
    target.script(partial_failure("b"))
    backoff = {"base_seconds": 7, "max_seconds": 60}
    async with running(queue, target, visibility_timeout_on_failure=backoff):
        await deleted(queue, "a")
        await wait_until(lambda: queue.visibility_calls, LIMIT, "the failed message returned")
    assert queue.visibility_calls == [[("b", 7)]]


# --------------------------------------------------------------------------- heartbeats


async def test_the_heartbeat_extends_a_batch_that_outlives_half_the_visibility_timeout() -> None:
    """Visibility timeout 1 s: at 0.5 s the heartbeat extends the held message by the full
    timeout again, so the queue never redelivers it while the function runs."""
    queue, target, metrics = FakeQueue(visibility_timeout=1), RecordingTarget(), RecordingMetrics()
    queue.send("a")
    release = anyio.Event()
    target.script(Slow(release, then=success()))
    async with running(queue, target, metrics=metrics):
        await wait_until(
            lambda: metrics.count("visibility_extended", "orders"), LIMIT, "a heartbeat", 0.005
        )
        assert queue.visibility_calls == [[("a", 1)]]
        assert queue.in_flight() == ["a"]
        release.set()
        await deleted(queue, "a")
    assert delivered(target) == [["a"]]
