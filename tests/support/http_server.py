"""An aiohttp application served from a background thread, for the tests' HTTP doubles.

The doubles (the Invoke API, the fault proxy, scripted HTTP endpoints) must be usable from
synchronous fixtures as context managers and reachable from other processes (service
subprocesses), so each runs on an event loop of its own in a daemon thread, bound to
127.0.0.1 on a free port. The application is built inside that loop: anything it opens
(an aiohttp client session, say) belongs to the loop that serves it. :class:`JsonEndpoint` is
such a double: a JSON endpoint that records what it is sent; :class:`ForwardingProxy` another,
in front of an emulator (:func:`clients_through` points the service's clients at it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import aiohttp
from aiohttp import web

from poller.aws.clients import ClientFactory
from tests.support.aws import CREDENTIALS, REGION


class ThreadedServer:
    """Serves ``make_app()`` on 127.0.0.1 from a background thread until :meth:`stop`.

    Args:
        make_app: builds the application; called in the server's own event loop.
        name: the thread's name (seen in thread dumps).
        shutdown_timeout: how long the runner waits for open connections when stopping.
    """

    def __init__(
        self,
        make_app: Callable[[], web.Application],
        *,
        name: str = "test-http-server",
        shutdown_timeout: float = 60.0,
    ) -> None:
        self._make_app = make_app
        self._name = name
        self._shutdown_timeout = shutdown_timeout
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        """Bind a free port and serve in a background thread; returns once accepting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(sock),), name=self._name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self._name} did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError(f"{self._name} failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, sock: socket.socket) -> None:
        """The server thread's main coroutine: serve until :meth:`stop`."""
        try:
            runner = web.AppRunner(
                self._make_app(), access_log=None, shutdown_timeout=self._shutdown_timeout
            )
            await runner.setup()
            await web.SockSite(runner, sock).start()
            stopping = self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        except BaseException as exc:
            # Reported by start(), in the test's thread, instead of dying silently here.
            self._startup_error = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await stopping.wait()
        finally:
            await runner.cleanup()


class JsonEndpoint:
    """A local HTTP endpoint taking JSON on ``POST /orders`` (at :attr:`url` once entered):
    records every body in :attr:`bodies` and answers what :meth:`answer` returns (``{}``
    here; subclasses script it)."""

    def __init__(self, name: str = "json-endpoint") -> None:
        self.bodies: list[Any] = []
        self.url = ""
        self._name = name
        self._lock = threading.Lock()

    def answer(self, body: Any) -> Any:
        """The JSON answer to ``body``; called before ``body`` is recorded, under the lock."""
        return {}

    def items(self) -> list[Any]:
        """Every item of every body so far (for endpoints of bare arrays)."""
        with self._lock:
            return [item for body in self.bodies for item in body]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            answer = self.answer(body)
            self.bodies.append(body)
        return web.json_response(answer)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/orders", self._handle)
        return app

    def __enter__(self) -> Self:
        self._server = ThreadedServer(self._app, name=self._name).start()
        self.url = f"{self._server.url}/orders"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


class ForwardingProxy:
    """An HTTP proxy in front of an AWS endpoint (``upstream``), for tests that read or spoil
    its answers: subclasses' :meth:`handle` answers every request, most by :meth:`forward`."""

    #: Answer headers passed back from upstream (botocore reads the query-compatible error
    #: code from ``x-amzn-query-error``).
    KEPT_HEADERS = ("Content-Type", "x-amzn-query-error", "x-amzn-RequestId")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` upstream with the request's headers; its status, kept headers, body."""
        forwarded = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.upstream + "/", data=body, headers=forwarded) as upstream,
        ):
            data = await upstream.read()
            headers = {k: upstream.headers[k] for k in self.KEPT_HEADERS if k in upstream.headers}
            return upstream.status, headers, data

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@contextlib.asynccontextmanager
async def clients_through(
    proxy: ForwardingProxy, credentials: dict[str, str] = CREDENTIALS
) -> AsyncIterator[ClientFactory]:
    """``proxy`` served, and the service's client factory pointed at it, until the block ends."""
    with ThreadedServer(proxy.app) as server:
        factory = ClientFactory(region=REGION, endpoint_url=server.url, credentials=credentials)
        try:
            yield factory
        finally:
            await factory.aclose()
