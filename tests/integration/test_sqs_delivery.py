"""SQS mappings end to end against moto: delivery and deletion at volume, the 6 MB cut, the
concurrency cap, scaling, and the visibility heartbeat.

Real aiobotocore clients over HTTP against moto's server (with the test-only SQS speed-up of
``tests/support/sqs.py``); the function is the recording Python handler of that module.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.observability.metrics import RecordingMetrics
from tests.support import sqs as support
from tests.support.conformance import assert_matches, recorded
from tests.support.sqs import (
    Drain,
    NewQueue,
    delivered_ids,
    drained,
    eventually,
    invocations,
    mapping_runner,
    send_bodies,
)

pytestmark = pytest.mark.anyio


def event_bytes(records: list[dict[str, Any]]) -> int:
    """The size of the event Lambda would get, as the Lambda target encodes it."""
    text = json.dumps({"Records": records}, separators=(",", ":"), ensure_ascii=False)
    return len(text.encode("utf-8"))


def recorded_record_shape() -> dict[str, Any]:
    """A record AWS delivered from a standard queue (test_sqs_event_source_mapping_batch_size
    [15]), with its literal body and the recorder's SentTimestamp word made wildcards."""
    name = "TestSQSEventSourceMapping::test_sqs_event_source_mapping_batch_size[15]"
    [first, *_] = recorded("esm-sqs.json", f"test_lambda_integration_sqs.py::{name}", "Records")
    assert first["attributes"]["SentTimestamp"] == "sent-timestamp"
    return {**first, "body": "<body>", "attributes": {**first["attributes"], "SentTimestamp": "x"}}


