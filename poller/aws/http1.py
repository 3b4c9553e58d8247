"""A minimal HTTP/1.1 client for the lean read path: keep-alive POSTs, Content-Length answers.

The lean GetRecords path (:mod:`poller.aws.lean`) sends one small signed POST per poll. A
general client (aiohttp, botocore's stack) spends most of an idle poll's CPU on machinery this
request never needs: per-request objects, tracing hooks, cookie jars, header multidicts. This
client holds a few connections per endpoint and does only what the call needs: write the
request bytes, read a status line, headers and a ``Content-Length`` body.

Anything else (a chunked or unsized body, a 1xx answer, a malformed head) raises
:class:`UnsupportedAnswer`, and the caller falls back to the full client for that call. A
connection that fails before answering, or a reused connection the server had already closed,
raises :class:`ConnectionError` (a fresh connection is tried once first for the reused case).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

import anyio

#: A head longer than this is not an AWS answer.
MAX_HEAD_BYTES = 64 * 1024
#: Connections per endpoint, by default (the source clients' ``max_pool_connections``):
#: idle shards wake together, so a poll beyond it waits for a connection rather than open
#: (and, past the idle ones kept, close) one of its own every tick.
MAX_CONNECTIONS = 100


class UnsupportedAnswer(Exception):
    """An answer this client does not read; the caller uses the full client instead."""


class HttpAnswer(NamedTuple):
    """A response: status code, the headers read (names and values lower-cased) and the
    whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str]] | None = None
        self._chunks: list[bytes] = []
        self._need = 0
        self._have = 0
        self.received = False
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(ConnectionError(f"connection closed before the answer: {exc or 'EOF'}"))

    def eof_received(self) -> bool:
        self.open = False
        return False  # close the transport; connection_lost reports a pending exchange

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._waiter is None or self._waiter.done():
            self._close()  # bytes nobody asked for: this connection is out of step
            return
        try:
            if self._head is None:
                self._read_head(data)
            else:
                self._chunks.append(data)
                self._have += len(data)
            if self._head is not None and self._have >= self._need:
                self._finish()
        except UnsupportedAnswer as exc:
            self._fail(exc)
            self._close()

    def _read_head(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise UnsupportedAnswer("answer head too long")
            return
        status, headers = _parse_head(bytes(self._buffer[:end]))
        if "transfer-encoding" in headers or "content-length" not in headers:
            raise UnsupportedAnswer("answer without Content-Length")
        self._need = _content_length(headers["content-length"])
        rest = bytes(self._buffer[end + 4 :])
        self._chunks, self._have = [rest], len(rest)
        self._buffer = bytearray()
        self._head = (status, headers)
        self.reusable = headers.get("connection") != "close"

    def _finish(self) -> None:
        assert self._head is not None
        assert self._waiter is not None
        if self._have > self._need:
            raise UnsupportedAnswer("answer longer than its Content-Length")
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        status, headers = self._head
        self._head, self._chunks = None, []
        self._waiter.set_result(HttpAnswer(status, headers, body))

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _close(self) -> None:
        self.open = False
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes, timeout: float) -> HttpAnswer:  # noqa: ASYNC109
        """Send ``request`` and wait up to ``timeout`` seconds for its whole answer."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[HttpAnswer] = loop.create_future()
        self._waiter = waiter
        self.received, self.reusable = False, False
        self._head, self._need, self._have = None, 0, 0
        # A timer handle, not a cancel scope: this runs on every poll of every shard.
        timer = loop.call_later(timeout, self._time_out, timeout)
        try:
            self.transport.write(request)
            return await waiter
        finally:
            timer.cancel()

    def _time_out(self, timeout: float) -> None:
        self._fail(TimeoutError(f"no complete answer within {timeout} s"))
        self._close()

    def close(self) -> None:
        self._close()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers; only the headers this client acts on are kept (per poll, a full
    header map costs more than the rest of the answer)."""
    first, _, rest = head.partition(b"\r\n")
    version, status = first[:9], first[9:12]
    if version not in (b"HTTP/1.1 ", b"HTTP/1.0 ") or not status.isdigit():
        raise UnsupportedAnswer(f"not an HTTP/1.x status line: {first[:80]!r}")
    code = int(status)
    if code < 200:
        raise UnsupportedAnswer(f"interim answer {code}")
    headers: dict[str, str] = {}
    original = b"\r\n" + rest
    lowered = original.lower()  # bytes.lower() keeps every byte in place
    for name in _READ_HEADERS:
        key = b"\r\n" + name + b":"
        at = lowered.find(key)
        if at >= 0:
            if name == b"content-length" and lowered.find(key, at + 2) >= 0:
                # Framing the answer by one of two lengths would read the wrong body; the
                # full client refuses such an answer too.
                raise UnsupportedAnswer("answer with a repeated Content-Length")
            end = lowered.find(b"\r\n", at + 2)
            source = original if name in _CASED_VALUES else lowered
            value = source[at + len(name) + 3 : end if end >= 0 else None]
            headers[name.decode()] = value.strip().decode("latin-1")
    if version == b"HTTP/1.0 " and headers.get("connection") != "keep-alive":
        headers["connection"] = "close"
    return code, headers


