"""Lambda's ESM event counts, rule by rule, on the pieces that report them (strict
``RecordingMetrics``): a shard's first empty read counts 0 polled (GetRecords and enhanced
fan-out), a failed read nothing; a partial batch response fails the whole batch and its
listed items are counted apart; a refused delete counts 0 deleted. The engines' tests are in
tests/component/test_event_metrics_engines.py; the definitions are in README "Metrics and
health" (AWS's: docs/aws-esm.md §4.2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import anyio
import pytest

from poller.core.queue_rules import judge
from poller.errors import Throttled
from poller.ports import PushEvent, StartPosition
from poller.queues.ports import QueueApi
from poller.queues.settle import Settler
from poller.sources.sqs import EntryFailure, SqsMessage, make_message_factory
from poller.streams.delivery import listed_items
from poller.streams.push_reader import PushShardReader, PushTiming
from poller.streams.reader import ShardReader
from poller.testing import FakeStreamApi, Put, RecordingMetrics, partial_failure, success
from poller.types import Chunk
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

MAPPING = "orders"
SHARD = "shardId-000000000000"
LIMIT = 10.0


@dataclass(frozen=True)
class Message:
    """What the queue rules read of a message."""

    message_id: str
    group_id: str | None = None


def batch_of(count: int) -> list[Message]:
    return [Message(f"m{i}") for i in range(count)]


# -- FailedInvokeEventCount and the listed items -----------------------------------------------


def test_a_partial_response_listing_one_of_ten_fails_all_ten_and_lists_one() -> None:
    verdict = judge(
        batch_of(10), partial_failure("m3"), report_batch_item_failures=True, fifo=False
    )
    assert (verdict.outcome, verdict.failed_records, verdict.reported) == ("partial_failure", 10, 1)


def test_an_item_listed_twice_is_one_listed_item() -> None:
    verdict = judge(
        batch_of(4), partial_failure("m1", "m1", "m2"), report_batch_item_failures=True, fifo=False
    )
    assert (verdict.failed_records, verdict.reported) == (4, 2)


@pytest.mark.parametrize("payload", [None, {}, {"batchItemFailures": []}])
def test_an_answer_listing_nothing_fails_nothing(payload: Any) -> None:
    verdict = judge(batch_of(3), success(payload), report_batch_item_failures=True, fifo=False)
    assert (verdict.outcome, verdict.failed_records, verdict.reported) == ("success", 0, 0)


def test_listed_items_of_a_stream_answer_are_its_distinct_identifiers() -> None:
    assert listed_items(partial_failure("1", "2", "2")) == 2
    assert listed_items(success({"batchItemFailures": []})) == 0
    assert listed_items(success("not an object")) == 0


# -- DeletedEventCount ---------------------------------------------------------------------------


class RefusingQueue:
    """A queue whose deletes SQS refuses for good (the receipt handles are stale)."""

    def __init__(self) -> None:
        self.deletes = 0

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        self.deletes += 1
        return [
            EntryFailure(m, "ReceiptHandleIsInvalid", "stale", sender_fault=True) for m in messages
        ]


def sqs_message(message_id: str) -> SqsMessage:
    convert = make_message_factory(
        queue_arn="arn:aws:sqs:us-east-1:123456789012:orders", region="us-east-1"
    )
    return convert(
        {
            "MessageId": message_id,
            "ReceiptHandle": f"rh-{message_id}",
            "MD5OfBody": "99914b932bd37a50b983c5e7c90ae93b",
            "Body": "{}",
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000000"},
        }
    )


async def test_a_delete_refused_for_good_counts_zero_deleted() -> None:
    metrics, queue = RecordingMetrics(), RefusingQueue()
    settler = Settler(cast(QueueApi, queue), on_failure=None, metrics=metrics, name=MAPPING)
    assert await settler.delete([sqs_message("a"), sqs_message("b")]) == 0
    assert metrics.calls_to("records_deleted") == [{"mapping": MAPPING, "count": 0}]


async def test_no_delete_counts_nothing() -> None:
    metrics, queue = RecordingMetrics(), RefusingQueue()
    settler = Settler(cast(QueueApi, queue), on_failure=None, metrics=metrics, name=MAPPING)
    assert await settler.delete([]) == 0
    assert (queue.deletes, metrics.calls_to("records_deleted")) == (0, [])


# -- PolledEventCount: GetRecords ----------------------------------------------------------------


def polled(metrics: RecordingMetrics) -> list[int]:
    return [call["count"] for call in metrics.calls_to("records_polled", MAPPING)]


async def test_a_read_counts_its_records_the_first_empty_one_zero_a_failed_one_nothing() -> None:
    api, metrics = FakeStreamApi(), RecordingMetrics()
    api.add_shard(SHARD)
    api.add_error(SHARD, Throttled("slow down"))  # the first read fails
    api.add_page(SHARD, [Put("a", b"x"), Put("b", b"x")])
    reader = ShardReader(
        api, shard_id=SHARD, start=StartPosition("TRIM_HORIZON"), metrics=metrics, mapping=MAPPING
    )

    def reads() -> int:
        return len([call for call in api.calls if call[0] == "get_records"])

    send, receive = anyio.create_memory_object_stream[Chunk](10)
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(reader.run, send)
        # The failed read, the records, then empty reads of the idle shard.
        await wait_until(lambda: reads() >= 5, LIMIT, "three empty reads")
        tg.cancel_scope.cancel()
    # Only the first empty read reports 0: more zeros would change no series.
    assert polled(metrics) == [2, 0]


# -- PolledEventCount: enhanced fan-out ----------------------------------------------------------


class ScriptedSubscriptions:
    """One subscription that pushes ``events``, then stays open with nothing new."""

    def __init__(self, events: list[PushEvent]) -> None:
        self.events = events
        self.pulled = 0

    @asynccontextmanager
    async def subscribe(
        self, shard_id: str, position: StartPosition
    ) -> AsyncIterator[AsyncIterator[PushEvent]]:
        yield self._events()

    async def _events(self) -> AsyncIterator[PushEvent]:
        for event in self.events:
            self.pulled += 1
            yield event
        await anyio.sleep_forever()


async def test_a_pushed_event_counts_its_records_an_empty_one_zero() -> None:
    api, metrics = FakeStreamApi(), RecordingMetrics()
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [Put("a", b"x"), Put("b", b"x"), Put("c", b"x")])
    events = [
        PushEvent([], raws[0]["SequenceNumber"], 0),  # no records: what AWS sends while idle
        PushEvent(raws, raws[-1]["SequenceNumber"], 0),
        PushEvent([], raws[-1]["SequenceNumber"], 0),
    ]
    subscriptions = ScriptedSubscriptions(events)
    reader = PushShardReader(
        api,
        subscriptions=subscriptions,
        shard_id=SHARD,
        start=StartPosition("TRIM_HORIZON"),
        metrics=metrics,
        mapping=MAPPING,
        timing=PushTiming(subscribe_interval=0.0),
    )
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(reader.run, send)
        await wait_until(lambda: subscriptions.pulled == 3, LIMIT, "three events pulled")
        await wait_until(lambda: len(polled(metrics)) == 2, LIMIT, "two events counted")
        tg.cancel_scope.cancel()
    assert polled(metrics) == [0, 3]  # the second empty event adds nothing to report
