"""The lean path's HTTP/1.1 client against a scripted loopback server: keep-alive reuse, a
connection the server closed, a server that never answers, and answers it does not read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from poller.aws.http1 import HttpPool, UnsupportedAnswer

pytestmark = pytest.mark.anyio

REQUEST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"

Script = Callable[[int], bytes | None]  # request number -> answer (None: close unanswered)


class Server:
    """Answers each request by ``script``; counts connections and requests."""

    def __init__(self, script: Script, *, close_after_answer: bool = False) -> None:
        self.script = script
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                self.requests += 1
                answer = self.script(self.requests)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Serve = Callable[["Server"], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> str:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listening)
        port = listening.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for listening in servers:
        listening.close()


def pool(url: str, read_timeout: float = 5.0) -> HttpPool:
    return HttpPool(url, connect_timeout=5.0, read_timeout=read_timeout)


async def test_keep_alive_reuses_one_connection(serve: Serve) -> None:
    server = Server(lambda n: OK)
    client = pool(await serve(server))
    for _ in range(3):
        answer = await client.request(REQUEST)
        assert (answer.status, answer.body) == (200, b"{}")
    client.close()
    assert (server.connections, server.requests) == (1, 3)


async def test_a_connection_the_server_closed_is_replaced(
    serve: Serve,
) -> None:
    """The server closes after each answer without saying so: the next request still works."""
    server = Server(lambda n: OK, close_after_answer=True)
    client = pool(await serve(server))
    for _ in range(3):
        assert (await client.request(REQUEST)).status == 200
        await asyncio.sleep(0)
    client.close()
    assert server.requests == 3


async def test_connection_close_is_not_reused(serve: Serve) -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = Server(lambda n: closing)
    client = pool(await serve(server))
    for _ in range(2):
        assert (await client.request(REQUEST)).body == b"{}"
    client.close()
    assert server.connections == 2


async def test_a_silent_server_times_out(serve: Serve) -> None:
    server = Server(lambda n: b"")  # writes nothing and keeps the connection open
    client = pool(await serve(server), read_timeout=0.3)
    with pytest.raises(TimeoutError):
        await client.request(REQUEST)
    client.close()


async def test_an_unanswered_request_is_a_connection_error(
    serve: Serve,
) -> None:
    client = pool(await serve(Server(lambda n: None)))
    with pytest.raises(ConnectionError):
        await client.request(REQUEST)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{}",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"SPDY/3 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
    ],
    ids=["chunked", "no-length", "interim", "not-http", "bad-length"],
)
async def test_answers_it_does_not_read_are_unsupported(serve: Serve, answer: bytes) -> None:
    client = pool(await serve(Server(lambda n: answer)))
    with pytest.raises(UnsupportedAnswer):
        await client.request(REQUEST)
    client.close()


async def test_a_large_answer_in_many_pieces(serve: Serve) -> None:
    body = b"x" * 3_000_000
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    client = pool(await serve(Server(lambda n: big)))
    assert (await client.request(REQUEST)).body == body
    client.close()
