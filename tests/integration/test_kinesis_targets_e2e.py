"""A Kinesis mapping delivering to a Lambda function and to an HTTP endpoint, end to end.

The service reads moto's Kinesis and invokes (a) a function behind the Lambda Invoke API
through the real aiobotocore Lambda client, (b) an HTTP endpoint. Failures on the way (a
function error, a throttle, a 500, a 429) are retried until the batch succeeds, and only then
does the shard move on: every record arrives, in order, and the successful deliveries have no
duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.kinesis_harness import kinesis_settings, lambda_settings
from tests.integration.stream_errors_harness import stream_with
from tests.support.aws import unique
from tests.support.http_server import ThreadedServer
from tests.support.invoke_api import InvokeApiServer, Throttled
from tests.support.service import run_until

pytestmark = pytest.mark.anyio


def sequence_numbers(events: list[Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for e in events for r in e["Records"]]


async def put_ten(moto_url: str, stream: str) -> list[str]:
    return await stream_with(moto_url, stream, [(f"k{i}", b"{}") for i in range(10)])


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
        settings = lambda_settings(moto_url, server, stream, tmp_path / "c.db", function="consumer")
        await run_until(
            settings,
            lambda: [i for i in server.invocations() if i.outcome == "success"],
            30,
            "a success",
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

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        return app

    def __enter__(self) -> HttpEndpoint:
        self._server = ThreadedServer(self._app, name="http-endpoint").start()
        self.url = f"{self._server.url}/events"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


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
    await run_until(settings, lambda: any(s == 200 for s, _ in endpoint.received), 30, "a 200")
    assert [s for s, _ in endpoint.received] == [500, 429, 200]
    assert sequence_numbers([body for s, body in endpoint.received if s == 200]) == written
