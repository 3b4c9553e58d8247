"""Daemon worker threads for sync Python handlers, with a bound on abandoned ones.

Data flow::

    PythonTarget.invoke --call--> HandlerThreads.run --inbox--> daemon worker --> handler()
    PythonTarget.invoke <--value or exception-- (the worker wakes the event loop when done)

Why not ``anyio.to_thread``: its worker threads are not daemon threads, and the interpreter
waits for every such thread at exit. A handler that hangs then keeps the process alive after
shutdown, whatever the drain deadline or a second signal say. The threads here are daemon
threads: when the service has finished its shutdown the process exits, and a handler still
running is stopped with it (its batch was never checkpointed, so it is delivered again).

Python cannot kill a thread. A call given up by its caller (a timeout, a drain deadline) keeps
its thread until the handler returns; such a thread is *abandoned*. Abandoned threads are
counted, and once ``max_abandoned`` of them are still running the pool refuses new calls with
:class:`ThreadsExhausted` instead of starting ever more threads; the target reports that as a
throttle, which the pipeline retries with backoff. A thread whose handler finally returns
goes back to the pool. Threads left idle for ``idle_seconds`` end.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio._core._eventloop import threadlocals

#: How long an idle worker waits for a call before it ends (anyio's own workers wait 10 s).
IDLE_SECONDS = 10.0


class ThreadsExhausted(Exception):
    """Too many abandoned handler calls are still running to start another call."""

    def __init__(self, abandoned: int, what: str = "handler threads") -> None:
        super().__init__(f"{abandoned} abandoned {what} are still running")
        self.abandoned = abandoned


class CallTimedOut(Exception):
    """The call ran past its timeout; its thread is abandoned."""


@dataclass(slots=True)
class _Job:
    """One call handed to a worker, and what came of it."""

    call: Callable[[], Any]
    token: anyio.lowlevel.EventLoopToken
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: BaseException | None = None
    finished: bool = False
    abandoned: bool = False

    def execute(self) -> None:
        """Run the call in the worker; every outcome, ``BaseException`` included, is kept."""
        # Handlers ran in anyio worker threads before, where ``anyio.from_thread.run_sync``
        # works without a token; keep that contract by giving this thread the loop's token
        # the way anyio's own workers do (anyio has no public setter for it).
        threadlocals.current_token = self.token
        try:
            self.value = self.call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's task
            self.error = exc


class HandlerThreads:
    """A pool of daemon threads that run sync calls for one target.

    Args:
        name: the prefix of the threads' names (seen in thread dumps).
        max_running: calls that may run at once; more wait for a free slot.
        max_abandoned: abandoned threads still running beyond which new calls are refused.
        on_abandoned: called on the event loop each time a call is abandoned (a metric).
        idle_seconds: how long an idle worker lives.
    """

    def __init__(
        self,
        *,
        name: str,
        max_running: int,
        max_abandoned: int,
        on_abandoned: Callable[[], None] | None = None,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._name = name
        self._limiter = anyio.CapacityLimiter(max_running)
        self._max_abandoned = max_abandoned
        self._on_abandoned = on_abandoned
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job | None]] = []
        self._abandoned = 0
        self._threads = 0
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Abandoned threads whose handler is still running."""
        with self._lock:
            return self._abandoned

    @property
    def threads(self) -> int:
        """Worker threads alive: busy, idle or abandoned."""
        with self._lock:
            return self._threads

    async def run(self, call: Callable[[], Any], *, time_limit: float = math.inf) -> Any:
        """Run ``call()`` in a worker thread and return its value or raise its exception.

        ``time_limit`` counts from the moment a thread takes the call, not while the call waits
        for a free one (``max_running``): a call that never started has not run too long.
        Cancelling the caller, or the time limit, does not stop the call: its thread is
        abandoned and counted.

        Raises:
            ThreadsExhausted: ``max_abandoned`` abandoned threads are still running.
            CallTimedOut: the call ran past ``time_limit``.
        """
        async with self._limiter:
            with self._lock:
                if self._abandoned >= self._max_abandoned:
                    raise ThreadsExhausted(self._abandoned)
            job = _Job(call, anyio.lowlevel.current_token())
            self._dispatch(job)
            try:
                with anyio.move_on_after(time_limit) as scope:
                    await job.done.wait()
            except BaseException:
                self._abandon(job)
                raise
            # A job that finished as the deadline fired is not abandoned: its result stands.
            if scope.cancelled_caught and self._abandon(job):
                raise CallTimedOut
        if job.error is not None:
            raise job.error
        return job.value

    def close(self) -> None:
        """Let idle workers end now; busy and abandoned ones end when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _abandon(self, job: _Job) -> bool:
        """The caller gave up on ``job``: count its thread as abandoned unless it finished.

        Returns:
            Whether the job was abandoned (False: it had finished).
        """
        with self._lock:
            if job.finished:
                return False
            job.abandoned = True
            self._abandoned += 1
        if self._on_abandoned is not None:
            self._on_abandoned()
        return True

    def _dispatch(self, job: _Job) -> None:
        """Hand ``job`` to an idle worker, or start a new daemon worker for it."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._threads += 1
        if inbox is not None:
            inbox.put(job)
            return
        inbox = queue.SimpleQueue()
        inbox.put(job)
        worker = threading.Thread(
            target=self._work, args=(inbox,), name=f"{self._name}-{id(inbox):x}", daemon=True
        )
        try:
            worker.start()
        except BaseException:  # the system refused a thread: nothing runs, nothing counts
            with self._lock:
                self._threads -= 1
            raise

    def _work(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        """A worker's loop: run jobs from its inbox until idle for too long or closed."""
        try:
            while (job := self._next(inbox)) is not None:
                job.execute()
                if self._finish(job):
                    _wake(job)
                # An idle worker must not keep its last call alive while it waits for the
                # next: the call holds the handler's copy of the event, a batch of records.
                del job
                if not self._park(inbox):
                    return
        finally:
            with self._lock:
                self._threads -= 1

    def _next(self, inbox: queue.SimpleQueue[_Job | None]) -> _Job | None:
        """The next job, or None once the worker should end."""
        while True:
            try:
                return inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # still idle: nobody can hand it a job any more
                        self._idle.remove(inbox)
                        return None
                # A job was handed over just as the wait ended: it is in the inbox.

    def _finish(self, job: _Job) -> bool:
        """Mark ``job`` finished; True when its caller still waits for it."""
        with self._lock:
            job.finished = True
            if job.abandoned:
                self._abandoned -= 1
            return not job.abandoned

    def _park(self, inbox: queue.SimpleQueue[_Job | None]) -> bool:
        """Offer the worker for the next call; False when the pool is closed."""
        with self._lock:
            if self._closed:
                return False
            self._idle.append(inbox)
            return True


def _wake(job: _Job) -> None:
    """Wake the caller's task on its event loop."""
    # An exception means the loop has ended: nobody is left to wake.
    with contextlib.suppress(Exception):
        anyio.from_thread.run_sync(job.done.set, token=job.token)
