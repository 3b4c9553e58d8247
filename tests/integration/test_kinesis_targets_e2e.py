"""A Kinesis mapping delivering to a Lambda function and to an HTTP endpoint, end to end.

The service reads moto's Kinesis and invokes (a) a function behind the Lambda Invoke API
through the real aiobotocore Lambda client, (b) an HTTP endpoint. Failures on the way (a
function error, a throttle, a 500, a 429) are retried until the batch succeeds, and only then
does the shard move on: every record arrives, in order, and the successful deliveries have no
duplicates.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.kinesis_harness import kinesis_settings, running, wait_until
from tests.support.aws import aws_client, create_stream, put_records, unique
from tests.support.invoke_api import InvokeApiServer, Throttled

pytestmark = pytest.mark.anyio


def sequence_numbers(events: list[Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for e in events for r in e["Records"]]


async def put_ten(moto_url: str, stream: str) -> list[str]:
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, stream, 1)
        written = await put_records(kinesis, stream, ((f"k{i}", b"{}", None) for i in range(10)))
    return [seq for _, seq in written]


async def test_lambda_target_retries_function_errors_and_throttles(
    moto_url: str, tmp_path: Path
) -> None:
    """The first invocation raises, the second is throttled, the third succeeds."""
    stream = unique("lam")
    written = await put_ten(moto_url, stream)
    attempts: list[str] = []

    def consumer(event: dict[str, Any], context: Any) -> dict[str, Any]:
        attempts.append("call")
        if len(attempts) == 1:
            raise ValueError("boom")
        if len(attempts) == 2:
            raise Throttled("Rate Exceeded.")
        return {"ok": True}

    with InvokeApiServer() as server:
        server.register("consumer", consumer, timeout=5)
        settings = kinesis_settings(
            endpoint_url=moto_url,
            endpoints={"lambda": server.url},
            stream=stream,
            db=tmp_path / "c.db",
            target={"type": "lambda", "function_name": "consumer"},
        )
        async with running(settings):
            await wait_until(
                lambda: [i for i in server.invocations() if i.outcome == "success"], 30, "a success"
            )
        outcomes = [i.outcome for i in server.invocations("consumer")]
        succeeded = [i.event for i in server.invocations("consumer") if i.outcome == "success"]
    assert outcomes == ["error", "throttled", "success"]
    assert sequence_numbers(succeeded) == written
    assert all(i.event == succeeded[0] for i in server.invocations("consumer")), (
        "retries resend the same batch"
    )


class HttpEndpoint:
    """A local HTTP endpoint whose answers are scripted by status code."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[int, Any]] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        self.received.append((status, await request.json()))
        return web.json_response({}, status=status)

    def __enter__(self) -> HttpEndpoint:
        import asyncio

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/events"
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/events", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(serve(),), daemon=True
        )
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def endpoint() -> Iterator[HttpEndpoint]:
    with HttpEndpoint([500, 429, 200]) as ep:
        yield ep


async def test_http_target_retries_5xx_and_429(
    moto_url: str, tmp_path: Path, endpoint: HttpEndpoint
) -> None:
    """A 500 and a 429 are retried; the 200 settles the batch and the shard moves on."""
    stream = unique("http")
    written = await put_ten(moto_url, stream)
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=tmp_path / "c.db",
        target={"type": "http", "url": endpoint.url, "timeout_seconds": 5},
    )
    async with running(settings):
        await wait_until(lambda: any(s == 200 for s, _ in endpoint.received), 30, "a 200")
    assert [s for s, _ in endpoint.received] == [500, 429, 200]
    assert sequence_numbers([body for s, body in endpoint.received if s == 200]) == written
