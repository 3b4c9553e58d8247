"""An SQS mapping in the service as a real OS process: SIGTERM with batches in flight."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import aws_client, unique
from tests.support.process import Launch, assert_graceful_shutdown, write_config
from tests.support.service_config import service_config
from tests.support.sqs import (
    create_queue,
    queue_arn,
    queue_depth,
    read_sink,
    receive_all,
    send_bodies,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def with_sqs(url: str, call: Any) -> Any:
    """Run ``call(client)`` with an SQS client, from synchronous test code."""

    async def go() -> Any:
        async with aws_client("sqs", url) as client:
            return await call(client)

    return anyio.run(go)


def test_sigterm_finishes_and_deletes_batches_in_flight(
    tmp_path: Path, sqs_url: str, launch: Launch
) -> None:
    """Two batches of ten are in the function (3 s each; visibility timeout 2 s) when SIGTERM
    arrives: intake stops, both finish, both are deleted, the exit code is 0. Throughout the
    drain the heartbeat keeps them hidden (the queue never shows more than the ten untouched
    messages), and afterwards those ten are exactly what is left: nothing dropped."""
    name = unique("term")

    async def setup(client: Any) -> tuple[str, list[str]]:
        url = await create_queue(client, name, visibility_timeout=2)
        ids = await send_bodies(client, url, (f"m{i}" for i in range(30)))
        return url, ids

    url, ids = with_sqs(sqs_url, setup)
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    mapping = {
        "name": "term",
        "event_source_arn": queue_arn(name),
        "batch_size": 10,
        "scaling_config": {"maximum_concurrency": 2},
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
            shutdown={"drain_timeout_seconds": 20},
        ),
    )
    proc = launch(config, "run.log", file_sink.env(sink, sleep=3, started=started))
    wait_for(
        lambda: started.exists() and len(started.read_text().split()) == 2,
        30,
        "two batches in flight",
    )
    proc.signal(signal.SIGTERM)
    depths = []
    while proc.proc is not None and proc.proc.poll() is None:
        depths.append(with_sqs(sqs_url, lambda client: queue_depth(client, url)))
    assert proc.wait(30) == 0

    delivered = [i for batch in read_sink(sink) for i in batch]
    assert sorted(len(batch) for batch in read_sink(sink)) == [10, 10]
    assert len(set(delivered)) == 20
    assert all(visible <= 10 for visible, _ in depths), depths
    assert with_sqs(sqs_url, lambda client: queue_depth(client, url)) == (10, 0)
    left = with_sqs(sqs_url, lambda client: receive_all(client, url, expected=10, limit=10))
    assert {m["MessageId"] for m in left} | set(delivered) == set(ids)
    assert not {m["MessageId"] for m in left} & set(delivered)

    events = assert_graceful_shutdown(proc)
    assert events.count("batch.processed") == 2
    assert max(e for e, step in enumerate(events) if step == "batch.processed") < events.index(
        "shutdown.drained"
    )