#: The answer headers this client reads (lower case); values are lower-cased too, except
#: those of :data:`_CASED_VALUES`.
_READ_HEADERS = (b"content-length", b"transfer-encoding", b"connection", b"x-amzn-query-error")
#: Headers whose value is kept as sent: a query-compatible service's (SQS) error code and
#: fault, ``AWS.SimpleQueueService.NonExistentQueue;Sender``, which botocore reports as sent.
_CASED_VALUES = frozenset({b"x-amzn-query-error"})


def _content_length(text: str) -> int:
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if not (text.isascii() and text.isdigit()):
        raise UnsupportedAnswer(f"bad Content-Length {text[:40]!r}")
    return int(text)


class HttpPool:
    """Keep-alive connections to one endpoint (``http://`` or ``https://`` host[:port]).

    Args:
        url: the endpoint; its path is not used (callers send ``/``).
        connect_timeout: seconds to open a connection.
        read_timeout: seconds to wait for a whole answer.
        ssl_context: TLS settings for ``https``; None uses the system's defaults.
        max_connections: connections open at once, idle ones included; more calls wait.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported endpoint URL {url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        #: The Host header, as botocore signs it.
        self.host = parts.netloc if not default_port else parts.hostname
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[_Connection] = []
        #: One per exchange; a new connection is opened only when none is idle, so at most
        #: this many are ever open, and every one handed back can be kept.
        self._slots = anyio.Semaphore(max(1, max_connections))

    async def request(self, request: bytes) -> HttpAnswer:
        """Send one complete request (head and body) and return its answer."""
        try:
            self._slots.acquire_nowait()  # the common case, without a scheduling turn
        except anyio.WouldBlock:
            await self._slots.acquire()
        try:
            return await self._request(request)
        finally:
            self._slots.release()

    async def _request(self, request: bytes) -> HttpAnswer:
        reused = self._take_idle()
        if reused is not None:
            try:
                return await self._exchange(reused, request)
            except ConnectionError:
                if reused.received:
                    raise
                # The server closed a connection it had kept idle: try once on a fresh one.
        return await self._exchange(await self._connect(), request)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        with anyio.fail_after(self._connect_timeout):
            _, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._tls else None,
            )
        return connection

    async def _exchange(self, connection: _Connection, request: bytes) -> HttpAnswer:
        done = False
        try:
            answer = await connection.exchange(request, self._read_timeout)
            done = True
            return answer
        finally:
            # A cancelled, timed-out or broken exchange leaves the connection out of step.
            if done and connection.reusable and connection.open:
                self._idle.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().close()
