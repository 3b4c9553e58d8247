"""Hostile endpoints and handlers against the real service: HTTP answers too big to hold,
requests aiohttp refuses to send, handlers that raise ``KeyboardInterrupt`` or never return.

HTTP targets talk to a real aiohttp server (``tests.support.http_server``); the service tests
run ``python -m poller run`` against moto's Kinesis and drive it with signals, as
``test_service_process`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from poller.aws.clients import ClientFactory
from poller.config import HttpTargetConfig
from poller.core.batching import MAX_PAYLOAD_BYTES as MAX_RESPONSE_BYTES
from poller.targets import build_target
from poller.types import Outcome, Target
from tests.support import file_sink
from tests.support.aws import stream_arn, stream_holding, unique
from tests.support.http_server import ThreadedServer
from tests.support.process import Launch, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for

EVENT: dict[str, Any] = {"Records": [{"kinesis": {"sequenceNumber": "1", "data": "e30="}}]}
CHUNK = b"x" * 65536
GZIP_BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024))


class HostileEndpoint:
    """Answers that a careless client would hold in memory or wait on forever."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/endless", self._endless)
        app.router.add_post("/declared-huge", self._declared_huge)
        app.router.add_post("/at-limit", self._at_limit)
        app.router.add_post("/ok", self._ok)
        app.router.add_post("/deep", self._deep)
        app.router.add_post("/gzip-bomb", self._gzip_bomb)
        return app

    async def _gzip_bomb(self, request: web.Request) -> web.StreamResponse:
        """A 200 of 64 KB gzip that inflates to 64 MB (aiohttp decompresses transparently)."""
        self.paths.append(request.path)
        return web.Response(body=GZIP_BOMB, headers={"Content-Encoding": "gzip"})

    async def _deep(self, request: web.Request) -> web.StreamResponse:
        """A 200 whose JSON nests deeper than Python's parser recurses (200 KB)."""
        self.paths.append(request.path)
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """A 200 whose chunked body never ends."""
        self.paths.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client hung up
            while True:
                await response.write(CHUNK)
        return response

    async def _declared_huge(self, request: web.Request) -> web.StreamResponse:
        """A 200 that declares 400 MB, sends a little, then stalls."""
        self.paths.append(request.path)
        response = web.StreamResponse()
        response.content_length = 400 * 1024 * 1024
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client hung up
            await response.write(CHUNK)
            await asyncio.sleep(30)
        return response

    async def _at_limit(self, request: web.Request) -> web.StreamResponse:
        """A JSON string of exactly the limit, in bytes."""
        self.paths.append(request.path)
        return web.Response(body=b'"' + b"x" * (MAX_RESPONSE_BYTES - 2) + b'"')

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        return web.json_response({})


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[HostileEndpoint, str]]:
    endpoint = HostileEndpoint()
    with ThreadedServer(endpoint.app, name="hostile-endpoint", shutdown_timeout=1) as server:
        yield endpoint, server.url


async def http_target(url: str, headers: dict[str, str] | None = None) -> Target:
    """An HTTP target built as the service builds it; ``model_construct`` skips validation so
    that the target itself meets what validation now refuses."""
    config = HttpTargetConfig.model_construct(
        type="http", url=url, headers=headers or {}, timeout_seconds=10.0
    )
    factory = ClientFactory(region="us-east-1", credentials={})
    return await build_target(
        config, clients=factory, partition="aws", region="us-east-1", account_id="1" * 12
    )


async def invoke_once(target: Target) -> Any:
    try:
        return await target.invoke(EVENT)
    finally:
        await target.aclose()


# -- HTTP bodies over the 6 MB limit (defect 19) --------------------------------------------


