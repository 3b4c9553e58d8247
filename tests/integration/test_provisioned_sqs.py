"""SQS provisioned mode end to end against moto: a backlog of thousands of messages drained by
provisioned pollers, each message delivered exactly once and deleted, the ProvisionedPollers
gauge within the configured bounds; and the service itself running a provisioned mapping.

Real aiobotocore clients over HTTP against moto's server (with the test-only SQS speed-up of
``tests/support/sqs.py``). The backlog signal is ``SqsQueue.backlog`` (GetQueueAttributes
ApproximateNumberOfMessages), counted by :class:`CountedBacklog`.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.config import SqsMapping
from poller.observability.metrics import RecordingMetrics
from poller.queues import SqsMappingRunner
from poller.sources.sqs import SqsQueue
from poller.targets.python import PythonTarget
from tests.support import file_sink
from tests.support.aws import REGION
from tests.support.process import Launch, assert_graceful_shutdown, write_config
from tests.support.service_config import service_config
from tests.support.sqs import (
    Drain,
    NewQueue,
    delivered_ids,
    drained,
    eventually,
    handler,
    queue_depth,
    read_sink,
    send_bodies,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

BOUNDS = {"minimum_pollers": 2, "maximum_pollers": 8}


class CountedBacklog:
    """The real ``SqsQueue.backlog`` (GetQueueAttributes), counting its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.queue: SqsQueue | None = None

    async def backlog(self) -> int | None:
        assert self.queue is not None, "set by provisioned_runner"
        self.reads += 1
        return await self.queue.backlog()


@asynccontextmanager
async def provisioned_runner(
    sqs: Any, arn: str, backlog: CountedBacklog, metrics: RecordingMetrics
) -> AsyncIterator[None]:
    """A provisioned mapping's runner on ``arn`` until the block ends, then shut down."""
    mapping = SqsMapping.model_validate(
        {
            "name": "prov",
            "event_source_arn": arn,
            "batch_size": 10,
            "receive_wait_time_seconds": 1,
            "provisioned_poller_config": BOUNDS,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
        }
    )
    target = PythonTarget(handler, timeout_seconds=60, function_arn="python:test")
    queue = SqsQueue(receive_client=sqs, settle_client=sqs, queue_arn=arn, region=REGION)
    backlog.queue = queue
    stopping = anyio.Event()
    runner = SqsMappingRunner(
        mapping, queue=queue, target=target, stopping=stopping, metrics=metrics, backlog=backlog
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            yield
            stopping.set()
    finally:
        await target.aclose()


async def test_provisioned_pollers_drain_a_backlog_once_each_within_their_bounds(
    sqs: Any, new_queue: NewQueue
) -> None:
    """3,000 messages: every one delivered exactly once and deleted; the gauge starts at the
    minimum, grows while the backlog lasts, and never leaves the bounds until shutdown, which
    counts every poller out."""
    queue = await new_queue("provisioned")
    ids = await send_bodies(sqs, queue.url, (f"message {i}" for i in range(3000)))
    metrics, backlog = RecordingMetrics(), CountedBacklog()

    def gauge() -> list[int]:
        return [int(c["pollers"]) for c in metrics.calls_to("provisioned_pollers", "prov")]

    async with provisioned_runner(sqs, queue.arn, backlog, metrics):
        await eventually(lambda: drained(sqs, queue.url, queue.arn, ids), 180, "every message")
        while_running = gauge()
    assert Counter(delivered_ids(queue.arn)) == Counter(ids), "each message exactly once"
    assert backlog.reads >= 1
    started = while_running[: BOUNDS["minimum_pollers"]]
    assert started == [1, 2], "the minimum starts at once"
    after_start = while_running[BOUNDS["minimum_pollers"] :]
    assert all(BOUNDS["minimum_pollers"] <= n <= BOUNDS["maximum_pollers"] for n in after_start)
    assert max(while_running) > BOUNDS["minimum_pollers"], f"grew on the backlog: {gauge()}"
    assert gauge()[-1] == 0, "every poller ended at shutdown"
    assert metrics.count("records_deleted", "prov") == 3000


async def test_the_service_runs_a_provisioned_fifo_mapping(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """The service builds a provisioned mapping from its configuration and drains a FIFO
    queue with every group in order."""
    queue = await new_queue("provisioned.fifo")
    entries = [(f"g{i % 5}", f"m{i}") for i in range(200)]
    ids = [
        (
            await sqs.send_message(
                QueueUrl=queue.url,
                MessageBody=body,
                MessageGroupId=group,
                MessageDeduplicationId=body,
            )
        )["MessageId"]
        for group, body in entries
    ]
    await drain(queue, ids, 120, "200 FIFO deliveries", provisioned_poller_config=BOUNDS)
    got = delivered_ids(queue.arn)
    assert Counter(got) == Counter(ids)
    by_id = dict(zip(ids, entries, strict=True))
    for group in {g for g, _ in entries}:
        sent = [i for i in ids if by_id[i][0] == group]
        assert [i for i in got if by_id[i][0] == group] == sent, f"group {group} in order"


@pytest.mark.slow
async def test_sigterm_settles_ten_batches_in_flight_per_poller(
    tmp_path: Path, sqs: Any, sqs_url: str, new_queue: NewQueue, launch: Launch
) -> None:
    """Two provisioned pollers, one message a batch, a function that takes 3 s (visibility
    timeout 2 s): SIGTERM arrives with 20 batches in flight. Each finishes and is deleted,
    the exit code is 0, and exactly the 40 untouched messages are left."""
    queue = await new_queue("provisioned-term", visibility_timeout=2)
    await send_bodies(sqs, queue.url, (f"m{i}" for i in range(60)))
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    mapping = {
        "name": "term",
        "event_source_arn": queue.arn,
        "batch_size": 1,
        "provisioned_poller_config": {"minimum_pollers": 2, "maximum_pollers": 2},
        "receive_wait_time_seconds": 1,
        "target": {"type": "python", "handler": "tests.support.sqs:sink_handler"},
    }
    config = write_config(
        tmp_path / "poller.yaml",
        service_config(
            sqs_url,
            mapping,
            checkpoints={"path": str(tmp_path / "checkpoints.db")},
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 30},
        ),
    )
    proc = launch(config, "run.log", file_sink.env(sink, sleep=3, started=started))
    await wait_until(
        lambda: started.exists() and len(started.read_text().split()) == 20,
        60,
        "20 batches in flight",
    )
    proc.signal(signal.SIGTERM)
    assert await anyio.to_thread.run_sync(proc.wait, 60) == 0
    delivered = [i for batch in read_sink(sink) for i in batch]
    assert len(delivered) == len(set(delivered)) == 20
    assert await queue_depth(sqs, queue.url) == (40, 0)
    events = assert_graceful_shutdown(proc)
    assert events.count("batch.processed") == 20