# serial: 5,000 deliveries within 90 s is a throughput floor (moto and the service share the
# test process), which other workers' load on 2 cores halves.
@pytest.mark.serial
async def test_5000_messages_are_delivered_once_and_deleted(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """5,000 messages, batch_size 100, a 1-second window: each is delivered exactly once (the
    queue's 30-second visibility timeout never lapses), in records shaped as AWS's; batches
    stay within 100 messages, and the queue ends empty."""
    queue = await new_queue("bulk")
    ids = await send_bodies(sqs, queue.url, (f"message {i}" for i in range(5000)))
    await drain(
        queue, ids, 90, "5,000 deliveries", batch_size=100, maximum_batching_window_in_seconds=1
    )
    calls = invocations(queue.arn)
    got = delivered_ids(queue.arn)
    assert Counter(got) == Counter(ids), "each message exactly once"
    assert max(len(c.records) for c in calls) <= 100
    assert any(len(c.records) > 10 for c in calls), "batches gather past one receive"
    assert all(c.error is None for c in calls)
    bodies = {r["messageId"]: r["body"] for c in calls for r in c.records}
    assert bodies[ids[1234]] == "message 1234"
    shape = recorded_record_shape()
    for call in calls:
        for record in call.records:
            assert record["attributes"]["SentTimestamp"].isdigit()
            shown = {**record, "attributes": {**record["attributes"], "SentTimestamp": "x"}}
            assert_matches(shown, shape, {})


async def test_batches_are_cut_at_6_mb(sqs: Any, new_queue: NewQueue, drain: Drain) -> None:
    """Messages of 500 kB, two pollers: a batch_size of 100 cannot be reached; every event
    stays within 6 MB (metadata included) and the messages past the cut start the next
    batch."""
    queue = await new_queue("big")
    ids = [
        (await sqs.send_message(QueueUrl=queue.url, MessageBody=f"{i:04d}" + "x" * 500_000))[
            "MessageId"
        ]
        for i in range(30)
    ]
    await drain(
        queue,
        ids,
        60,
        "every large message",
        batch_size=100,
        maximum_batching_window_in_seconds=3,
        scaling_config={"maximum_concurrency": 2},
    )
    sizes = [event_bytes(c.records) for c in invocations(queue.arn)]
    assert max(sizes) <= MAX_PAYLOAD_BYTES, sizes
    assert max(sizes) > MAX_PAYLOAD_BYTES - 2 * 500_000, f"a batch was cut by size: {sizes}"
    assert Counter(delivered_ids(queue.arn)) == Counter(ids)


async def test_maximum_concurrency_caps_batches_in_flight(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """maximum_concurrency 3: the handler, which takes 0.2 s per batch, never has more than
    three batches at once, and does have three."""
    queue = await new_queue("cap")
    ids = await send_bodies(sqs, queue.url, (f"m{i}" for i in range(150)))
    lock = threading.Lock()
    now = {"in_flight": 0, "peak": 0}

    def slow(records: list[dict[str, Any]]) -> None:
        with lock:
            now["in_flight"] += 1
            now["peak"] = max(now["peak"], now["in_flight"])
        time.sleep(0.2)
        with lock:
            now["in_flight"] -= 1

    support.BEHAVIOUR[queue.arn] = slow
    await drain(
        queue, ids, 60, "every message", batch_size=10, scaling_config={"maximum_concurrency": 3}
    )
    assert now["peak"] == 3
    assert Counter(delivered_ids(queue.arn)) == Counter(ids)


async def test_pollers_scale_up_with_a_backlog_and_down_when_idle(
    sqs: Any, new_queue: NewQueue
) -> None:
    """Full batches add pollers beyond the five it starts with; once the queue is empty, empty
    long polls retire them down to two. (A 1-second long poll instead of 20 keeps it quick.)"""
    queue = await new_queue("scale")
    ids = await send_bodies(sqs, queue.url, (f"m{i}" for i in range(400)))
    support.BEHAVIOUR[queue.arn] = lambda records: time.sleep(0.3)
    metrics = RecordingMetrics()

    def pollers() -> list[int]:
        return [call["pollers"] for call in metrics.calls_to("sqs_concurrency", "scale")]

    async def back_to(count: int) -> bool:
        return pollers()[-1:] == [count]

    mapping = {"name": "scale", "event_source_arn": queue.arn, "batch_size": 10}
    async with mapping_runner(mapping, receive=sqs, settle=sqs, metrics=metrics):
        await eventually(lambda: drained(sqs, queue.url, queue.arn, ids), 60, "every message")
        peak = max(pollers())
        await eventually(lambda: back_to(2), 20, "back to two pollers")
    assert peak > 5, pollers()
    assert pollers()[-1] == 0, "every poller ended at shutdown"
    assert Counter(delivered_ids(queue.arn)) == Counter(ids)
    for hook in ("records_polled", "records_invoked", "records_deleted"):
        assert metrics.count(hook, "scale") == 400, hook
    assert metrics.count("invocation", "scale", outcome="success") == 40
    assert metrics.count("records_failed_invoke", "scale") == 0
    assert metrics.last("sqs_in_flight", "scale") == {"mapping": "scale", "batches": 0}
    assert max(c["batches"] for c in metrics.calls_to("sqs_in_flight", "scale")) > 1


async def test_heartbeat_keeps_a_slow_batch_hidden(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """Visibility timeout 2 s, a handler that takes 6 s: the heartbeat extends the messages
    while the batch runs, so no other poller receives them meanwhile; each message is
    delivered once and deleted at the end."""
    queue = await new_queue("heartbeat", visibility_timeout=2)
    ids = await send_bodies(sqs, queue.url, (f"m{i}" for i in range(5)))
    support.BEHAVIOUR[queue.arn] = lambda records: time.sleep(6)
    await drain(
        queue,
        ids,
        30,
        "the slow batch settled",
        batch_size=10,
        scaling_config={"maximum_concurrency": 4},
    )
    # Three other pollers were long-polling all along: a lapse would have re-delivered.
    assert Counter(delivered_ids(queue.arn)) == Counter(ids), "no message delivered twice"
    calls = invocations(queue.arn)
    assert {r["attributes"]["ApproximateReceiveCount"] for c in calls for r in c.records} == {"1"}
    assert all(c.finished - c.started >= 6 for c in calls)
