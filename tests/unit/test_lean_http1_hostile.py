"""The lean path's HTTP/1.1 client against misbehaving loopback servers (review R2): a
call cancelled mid-answer, a body cut short, a server past the read timeout, a 10 MB page,
and many calls at once on one pool: no call may ever read another call's answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from poller.aws.http1 import HttpPool, UnsupportedAnswer

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[str]]


def request(n: int) -> bytes:
    body = json.dumps({"n": n}).encode()
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        listening = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(listening)
        return f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"

    yield start
    for listening in servers:
        listening.close()


def pool(url: str, read_timeout: float = 5.0) -> HttpPool:
    return HttpPool(url, connect_timeout=5.0, read_timeout=read_timeout)


async def echo_slowly_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes each request's body; the first answer's body comes half now, half later."""
    first = True
    while True:
        body = await read_request(reader)
        whole = answer(body)
        if first:
            first = False
            writer.write(whole[:-3])
            await writer.drain()
            await asyncio.sleep(0.5)
        else:
            writer.write(whole)
            await writer.drain()
            continue
        writer.write(whole[-3:])
        await writer.drain()


async def test_a_call_cancelled_mid_body_leaves_no_half_read_connection(serve: Serve) -> None:
    http = pool(await serve(echo_slowly_first))
    with anyio.move_on_after(0.2):
        await http.request(request(1))
    got = await http.request(request(2))
    assert json.loads(got.body) == {"n": 2}
    http.close()


async def test_a_body_cut_short_is_a_connection_error_not_a_retry(serve: Serve) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b'{"Records": []}')[:-4])
        await writer.drain()

    http = pool(await serve(short))
    with pytest.raises(ConnectionError):
        await http.request(request(1))


async def test_a_server_past_the_read_timeout_times_out_and_is_not_reused(serve: Serve) -> None:
    calls = 0

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        while True:
            body = await read_request(reader)
            calls += 1
            if calls == 1:
                await asyncio.sleep(0.6)  # answers after the caller gave up
            writer.write(answer(body))
            await writer.drain()

    http = pool(await serve(late), read_timeout=0.3)
    with pytest.raises(TimeoutError):
        await http.request(request(1))
    got = await http.request(request(2))
    assert json.loads(got.body) == {"n": 2}
    http.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n{}".encode("latin-1"),
    ],
    ids=["100-continue", "chunked", "two-lengths", "non-ascii-digit-length"],
)
async def test_answers_not_read_by_hand_are_unsupported_and_not_reused(
    serve: Serve, head: bytes
) -> None:
    connections = 0

    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            body = await read_request(reader)
            writer.write(head if connections == 1 else answer(body))
            await writer.drain()

    http = pool(await serve(odd))
    with pytest.raises(UnsupportedAnswer):
        await http.request(request(1))
    got = await http.request(request(2))
    assert json.loads(got.body) == {"n": 2}
    http.close()


async def test_a_ten_megabyte_page_and_gzip_bytes_are_read_whole(serve: Serve) -> None:
    big = b"[" + b'"x",' * (10 * 1024 * 1024 // 4) + b'"end"]'

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(big, b"Content-Encoding: gzip\r\n"))
        await writer.drain()

    http = pool(await serve(large))
    got = await http.request(request(1))
    assert got.body == big
    http.close()


async def test_many_concurrent_calls_on_one_pool_each_read_their_own_answer(serve: Serve) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await read_request(reader)
            await asyncio.sleep(0.001 * (json.loads(body)["n"] % 7))
            writer.write(answer(body))
            await writer.drain()

    http = pool(await serve(echo))
    results: dict[int, int] = {}

    async def call(n: int) -> None:
        for round_ in range(3):
            got = await http.request(request(n * 10 + round_))
            results[n * 10 + round_] = json.loads(got.body)["n"]

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(call, n)
    assert results == {k: k for k in results}
    assert len(results) == 300
    http.close()


async def test_idle_polls_served_together_reuse_their_connections(serve: Serve) -> None:
    """Idle shards wake together (one timer grid): rounds of many concurrent calls must not
    open and close connections every round (a TLS handshake each on AWS), nor open more at
    once than the client's pool allows."""
    connections = 0
    open_now = 0
    most_open = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, open_now, most_open
        connections += 1
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            while True:
                body = await read_request(reader)
                await asyncio.sleep(0.01)
                writer.write(answer(body))
                await writer.drain()
        finally:
            open_now -= 1

    http = HttpPool(await serve(echo), connect_timeout=5.0, read_timeout=5.0, max_connections=50)
    for round_ in range(4):
        async with anyio.create_task_group() as tg:
            for n in range(150):
                tg.start_soon(http.request, request(round_ * 1000 + n))
    assert most_open <= 50
    assert connections <= 50  # opened in the first round, reused after
    http.close()


async def test_a_session_token_with_a_line_break_never_writes_extra_headers(serve: Serve) -> None:
    """Credentials come from the environment, a file or a credentials endpoint: a session
    token holding CR LF would have written its tail as header lines of its own (or a second
    request) on the keep-alive connection. The lean path leaves such a call to botocore, which
    refuses it; the server never sees the injected line."""
    from poller.aws.clients import ClientFactory
    from poller.aws.lean import LeanCall
    from poller.errors import SourceError
    from poller.sources import kinesis

    heads: list[bytes] = []
    page = json.dumps({"Records": [], "NextShardIterator": "i2", "MillisBehindLatest": 0})

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(answer(page.encode()))
            await writer.drain()

    credentials = {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_session_token": "token\r\nX-Injected: 1",
    }
    factory = ClientFactory(
        region="us-east-1", endpoint_url=await serve(recording), credentials=credentials
    )
    try:
        client = await factory.client("kinesis", purpose="source")
        lean = LeanCall.for_client(client, "GetRecords", kinesis.RECORD_FIELDS)
        assert lean is not None
        arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
        with pytest.raises(SourceError):  # botocore: a forbidden control character
            await lean.call({"ShardIterator": "i1", "Limit": 10, "StreamARN": arn})
        assert lean.fallbacks == 1
        assert not any(b"\r\nX-Injected: 1\r\n" in head for head in heads), heads
    finally:
        await factory.aclose()
