"""The event loop async Python handlers run on: one per process, in a daemon thread of its own.

Data flow::

    PythonTarget.invoke --run(coroutine)--> HandlerLoop (asyncio loop in a daemon thread)
    PythonTarget.invoke <--the coroutine's result, or None once the caller stopped waiting--

Why not the service's own loop: handler code cannot be trusted to cooperate with it. An async
handler that makes a blocking call stalls every task of the loop it runs on (readers, lease
renewal, the health server); one that swallows the cancellation in a loop, or awaits work
that cannot be cancelled (``anyio.to_thread.run_sync`` without ``abandon_on_cancel``), can
never be stopped, so its invocation, its shard's drain and the process exit would wait for
it forever. On a loop of their own, handlers stall only each other, and the service stops
waiting for one whenever it chooses: the coroutine is cancelled and left to end by itself,
as a sync handler's thread is.

Why one loop for every target: handlers keep async state at module level (a client session,
a connection pool), which belongs to the loop that created it; two mappings sharing a handler
module must see the same loop.

The coroutines run here are asyncio tasks outside any task group on purpose: an abandoned
handler must be able to outlive the invocation that started it, and a task group would wait
for it. The thread is a daemon thread, and so are the threads of the loop's default executor
(``asyncio.to_thread``), so nothing left running here keeps the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import structlog

_log = structlog.get_logger(__name__)

T = TypeVar("T")

#: How often the loop proves it is not blocked.
_HEARTBEAT_SECONDS = 0.1


class HandlerLoop:
    """An asyncio event loop in a daemon thread, started on first use.

    Args:
        name: the thread's name (seen in thread dumps).
    """

    def __init__(self, name: str = "poller-async-handlers") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._beat = time.monotonic()

    def blocked_for(self) -> float:
        """Seconds the loop has gone without running its heartbeat (about 0 when it runs)."""
        return max(0.0, time.monotonic() - self._beat - _HEARTBEAT_SECONDS)

    async def run(
        self, make_coroutine: Callable[[], Coroutine[Any, Any, T]], *, patience: float
    ) -> T | None:
        """Run ``make_coroutine()`` on the handler loop and wait for it at most ``patience``.

        Returns:
            The coroutine's result, or None when ``patience`` ran out: the coroutine is then
            cancelled and left to end by itself.

        Raises:
            the caller's cancellation: the coroutine is cancelled and left as well.
        """
        gate = _StartGate()
        future = asyncio.run_coroutine_threadsafe(
            _gated(gate, make_coroutine), self._running_loop()
        )
        # Cancelling the wrapper (patience over, or the caller cancelled) cancels the task.
        waiter = asyncio.wrap_future(future)
        try:
            with anyio.move_on_after(patience):
                return await waiter
            return None
        finally:
            # A call its caller gave up before the (busy) loop reached it must never start:
            # its shard may already belong to another replica by then.
            gate.give_up()

    def wait(self, awaitable: Awaitable[T]) -> T:
        """From a worker thread: run ``awaitable`` on the handler loop and block until done."""
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._running_loop()).result()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.set_default_executor(DaemonExecutor())
        loop.call_soon(ready.set)
        loop.create_task(self._heartbeat(), name="handler loop heartbeat")
        while True:
            try:
                loop.run_forever()
            except BaseException as exc:  # noqa: BLE001 - handler code must not end the loop
                # asyncio lets KeyboardInterrupt and SystemExit out of run_forever when a
                # callback or a task a handler started raises them; the loop is still sound.
                _log.error(
                    "handler_loop.escaped",
                    error_type=type(exc).__name__,
                    detail="a task or callback started by an async handler raised this out "
                    "of the handlers' event loop; the loop goes on",
                )

    async def _heartbeat(self) -> None:
        """Runs for the life of the process; a stale beat means the loop is blocked."""
        while True:
            self._beat = time.monotonic()
            # Nothing may stop the heartbeat: a handler can cancel every task of its loop.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(_HEARTBEAT_SECONDS)


class DaemonExecutor(ThreadPoolExecutor):
    """The handler loop's default executor (``asyncio.to_thread``, ``run_in_executor(None)``).

    ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so a handler whose
    ``asyncio.to_thread`` call hangs would keep the process alive after shutdown. This one
    runs calls in up to ``max_workers`` daemon threads that nothing joins. It subclasses
    ``ThreadPoolExecutor`` only because asyncio accepts no other default executor; none of its
    machinery is used.
    """

    def __init__(self, max_workers: int = 32) -> None:
        super().__init__(max_workers=1)  # never starts a thread: submit is replaced
        self._calls: queue.SimpleQueue[_ExecutorCall] = queue.SimpleQueue()
        self._pool_lock = threading.Lock()
        self._max = max_workers
        self._workers = 0
        self._waiting = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``; start a worker unless one is waiting for work."""
        future: Future[T] = Future()
        self._calls.put(_ExecutorCall(future, functools.partial(fn, *args, **kwargs)))
        with self._pool_lock:
            start = self._waiting == 0 and self._workers < self._max
            self._workers += start
        if start:
            threading.Thread(target=self._work, name="poller-handler-executor", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: the workers are daemon threads that live as long as the process."""

    def _work(self) -> None:
        while True:
            with self._pool_lock:
                self._waiting += 1
            call = self._calls.get()
            with self._pool_lock:
                self._waiting -= 1
            call.run()


@dataclass(frozen=True, slots=True)
class _ExecutorCall:
    future: Future[Any]
    call: Callable[[], Any]

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.call()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the future
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _StartGate:
    """Decides, once and under a lock, whether a call starts or was given up first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = False
        self._given_up = False

    def start(self) -> bool:
        """On the handler loop: True if the call may start (its caller still waits)."""
        with self._lock:
            self._started = not self._given_up
            return self._started

    def give_up(self) -> None:
        """From the caller: a call that has not started yet never will."""
        with self._lock:
            self._given_up = not self._started


async def _gated(gate: _StartGate, make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    if not gate.start():
        raise asyncio.CancelledError  # given up before it started: never run the handler
    return await make_coroutine()


#: The loop every Python target's async handlers share (see the module docstring).
SHARED = HandlerLoop()
