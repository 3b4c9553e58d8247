"""Hostile review of issue 16, item 3, end to end on moto's SQS: a FIFO message group whose
head is too large for any invocation, on a queue with a redrive policy.

The runner cuts at ``MAX_BYTES`` (its ``max_bytes`` seam stands for Lambda's 6 MB, since real
SQS messages always fit). SQS itself (moto) counts the receives and moves messages to the
dead-letter queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from poller.aws.clients import ClientFactory
from poller.config import SqsMapping
from poller.queues import SqsMappingRunner
from poller.retry import Backoff
from poller.sources.sqs import SqsQueue
from poller.testing import RecordingMetrics, RecordingTarget
from tests.support.aws import CREDENTIALS, REGION, aws_client, unique
from tests.support.sqs import Queue, create_queue, queue_depth, send_entries
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

MAX_BYTES = 6_000
HUGE = "H" * 8_000


@asynccontextmanager
async def runner_at_max_bytes(
    sqs_url: str, arn: str, target: RecordingTarget, metrics: RecordingMetrics
) -> AsyncIterator[None]:
    clients = ClientFactory(region=REGION, endpoint_url=sqs_url, credentials=CREDENTIALS)
    try:
        client = await clients.client("sqs")
        queue = SqsQueue(receive_client=client, settle_client=client, queue_arn=arn, region=REGION)
        mapping = SqsMapping.model_validate(
            {
                "name": "orders",
                "event_source_arn": arn,
                "target": {"type": "python", "handler": "tests.support.sqs:handler"},
                "receive_wait_time_seconds": 1,
            }
        )
        stopping = anyio.Event()
        runner = SqsMappingRunner(
            mapping,
            queue=queue,
            target=target,
            stopping=stopping,
            metrics=metrics,
            max_bytes=MAX_BYTES,
            backoff=Backoff(initial=0.01, maximum=0.05),
        )
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                yield
                stopping.set()
    finally:
        await clients.aclose()


async def depth(sqs_url: str, queue: Queue) -> int:
    async with aws_client("sqs", sqs_url) as sqs:
        return sum(await queue_depth(sqs, queue.url))


async def is_(count: Any, expected: int) -> bool:
    return bool(await count == expected)


async def test_a_healthy_fifo_message_behind_an_oversized_one_is_invoked_not_dead_lettered(
    sqs_url: str,
) -> None:
    """Group g holds [HUGE, "small"]; maxReceiveCount 2. poller gives HUGE back for the DLQ
    and "small" with it (the group's order), each receive: "small"'s receive count climbs with
    HUGE's, and SQS moves both to the dead-letter queue. "small" fits an invocation and was
    never invoked. It should reach the function once HUGE is gone."""
    name = unique("ovf")
    async with aws_client("sqs", sqs_url) as sqs:
        dlq = Queue(f"{name}-dlq.fifo", await create_queue(sqs, f"{name}-dlq.fifo"))
        queue = Queue(
            f"{name}.fifo",
            await create_queue(sqs, f"{name}.fifo", dlq_arn=dlq.arn, max_receive_count=2),
        )
        await send_entries(
            sqs,
            queue.url,
            (
                {"MessageBody": body, "MessageGroupId": "g", "MessageDeduplicationId": str(i)}
                for i, body in enumerate([HUGE, "small"])
            ),
        )
    target, metrics = RecordingTarget(), RecordingMetrics()
    async with runner_at_max_bytes(sqs_url, queue.arn, target, metrics):
        await wait_until(lambda: is_(depth(sqs_url, queue), 0), 60, "the queue empty")
    async with aws_client("sqs", sqs_url) as sqs:
        moved = (await sqs.receive_message(QueueUrl=dlq.url, MaxNumberOfMessages=10)).get(
            "Messages", []
        )
    assert [m["Body"] for m in moved] == [HUGE]
    assert [r["body"] for event in target.events for r in event["Records"]] == ["small"]
