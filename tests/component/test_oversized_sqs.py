"""SQS messages too large for any invocation, and the empty poll's 0, on the real
``SqsMappingRunner`` over the in-memory queue (issue 16, item 3 and §2.2 item 1).

``max_bytes`` (the runner's seam) stands for Lambda's 6 MB. An oversized message is never
invoked: with a redrive policy it goes back to the queue with a short visibility timeout (SQS
then moves it to the dead-letter queue after ``maxReceiveCount``); on a FIFO queue poller
moves it to the dead-letter queue itself and its group goes on, or, when the copy cannot be
sent, it goes back with the rest of its group; without a redrive policy it is deleted. Either
way it is logged (id and size, never the body) and counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import structlog

from poller.config import SqsMapping
from poller.errors import SourceError
from poller.queues.intake import OVERSIZED_VISIBILITY_SECONDS
from poller.sources.sqs import (
    EntryFailure,
    QueueInfo,
    SqsMessage,
    copy_params,
    make_message_factory,
)
from poller.testing import RecordingMetrics, RecordingTarget
from tests.component.sqs_fakes import (
    DEAD_LETTER_ARN,
    TWO_AT_A_TIME,
    FakeQueue,
    fake_mapping,
    queue_arn,
    runner_running,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

LIMIT = 5.0
#: Room for several small messages, not for one with a HUGE body.
MAX_BYTES = 4_000
HUGE = "H" * 6_000


class NoRedriveQueue(FakeQueue):
    """A queue without a dead-letter queue."""

    async def open(self) -> QueueInfo:
        info = await super().open()
        return QueueInfo(info.url, info.visibility_timeout, None, info.fifo)


class AttributesFailQueue(FakeQueue):
    """A queue whose attributes can be read once (at start), then never again."""

    opened = 0

    async def open(self) -> QueueInfo:
        self.opened += 1
        if self.opened > 1:
            raise SourceError("GetQueueAttributes: throttled")
        return await super().open()


def mapping(queue: FakeQueue) -> SqsMapping:
    return fake_mapping(queue, **TWO_AT_A_TIME)


def running(
    queue: FakeQueue, target: RecordingTarget, metrics: RecordingMetrics
) -> AbstractAsyncContextManager[None]:
    return runner_running(
        mapping(queue), queue, target, limit=LIMIT * 2, metrics=metrics, max_bytes=MAX_BYTES
    )


def delivered(target: RecordingTarget) -> list[str]:
    return [r["messageId"] for event in target.events for r in event["Records"]]


def visibility_changes(queue: FakeQueue) -> set[tuple[str, int]]:
    return {change for call in queue.visibility_calls for change in call}


def oversized_counts(metrics: RecordingMetrics) -> list[int]:
    return [call["count"] for call in metrics.calls_to("records_oversized", "orders")]


async def until(condition: Any, what: str) -> None:
    await wait_until(condition, LIMIT, what, 0.002)


# -- with a redrive policy ----------------------------------------------------------------------


async def test_an_oversized_message_goes_back_for_the_dead_letter_queue_never_invoked() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("a")
    queue.send("huge", HUGE)
    queue.send("b")
    huge_bytes = queue.size_of("huge")
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: {"a", "b"} <= set(queue.deleted), "a and b deleted")
            await until(lambda: sum(oversized_counts(metrics)) == 1, "the message counted")
    assert "huge" not in delivered(target)
    assert "huge" not in queue.deleted
    assert ("huge", OVERSIZED_VISIBILITY_SECONDS) in visibility_changes(queue)
    assert queue.copies == []  # a standard queue: SQS moves it, and only it
    # Once, on the receive after which SQS moves it to the DLQ (0 on the receives before).
    assert oversized_counts(metrics)[-1] == 1
    line = next(e for e in logs if e["event"] == "messages.oversized")
    assert (line["message_id"], line["message_bytes"]) == ("huge", huge_bytes)
    assert line["max_bytes"] == MAX_BYTES
    assert line["max_receive_count"] == 5
    assert "dead-letter" in line["action"]
    assert HUGE not in repr(logs)  # never the body


async def test_on_a_fifo_queue_poller_moves_it_to_the_dlq_and_its_group_goes_on_in_order() -> None:
    queue, target, metrics = FakeQueue("orders.fifo"), RecordingTarget(), RecordingMetrics()
    queue.send("x1", group="x")
    queue.send("y1", group="y")
    queue.send("xhuge", HUGE, group="x")
    queue.send("x2", group="x")
    queue.send("x3", group="x")
    queue.send("y2", group="y")
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: {"x1", "x2", "x3", "y1", "y2"} <= set(queue.deleted), "all done")
    assert queue.dead_letters == ["xhuge"]
    assert "xhuge" in queue.deleted  # from the source queue, after the copy was sent
    ((arn, sent),) = queue.copies
    assert arn == DEAD_LETTER_ARN
    assert sent == {"MessageBody": HUGE, "MessageGroupId": "x", "MessageDeduplicationId": "xhuge"}
    assert [m for m in delivered(target) if m.startswith("x")] == ["x1", "x2", "x3"]
    assert visibility_changes(queue) == set()  # nothing held back
    assert oversized_counts(metrics) == [1]
    (line,) = [e for e in logs if e["event"] == "messages.oversized"]
    assert line["message_id"] == "xhuge"
    assert line["action"] == "moved to the dead-letter queue by poller"
    assert line["dead_letter_queue"] == DEAD_LETTER_ARN
    assert HUGE not in repr(logs)


async def test_on_a_fifo_queue_a_refused_send_gives_it_back_with_the_rest_of_its_group() -> None:
    queue, target, metrics = FakeQueue("orders.fifo"), RecordingTarget(), RecordingMetrics()
    queue.refuse_copies = "SendMessage: AccessDenied"
    queue.send("x1", group="x")
    queue.send("y1", group="y")
    queue.send("xhuge", HUGE, group="x")
    queue.send("x2", group="x")
    queue.send("xhuge2", HUGE, group="x")
    queue.send("y2", group="y")
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: {"x1", "y1", "y2"} <= set(queue.deleted), "the others deleted")
            await until(
                lambda: {("x2", OVERSIZED_VISIBILITY_SECONDS)} <= visibility_changes(queue),
                "x2 given back",
            )
    assert not {"xhuge", "x2", "xhuge2"} & set(delivered(target))  # x2 comes after xhuge
    assert {("xhuge", 1), ("x2", 1), ("xhuge2", 1)} <= visibility_changes(queue)
    assert not {"xhuge", "x2", "xhuge2"} & set(queue.deleted)  # never deleted unless sent
    assert queue.copies == []
    lines = {e["message_id"]: e for e in logs if e["event"] == "messages.oversized"}
    assert "dead-letter" in lines["xhuge"]["action"]
    assert "AccessDenied" in lines["xhuge"]["action"]
    assert lines["xhuge"]["visibility_changed"] is True
    # Not tried before the group's first oversized message is moved: the order holds.
    assert "an earlier message of its group" in lines["xhuge2"]["action"]


def test_the_copy_carries_body_attributes_group_and_the_message_id_as_deduplication_id() -> None:
    """SendMessage's parameters, from a message as ReceiveMessage gives it (binary values as
    the wire's base64 text or as bytes, as botocore's parsers differ)."""
    convert = make_message_factory(queue_arn=queue_arn("orders.fifo"), region="us-east-1")
    attributes = {
        "colour": {"DataType": "String", "StringValue": "blue"},
        "weight": {"DataType": "Number.kg", "StringValue": "12.5"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "text": {"DataType": "Binary", "BinaryValue": "AAE="},
    }
    raw = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh",
        "Body": "body",
        "Attributes": {"MessageGroupId": "g", "ApproximateReceiveCount": "1"},
        "MessageAttributes": attributes,
    }
    assert copy_params(convert(raw)) == {
        "MessageBody": "body",
        "MessageAttributes": {
            **attributes,
            "text": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
        "MessageGroupId": "g",
        "MessageDeduplicationId": "m-1",
    }
    standard = {**raw, "Attributes": {}, "MessageAttributes": {}}
    assert copy_params(convert(standard)) == {"MessageBody": "body"}


class DeleteRefusedOnceQueue(FakeQueue):
    """A queue that refuses the first delete of ``xhuge`` (its receipt handle gone stale)."""

    refused = False

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        if not self.refused and [m.message_id for m in messages] == ["xhuge"]:
            self.refused = True
            return [EntryFailure(messages[0], "ReceiptHandleIsInvalid", "stale", True)]
        return await super().delete(messages)


async def test_a_refused_delete_after_the_send_retries_and_the_dlq_keeps_one_copy() -> None:
    queue = DeleteRefusedOnceQueue("orders.fifo")
    target, metrics = RecordingTarget(), RecordingMetrics()
    queue.send("xhuge", HUGE, group="x")
    queue.send("x2", group="x")
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: {"xhuge", "x2"} <= set(queue.deleted), "both deleted")
    assert queue.refused
    assert queue.dead_letters == ["xhuge"]  # sent twice, stored once (deduplication id)
    assert delivered(target) == ["x2"]
    assert sum(oversized_counts(metrics)) == 1
    actions = [e["action"] for e in logs if e["event"] == "messages.oversized"]
    assert "delete was refused" in actions[0]
    assert actions[-1] == "moved to the dead-letter queue by poller"


async def test_unreadable_queue_attributes_give_the_message_back_never_delete_it() -> None:
    queue, target, metrics = AttributesFailQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("huge", HUGE)
    queue.send("a")
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: "a" in queue.deleted, "a deleted")
            await until(lambda: ("huge", 1) in visibility_changes(queue), "huge given back")
    assert "huge" not in queue.deleted
    assert any(e["event"] == "queue.attributes_unreadable" for e in logs)


# -- without one --------------------------------------------------------------------------------


async def test_without_a_redrive_policy_an_oversized_message_is_deleted_and_logged() -> None:
    queue, target, metrics = NoRedriveQueue(), RecordingTarget(), RecordingMetrics()
    queue.send("a")
    queue.send("huge", HUGE)
    with structlog.testing.capture_logs() as logs:
        async with running(queue, target, metrics):
            await until(lambda: {"a", "huge"} <= set(queue.deleted), "both deleted")
    assert delivered(target) == ["a"]
    assert oversized_counts(metrics) == [1]
    (line,) = [e for e in logs if e["event"] == "messages.oversized"]
    assert line["message_id"] == "huge"
    assert line["deleted"] is True
    assert "no redrive policy" in line["action"]
    assert HUGE not in repr(logs)


async def test_without_a_redrive_policy_a_fifo_group_goes_on_after_its_oversized_message() -> None:
    queue, target, metrics = NoRedriveQueue("orders.fifo"), RecordingTarget(), RecordingMetrics()
    queue.send("x1", group="x")
    queue.send("xhuge", HUGE, group="x")
    queue.send("x2", group="x")
    async with running(queue, target, metrics):
        await until(lambda: {"x1", "xhuge", "x2"} <= set(queue.deleted), "all deleted")
    assert delivered(target) == ["x1", "x2"]
    assert oversized_counts(metrics) == [1]


# -- the empty poll -----------------------------------------------------------------------------


async def test_an_empty_receive_reports_zero_polled() -> None:
    queue, target, metrics = FakeQueue(), RecordingTarget(), RecordingMetrics()
    async with running(queue, target, metrics):
        await until(lambda: queue.receives >= 2, "empty receives")
        await until(lambda: metrics.calls_to("records_polled", "orders"), "an empty poll counted")
        queue.send("a")
        await until(lambda: "a" in queue.deleted, "a deleted")
    polled = [call["count"] for call in metrics.calls_to("records_polled", "orders")]
    assert 0 in polled
    assert sum(polled) == 1
