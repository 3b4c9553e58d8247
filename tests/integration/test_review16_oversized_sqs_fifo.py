"""Hostile review of issue 16, item 3, end to end on moto's SQS: a FIFO message group whose
head is too large for any invocation, on a queue with a redrive policy.

The runner cuts at ``MAX_BYTES`` (its ``max_bytes`` seam stands for Lambda's 6 MB, since real
SQS messages always fit). SQS itself (moto) counts the receives and moves messages to the
dead-letter queue.
"""

from __future__ import annotations

from typing import Any

import pytest

from poller.testing import RecordingMetrics, RecordingTarget
from tests.integration.test_oversized_e2e import HUGE, runner_at_max_bytes
from tests.support.aws import aws_client, unique
from tests.support.sqs import fifo_with_dlq, send_entries, total_depth
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


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
        queue, dlq = await fifo_with_dlq(sqs, name)
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
        await wait_until(lambda: is_(total_depth(sqs_url, queue), 0), 60, "the queue empty")
    async with aws_client("sqs", sqs_url) as sqs:
        moved = (await sqs.receive_message(QueueUrl=dlq.url, MaxNumberOfMessages=10)).get(
            "Messages", []
        )
    assert [m["Body"] for m in moved] == [HUGE]
    assert [r["body"] for event in target.events for r in event["Records"]] == ["small"]
