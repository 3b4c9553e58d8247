"""An aiohttp application served from a background thread, for the tests' HTTP doubles.

The doubles (the Invoke API, the fault proxy, scripted HTTP endpoints) must be usable from
synchronous fixtures as context managers and reachable from other processes (service
subprocesses), so each runs on an event loop of its own in a daemon thread, bound to
127.0.0.1 on a free port. The application is built inside that loop: anything it opens
(an aiohttp client session, say) belongs to the loop that serves it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

from aiohttp import web


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