@pytest.mark.anyio
async def test_http_endless_body_is_a_function_error_naming_the_limit(
    hostile: tuple[HostileEndpoint, str],
) -> None:
    _, url = hostile
    started = time.monotonic()

    result = await invoke_once(await http_target(url + "/endless"))

    assert time.monotonic() - started < 5, "the body is given up at the limit, not the timeout"
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.status_code == 200
    assert result.error == (
        f"endpoint response too large: more than {MAX_RESPONSE_BYTES} bytes, "
        f"over the {MAX_RESPONSE_BYTES}-byte limit"
    )
    assert result.payload["errorType"] == "Function.ResponseSizeTooLarge"


@pytest.mark.anyio
async def test_http_declared_length_over_the_limit_fails_before_reading(
    hostile: tuple[HostileEndpoint, str],
) -> None:
    _, url = hostile
    started = time.monotonic()

    result = await invoke_once(await http_target(url + "/declared-huge"))

    assert time.monotonic() - started < 5
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None
    assert f"{400 * 1024 * 1024} bytes" in result.error


@pytest.mark.anyio
async def test_http_body_at_the_limit_is_accepted(hostile: tuple[HostileEndpoint, str]) -> None:
    _, url = hostile

    result = await invoke_once(await http_target(url + "/at-limit"))

    assert result.outcome is Outcome.SUCCESS
    assert len(result.payload) == MAX_RESPONSE_BYTES - 2


@pytest.mark.anyio
async def test_http_compressed_body_is_limited_after_decompression(
    hostile: tuple[HostileEndpoint, str],
) -> None:
    """The 6 MB limit applies to the body as inflated, and the rest is never inflated."""
    _, url = hostile
    started = time.monotonic()

    result = await invoke_once(await http_target(url + "/gzip-bomb"))

    assert time.monotonic() - started < 5
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "Function.ResponseSizeTooLarge"


@pytest.mark.anyio
async def test_http_2xx_whose_json_nests_too_deep_is_a_success_with_a_text_payload(
    hostile: tuple[HostileEndpoint, str],
) -> None:
    """Like any 2xx body that does not parse: a success, the body kept as text (a partial
    batch response check reports it as malformed); not a function error on every retry."""
    _, url = hostile

    result = await invoke_once(await http_target(url + "/deep"))

    assert result.outcome is Outcome.SUCCESS
    assert result.payload_is_json is False
    assert result.payload.startswith("[[[")


# -- requests aiohttp refuses to send (defect 13) -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("credentials", "headers"),
    [
        ("", {"X-Api-Key": "k\r\nX-Injected: 1"}),
        ("user:secret@", {"Authorization": "Bearer t0ken"}),
    ],
    ids=["crlf-header", "userinfo-and-authorization"],
)
async def test_http_request_aiohttp_refuses_is_a_function_error_not_a_crash(
    hostile: tuple[HostileEndpoint, str], credentials: str, headers: dict[str, str]
) -> None:
    endpoint, url = hostile
    target = await http_target(url.replace("http://", "http://" + credentials) + "/ok", headers)
    before = len(endpoint.paths)

    result = await invoke_once(target)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error == "target raised ValueError"
    assert len(endpoint.paths) == before, "nothing was sent"


# -- answers that are not HTTP (adversarial review) -----------------------------------------

#: Raw answers by path: what no HTTP library produces, so they are written byte by byte.
RAW_ANSWERS: dict[str, bytes] = {
    "/short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",
    "/bad-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"),
    "/cut-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc",
    "/huge-header": (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 65536 + b"\r\nContent-Length: 2\r\n\r\n{}"
    ),
    "/not-http": b"garbage\r\n\r\n",
    "/bad-encoding": (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: 4\r\n\r\nnope"
    ),
}


