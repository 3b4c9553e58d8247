"""Which mappings are up, and when the service is ready: what ``/readyz`` and
``poller_mapping_up`` say.

Data flow (one :class:`MappingReadiness` per service, fed by its mapping supervisors)::

    a runner started   --report_reachability(runner.reachable, every
                         REACHABILITY_CHECK_SECONDS)--> mark_up / mark_down
    a runner crashed   --mark_down
    mark_up / mark_down --> HealthState (/readyz body), Metrics.mapping_up, mapping.up /
                            mapping.down log lines (each said once per change)
    start-up           --finish_start_up--> ``ready``: every mapping up, or the start grace
                         over with the ones still down reported (they keep retrying)
    poller.reconcile   --add / remove--> the mappings expected (started or gone at run time)

A mapping added once the service is ready is reported up or down as any other, but never
makes the service not ready again: ``/readyz`` keeps its start-up verdict, so a mapping
created through the control API cannot take a replica out of its load balancer.

A running mapping is reported down only once its source (or the lease table) has not answered
for :data:`MAPPING_DOWN_AFTER_SECONDS`: one failed call that the next attempt repairs is not an
outage, and ``poller_mapping_up`` (what operators alert on) must not flap with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from poller.observability.metrics import Metrics
from poller.observability.server import HealthState

log = structlog.get_logger("poller.app")

#: How often a running mapping's reachability is copied to its gauge and /readyz.
REACHABILITY_CHECK_SECONDS = 1.0
#: A running mapping is reported down only once its source (or the lease table) has not
#: answered for this long (see the module docstring).
MAPPING_DOWN_AFTER_SECONDS = 5.0


class MappingReadiness:
    """The up/down state of every enabled mapping, and the service's readiness."""

    def __init__(
        self,
        names: list[str],
        *,
        health: HealthState,
        metrics: Metrics,
        start_grace: float,
        stopping: anyio.Event,
    ) -> None:
        self._names = list(names)
        self._health = health
        self._metrics = metrics
        self._start_grace = start_grace
        self._stopping = stopping
        self._up: set[str] = set()
        self._reported_down: set[str] = set()
        self._all_up = anyio.Event()
        #: Set once start-up is over (see :meth:`finish_start_up`).
        self.ready = anyio.Event()

    async def finish_start_up(self) -> None:
        """Wait until every mapping is up, or the grace period is over, then be ready; the
        mappings still down are reported and go on retrying. Returns at once on a stop."""
        if not self._names:
            self._all_up.set()
        with anyio.move_on_after(self._start_grace):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_set, self._all_up, tg.cancel_scope)
                tg.start_soon(_cancel_when_set, self._stopping, tg.cancel_scope)
        if self._stopping.is_set():
            return
        down = sorted(set(self._names) - self._up)
        for name in down:
            if name not in self._reported_down:
                self._reported_down.add(name)
                log.warning(
                    "mapping.down",
                    mapping=name,
                    reason=f"not started after {self._start_grace:g} s",
                    hint="it keeps retrying (see its retry log lines); the other mappings run",
                )
        self._health.mark_startup_over()
        self.ready.set()
        log.info("service.ready", mappings=self._names, down=down)

    async def report_reachability(self, name: str, reachable: Callable[[], bool]) -> None:
        """Report a started mapping up while its runner reaches its source, down once its
        reads (or the lease table) have failed for MAPPING_DOWN_AFTER_SECONDS; until
        shutdown."""
        unreachable_since: float | None = None
        while not self._stopping.is_set():
            now = time.monotonic()
            if reachable():
                unreachable_since = None
                self.mark_up(name)
            else:
                unreachable_since = unreachable_since or now
                if name not in self._up or now - unreachable_since >= MAPPING_DOWN_AFTER_SECONDS:
                    self.mark_down(name, reason="its source or the lease table does not answer")
            with anyio.move_on_after(REACHABILITY_CHECK_SECONDS):
                await self._stopping.wait()

    def add(self, name: str) -> None:
        """Expect ``name`` too (a mapping started at run time). A mapping expected already
        is starting again (after a change): its new run reports it up anew."""
        if name in self._names:
            self._up.discard(name)
            return
        self._names.append(name)
        if not self.ready.is_set() and self._all_up.is_set():
            self._all_up = anyio.Event()  # start-up waits for this one too
        self._health.expect_mappings(self._names)

    def remove(self, name: str) -> None:
        """Stop expecting ``name`` (a mapping disabled, deleted or renamed)."""
        if name not in self._names:
            return
        self._names.remove(name)
        self._up.discard(name)
        self._reported_down.discard(name)
        self._health.mark_mapping_down(name)
        self._health.expect_mappings(self._names)
        self._check_all_up()

    def mark_up(self, name: str) -> None:
        if name in self._up:
            return
        self._up.add(name)
        self._reported_down.discard(name)
        self._health.mark_mapping_started(name)
        self._metrics.mapping_up(name, True)
        log.info("mapping.up", mapping=name)
        self._check_all_up()

    def _check_all_up(self) -> None:
        if set(self._names) <= self._up:
            self._all_up.set()

    def mark_down(self, name: str, *, reason: str) -> None:
        self._up.discard(name)
        self._health.mark_mapping_down(name)
        self._metrics.mapping_up(name, False)
        if name not in self._reported_down:
            self._reported_down.add(name)
            log.warning("mapping.down", mapping=name, reason=reason, hint="it keeps retrying")


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
