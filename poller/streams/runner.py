"""Runs one stream mapping: the refresh loop that finds shards and starts the ones it owns.

Data flow::

    StreamMappingRunner
      ├─ ownership upkeep (leased: heartbeats, self-fencing), from before the first refresh
      │  until the last shard task has finished              (poller.streams.ownership)
      ├─ refresh loop: every ``shard_discovery_interval_seconds`` (sooner as ownership asks),
      │  and at once when a shard ends:
      │    initialize (LATEST: the mapping's start pin)       (poller.streams.start)
      │    discovery: ListShards -> ownership.discovered(listing)
      │    ownership.claim(listing) -> the shards to run (lineage: parents first)
      └─ ShardSupervisor.start(shard): reader -> ShardProcessor (poller.streams.supervisor)

A refresh step that fails (ListShards, the checkpoints, the lease table: sync, balance) is
logged, counted in ``poller_dependency_errors_total`` and retried with backoff; the runner never
raises for it, and reports itself unreachable meanwhile (:attr:`StreamMappingRunner.reachable`).

Stopping, one signal per mapping: ``stopping`` (the service's event, set once) means "start no
shard, drain the running ones, return once all have drained". On it the refresh loop ends (a
refresh waiting on an outage is abandoned) and the supervisor drains every shard. The runner
returns when its shard task group has ended, i.e. every shard has drained (released or left);
only then is the ownership upkeep cancelled, so a lease is kept alive by heartbeats, and
fenced, while its last batch settles. ``_shard_ended`` is not a stop signal: it only makes
the next refresh come at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from poller.core.failure_record import SourceKind
from poller.core.lineage import ShardInfo
from poller.destinations import FailureDestination
from poller.errors import PollerError
from poller.observability.metrics import Metrics, NullMetrics
from poller.ports import StreamApi, Subscriptions
from poller.retry import Backoff
from poller.streams.budget import ReadBudget
from poller.streams.ownership import ShardOwnership
from poller.streams.start import MappingStart, StreamMapping
from poller.streams.supervisor import ShardSupervisor
from poller.types import Target

__all__ = ["REFRESH_BACKOFF", "STARTUP_REFRESH_SECONDS", "StreamMapping", "StreamMappingRunner"]

log = structlog.get_logger("poller.streams")

#: How long the first refresh may wait on an outage before the runner reports started anyway.
STARTUP_REFRESH_SECONDS = 10.0
#: Between refreshes after a failed one; never longer than the refresh interval.
REFRESH_BACKOFF = Backoff(initial=0.5, maximum=30.0)


class StreamMappingRunner:
    """Keeps one supervised shard task running per shard of one mapping this replica owns."""

    def __init__(
        self,
        mapping: StreamMapping,
        *,
        api: StreamApi,
        kind: SourceKind,
        target: Target,
        ownership: ShardOwnership,
        stopping: anyio.Event,
        destination: FailureDestination | None = None,
        metrics: Metrics | None = None,
        budget: ReadBudget | None = None,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        """``budget``: the process's read budget, shared by every shard of every mapping
        (:mod:`poller.streams.budget`); None reads without one. ``subscriptions``: read every
        shard through enhanced fan-out (pushed), not by polling."""
        self.mapping = mapping
        self._metrics: Metrics = metrics or NullMetrics()
        self._api = api
        self._ownership = ownership
        self._stopping = stopping
        self._start = MappingStart(mapping, ownership.store)
        self._shard_ended = anyio.Event()
        self._shards = ShardSupervisor(
            mapping,
            api=api,
            kind=kind,
            target=target,
            ownership=ownership,
            stopping=stopping,
            metrics=self._metrics,
            destination=destination,
            on_shard_end=self._refresh_soon,
            budget=budget,
            subscriptions=subscriptions,
        )
        self._listing: list[ShardInfo] = []
        self._next_discovery = 0.0
        #: Consecutive refreshes that failed (the backoff before the next one).
        self._refresh_failures = 0
        self._initialized = False

    @property
    def reachable(self) -> bool:
        """False while the latest refresh failed (the source or the lease table does not
        answer); the service reports the mapping down meanwhile (``poller_mapping_up``)."""
        return self._refresh_failures == 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discover shards and run them until shutdown; every shard has drained on return.

        Reports started after the first refresh, or after ``STARTUP_REFRESH_SECONDS`` if a
        dependency is down (the refresh keeps retrying in the refresh loop). Never raises
        for an outage: a failed refresh is logged, counted and retried with backoff.
        """
        with structlog.contextvars.bound_contextvars(mapping=self.mapping.name):
            async with anyio.create_task_group() as upkeep:
                # Started first: a lease taken early in a slow first refresh is kept alive.
                upkeep.start_soon(self._ownership.upkeep, self._shards, name="ownership upkeep")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._shards.relay_stop, name="stop propagation")
                    with anyio.move_on_after(STARTUP_REFRESH_SECONDS) as first:
                        await self._refresh_unless_stopped(tg)
                    if first.cancelled_caught:
                        log.warning("mapping.start_delayed", waited_s=STARTUP_REFRESH_SECONDS)
                    log.info("mapping.started", shards=sorted(self._shards.running))
                    task_status.started()
                    await self._refresh_loop(tg)
                # Every shard task has finished: nothing is held any more to keep alive or fence.
                upkeep.cancel_scope.cancel()

    async def _refresh_loop(self, tg: TaskGroup) -> None:
        """Refresh every interval, at once when a shard ends, until shutdown."""
        while not self._stopping.is_set():
            with anyio.move_on_after(self._tick()):
                await _first_of(self._shard_ended, self._stopping)
            if self._shard_ended.is_set():
                self._next_discovery = 0.0
                self._shard_ended = anyio.Event()
            await self._refresh_unless_stopped(tg)

    def _refresh_soon(self) -> None:
        """A shard ended: refresh (and list shards) at once, to start its children."""
        self._shard_ended.set()

    def _tick(self) -> float:
        """Seconds to the next refresh: the interval with ±20 % jitter (replicas started
        together drift apart), after a failed refresh a growing backoff (never longer than
        the interval), and sooner when ownership asks (a pending handoff, a peer's expiry)."""
        interval = self._ownership.refresh_interval(self.mapping.shard_discovery_interval_seconds)
        interval *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
        if self._refresh_failures:
            interval = min(interval, REFRESH_BACKOFF.delay(self._refresh_failures))
        return min(interval, self._ownership.refresh_due_in())

    async def _refresh_unless_stopped(self, tg: TaskGroup) -> None:
        """A refresh, abandoned as soon as shutdown starts (it may be waiting on an outage)."""
        if self._stopping.is_set():
            return
        async with anyio.create_task_group() as guard:
            guard.start_soon(_cancel_when_set, self._stopping, guard.cancel_scope)
            await self._refresh(tg)
            guard.cancel_scope.cancel()

    async def _refresh(self, tg: TaskGroup) -> None:
        """Initialize once, discover shards when due, claim them, and start what this replica
        should run.

        Each step that calls AWS is attempted once; a failure is logged and counted, the other
        steps still run on what is known, and the next refresh comes after a backoff.
        """
        # Not ``poller.retry.retrying``: the refresh loop is the retry, so that one step that
        # fails never holds up the others, nor the shards already running.
        failed = False
        if not self._initialized:
            self._initialized = await self._attempt("initialize", self._maybe_initialize)
            if not self._initialized:
                self._refresh_failures += 1
                return
        if time.monotonic() >= self._next_discovery:
            failed |= not await self._attempt("discovery", self._discover)
        claim = await self._ownership.claim(self._listing, self._shards, self._attempt)
        failed |= claim.failed
        self._refresh_failures = self._refresh_failures + 1 if failed else 0
        for shard_id in claim.shard_ids:
            self._shards.start(tg, shard_id)

    async def _attempt(self, operation: str, call: Callable[[], Awaitable[None]]) -> bool:
        """Run one step of a refresh; log and count a failure instead of raising it.

        An outage of the lease table or of the source is never a reason to stop the mapping
        (nor, through the service's task group, every other mapping).
        """
        try:
            await call()
        except Exception as exc:
            self._metrics.dependency_error(self.mapping.name, operation)
            failures = self._refresh_failures + 1
            if isinstance(exc, PollerError):
                log.warning("mapping.refresh_failed", step=operation, error=str(exc), n=failures)
            else:
                log.exception("mapping.refresh_failed", step=operation, n=failures)
            return False
        return True

    async def _discover(self) -> None:
        """One ListShards (the refresh loop is the retry), then what ownership makes of it."""
        self._listing = await self._api.list_shards()
        await self._ownership.discovered(self._listing, self._start.checkpoint_for)
        self._next_discovery = time.monotonic() + self.mapping.shard_discovery_interval_seconds

    async def _maybe_initialize(self) -> None:
        """For LATEST: read the mapping's start instant, or record it on the first start, and
        let ownership write the start checkpoints it writes up front.

        Idempotent: safe to retry after a CheckpointError.
        """
        if not self._start.needs_pin:
            return
        shards = await self._api.list_shards()  # before the instant: see MappingStart.pin
        await self._start.pin(shards)
        await self._ownership.prepare(shards, self._start.checkpoint_for)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _first_of(*events: anyio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:
            tg.start_soon(_cancel_when_set, event, tg.cancel_scope)
