"""Shard ownership: which shards of one stream mapping this replica runs, behind one seam.

Data flow (one :class:`ShardOwnership` per stream mapping, driven by its runner)::

    first refresh (LATEST) -> prepare(listing)   solo: write the start checkpoint of every
                                                  listed shard that has none
    each discovery         -> discovered(listing) leased: create the leases of new shards at
                                                  their start checkpoint, retire finished ones
    each refresh           -> claim(listing)      the shards to run: solo, the ready ones by
                                                  the stored checkpoints (lineage), retiring
                                                  finished ones; leased, the leases held after
                                                  a balance (lost ones stop at once, handed-off
                                                  ones drain first)
    each shard             -> store, target(id), guard(id): where it checkpoints (fenced when
                                                  leased), what it invokes (tracked when
                                                  leased), the self-fencing check before each
                                                  invocation
    a shard that stopped settled -> release(id)   leased: hand the lease on, bounded in time
    upkeep(shards), from before the first refresh until cancelled once the last shard task
    has finished               -> leased: heartbeat, fence stale leases; leave the member
                                  map at the end

:class:`SoloOwnership` (one replica, every shard is ours; SQLite or memory) and
:class:`LeasedOwnership` (replicas share the shards through the lease table) implement it.
The runner never asks which one it has; :func:`ownership_for` picks it, once per mapping,
from the opened checkpoint backend (:mod:`poller.checkpoints`).

Rewinds (``poller rewind``, :mod:`poller.checkpoints.rewinds`): a shard starts from
``start_checkpoint(id)``, which applies the shard's pending rewind first, as its owner (solo:
one SQLite transaction with the checkpoint; leased: the fenced checkpoint write, on the lease
counter). A rewind asked while the shard runs reaches it as a restart (``ShardStops.restart``):
solo, ``upkeep`` polls the pending rewinds once a second (one query per mapping) and applies
those of shards not running itself; leased, each watch of the member item (already read every
second) shows the mapping's ``rewindNotice``, and when it changes the leases this replica runs
are read once for pending requests. Either way the owner applies the rewind, at a batch
boundary, and only the owner: a peer that takes the lease later applies it when it starts.

Stopping: ownership has no stop signal of its own. It stops shards through
:class:`ShardStops` (lost: cancelled at once; handed off: drained), and its upkeep runs until
the runner cancels it, which it does only once every shard task has finished: a lease is
kept alive by heartbeats, and fenced, while its last batch settles, then released.

Leased refreshes come every ``watch_interval`` (``refresh_due_in``): each reads the peers'
heartbeats (one GetItem) and balances only when that read calls for it (see
``LeaseCoordinator.balance_due``), so a dead peer's shards move right at its expiry while the
table is read once a second per replica, whatever the number of shards.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

import anyio
import structlog

from poller.checkpoints import Checkpoints, SharedCheckpoints, SoloCheckpoints
from poller.checkpoints.sqlite import SERVICE_BEAT_SECONDS
from poller.config import AnyMapping
from poller.core.lineage import ShardInfo, finished_shards, plan_shards, retired_checkpoints
from poller.errors import CheckpointError
from poller.leases import LeaseCoordinator, LeasedCheckpointStore, LeaseSettings, report_reopened
from poller.observability.metrics import Metrics, NullMetrics
from poller.types import Checkpoint, CheckpointStore, Target

log = structlog.get_logger("poller.streams")

#: While a handoff is pending for or by this replica, watch (and balance) at least this often.
HANDOFF_POLL_SECONDS = 1.0
#: How often held leases are checked for staleness (self-fencing) at the longest; the check
#: also wakes exactly when the soonest lease goes stale (``LeaseCoordinator.fence_wait``).
FENCE_CHECK_SECONDS = 0.5
#: Balance this long after a peer's lease would expire, to observe it expired.
EXPIRY_MARGIN_SECONDS = 0.2
#: The release of a lease is shielded from the drain's cancellation (the next owner may start
#: at once) for at most this many lease durations: a lease table that hangs must not hang the
#: exit, and past one lease duration the lease has expired for the peers anyway.
RELEASE_DEADLINE_LEASES = 1.0

#: The start checkpoint of a shard that has none (``MappingStart.checkpoint_for``).
StartOf = Callable[[ShardInfo], Checkpoint | None]
#: How often a solo mapping looks for pending rewinds (one query each time).
REWIND_POLL_SECONDS = 1.0
#: Tries to apply a pending rewind at a shard's start when newer requests keep replacing it.
REWIND_APPLY_TRIES = 3

#: Runs one step of a refresh, named for logs and metrics; False when it failed (logged and
#: counted by the runner, never raised).
Attempt = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[bool]]


class ShardStops(Protocol):
    """The running shard tasks, as ownership sees them (``ShardSupervisor``)."""

    @property
    def running(self) -> AbstractSet[str]:
        """Shards whose task still runs (releasing included)."""
        ...

    def stop(self, shard_id: str, *, lost: bool) -> None:
        """Lost: cancel at once (no invocation, no checkpoint). Else: drain, then release."""
        ...

    def restart(self, shard_id: str) -> None:
        """Drain the shard's run, then run it again from ``start_checkpoint`` (a rewind)."""
        ...


