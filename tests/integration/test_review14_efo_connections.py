"""Hostile review 14: a SubscribeToShard call that never opens its subscription must not keep
its connection.

``KinesisSubscriptions`` closes the HTTP response when a subscription it opened is left. But
aiobotocore returns from ``subscribe_to_shard`` only once the ``initial-response`` event has
been read from the body: when the call is cancelled after the response headers and before that
event (a lease lost, a drain), or the stream does not begin with it, the response is never
handed back and nothing closes it. The socket stays established and out of the pool for as
long as the service keeps the stream open (on AWS, a live subscription the next owner is
refused for), and every retry leaks one more.

The same holds when the read timeout fires before that event (a service that answers and
then stalls: an outage the reader retries for as long as it lasts, leaking a socket each time,
until the process runs out of file descriptors and every other connection fails too).

A tiny aiohttp server here plays the service (no emulator can be told to hold its
``initial-response`` back); the client is the service's own (``purpose="source"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from aiohttp import web

from poller.errors import SourceError
from poller.ports import StartPosition
from poller.sources.kinesis_efo import KinesisSubscriptions
from tests.integration.test_kinesis_efo_source import RECORDS, Sources, connections_to
from tests.support.aws import stream_arn
from tests.support.process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

CONSUMER = f"{stream_arn('s')}/consumer/c:1700000000"
#: How long the service side would keep a stream open (AWS: 5 minutes); the test is done sooner.
HELD_OPEN = 30.0


@contextlib.asynccontextmanager
async def service(first_frame: bytes) -> AsyncIterator[str]:
    """A SubscribeToShard endpoint that answers 200 with an event stream, writes
    ``first_frame`` (b"": the headers alone) and keeps the stream open; yields its URL."""

    done = anyio.Event()

    async def subscribe(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        await response.write(first_frame)
        with anyio.move_on_after(HELD_OPEN):
            await done.wait()  # the stream stays open until the test is done with it
        return response

    app = web.Application()
    app.router.add_post("/", subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        done.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def subscriptions_at(
    url: str, read_timeout: float = 30
) -> AsyncIterator[KinesisSubscriptions]:
    sources = Sources(url)
    try:
        yield KinesisSubscriptions(await sources.client(read_timeout), CONSUMER)
    finally:
        await sources.aclose()


async def test_a_subscribe_cancelled_before_its_initial_response_closes_its_connection() -> None:
    async with service(b"") as url, subscriptions_at(url) as subs:
        with anyio.move_on_after(0.5) as waited:
            async with subs.subscribe("shardId-0", StartPosition("LATEST")):
                pytest.fail("no initial-response was sent: the subscription cannot open")
        assert waited.cancelled_caught

        await wait_until(
            lambda: not connections_to(url), 2.0, "the cancelled call's socket to close"
        )


async def test_a_subscribe_timed_out_before_its_initial_response_leaks_no_connection() -> None:
    """The reader retries a timed-out subscribe for as long as the service stalls: no attempt
    may keep its socket."""
    attempts = 3
    async with service(b"") as url, subscriptions_at(url, read_timeout=0.3) as subs:
        failures: list[Any] = []
        for _ in range(attempts):
            try:
                async with subs.subscribe("shardId-0", StartPosition("LATEST")):
                    pytest.fail("no initial-response was sent: the subscription cannot open")
            except SourceError as exc:
                failures.append(exc)
        assert len(failures) == attempts
        assert all("SocketTimeoutError" in str(failure) for failure in failures)

        await wait_until(
            lambda: not connections_to(url), 2.0, "the timed-out calls' sockets to close"
        )


async def test_a_stream_without_an_initial_response_leaks_no_connection_per_retry() -> None:
    """Every attempt fails (and is retried by the reader): none may keep its socket."""
    attempts = 5
    async with service(RECORDS) as url, subscriptions_at(url) as subs:
        failures: list[Any] = []
        for _ in range(attempts):
            try:
                async with subs.subscribe("shardId-0", StartPosition("LATEST")):
                    pytest.fail("the stream did not open with an initial-response")
            except SourceError as exc:
                failures.append(exc)
        assert len(failures) == attempts

        await wait_until(lambda: not connections_to(url), 2.0, "the failed calls' sockets to close")
