"""Calling a Python handler: sync ones in worker threads, async ones on the handler loop.

No handler code runs on the service's event loop. Sync handlers run in daemon worker threads
(:mod:`poller.targets.threads`); async handlers run on the handler loop, an event loop of their
own in a daemon thread (:mod:`poller.targets.handler_loop`). A handler that blocks, hangs, or
swallows its cancellation therefore never stalls the other shards, the lease renewal or the
health server, never holds its invocation past its timeout (plus :data:`ABANDON_GRACE` for an
async one), and never keeps the process alive after shutdown. Each call ends in a
:class:`~poller.targets.python.runs._Run` built where the handler ran, or None once abandoned.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from poller.targets.handler_loop import HandlerLoop
from poller.targets.python.context import LambdaContext
from poller.targets.python.loading import Handler
from poller.targets.python.runs import _failed, _returned, _Run
from poller.targets.threads import CallTimedOut, HandlerThreads, ThreadsExhausted

#: How long after its timeout an async handler has to honour its cancellation before it is
#: abandoned on the handler loop and the invocation reported as timed out.
ABANDON_GRACE = 1.0


class LoopBusy(Exception):
    """An async handler was given up before the handler loop ever started it."""


class _AbandonedCalls:
    """Async handler calls the target stopped waiting for that are still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[int] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self, call: _Call) -> None:
        """The handler loop began to run ``call``."""
        with self._lock:
            call.started = True

    def abandon(self, call: _Call) -> bool:
        """Count ``call`` as abandoned; False when it has finished, or never started (a task
        cancelled before its first step never runs the handler)."""
        with self._lock:
            if call.finished or not call.started:
                return False
            self._running.add(id(call))
            return True

    def finish(self, call: _Call) -> None:
        """``call`` ended, whether or not anyone still waits for it."""
        with self._lock:
            call.finished = True
            self._running.discard(id(call))


@dataclass(slots=True)
class _Call:
    """One async call, for the abandoned-call count."""

    started: bool = False
    finished: bool = False


class HandlerCalls:
    """Runs one handler under its timeout, and counts the calls it stopped waiting for.

    Args:
        handler: ``handler(event, context)``, sync or async.
        timeout_seconds: how long a call may run.
        loop: where async handlers (and awaitables a sync one returns) run.
        threads: the worker threads sync handlers run in.
        max_abandoned: abandoned async calls beyond which calls are refused.
        on_abandoned: called each time an async call is abandoned (``threads`` reports its own).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        timeout_seconds: float,
        loop: HandlerLoop,
        threads: HandlerThreads,
        max_abandoned: int,
        on_abandoned: Callable[[], None] | None,
    ) -> None:
        self._handler = handler
        self.is_async = _is_async_callable(handler)
        self._timeout = timeout_seconds
        self._loop = loop
        self._threads = threads
        self._max_abandoned = max_abandoned
        self._on_abandoned = on_abandoned
        self._abandoned_calls = _AbandonedCalls()

    @property
    def abandoned_tasks(self) -> int:
        """Async calls abandoned on the handler loop that still run."""
        return len(self._abandoned_calls)

    async def run(self, event: dict[str, Any], context: LambdaContext) -> _Run | None:
        """Call the handler once; None when an async call was abandoned past its grace.

        Raises:
            ThreadsExhausted: too many abandoned calls; this one was refused.
            LoopBusy: the handler loop never started the async call.
        """
        call = self._call_async if self.is_async else self._call_sync
        return await call(event, context)

    async def _call_sync(self, event: dict[str, Any], context: LambdaContext) -> _Run:
        """Run a sync handler in a daemon worker thread, under the timeout."""
        job = functools.partial(self._complete_sync, event, context)
        try:
            return await self._threads.run(job, time_limit=self._timeout)  # type: ignore[no-any-return]
        except CallTimedOut:  # the thread was abandoned (and counted) by HandlerThreads
            return _Run(elapsed=self._timeout, deadline_fired=True)

    def _complete_sync(self, event: dict[str, Any], context: LambdaContext) -> _Run:
        """In the worker thread: call the handler and settle what came of it."""
        started = time.monotonic()
        # The timeout starts now, not when the call began to wait for a free thread.
        context._deadline = started + self._timeout
        try:
            value = self._handler(event, context)
            # A sync callable may still hand back an awaitable; it runs on the handler loop.
            if inspect.isawaitable(value):
                value = self._loop.wait(value)
        except BaseException as exc:  # noqa: BLE001 - any handler failure is a result
            return _failed(exc, time.monotonic() - started)
        return _returned(value, time.monotonic() - started)

    async def _call_async(self, event: dict[str, Any], context: LambdaContext) -> _Run | None:
        """Run an async handler on the handler loop; None once it is abandoned."""
        if len(self._abandoned_calls) >= self._max_abandoned:
            raise ThreadsExhausted(len(self._abandoned_calls), "async handler calls")
        call = _Call()
        try:
            run = await self._loop.run(
                lambda: self._complete_async(event, context, call),
                patience=self._timeout + ABANDON_GRACE,
            )
        except BaseException:  # the caller's cancellation: stop waiting, count what runs on
            self._abandon(call)
            raise
        if run is None:
            if not call.started:
                # Another handler held the loop the whole time: this one never ran.
                raise LoopBusy
            self._abandon(call)
        return run

    async def _complete_async(
        self, event: dict[str, Any], context: LambdaContext, call: _Call
    ) -> _Run:
        """On the handler loop: await the handler under the timeout and settle the result."""
        self._abandoned_calls.start(call)
        started = time.monotonic()
        context._deadline = started + self._timeout
        try:
            with anyio.move_on_after(self._timeout) as scope:
                try:
                    value = await self._handler(event, context)
                except BaseException as exc:  # noqa: BLE001 - any handler failure is a result
                    # Our deadline's cancellation lands here too; deadline_fired tells.
                    run = _failed(exc, time.monotonic() - started)
                else:
                    run = _returned(value, time.monotonic() - started)
            # cancel_called, not cancelled_caught: a handler that swallowed the cancellation
            # and returned after its deadline still ran too long.
            run.deadline_fired = scope.cancel_called
            return run
        finally:
            self._abandoned_calls.finish(call)

    def _abandon(self, call: _Call) -> None:
        """Count ``call`` as abandoned if it still runs."""
        if self._abandoned_calls.abandon(call) and self._on_abandoned is not None:
            self._on_abandoned()


def _is_async_callable(handler: Handler) -> bool:
    """Whether calling ``handler`` returns a coroutine (functions, partials of them, and
    objects with an async ``__call__``)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )
