"""The stop signal of one shard's processing, and what it stops.

Data flow::

    ShardSupervisor (shutdown, or a lease handed off): drain.set(); processor.interrupt()
        -> StopSignal: no new batch is taken (``is_set``); every wait is abandoned
           (``interruptible`` scopes: intake, a lane waiting for records, the backoff between
           retries, between final window invocations, between sends to a refusing destination)
        -> invocations and checkpoint writes in progress finish; then the processor returns

This is the one stop signal at the shard level; every collaborator of the
:class:`~poller.streams.processor.ShardProcessor` is handed this object, never the processor.
The ``stopping`` event (the supervisor's ``drain``) says *that* the shard stops;
:meth:`StopSignal.interrupt` makes it happen *now*, by cancelling the scopes entered before the
event was set (one entered once it is set is cancelled on entry). An event cannot cancel scopes by
itself, so whoever sets the event calls ``interrupt()`` right after. Invocations and checkpoint
writes are never inside an interruptible scope: a batch being invoked is finished and
checkpointed. A lost lease or the drain deadline cancels the shard's whole scope instead
(those records are re-delivered later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class StopSignal:
    """The shard's ``stopping`` event and the waits it abandons (see the module docstring)."""

    def __init__(self, stopping: anyio.Event) -> None:
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

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A scope that shutdown cancels; entered only where nothing is in flight."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            if self._stopping.is_set():
                scope.cancel()
            try:
                yield scope
            finally:
                self._scopes.discard(scope)
