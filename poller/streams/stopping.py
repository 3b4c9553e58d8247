"""The stop signal of one shard's processing, and what it stops.

Data flow::

    ShardSupervisor (shutdown, or a lease handed off): drain.set(); processor.interrupt()
        -> StopSignal: no new batch is taken (``is_set``); every wait is abandoned
           (``interruptible`` scopes: intake, a lane waiting for records, the backoff between
           retries, between final window invocations, between sends to a refusing destination)
        -> invocations and checkpoint writes in progress finish; then the processor returns

This is the one stop signal at the shard level; every collaborator of the
:class:`~poller.streams.processor.ShardProcessor` is handed this object, never the processor.
The ``stopping`` flag (anything with ``is_set()``: the supervisor's shard control, or an
event) says *that* the shard stops;
:meth:`StopSignal.interrupt` makes it happen *now*, by cancelling the scopes entered before the
event was set (one entered once it is set is cancelled on entry). An event cannot cancel scopes by
itself, so whoever sets the event calls ``interrupt()`` right after. Invocations and checkpoint
writes are never inside an interruptible scope: a batch being invoked is finished and
checkpointed. A lost lease or the drain deadline cancels the shard's whole scope instead
(those records are re-delivered later).
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

import anyio


class Stopping(Protocol):
    """Says whether the shard stops: an ``anyio.Event``, or the supervisor's shard control
    (a flag, not an event: nothing waits for it, and an event per shard costs memory)."""

    def is_set(self) -> bool:
        """True once the shard stops."""
        ...


class StopSignal:
    """The shard's ``stopping`` flag and the waits it abandons (see the module docstring)."""

    __slots__ = ("_scopes", "_stopping")

    def __init__(self, stopping: Stopping) -> None:
        self._stopping = stopping
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def is_set(self) -> bool:
        """True once shutdown began: take no new batch."""
        return self._stopping.is_set()

    def interrupt(self) -> None:
        """Abandon every wait now; invocations in progress carry on."""
        for scope in list(self._scopes):
            scope.cancel()

    def interruptible(self) -> Interruptible:
        """A scope that shutdown cancels; entered only where nothing is in flight."""
        return Interruptible(self)


class Interruptible:
    """``with stop.interruptible() as scope:`` a cancel scope the stop cancels (at once if it
    is set already). A class, not a generator: an idle shard waits in two of them, and a
    generator's frame and context manager cost more than these slots."""

    __slots__ = ("_scope", "_signal")

    def __init__(self, signal: StopSignal) -> None:
        self._signal = signal
        self._scope: anyio.CancelScope | None = None

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope = anyio.CancelScope().__enter__()
        self._signal._scopes.add(scope)
        if self._signal.is_set:
            scope.cancel()
        return scope

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        scope = self._scope
        assert scope is not None, "exited before it was entered"
        self._signal._scopes.discard(scope)
        return bool(scope.__exit__(kind, exc, tb))