@runtime_checkable
class SoloRewinds(Protocol):
    """A solo store that keeps rewind requests (SQLite: ``poller.checkpoints.sqlite``)."""

    async def apply_rewind(self, mapping: str, shard_id: str, applied_by: str) -> Checkpoint | None:
        """The shard's checkpoint after applying its pending rewind, if any (atomically)."""
        ...

    async def pending_rewinds(self, mapping: str) -> dict[str, str]:
        """Pending rewinds of the mapping: shard id -> rewind id."""
        ...

    async def serve(self, mapping: str, replica: str) -> None:
        """Record (or beat) that this process serves the mapping."""
        ...

    async def unserve(self, mapping: str, replica: str) -> None:
        """This process no longer serves the mapping."""
        ...


@dataclass(frozen=True, slots=True)
class Claim:
    """The shards this replica should run now, and whether finding out failed."""

    shard_ids: tuple[str, ...]
    failed: bool


class ShardOwnership(Protocol):
    """How one mapping's shards come to be this replica's (see the module docstring)."""

    #: Where the mapping's checkpoints are read and written (fenced when leased).
    store: CheckpointStore

    def refresh_interval(self, discovery_interval: float) -> float:
        """The refresh interval, before jitter: the discovery interval, or shorter."""
        ...

    def refresh_due_in(self) -> float:
        """Seconds until ownership wants a refresh (``inf``: no hurry)."""
        ...

    async def prepare(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """At the first start of a LATEST mapping, once its instant is pinned."""
        ...

    async def discovered(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """After each listing."""
        ...

    async def claim(self, shards: list[ShardInfo], tasks: ShardStops, attempt: Attempt) -> Claim:
        """Which shards to run; may stop running shards that are no longer ours."""
        ...

    async def upkeep(self, tasks: ShardStops) -> None:
        """Keep ownership alive until cancelled; may stop shards that lost it."""
        ...

    def target(self, shard_id: str, target: Target) -> Target:
        """The target a shard's invocations go to."""
        ...

    def guard(self, shard_id: str) -> Callable[[], None] | None:
        """Called before every invocation of the shard; raises LeaseLost to stop it."""
        ...

    async def start_checkpoint(self, shard_id: str) -> Checkpoint | None:
        """Where the shard starts: its checkpoint, after applying a pending rewind as its
        owner (raises LeaseLost when that fenced write finds the lease lost)."""
        ...

    async def release(self, shard_id: str) -> None:
        """The shard stopped settled: let another replica have it. Never raises."""
        ...


class SoloOwnership:
    """One replica: every ready shard is ours, checkpoints go straight to ``store``."""

    def __init__(self, store: CheckpointStore, mapping: str) -> None:
        self.store = store
        self._mapping = mapping
        #: Rewind requests, when the store keeps them (SQLite does; test fakes may not).
        self._rewinds = store if isinstance(store, SoloRewinds) else None
        #: Who applies rewinds here, as ``poller rewind`` reports it.
        self._replica = f"{socket.gethostname()}:{os.getpid()}"
        #: The rewind each running shard was last restarted for (one restart per request).
        self._restarted_for: dict[str, str] = {}
        #: Whether this process's ``services`` row was written (before any shard starts).
        self._serving = False

    def refresh_interval(self, discovery_interval: float) -> float:
        return discovery_interval

    def refresh_due_in(self) -> float:
        return math.inf

    async def prepare(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """Give every listed shard that has no checkpoint (and is not finished) its start
        checkpoint, so a restart after a crash part-way through completes the first start at
        the same instant. Idempotent: safe to retry after a CheckpointError."""
        checkpoints = await self.store.get_all(self._mapping)
        finished = finished_shards(shards, checkpoints)
        for shard in shards:
            if shard.shard_id in checkpoints or shard.shard_id in finished:
                continue
            checkpoint = start_of(shard)
            if checkpoint is not None:
                await self.store.put(self._mapping, shard.shard_id, checkpoint)

    async def discovered(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """Nothing: a shard without a checkpoint starts by the mapping's starting position."""

    async def claim(self, shards: list[ShardInfo], tasks: ShardStops, attempt: Attempt) -> Claim:
        """The ready shards by the stored checkpoints, after retiring finished ones (a failed
        retirement is logged and counted, and the shards read are still planned)."""
        read: dict[str, dict[str, Checkpoint]] = {}

        async def read_and_retire() -> None:
            read["checkpoints"] = await self.store.get_all(self._mapping)
            await self.retire(shards, read["checkpoints"])

        if not await attempt("checkpoints", read_and_retire) and "checkpoints" not in read:
            return Claim((), failed=True)
        return Claim(plan_shards(shards, read["checkpoints"]).ready, failed=False)

    async def retire(self, shards: list[ShardInfo], checkpoints: dict[str, Checkpoint]) -> None:
        """Delete the checkpoints of finished shards that left the listing (lineage rules).

        An empty listing (none taken yet) proves nothing, so nothing goes. No
        ``RetirementGate`` here: the store keeps no parent links, so a shard is witnessed
        finished only while its child is listed, maybe for a single listing; the witness rule
        alone already keeps a shard hidden by one listing finished when it comes back.
        """
        if not shards:
            return
        report_reopened(shards, checkpoints)
        for shard_id in retired_checkpoints(shards, checkpoints):
            await self.store.delete(self._mapping, shard_id)
            log.info("checkpoint.retired", retired_shard=shard_id)

    async def upkeep(self, tasks: ShardStops) -> None:
        """No other replica can take a shard; with a store that keeps rewinds, record that
        this process serves the mapping (so ``poller rewind`` leaves the applying to it) and
        apply pending rewinds until cancelled, then record that it no longer does."""
        rewinds = self._rewinds
        if rewinds is None:
            return
        try:
            await self._serve_rewinds(rewinds, tasks)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                try:
                    await rewinds.unserve(self._mapping, self._replica)
                except CheckpointError as exc:
                    log.warning("rewind.unserve_failed", error=str(exc))

    async def _serve_rewinds(self, rewinds: SoloRewinds, tasks: ShardStops) -> None:
        """Once a second, one query for the mapping's pending rewinds: a running shard is
        restarted (it applies its rewind when it starts again), any other shard's rewind is
        applied here, atomically with its checkpoint (a shard starting meanwhile reads either
        the pending request, which it applies, or the new checkpoint)."""
        beaten = -math.inf
        while True:
            try:
                if time.monotonic() - beaten >= SERVICE_BEAT_SECONDS:
                    await rewinds.serve(self._mapping, self._replica)
                    self._serving, beaten = True, time.monotonic()
                pending = await rewinds.pending_rewinds(self._mapping)
                for shard_id, rewind_id in pending.items():
                    if shard_id in tasks.running:
                        if self._restarted_for.get(shard_id) != rewind_id:
                            self._restarted_for[shard_id] = rewind_id
                            tasks.restart(shard_id)
                    else:
                        await rewinds.apply_rewind(self._mapping, shard_id, self._replica)
                        log.info("rewind.applied", rewind_shard=shard_id, rewind=rewind_id)
            except CheckpointError as exc:
                log.warning("rewind.poll_failed", error=str(exc))
            await anyio.sleep(REWIND_POLL_SECONDS)

    async def start_checkpoint(self, shard_id: str) -> Checkpoint | None:
        """The stored checkpoint, after applying the shard's pending rewind (one transaction).

        The ``services`` row is written before the first shard reads where to start: from
        then on ``poller rewind`` never writes a checkpoint itself, so it cannot move one
        behind a running shard (whose next checkpoint would silently undo it)."""
        if self._rewinds is None:
            return await self.store.get(self._mapping, shard_id)
        if not self._serving:
            await self._rewinds.serve(self._mapping, self._replica)
            self._serving = True
        return await self._rewinds.apply_rewind(self._mapping, shard_id, self._replica)

    def target(self, shard_id: str, target: Target) -> Target:
        return target

    def guard(self, shard_id: str) -> Callable[[], None] | None:
        return None

    async def release(self, shard_id: str) -> None:
        """Nothing to hand on."""


class LeasedOwnership:
    """Replicas share the shards: a shard is ours while we hold its lease (``leases``)."""

    def __init__(self, leases: LeaseCoordinator, *, metrics: Metrics | None = None) -> None:
        self._leases = leases
        self._metrics: Metrics = metrics or NullMetrics()
        self.store: CheckpointStore = LeasedCheckpointStore(leases)
        #: When the peers' heartbeats were last read (monotonic).
        self._watched_at = -math.inf
        #: The member item's ``rewindNotice`` whose requests were looked for (poller rewind).
        self._rewind_notice_seen: str | None = None

    def refresh_interval(self, discovery_interval: float) -> float:
        """Balance at least every balance interval."""
        return min(discovery_interval, self._leases.settings.balance_interval)

    def refresh_due_in(self) -> float:
        """At the next watch of the peers' heartbeats, or just after a peer's lease expires."""
        interval = self._leases.settings.watch_interval
        if self._leases.awaiting_handoff:
            interval = min(interval, HANDOFF_POLL_SECONDS)
        now = time.monotonic()
        due = max(self._watched_at + interval - now, 0.0)
        expiry = self._leases.next_expiry()
        if expiry is not None:
            due = min(due, max(expiry - now + EXPIRY_MARGIN_SECONDS, 0.1))
        return due

    async def prepare(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """Nothing: start checkpoints are written when leases are created (``discovered``)."""

    async def discovered(self, shards: Sequence[ShardInfo], start_of: StartOf) -> None:
        """Create the leases of new shards at their start checkpoint; retire finished ones
        (``sync`` also sees lease items that have no checkpoint)."""
        await self._leases.sync(shards, start_of)

    async def claim(self, shards: list[ShardInfo], tasks: ShardStops, attempt: Attempt) -> Claim:
        """Balance, then every lease held (as known, even when the balance failed)."""
        balanced = await attempt("balance", partial(self._balance, tasks))
        return Claim(tuple(sorted(self._leases.held)), failed=not balanced)

    async def _balance(self, tasks: ShardStops) -> None:
        """Watch the peers; if that calls for it, balance: stop lost shards at once and drain
        granted ones (handed over on release).

        Also cancels any running shard whose lease is no longer held, whatever forgot it
        (a failed cycle may have forgotten leases before it raised).
        """
        try:
            self._watched_at = time.monotonic()
            due = await self._leases.watch()
            await self._look_for_rewinds(tasks)
            if not due:
                return
            outcome = await self._leases.balance(busy=frozenset(tasks.running))
            for shard_id in outcome.handoffs:
                log.info("lease.handing_off", handoff_shard=shard_id)
                tasks.stop(shard_id, lost=False)
        finally:
            for shard_id in set(tasks.running) - set(self._leases.held):
                tasks.stop(shard_id, lost=True)

    async def _look_for_rewinds(self, tasks: ShardStops) -> None:
        """When the mapping's ``rewindNotice`` changed, read the leases this replica runs (a
        consistent GetItem each, only then) and restart those with a pending rewind: they
        apply it when they start again."""
        notice = self._leases.rewind_notice
        if notice is None or notice == self._rewind_notice_seen:
            return
        failed = False
        for shard_id in sorted(set(tasks.running) & set(self._leases.held)):
            try:
                lease = await self._leases.table.get(self._leases.mapping, shard_id)
            except CheckpointError as exc:
                # One failed read must not hold back the others, nor the balance after.
                log.warning("rewind.look_failed", rewind_shard=shard_id, error=str(exc))
                failed = True
                continue
            if lease is not None and lease.pending_rewind is not None:
                tasks.restart(shard_id)
        # Only once all were read: a failed read looks again at the next watch.
        if not failed:
            self._rewind_notice_seen = notice

    async def start_checkpoint(self, shard_id: str) -> Checkpoint | None:
        """The lease's checkpoint (a consistent read), after applying its pending rewind by
        a fenced write on the lease counter (LeaseLost if the lease is no longer ours)."""
        mapping = self._leases.mapping
        lease = await self._leases.table.get(mapping, shard_id)
        for _ in range(REWIND_APPLY_TRIES):
            pending = None if lease is None else lease.pending_rewind
            if lease is None or pending is None:
                break
            # A shard read to its end stays ended: the request is only marked skipped.
            checkpoint = pending.target.checkpoint()
            if lease.checkpoint is not None and lease.checkpoint.is_shard_end:
                checkpoint = lease.checkpoint
            if await self._leases.apply_rewind(shard_id, pending.rewind_id, checkpoint):
                log.info("rewind.applied", rewind_shard=shard_id, rewind=pending.rewind_id)
                return checkpoint
            lease = await self._leases.table.get(mapping, shard_id)  # a newer request
        return None if lease is None else lease.checkpoint

    async def upkeep(self, tasks: ShardStops) -> None:
        """Heartbeat and self-fence until cancelled (the runner does once every shard
        drained); then leave the member map, so peers rebalance at once."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat_loop, tasks, name="lease heartbeats")
                tg.start_soon(self._fence_loop, tasks, name="lease self-fencing")
        finally:
            await self._leave()

    async def _heartbeat_loop(self, tasks: ShardStops) -> None:
        """Heartbeat at once (no lease is taken before the first one succeeds), then every
        ``renew_interval`` from the previous send; stop shards fenced off by an outage. A
        heartbeat hung on the lease table is abandoned by the cancellation that ends the loop."""
        interval = self._leases.settings.renew_interval
        while True:
            sent = time.monotonic()
            try:
                outcome = await self._leases.heartbeat()
            except Exception:
                log.exception("lease.heartbeat_round_failed")
            else:
                for shard_id in outcome.lost:
                    tasks.stop(shard_id, lost=True)
            await anyio.sleep(max(sent + interval - time.monotonic(), 0.0))

    async def _leave(self) -> None:
        """Remove our heartbeat entry on the way out, bounded like a release; only when every
        lease was released (a lease still held must expire for peers by our silence)."""
        if self._leases.held:
            return
        limit = self._leases.settings.lease_duration * RELEASE_DEADLINE_LEASES
        with anyio.CancelScope(shield=True), anyio.move_on_after(limit):
            try:
                await self._leases.leave()
            except CheckpointError as exc:
                log.warning("lease.leave_failed", error=str(exc))

    async def _fence_loop(self, tasks: ShardStops) -> None:
        """Cancel, in-flight invocation included, any shard whose lease went stale (a batch
        that outlives its lease during the drain is fenced too).

        Independent of the lease table's latency: a heartbeat stuck on a slow table must not let
        a batch run on while a peer, seeing the lease expire, starts the same shard.
        """
        while True:
            await anyio.sleep(self._leases.fence_wait(FENCE_CHECK_SECONDS))
            for shard_id in self._leases.stale():
                log.warning("lease.stale", stale_shard=shard_id)
                self._leases.forget(shard_id)
                tasks.stop(shard_id, lost=True)

    def target(self, shard_id: str, target: Target) -> Target:
        """Invocations cancelled mid-flight are noted: our own lease is re-taken only a
        takeover grace after one."""
        return self._leases.tracked(shard_id, target)

    def guard(self, shard_id: str) -> Callable[[], None] | None:
        return partial(self._leases.ensure_fresh, shard_id)

    async def release(self, shard_id: str) -> None:
        """Release, shielded from the drain's cancellation (the next owner may start at once)
        but bounded by :data:`RELEASE_DEADLINE_LEASES` lease durations."""
        limit = self._leases.settings.lease_duration * RELEASE_DEADLINE_LEASES
        with anyio.CancelScope(shield=True), anyio.move_on_after(limit):
            await self._release(shard_id)
            return
        self._metrics.dependency_error(self._leases.mapping, "release")
        log.warning("lease.release_timed_out", waited_s=limit)

    async def _release(self, shard_id: str) -> None:
        try:
            await self._leases.release(shard_id)
        except CheckpointError as exc:
            # The lease stays ours in the table: it expires, or the balancer re-takes it.
            self._metrics.dependency_error(self._leases.mapping, "release")
            log.warning("lease.release_failed", error=str(exc))


#: Seconds between an invocation's freshness check and the start of the target's timeout, at
#: most (event serialization, a thread hand-off), added to the default takeover grace.
INVOCATION_START_MARGIN = 0.5


def takeover_grace(
    configured: float | None, mapping: AnyMapping, *, lease_duration: float | None = None
) -> float:
    """How much longer than a lease a peer waits to take a silent owner's lease of ``mapping``:
    as configured, else the target's timeout less the heartbeat interval, plus
    :data:`INVOCATION_START_MARGIN` (never below 0).

    The owner starts no invocation once its last heartbeat is older than the lease duration
    less a heartbeat interval (``ensure_fresh``), and a peer takes the lease no sooner than a
    lease duration plus the grace after that heartbeat was sent; an invocation started last
    ends within the target's timeout, so ``timeout - lease_duration / 3`` is enough for no two
    replicas to invoke a shard at once (the margin covers the moments between the freshness
    check and the start of the target's own timeout: building and sending the event).
    ``lease_duration`` None (no leases yet known) leaves the whole timeout. A Lambda target
    has no timeout of its own here (the function's is remote), so its default grace is 0;
    ``checkpoints.takeover_grace_seconds`` sets one.
    """
    if configured is not None:
        return configured
    timeout = float(getattr(mapping.target, "timeout_seconds", 0.0))
    if lease_duration is None:
        return timeout
    return max(0.0, timeout - lease_duration / 3 + INVOCATION_START_MARGIN)


def ownership_for(
    checkpoints: Checkpoints, mapping: AnyMapping, *, metrics: Metrics | None = None
) -> ShardOwnership:
    """The ownership of ``mapping``'s shards over the opened backend: the one place that tells
    solo and leased apart. Leased: a coordinator of the mapping's own, named as this replica,
    with the configured lease timing."""
    match checkpoints:
        case SoloCheckpoints(store=store):
            return SoloOwnership(store, mapping.name)
        case SharedCheckpoints(table=table, replica=replica, settings=cfg):
            settings = LeaseSettings(
                lease_duration=cfg.lease_duration_seconds,
                balance_interval=cfg.balance_interval_seconds,
                max_leases_per_replica=cfg.max_leases_per_replica,
                takeover_grace=takeover_grace(
                    cfg.takeover_grace_seconds, mapping, lease_duration=cfg.lease_duration_seconds
                ),
                # Our own lease after a cancelled invocation: that one may have just started,
                # so the whole timeout (no heartbeat interval to subtract).
                abandon_grace=takeover_grace(cfg.takeover_grace_seconds, mapping),
            )
            coordinator = LeaseCoordinator(
                table, mapping=mapping.name, owner=replica, settings=settings, metrics=metrics
            )
            return LeasedOwnership(coordinator, metrics=metrics)
