"""An SQS mapping in the service as a real OS process: SIGTERM with batches in flight."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import sqs as support
from tests.support.aws import aws_client, unique
from tests.support.process import ServiceProcess, wait_for, write_config
from tests.support.sqs import create_queue, queue_arn, queue_depth, read_sink, receive_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sqs_url() -> str:
    return support.shared_sqs_server()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


def sqs(url: str, call: Any) -> Any:
    """Run ``call(client)`` with an SQS client, from synchronous test code."""

    async def go() -> Any:
        async with aws_client("sqs", url) as client:
            return await call(client)

    return anyio.run(go)


def test_sigterm_finishes_and_deletes_batches_in_flight(
    tmp_path: Path, sqs_url: str, processes: list[ServiceProcess]
) -> None:
    """Two batches of ten are in the function (3 s each; visibility timeout 2 s) when SIGTERM
    arrives: intake stops, both finish, both are deleted, the exit code is 0. Throughout the
    drain the heartbeat keeps them hidden (the queue never shows more than the ten untouched
    messages), and afterwards those ten are exactly what is left: nothing dropped."""
    name = unique("term")

    async def setup(client: Any) -> tuple[str, list[str]]:
        url = await create_queue(client, name, visibility_timeout=2)
        ids = await support.send_bodies(client, url, (f"m{i}" for i in range(30)))
        return url, ids

    url, ids = sqs(sqs_url, setup)
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    config = write_config(
        tmp_path / "poller.yaml",
        {
            "aws": {"region": "us-east-1", "endpoint_url": sqs_url},
            "checkpoints": {"path": str(tmp_path / "checkpoints.db")},
            "logging": {"format": "json"},
            "observability": {"port": 0},
            "shutdown": {"drain_timeout_seconds": 20},
            "mappings": [
                {
                    "name": "term",
                    "event_source_arn": queue_arn(name),
                    "batch_size": 10,
                    "scaling_config": {"maximum_concurrency": 2},
                    "receive_wait_time_seconds": 1,
                    "target": {"type": "python", "handler": "tests.support.sqs:sink_handler"},
                }
            ],
        },
    )
    env = {
        "POLLER_TEST_SINK": str(sink),
        "POLLER_TEST_SLEEP": "3",
        "POLLER_TEST_STARTED": str(started),
    }
    proc = ServiceProcess(config, tmp_path / "run.log", env).start()
    processes.append(proc)
    wait_for(
        lambda: started.exists() and len(started.read_text().split()) == 2,
        30,
        "two batches in flight",
    )
    proc.signal(signal.SIGTERM)
    depths = []
    while proc.proc is not None and proc.proc.poll() is None:
        depths.append(sqs(sqs_url, lambda client: queue_depth(client, url)))
    assert proc.wait(30) == 0

    delivered = [i for batch in read_sink(sink) for i in batch]
    assert sorted(len(batch) for batch in read_sink(sink)) == [10, 10]
    assert len(set(delivered)) == 20
    assert all(visible <= 10 for visible, _ in depths), depths
    assert sqs(sqs_url, lambda client: queue_depth(client, url)) == (10, 0)
    left = sqs(sqs_url, lambda client: receive_all(client, url, expected=10, limit=10))
    assert {m["MessageId"] for m in left} | set(delivered) == set(ids)
    assert not {m["MessageId"] for m in left} & set(delivered)

    events = [line["event"] for line in proc.logs()]
    assert events.count("batch.processed") == 2
    for step in ("signal.received", "shutdown.intake_stopped", "shutdown.drained"):
        assert step in events, f"{step} missing from {events}"
    assert events.index("shutdown.drained") < events.index("service.stopped")
    assert max(e for e, step in enumerate(events) if step == "batch.processed") < events.index(
        "shutdown.drained"
    )
