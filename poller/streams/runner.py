"""Runs one stream mapping: shard discovery, lineage, and a supervised worker per shard.

Data flow::

    StreamMappingRunner
      ├─ discovery loop: ListShards every ``shard_discovery_interval_seconds``, and at once
      │  when a shard ends; ``plan_shards`` says which shards may start (parents first)
      └─ per ready shard, a supervised task group:
           reader (GetRecords) --bounded stream--> ShardProcessor (lanes, invoke, checkpoint)

Where a shard starts:

* after its checkpoint (``AFTER_SEQUENCE_NUMBER``) when it has one;
* without one: TRIM_HORIZON, or the mapping's timestamp for AT_TIMESTAMP; for LATEST, the
  mapping's *start instant*. It is recorded once per mapping, atomically, apart from the shard
  checkpoints (``CheckpointStore.pin_mapping_start``: a row in SQLite, the mapping item of the
  lease table), by whichever replica starts the mapping first, and never re-pinned. Every shard
  that has no checkpoint starts from it, whoever meets it and whenever: shards of the first
  listing, shards missed by a crash or a racing replica, and children born later (all their
  records are newer, so for them the instant is their TRIM_HORIZON). Shards closed in the
  listing taken just before the instant was recorded start finished.
  Migration: a mapping that has checkpoints but no recorded instant (made by an older version)
  has started; it is pinned at the earliest pinned start among its checkpoints, or, if none is
  left, at 0, i.e. TRIM_HORIZON for shards without a checkpoint, as that version did: never a
  skip.
* a child shard starts once its parents are finished (``poller.core.lineage``).

A shard task that fails unexpectedly is logged and restarted from its checkpoint after a
backoff; it never stops the other shards or the service. Likewise a refresh step that fails
(ListShards, or the lease table: sync, balance) is logged, counted in
``poller_dependency_errors_total`` and retried with backoff; the runner never raises for it.

With leases, renewal and self-fencing run until every shard has drained, not only until
shutdown starts: a lease is renewed while its last batch settles, then released (handed to
the peer that asked for it, if any).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from poller.config import DynamoDBStreamMapping, KinesisMapping
from poller.core.failure_record import SourceKind
from poller.core.lineage import ShardInfo, finished_shards, plan_shards, retired_checkpoints
from poller.core.retry_policy import StreamRetryPolicy
from poller.destinations import FailureDestination
from poller.errors import CheckpointError, LeaseLost, PollerError
from poller.leases import LeaseCoordinator, RenewOutcome, report_reopened
from poller.observability.metrics import Metrics, NullMetrics
from poller.ports import RecordsPage, StartPosition, StreamApi
from poller.retry import READ_BACKOFF, Backoff, retrying
from poller.streams.processor import BatchPolicy, FailureRouting, ShardProcessor
from poller.streams.reader import ShardReader
from poller.types import SHARD_END, Checkpoint, CheckpointStore, Chunk, Target

StreamMapping = KinesisMapping | DynamoDBStreamMapping

log = structlog.get_logger("poller.streams")

#: While leases are being handed to this replica, balance this often to take them promptly.
HANDOFF_POLL_SECONDS = 1.0
#: How often held leases are checked for staleness (self-fencing) at the longest; the check
#: also wakes exactly when the soonest lease goes stale (``LeaseCoordinator.fence_wait``).
FENCE_CHECK_SECONDS = 0.5
#: Balance this long after a peer's lease would expire, to observe it expired.
EXPIRY_MARGIN_SECONDS = 0.2

#: How long the first refresh may wait on an outage before the runner reports started anyway.
STARTUP_REFRESH_SECONDS = 10.0
#: Between refreshes after a failed one; never longer than the refresh interval.
REFRESH_BACKOFF = Backoff(initial=0.5, maximum=30.0)

#: Chunks (GetRecords responses) a reader may read ahead of its worker.
READ_AHEAD_CHUNKS = 2


class StreamMappingRunner:
    """Keeps one worker running per readable shard of one mapping."""

    def __init__(
        self,
        mapping: StreamMapping,
        *,
        api: StreamApi,
        kind: SourceKind,
        target: Target,
        store: CheckpointStore,
        stopping: anyio.Event,
        destination: FailureDestination | None = None,
        metrics: Metrics | None = None,
        leases: LeaseCoordinator | None = None,
    ) -> None:
        self.mapping = mapping
        self._metrics: Metrics = metrics or NullMetrics()
        self._leases = leases
        self._controls: dict[str, _ShardControl] = {}
        self._shards: list[ShardInfo] = []
        self._next_discovery = 0.0
        self._api = api
        self._target = target
        self._store = store
        self._stopping = stopping
        self._running: set[str] = set()
        self._wake = anyio.Event()
        #: Set once shutdown started and every shard task finished: the lease loops end.
        self._idle = anyio.Event()
        #: Consecutive refreshes that failed (the backoff before the next one).
        self._refresh_failures = 0
        self._initialized = False
        self._policy = BatchPolicy(
            batch_size=mapping.batch_size,
            window_seconds=float(mapping.maximum_batching_window_in_seconds),
            parallelization_factor=mapping.parallelization_factor,
            filters=mapping.filters,
            tumbling_window_seconds=mapping.tumbling_window_in_seconds,
            retry=StreamRetryPolicy(
                maximum_retry_attempts=mapping.maximum_retry_attempts,
                maximum_record_age_seconds=mapping.maximum_record_age_in_seconds,
                bisect_on_function_error=mapping.bisect_batch_on_function_error,
                report_batch_item_failures=mapping.report_batch_item_failures,
            ),
        )
        self._routing = FailureRouting(
            kind=kind,
            stream_arn=mapping.event_source_arn,
            mapping_uuid=mapping.mapping_uuid,
            destination=destination,
        )

    @property
    def reachable(self) -> bool:
        """False while the latest refresh failed (the source or the lease table does not
        answer); the service reports the mapping down meanwhile (``poller_mapping_up``)."""
        return self._refresh_failures == 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discover shards and run workers until shutdown; every worker has drained on return.

        Reports started after the first refresh, or after ``STARTUP_REFRESH_SECONDS`` if a
        dependency is down (the refresh keeps retrying in the discovery loop). Never raises
        for an outage: a failed refresh is logged, counted and retried with backoff.
        """
        with structlog.contextvars.bound_contextvars(mapping=self.mapping.name):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._propagate_stop, name="stop propagation")
                if self._leases is not None:
                    # Started first: a lease taken early in a slow first refresh is renewed
                    # on time. Both run until the last shard has drained, not just until
                    # shutdown starts: a lease is renewed, and fenced, while its batch settles.
                    tg.start_soon(self._renew_loop, self._leases, name="lease renewals")
                    tg.start_soon(self._fence_loop, self._leases, name="lease self-fencing")
                with anyio.move_on_after(STARTUP_REFRESH_SECONDS) as first:
                    await self._refresh_unless_stopped(tg)
                if first.cancelled_caught:
                    log.warning("mapping.start_delayed", waited_s=STARTUP_REFRESH_SECONDS)
                log.info("mapping.started", shards=sorted(self._running))
                task_status.started()
                await self._discovery_loop(tg)

    async def _discovery_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """Refresh every discovery interval (every balance interval with leases), at once when
        a shard ends, until shutdown."""
        while not self._stopping.is_set():
            with anyio.move_on_after(self._tick()):
                async with anyio.create_task_group() as waiters:
                    waiters.start_soon(_wait_and_cancel, self._wake, waiters.cancel_scope)
                    waiters.start_soon(_wait_and_cancel, self._stopping, waiters.cancel_scope)
            if self._wake.is_set():
                self._next_discovery = 0.0
            self._wake = anyio.Event()
            await self._refresh_unless_stopped(tg)

    def _tick(self) -> float:
        """Seconds to the next refresh: the interval with ±20 % jitter (replicas started
        together drift apart), shortened for a pending handoff or a peer's lease expiry, and
        after a failed refresh a growing backoff (never longer than the interval)."""
        interval = self.mapping.shard_discovery_interval_seconds
        leases = self._leases
        if leases is not None:
            interval = min(interval, leases.settings.balance_interval)
        interval *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
        if self._refresh_failures:
            interval = min(interval, REFRESH_BACKOFF.delay(self._refresh_failures))
        if leases is not None:
            if leases.awaiting_handoff:
                interval = min(interval, HANDOFF_POLL_SECONDS)
            expiry = leases.next_expiry()
            if expiry is not None:
                until = expiry - time.monotonic() + EXPIRY_MARGIN_SECONDS
                interval = min(interval, max(until, 0.1))
        return interval

    async def _refresh_unless_stopped(self, tg: anyio.abc.TaskGroup) -> None:
        """A refresh, abandoned as soon as shutdown starts (it may be waiting on an outage)."""
        if self._stopping.is_set():
            return
        async with anyio.create_task_group() as guard:
            guard.start_soon(_wait_and_cancel, self._stopping, guard.cancel_scope)
            await self._refresh(tg)
            guard.cancel_scope.cancel()

    async def _refresh(self, tg: anyio.abc.TaskGroup) -> None:
        """Discover shards when due, balance leases, and start what this replica should run.

        Each step that calls AWS is attempted once; a failure is logged and counted, the other
        steps still run on what is known, and the next refresh comes after a backoff.
        """
        failed = False
        if not self._initialized:
            self._initialized = await self._attempt("initialize", self._maybe_initialize)
            if not self._initialized:
                self._refresh_failures += 1
                return
        if time.monotonic() >= self._next_discovery:
            failed |= not await self._attempt("discovery", self._discover)
        if self._leases is None:
            wanted = await self._wanted_without_leases()
            failed |= wanted is None
        else:
            failed |= not await self._attempt("balance", partial(self._balance, self._leases))
            wanted = tuple(sorted(self._leases.held))
        self._refresh_failures = self._refresh_failures + 1 if failed else 0
        for shard_id in wanted or ():
            if shard_id not in self._running and not self._stopping.is_set():
                self._running.add(shard_id)
                tg.start_soon(self._supervise_shard, shard_id, name=f"shard {shard_id}")

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
        """One ListShards (the refresh loop is the retry), then the leases of new shards."""
        self._shards = await self._api.list_shards()
        if self._leases is not None:
            await self._leases.sync(self._shards, self._initial_checkpoint)
        self._next_discovery = time.monotonic() + self.mapping.shard_discovery_interval_seconds

    async def _wanted_without_leases(self) -> tuple[str, ...] | None:
        """The ready shards by the stored checkpoints (None when they cannot be read)."""
        read: dict[str, dict[str, Checkpoint]] = {}

        async def read_and_retire() -> None:
            read["checkpoints"] = await self._store.get_all(self.mapping.name)
            await self._retire(self._shards, read["checkpoints"])

        if not await self._attempt("checkpoints", read_and_retire) and "checkpoints" not in read:
            return None
        return plan_shards(self._shards, read["checkpoints"]).ready

    async def _balance(self, leases: LeaseCoordinator) -> None:
        """Balance; stop lost shards at once and drain granted ones (handed over on release).

        Also cancels any running shard whose lease is no longer held, whatever forgot it
        (a failed cycle may have forgotten leases before it raised).
        """
        try:
            outcome = await leases.balance(busy=frozenset(self._running))
            for shard_id in outcome.handoffs:
                log.info("lease.handing_off", handoff_shard=shard_id)
                self._stop_shard(shard_id, lost=False)
        finally:
            for shard_id in self._running - set(leases.held):
                self._stop_shard(shard_id, lost=True)

    def _drained(self) -> bool:
        """Shutdown has started and every shard task has finished (released or left)."""
        return self._stopping.is_set() and not self._running

    async def _sleep_unless_drained(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._idle.wait()

    def _note_idle(self) -> None:
        if self._drained():
            self._idle.set()

    async def _renew_loop(self, leases: LeaseCoordinator) -> None:
        """Renew held leases and stop lost shards at once, until the last shard has drained."""
        while not self._drained():
            await self._sleep_unless_drained(leases.settings.renew_interval)
            if self._drained():
                return
            try:
                outcome = await self._renew_until_drained(leases)
            except Exception:
                log.exception("lease.renew_round_failed")
                continue
            for shard_id in outcome.lost:
                self._stop_shard(shard_id, lost=True)

    async def _renew_until_drained(self, leases: LeaseCoordinator) -> RenewOutcome:
        """A round of renewals, abandoned once the last shard has drained: a renewal hung on
        the lease table must not hold the exit (nothing is held any more to renew)."""
        outcome = RenewOutcome()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_wait_and_cancel, self._idle, tg.cancel_scope)
            outcome = await leases.renew_all()
            tg.cancel_scope.cancel()
        return outcome

    async def _fence_loop(self, leases: LeaseCoordinator) -> None:
        """Cancel, in-flight invocation included, any shard whose lease went stale, until the
        last shard has drained (a batch that outlives its lease during the drain is fenced too).

        Independent of the lease table's latency: a renewal stuck on a slow table must not let
        a batch run on while a peer, seeing the lease expire, starts the same shard.
        """
        while not self._drained():
            await self._sleep_unless_drained(leases.fence_wait(FENCE_CHECK_SECONDS))
            for shard_id in leases.stale():
                log.warning("lease.stale", stale_shard=shard_id)
                leases.forget(shard_id)
                self._stop_shard(shard_id, lost=True)

    def _stop_shard(self, shard_id: str, *, lost: bool) -> None:
        """Lost: cancel at once (no invocation, no checkpoint). Else: drain, then release."""
        control = self._controls.get(shard_id)
        if control is None:
            return
        if lost:
            control.lost = True
            control.scope.cancel()
        control.stop.set()

    async def _propagate_stop(self) -> None:
        await self._stopping.wait()
        for control in list(self._controls.values()):
            control.stop.set()
        self._note_idle()

    #: The mapping's start instant (LATEST), once :meth:`_maybe_initialize` has read or
    #: recorded it; 0.0 means TRIM_HORIZON for shards without a checkpoint (a migrated mapping).
    _start_pin: float | None = None
    #: Shards closed in the listing this replica took just before it recorded the instant
    #: itself: every record of theirs is older, so they start finished.
    _closed_before_pin: frozenset[str] = frozenset()

    def _initial_checkpoint(self, shard: ShardInfo) -> Checkpoint | None:
        """The checkpoint a shard without one starts from: for LATEST the mapping's start
        instant, whoever meets the shard first and whenever; None for TRIM_HORIZON and
        AT_TIMESTAMP, which need no pin.

        Raises:
            CheckpointError: LATEST, and the instant is not known yet (``_maybe_initialize``
                has not succeeded); retry after it does.
        """
        if self.mapping.starting_position != "LATEST":
            return None
        if self._start_pin is None:
            raise CheckpointError(f"mapping {self.mapping.name}: start instant not read yet")
        if shard.shard_id in self._closed_before_pin:
            return Checkpoint(sequence_number=SHARD_END)
        if self._start_pin <= 0:
            return None  # a migrated mapping: TRIM_HORIZON, as the version that started it did
        return Checkpoint(start_timestamp=self._start_pin)

    async def _list_shards(self) -> list[ShardInfo]:
        return await retrying(f"list shards of {self.mapping.name}", self._api.list_shards)

    async def _maybe_initialize(self) -> None:
        """For LATEST: read the mapping's start instant, or record it on the first start.

        Without leases, also give every listed shard that has no checkpoint (and is not
        finished) a checkpoint at that instant, so a restart after a crash part-way through
        completes the first start at the same instant. With leases the pins are written when
        leases are created (``LeaseCoordinator.sync`` with :meth:`_initial_checkpoint`).
        Idempotent: safe to retry after a CheckpointError.
        """
        if self.mapping.starting_position != "LATEST":
            return
        shards = await self._api.list_shards()  # before the instant: see _closed_before_pin
        if self._start_pin is None:
            self._start_pin = await self._read_or_pin_start(shards)
        if self._leases is None:
            await self._pin_unstarted_shards(shards)

    async def _read_or_pin_start(self, shards: list[ShardInfo]) -> float:
        """The recorded start instant; on the first start, record now (atomically: of several
        replicas starting together, one wins and all get its instant)."""
        name = self.mapping.name
        recorded = await self._store.mapping_start(name)
        if recorded is not None:
            return recorded
        checkpoints = await self._store.get_all(name)
        instant = _migrated_start(checkpoints) if checkpoints else time.time()
        recorded = await self._store.pin_mapping_start(name, instant)
        if checkpoints:
            log.info("mapping.start_migrated", start_timestamp=recorded)
        elif recorded == instant:
            self._closed_before_pin = frozenset(s.shard_id for s in shards if s.closed)
            log.info("mapping.initialized", starting_position="LATEST", start_timestamp=instant)
        return recorded

    async def _pin_unstarted_shards(self, shards: list[ShardInfo]) -> None:
        """Write the start checkpoint of every listed shard that has none and is unfinished."""
        name = self.mapping.name
        checkpoints = await self._store.get_all(name)
        finished = finished_shards(shards, checkpoints)
        for shard in shards:
            if shard.shard_id in checkpoints or shard.shard_id in finished:
                continue
            checkpoint = self._initial_checkpoint(shard)
            if checkpoint is not None:
                await self._store.put(name, shard.shard_id, checkpoint)

    async def _retire(self, shards: list[ShardInfo], checkpoints: dict[str, Checkpoint]) -> None:
        """Delete the checkpoints of finished shards that left the listing (lineage rules).

        With leases, ``LeaseCoordinator.sync`` retires instead: it also sees lease items that
        have no checkpoint. An empty listing (none taken yet) proves nothing, so nothing goes.
        No ``RetirementGate`` here: the store keeps no parent links, so a shard is witnessed
        finished only while its child is listed, maybe for a single listing; the witness rule
        alone already keeps a shard hidden by one listing finished when it comes back.
        """
        if self._leases is not None or not shards:
            return
        report_reopened(shards, checkpoints)
        for shard_id in retired_checkpoints(shards, checkpoints):
            await self._store.delete(self.mapping.name, shard_id)
            log.info("checkpoint.retired", retired_shard=shard_id)

    async def _supervise_shard(self, shard_id: str) -> None:
        """Run a shard until it ends, is handed off or shutdown; restart it after failures.

        With leases, the lease is released (or handed to the peer that asked) only when the
        shard stopped *settled*: its last batch finished and its checkpoint was written. A shard
        cancelled by the drain deadline keeps its lease until it expires, since its invocation
        may still be running; a lost shard's lease is not ours to release.
        """
        control = self._controls[shard_id] = _ShardControl()
        if self._stopping.is_set():
            control.stop.set()
        settled = False
        with structlog.contextvars.bound_contextvars(shard=shard_id):
            try:
                with control.scope:
                    await self._run_until_done(shard_id, control)
                settled = not control.lost
            finally:
                self._controls.pop(shard_id, None)
                self._metrics.shard_released(self.mapping.name, shard_id)
                if self._leases is not None and settled:
                    await self._release_bounded(shard_id, self._leases)
                # Only now: while it was busy, the balancer must not re-take its lease.
                self._running.discard(shard_id)
                self._note_idle()

    async def _run_until_done(self, shard_id: str, control: _ShardControl) -> None:
        failures = 0
        while not control.stop.is_set():
            try:
                ended = await self._run_shard(shard_id, control.stop)
            except Exception as exc:
                if _contains(exc, LeaseLost):
                    control.lost = True
                    log.warning("shard.stopped", reason="lease lost")
                    return
                failures += 1
                log.exception("shard.crashed", attempt=failures)
                await anyio.sleep(READ_BACKOFF.delay(failures))
                continue
            if ended:
                self._wake.set()
            return

    async def _release_bounded(self, shard_id: str, leases: LeaseCoordinator) -> None:
        """Release, shielded from the drain's cancellation (the next owner may start at once)
        but never longer than a lease duration: a lease table that hangs must not hang the
        exit, and past that the lease has expired for the peers anyway."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(leases.settings.lease_duration):
            await self._release(shard_id)
            return
        self._metrics.dependency_error(self.mapping.name, "release")
        log.warning("lease.release_timed_out", waited_s=leases.settings.lease_duration)

    async def _release(self, shard_id: str) -> None:
        assert self._leases is not None
        try:
            await self._leases.release(shard_id)
        except CheckpointError as exc:
            # The lease stays ours in the table: it expires, or the balancer re-takes it.
            self._metrics.dependency_error(self.mapping.name, "release")
            log.warning("lease.release_failed", error=str(exc))

    async def _run_shard(self, shard_id: str, stop: anyio.Event) -> bool:
        """One pass over a shard: reader and worker side by side. True when the shard ended."""
        checkpoint = await self._store.get(self.mapping.name, shard_id)
        if checkpoint is not None and checkpoint.is_shard_end:
            return True
        start = self._start_position(checkpoint)
        log.info("shard.started", start=start.type, after=start.sequence_number)
        reader = ShardReader(
            self._api,
            shard_id=shard_id,
            start=start,
            on_page=self._page_reporter(shard_id),
            metrics=self._metrics,
            mapping=self.mapping.name,
        )
        worker = ShardProcessor(
            mapping=self.mapping.name,
            shard_id=shard_id,
            target=self._target
            if self._leases is None
            else self._leases.tracked(shard_id, self._target),
            store=self._store,
            policy=self._policy,
            routing=self._routing,
            stopping=stop,
            metrics=self._metrics,
            guard=None if self._leases is None else partial(self._leases.ensure_fresh, shard_id),
            retention=self._api.retention_seconds,
        )
        send, receive = anyio.create_memory_object_stream[Chunk](READ_AHEAD_CHUNKS)
        reader_scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_cancellable, reader.run, send, reader_scope)
            tg.start_soon(_stop_intake, stop, reader_scope, worker)
            ended = await worker.run(receive)
            tg.cancel_scope.cancel()
        return ended is not None

    def _page_reporter(self, shard_id: str) -> Callable[[RecordsPage], None]:
        """Reports the source's own lag (Kinesis ``MillisBehindLatest``) per read."""
        metrics, name = self._metrics, self.mapping.name

        def report(page: RecordsPage) -> None:
            if page.millis_behind_latest is not None:
                metrics.millis_behind_latest(name, shard_id, page.millis_behind_latest)

        return report

    def _start_position(self, checkpoint: Checkpoint | None) -> StartPosition:
        if checkpoint is not None and checkpoint.sub_sequence_number is not None:
            # Inside a KPL aggregate: read it again and skip the user records already settled.
            return StartPosition(
                "AT_SEQUENCE_NUMBER",
                checkpoint.sequence_number,
                settled_through=checkpoint.sub_sequence_number,
            )
        if checkpoint is not None and checkpoint.sequence_number is not None:
            return StartPosition("AFTER_SEQUENCE_NUMBER", checkpoint.sequence_number)
        if checkpoint is not None and checkpoint.start_timestamp is not None:
            return StartPosition("AT_TIMESTAMP", timestamp=checkpoint.start_timestamp)
        if (
            isinstance(self.mapping, KinesisMapping)
            and self.mapping.starting_position == "AT_TIMESTAMP"
        ):
            return StartPosition("AT_TIMESTAMP", timestamp=self.mapping.starting_position_timestamp)
        # TRIM_HORIZON mappings, and shards that appeared after a LATEST mapping started.
        return StartPosition("TRIM_HORIZON")


def _migrated_start(checkpoints: dict[str, Checkpoint]) -> float:
    """The start instant of a mapping started by a version that did not record it: the pin
    still held by a checkpoint, else 0 (TRIM_HORIZON for shards without one, as before)."""
    pins = [c.start_timestamp for c in checkpoints.values() if c.start_timestamp is not None]
    return min(pins, default=0.0)


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is, or is a task-group exception group holding, a ``kind``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, kind)) is not None
    return isinstance(exc, kind)


@dataclass(slots=True)
class _ShardControl:
    """How the runner stops one shard: ``stop`` drains it; ``scope`` cancels it outright."""

    stop: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    lost: bool = False


async def _wait_and_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _run_cancellable(run: Any, send: Any, scope: anyio.CancelScope) -> None:
    """Run the reader under ``scope``, which shutdown cancels to stop intake."""
    with scope:
        await run(send)


async def _stop_intake(
    stopping: anyio.Event, reader_scope: anyio.CancelScope, worker: ShardProcessor
) -> None:
    """On shutdown, stop reading at once and stop the worker from taking a new batch."""
    await stopping.wait()
    reader_scope.cancel()
    worker.interrupt()