class RawEndpoint:
    """A TCP server that reads one request per connection, answers the raw bytes of
    :data:`RAW_ANSWERS` for its path, and closes the connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        self._ready = threading.Event()

    def __enter__(self) -> str:
        threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True).start()
        assert self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        """The daemon thread ends with the test process."""

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        self.requests += 1
        writer.write(RAW_ANSWERS[head.split(b" ")[1].decode()])
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def raw_endpoint() -> Iterator[str]:
    with RawEndpoint() as url:
        yield url


@pytest.mark.anyio
@pytest.mark.parametrize("path", sorted(RAW_ANSWERS))
async def test_http_answer_that_is_not_http_is_a_counted_function_error(
    raw_endpoint: str, path: str
) -> None:
    """The function ran and answered garbage: a function error (its retries are counted and
    end at the destination), not a service error retried forever without counting."""
    result = await invoke_once(await http_target(raw_endpoint + path))

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error is not None
    assert result.error.startswith("endpoint sent a malformed response: Client")
    assert result.payload["errorType"] == "Function.MalformedResponse"


# -- handlers against the service process (defects 15 and 16) -------------------------------


def hostile_service(
    tmp_path: Path, moto_url: str, handler: str, per_shard: int, **sections: Any
) -> tuple[Path, list[tuple[str, str]]]:
    """A one-shard stream of ``per_shard`` records and a config delivering it to
    ``tests.support.handlers:<handler>`` in batches of 5; returns the config and what was
    written."""
    name = unique("hostile")
    [written] = anyio.run(
        stream_holding, moto_url, name, [[(f"k{i}", b"{}") for i in range(per_shard)]]
    )
    config = service_config(
        moto_url,
        stream_mapping(
            "hostile", stream_arn(name), f"tests.support.handlers:{handler}", batch_size=5
        ),
        checkpoints={"path": str(tmp_path / "checkpoints.db")},
        logging={"format": "json"},
        **sections,
    )
    return write_config(tmp_path / "poller.yaml", config), written


@pytest.mark.slow
def test_keyboard_interrupt_from_a_handler_is_retried_and_the_service_survives(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    config, written = hostile_service(tmp_path, moto_url, "interrupt_while_flagged", 10)
    sink, flag = tmp_path / "sink.jsonl", tmp_path / "interrupting"
    flag.write_text("the handler raises KeyboardInterrupt while this file exists")
    proc = launch(config, "run.log", file_sink.env(sink, fail_flag=flag))

    assert proc.proc is not None
    alive = proc.proc.poll

    wait_for(
        lambda: len(proc.events("batch.failed")) >= 2 or alive() is not None,
        60,
        "the batch failing twice",
    )
    assert alive() is None, "the service must survive"
    failed = proc.events("batch.failed")[0]
    assert failed["outcome"] == "function_error"
    assert failed["error"] == "function error (Unhandled): KeyboardInterrupt"

    flag.unlink()
    wait_for(lambda: file_sink.delivered(sink) == written, 60, "every record after the fix")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "handler",
    [
        "hang",  # a sync handler that never returns
        "swallow_forever",  # an async handler that catches every cancellation in a loop
        "hang_in_to_thread",  # an async handler waiting on asyncio.to_thread forever
    ],
)
def test_a_hung_handler_does_not_keep_the_process_alive_after_shutdown(
    tmp_path: Path, moto_url: str, launch: Launch, handler: str
) -> None:
    """SIGTERM while a handler hangs: the process exits within the drain deadline plus a
    margin, and no checkpoint passes the batch that never finished."""
    drain = 2.0
    config, written = hostile_service(
        tmp_path, moto_url, handler, 10, shutdown={"drain_timeout_seconds": drain}
    )
    started = tmp_path / "started"
    proc = launch(config, "run.log", {"POLLER_TEST_STARTED": str(started)})
    wait_for(lambda: started.exists() and started.read_text().strip(), 60, "a batch in flight")

    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.wait(drain + 15)
    took = time.monotonic() - signalled

    assert code == 0
    assert took < drain + 8, f"the process took {took:.1f} s to exit"
    assert proc.events("shutdown.drain_deadline")
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        stored = db.execute("SELECT sequence_number FROM checkpoints").fetchall()
    assert all(seq is None or int(seq) < int(written[0][1]) for (seq,) in stored), stored
