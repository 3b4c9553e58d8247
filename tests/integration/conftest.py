"""Fixtures shared by the integration tests: emulator clients, the SQS tests' server, cleanup of
the recording handlers' per-source state, and service subprocesses that never outlive a test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import recorder
from tests.support import sqs as sqs_support
from tests.support.aws import aws_client, unique
from tests.support.process import Launch, ServiceProcess
from tests.support.service import running
from tests.support.sqs import Drain, NewQueue, Queue, drained, eventually, sqs_settings


@pytest.fixture
async def kinesis(moto_url: str) -> AsyncIterator[Any]:
    """A Kinesis client on the session's moto server."""
    async with aws_client("kinesis", moto_url) as client:
        yield client


@pytest.fixture(scope="session")
def sqs_url() -> str:
    """The SQS tests' own moto server, with the test-only SQS speed-up (tests/support/sqs.py)."""
    return sqs_support.shared_sqs_server()


@pytest.fixture
async def sqs(sqs_url: str) -> AsyncIterator[Any]:
    """An SQS client on :func:`sqs_url`."""
    async with aws_client("sqs", sqs_url) as client:
        yield client


@pytest.fixture
def recorded_streams() -> Iterator[list[str]]:
    """Source ARNs whose batches and behaviour the recorder handler forgets after the test
    (its state is global: a later test must not see this one's batches)."""
    arns: list[str] = []
    yield arns
    for arn in arns:
        recorder.clear(arn)


@pytest.fixture
async def new_queue(sqs: Any) -> AsyncIterator[NewQueue]:
    """Creates queues named after a prefix (``.fifo`` names make FIFO queues; keywords go to
    :func:`~tests.support.sqs.create_queue`); the SQS handler forgets their invocations and
    behaviour after the test."""
    made: list[Queue] = []

    async def make(prefix: str, **attributes: Any) -> Queue:
        name = unique(prefix.removesuffix(".fifo")) + (".fifo" if prefix.endswith(".fifo") else "")
        queue = Queue(name, await sqs_support.create_queue(sqs, name, **attributes))
        made.append(queue)
        return queue

    yield make
    for queue in made:
        sqs_support.forget(queue.arn)


@pytest.fixture
def drain(sqs: Any, sqs_url: str, tmp_path: Path) -> Drain:
    """Runs the service with one mapping on a queue (see :func:`~tests.support.sqs.sqs_settings`)
    until the given messages were delivered and the queue is empty, then stops it."""

    async def run(queue: Queue, ids: list[str], limit: float, what: str, **mapping: Any) -> None:
        settings = sqs_settings(
            endpoint_url=sqs_url, queue=queue.name, db=tmp_path / "c.db", **mapping
        )
        async with running(settings):
            await eventually(lambda: drained(sqs, queue.url, queue.arn, ids), limit, what)

    return run


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts ``poller run`` subprocesses (config, log file name under tmp_path, environment);
    every one still running when the test ends is killed."""
    started: list[ServiceProcess] = []

    def start(config: Path, log: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(config, tmp_path / log, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
