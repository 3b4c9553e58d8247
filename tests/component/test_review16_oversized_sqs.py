"""Hostile review of issue 16, item 3 on the SQS engine: messages too large for any
invocation, on a queue whose redrive policy the in-memory queue carries out (a message
received more than ``maxReceiveCount`` times moves to the dead-letter queue, as SQS does).
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from poller.config import SqsMapping
from poller.sources.sqs import SqsMessage
from poller.testing import RecordingMetrics, RecordingTarget
from tests.component.sqs_fakes import TWO_AT_A_TIME, FakeQueue, fake_mapping, runner_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Long enough for a few 1 s visibility timeouts (the oversized give-back) on a loaded host.
LIMIT = 20.0
MAX_BYTES = 4_000
HUGE = "H" * 6_000
#: The fake's redrive policy says 5 (``FakeQueue.open``).
MAX_RECEIVE_COUNT = 5


class RedriveQueue(FakeQueue):
    """A queue that moves a message to its dead-letter queue when a receive would take it
    for the ``MAX_RECEIVE_COUNT + 1``-th time, as SQS does."""

    def __init__(self, name: str = "orders") -> None:
        super().__init__(name)
        self.dead_letters: list[str] = []

    def _take(self, limit: int) -> list[SqsMessage]:
        for stored in list(self._stored.values()):
            if stored.receive_count >= MAX_RECEIVE_COUNT and stored.visible_at <= time.monotonic():
                del self._stored[stored.message_id]
                self.dead_letters.append(stored.message_id)
        return super()._take(limit)


def mapping(queue: FakeQueue, **fields: Any) -> SqsMapping:
    return fake_mapping(queue, **TWO_AT_A_TIME, **fields)


def running(
    queue: FakeQueue, target: RecordingTarget, metrics: RecordingMetrics, **fields: Any
) -> AbstractAsyncContextManager[None]:
    return runner_running(
        mapping(queue, **fields),
        queue,
        target,
        limit=LIMIT * 2,
        metrics=metrics,
        max_bytes=MAX_BYTES,
    )


def delivered(target: RecordingTarget) -> list[str]:
    return [r["messageId"] for event in target.events for r in event["Records"]]


def oversized_counts(metrics: RecordingMetrics) -> list[int]:
    return [call["count"] for call in metrics.calls_to("records_oversized", "orders")]


async def test_an_oversized_message_is_counted_once_not_once_per_receive_before_the_dlq() -> None:
    """One oversized message, a redrive policy with maxReceiveCount 5: poller gives it back
    after each receive until SQS moves it to the dead-letter queue. It is one record too large
    for any invocation, so ``poller_oversized_records_total`` should rise by 1 (the streams
    count each such record once), not by one per receive."""
    queue, target, metrics = RedriveQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("huge", HUGE)
    async with running(queue, target, metrics):
        await wait_until(lambda: "huge" in queue.dead_letters, LIMIT, "huge in the DLQ", 0.01)
    assert delivered(target) == []
    assert sum(oversized_counts(metrics)) == 1, oversized_counts(metrics)


async def test_a_healthy_fifo_message_behind_an_oversized_one_is_invoked_not_dead_lettered() -> (
    None
):
    """FIFO group x: [xhuge (oversized), x2]. With a redrive policy poller gives back xhuge
    and, to keep the group's order, x2 with it, each time: x2's receive count climbs with
    xhuge's, so when SQS moves xhuge to the dead-letter queue it moves x2 too. x2 fits an
    invocation and its function never saw it. It should be invoked after xhuge is gone."""
    queue = RedriveQueue("orders.fifo")
    target, metrics = RecordingTarget(), RecordingMetrics()
    queue.send("xhuge", HUGE, group="x")
    queue.send("x2", group="x")
    async with running(queue, target, metrics):
        await wait_until(
            lambda: "x2" in queue.deleted or "x2" in queue.dead_letters,
            LIMIT,
            "x2 settled one way or the other",
            0.01,
        )
    assert "xhuge" in queue.dead_letters
    assert "x2" not in queue.dead_letters
    assert delivered(target) == ["x2"]


async def test_an_oversized_message_no_filter_matches_is_filtered_out_not_sent_to_the_dlq() -> None:
    """The mapping keeps only ``{"keep": true}`` bodies. A message no filter matches is deleted
    unseen and counted as filtered, whatever its size (the stream engine filters before the
    size check, and so does Lambda: the filters decide which records an invocation would carry
    at all). Here the size check runs first, in the intake: the message is given back for the
    dead-letter queue and counted as oversized, and the filtered count never sees it."""
    queue, target, metrics = RedriveQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("huge-unwanted", json.dumps({"keep": False, "pad": HUGE}))
    queue.send("small-unwanted", json.dumps({"keep": False}))
    pattern = json.dumps({"body": {"keep": [True]}})
    async with running(queue, target, metrics, filter_criteria={"filters": [{"pattern": pattern}]}):
        await wait_until(
            lambda: (
                "small-unwanted" in queue.deleted
                and ("huge-unwanted" in queue.deleted or "huge-unwanted" in queue.dead_letters)
            ),
            LIMIT,
            "both settled",
            0.01,
        )
    assert delivered(target) == []
    assert "huge-unwanted" in queue.deleted
    assert oversized_counts(metrics) == []
    filtered = [c["count"] for c in metrics.calls_to("records_filtered", "orders")]
    assert sum(filtered) == 2
