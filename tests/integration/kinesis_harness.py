"""Helpers to run the service in the test's event loop against moto, with the recorder handler."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio

from poller.app import Service
from poller.config import Settings, parse_settings
from tests.support import recorder
from tests.support.aws import stream_arn


def kinesis_settings(
    *,
    endpoint_url: str,
    stream: str,
    db: Path,
    name: str = "m",
    target: dict[str, Any] | None = None,
    endpoints: dict[str, str] | None = None,
    **mapping: Any,
) -> Settings:
    """Settings with one Kinesis mapping on ``stream`` delivering to the recorder handler."""
    return parse_settings(
        {
            "aws": {
                "region": "us-east-1",
                "endpoint_url": endpoint_url,
                "endpoints": endpoints or {},
            },
            "checkpoints": {"path": str(db)},
            "observability": {"host": "127.0.0.1", "port": 0},
            "shutdown": {"drain_timeout_seconds": 10},
            "mappings": [
                {
                    "name": name,
                    "event_source_arn": stream_arn(stream),
                    "starting_position": mapping.pop("starting_position", "TRIM_HORIZON"),
                    "target": target
                    or {"type": "python", "handler": "tests.support.recorder:record"},
                    **mapping,
                }
            ],
        }
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """Run the service until the block ends, then stop it gracefully and wait for the exit."""
    service = Service(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.run(handle_signals=False))
        with anyio.fail_after(30):
            await service.ready.wait()
        try:
            yield service
        finally:
            service.request_stop()


async def wait_until(condition: Callable[[], Any], limit: float, what: str) -> Any:
    """Poll ``condition`` in the event loop until truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await anyio.sleep(0.05)


def delivered(stream: str) -> list[tuple[str, str]]:
    """(shard, sequence) of every record the recorder got for ``stream``."""
    return recorder.sequence_numbers(stream_arn(stream))


def batches(stream: str) -> list[list[dict[str, Any]]]:
    return list(recorder.BATCHES[stream_arn(stream)])
