"""Leases across replicas: which shards this replica processes, fenced by the lease table.

Data flow (one :class:`LeaseCoordinator` per stream mapping, driven by its runner)::

    discovery  -> sync():      create a lease per new shard (parents, pinned start), retire
                               the leases of finished shards that left the listing
    balance    -> balance():   read the table, judge expiry, take / ask for handoffs, grant or
                               decline peers' requests (core.balance)
    renew loop -> renew_all(): fenced renewals every lease_duration/3; report lost leases
    pipeline   -> checkpoint() through LeasedCheckpointStore: a fenced write; LeaseLost stops
                               the shard at once
    shard end, handoff, shutdown -> release(): the next owner may start at once (a granted
                               lease is written over to the asker, nobody else)

A lease the table still gives this replica but that it does not run (a lost response, a lease
fenced off locally for staleness, a lease handed to it) is re-taken by the next balance, by the
same fenced take as any free lease, once no task of this replica runs its shard any more.

Expiry is judged as the Kinesis Client Library does: a lease is expired when its counter has not
changed for ``lease_duration`` *on this replica's monotonic clock*. Wall clocks of different
tasks are never compared. A replica that cannot renew a lease for ``lease_duration`` stops the
shard itself, since a peer may already have taken it. Every write to one lease goes through one
lock, because renewals and checkpoints both move the counter they are conditioned on.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import anyio
import structlog

from poller.checkpoints.dynamodb import WINDOW_STATE_LIMIT, DynamoDBLeaseTable, Lease
from poller.core.balance import BalancePlan, LeaseView, plan_balance
from poller.core.lineage import (
    RetirementGate,
    ShardInfo,
    finished_shards,
    plan_shards,
    reopened_shards,
    retired_checkpoints,
    vanished_shards,
)
from poller.errors import CheckpointError, LeaseLost
from poller.observability.metrics import Metrics, NullMetrics
from poller.types import Checkpoint, InvokeResult, Target

log = structlog.get_logger("poller.leases")

#: Looks at the table per balance cycle while peers win the races for free leases (replicas
#: starting together), so that the cycle ends with our handoff requests made.
TAKE_ROUNDS = 3
#: A held lease not renewed for this part of the lease duration is stale: its shard stops,
#: in-flight invocation included, before a peer can see the lease expire.
STALE_FRACTION = 0.9
#: The fence loop's shortest sleep (a lease already due is handled by the current wake).
MIN_FENCE_WAIT = 0.01


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Timing of the lease protocol (defaults: a 10 s lease, renewed about every 3 s)."""

    lease_duration: float = 10.0
    balance_interval: float = 5.0
    max_leases_per_replica: int | None = None
    #: How much longer than ``lease_duration`` a peer waits before taking a lease it saw stop
    #: moving. An owner that can no longer renew (a lease-table partition, a frozen process)
    #: may still have an invocation running that it started while its lease was fresh; that
    #: invocation ends within the target's timeout, so waiting that long more means a shard is
    #: never invoked by two replicas at once. A released lease is taken at once.
    takeover_grace: float = 0.0

    @property
    def takeover_after(self) -> float:
        """How long a peer's lease must stand still before this replica may take it."""
        return self.lease_duration + self.takeover_grace

    @property
    def renew_interval(self) -> float:
        """Renew about every third of the lease duration."""
        return self.lease_duration / 3


@dataclass(slots=True)
class RenewOutcome:
    """What a round of renewals found: the leases lost."""

    lost: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BalanceOutcome:
    """What a balance cycle decided for the runner: shards to stop at once (lost), and shards
    to drain and hand over to the peer that asked (the lease goes to it on release)."""

    lost: list[str] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)


async def replica_identity() -> str:
    """The ECS task id when running on ECS, else host, process and a random suffix."""
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if metadata:
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{metadata}/task") as response,
            ):
                task = await response.json(content_type=None)
            return str(task["TaskARN"]).rsplit("/", 1)[-1]
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("replica.ecs_metadata_unavailable", error=str(exc))
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseCoordinator:
    """The leases one mapping holds on this replica."""

    def __init__(
        self,
        table: DynamoDBLeaseTable,
        *,
        mapping: str,
        owner: str,
        settings: LeaseSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.mapping = mapping
        self.owner = owner
        self.settings = settings
        self._metrics: Metrics = metrics or NullMetrics()
        self._clock = clock
        self.held: dict[str, Lease] = {}
        self._renewed_at: dict[str, float] = {}
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._seen: dict[str, tuple[int, float]] = {}
        #: When an invocation of each shard was cancelled mid-flight (the shard stopped): the
        #: call itself may run on (a sync handler's thread, a remote function) for up to the
        #: takeover grace, so we re-take our own lease only after it.
        self._abandoned_at: dict[str, float] = {}
        #: Leases handed to us are waiting to be taken: poll faster than the balance interval.
        self.awaiting_handoff = False
        #: Held leases granted to a peer: released to it once the shard has drained.
        self._handing_to: dict[str, str] = {}
        #: (shard, pending owner) as seen at the previous balance: requests still there at the
        #: next one are answered.
        self._asked: set[tuple[str, str | None]] = set()

    # -- discovery and balance ----------------------------------------------------------------

    #: Shards left out of the previous listing too (see ``RetirementGate``), set on first use.
    _gate: RetirementGate | None = None

    _orphan_gate: RetirementGate | None = None

    @property
    def _retirements(self) -> RetirementGate:
        if self._gate is None:
            self._gate = RetirementGate()
        return self._gate

    @property
    def _orphans(self) -> RetirementGate:
        if self._orphan_gate is None:
            self._orphan_gate = RetirementGate()
        return self._orphan_gate

    async def sync(
        self, shards: Sequence[ShardInfo], initial: Callable[[ShardInfo], Checkpoint | None]
    ) -> None:
        """Bring the table in line with a fresh listing: create the missing leases, retire the
        leases of finished shards that left the listing.

        Every new lease gets ``initial(shard)`` as its checkpoint, whoever creates it and
        whenever (for LATEST, the mapping's pinned start instant; the first-start decision is
        made once, for the mapping, before any lease exists). A listed shard finished by
        lineage (a descendant shows progress) never gets a lease again, so a retired lease
        cannot come back without its checkpoint. Raises CheckpointError when the table fails.
        """
        leases = await self.table.list_leases(self.mapping)
        existing = {lease.shard_id for lease in leases}
        checkpoints = {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}
        stored = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases]
        finished = finished_shards([*stored, *shards], checkpoints)
        waiting = self._unconfirmed_orphans(shards, existing)
        for shard in shards:
            if shard.shard_id not in existing | finished | waiting:
                await self.table.create(
                    self.mapping,
                    shard.shard_id,
                    parent_ids=shard.parent_ids,
                    checkpoint=initial(shard),
                )
        report_reopened(shards, checkpoints)
        if not shards:
            return  # an empty listing (none taken yet, or a glitch) proves nothing is gone
        retired = retired_checkpoints(shards, checkpoints, stored=stored)
        gone = vanished_shards(shards, checkpoints, stored)
        for shard_id in self._retirements.confirmed([*retired, *gone], new_listing=True):
            await self.table.delete(self.mapping, shard_id)
            if shard_id in gone:
                log.warning("lease.vanished", vanished_shard=shard_id, reason=_VANISHED)
            else:
                log.info("lease.retired", retired_shard=shard_id)

    def _unconfirmed_orphans(self, shards: Sequence[ShardInfo], existing: set[str]) -> set[str]:
        """Listed shards not to give a lease yet: orphans (see :func:`_orphans`) that the
        previous listing did not show as orphans too, and their listed descendants.

        On a mapping's first start (no lease yet) the listing is trusted: every root of a
        DynamoDB stream is an orphan (its parent aged out), and waiting a discovery interval
        would delay the start. Later, a new orphan is rare (a parent and its child born and
        trimmed while the service was down) or a listing that hides a parent.
        """
        found = _orphans(shards, existing)
        confirmed = self._orphans.confirmed(found, new_listing=True)
        if not existing:
            return set()
        waiting = found - set(confirmed)
        grew = bool(waiting)
        while grew:  # descendants too: a child must not get a lease before its parent
            more = {s.shard_id for s in shards if waiting & set(s.parent_ids)} - waiting
            waiting |= more
            grew = bool(more)
        return waiting

    async def checkpoints(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint of the mapping, by shard."""
        leases = await self.table.list_leases(self.mapping)
        return {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}

    async def balance(self, busy: AbstractSet[str] = frozenset()) -> BalanceOutcome:
        """One balance cycle: observe, take, ask for handoffs, answer peers' requests.

        ``busy`` names the shards whose task still runs on this replica: a lease the table
        still gives us is re-taken only once its old task has finished. Raises CheckpointError
        when the table fails (the runner retries next cycle); what was done before stays done.
        """
        outcome = BalanceOutcome()
        for _ in range(TAKE_ROUNDS):
            leases = await self._observe(outcome)
            plan = self._plan(leases, busy)
            if await self._take_all(leases, plan.take):
                break
            # A peer won a race for a free lease: look again at once, so that our requests
            # (which also make us count as a live replica for the others) go out this cycle.
        self._asked = {(s, lease.pending_owner) for s, lease in leases.items()}
        await self._ask(leases, plan.request)
        for shard_id, asker in plan.grant:
            if shard_id in self.held:
                self._handing_to[shard_id] = asker
                outcome.handoffs.append(shard_id)
        for shard_id in plan.decline:
            if shard_id not in self._handing_to:  # granted earlier: already draining
                await self._decline(shard_id)
        self.awaiting_handoff = bool(plan.request) or any(
            self.owner in (lease.pending_owner, lease.owner)
            and lease.shard_id not in self.held
            and lease.shard_id not in self._abandoned_at  # next_expiry wakes us for those
            for lease in leases.values()
        )
        self._metrics.leases_held(self.mapping, len(self.held))
        return outcome

    async def _observe(self, outcome: BalanceOutcome) -> dict[str, Lease]:
        """Read the table; forget (and report) held leases that are no longer ours."""
        leases = {lease.shard_id: lease for lease in await self.table.list_leases(self.mapping)}
        for shard_id in list(self.held):
            lease = leases.get(shard_id)
            if lease is None or lease.owner != self.owner:
                self._forget(shard_id, "lost")
                outcome.lost.append(shard_id)
        return leases

    def _plan(self, leases: dict[str, Lease], busy: AbstractSet[str]) -> BalancePlan:
        now = self._clock()
        grace = self.settings.takeover_grace
        self._abandoned_at = {s: t for s, t in self._abandoned_at.items() if now - t < grace}
        views = [self._view(lease, now, busy) for lease in leases.values()]
        checkpoints = {s: lease.checkpoint for s, lease in leases.items() if lease.checkpoint}
        infos = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases.values()]
        ready = set(plan_shards(infos, checkpoints).ready)
        # Requests already there at our previous cycle (not a previous round of this one).
        standing = {s for s, lease in leases.items() if (s, lease.pending_owner) in self._asked}
        return plan_balance(
            views,
            me=self.owner,
            ready=ready,
            max_leases=self.settings.max_leases_per_replica,
            standing=standing,
        )

    def _view(self, lease: Lease, now: float, busy: AbstractSet[str]) -> LeaseView:
        counter, since = self._seen.get(lease.shard_id, (None, now))
        if counter != lease.counter:
            since = now
            self._seen[lease.shard_id] = (lease.counter, now)
        expired = lease.owner is None or now - since >= self.settings.takeover_after
        if lease.owner == self.owner:
            # Ours in the table: live while we run it (or its old task still winds down);
            # otherwise free for us to re-take (a lost response, a self-fenced lease, a
            # lease handed to us).
            # An invocation cancelled with its task may run on (a handler thread, a remote
            # call): re-take only once the takeover grace has passed since it was abandoned.
            expired = (
                lease.shard_id not in self.held
                and lease.shard_id not in busy
                and lease.shard_id not in self._abandoned_at
            )
        return LeaseView(lease.shard_id, lease.owner, expired, lease.pending_owner)

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires, if nothing changes (monotonic).

        The runner wakes for it, so a dead replica's shards move at expiry rather than up to a
        balance interval later.
        """
        horizon = [
            since + self.settings.takeover_after
            for shard_id, (_, since) in self._seen.items()
            if shard_id not in self.held
        ]
        horizon += [
            abandoned + self.settings.takeover_grace
            for shard_id, abandoned in self._abandoned_at.items()
            if shard_id not in self.held
        ]
        upcoming = [t for t in horizon if t > self._clock()]
        return min(upcoming, default=None)

    async def _take_all(self, leases: dict[str, Lease], shard_ids: Sequence[str]) -> bool:
        """Take each planned lease; False when a peer was faster for any of them."""
        results = [await self._take(leases[shard_id]) for shard_id in shard_ids]
        return all(results)

    async def _take(self, lease: Lease) -> bool:
        async with self._locks[lease.shard_id]:
            sent = self._clock()
            taken = await self.table.take(lease, self.owner)
        if taken is None:
            return False  # a peer moved first; the next look sees the new state
        self.held[lease.shard_id] = taken
        self._renewed_at[lease.shard_id] = sent
        event = "stolen" if lease.owner not in (None, self.owner) else "taken"
        self._metrics.lease_event(self.mapping, event)
        log.info("lease.acquired", shard=lease.shard_id, previous_owner=lease.owner, how=event)
        return True

    async def _ask(self, leases: dict[str, Lease], requests: Sequence[tuple[str, str]]) -> None:
        for shard_id, _ in requests:
            if await self.table.request_handoff(leases[shard_id], self.owner):
                log.info("lease.handoff_requested", shard=shard_id, owner=leases[shard_id].owner)

    async def _decline(self, shard_id: str) -> None:
        """Turn a peer's request down: re-take our own lease, which clears ``pendingOwner``
        (a fenced write on our counter, so it also counts as a renewal)."""
        async with self._locks[shard_id]:
            lease = self.held.get(shard_id)
            if lease is None:
                return
            # The held copy may predate the request (it leaves the counter alone): the take
            # is fenced on our counter all the same.
            sent = self._clock()
            kept = await self.table.take(lease, self.owner)
            if kept is None:
                return  # the counter moved under us: the next renewal reports the loss
            self.held[shard_id] = kept
            self._renewed_at[shard_id] = sent
        log.info("lease.handoff_declined", shard=shard_id)

    # -- renewals and fenced writes -------------------------------------------------------

    async def renew_all(self) -> RenewOutcome:
        """Renew every held lease, concurrently (one slow call must not age the others);
        report the lost ones. (Peers' handoff requests are answered by :meth:`balance`.)"""
        outcome = RenewOutcome()
        async with anyio.create_task_group() as tg:
            for shard_id in list(self.held):
                tg.start_soon(self._renew_one, shard_id, outcome)
        return outcome

    async def _renew_one(self, shard_id: str, outcome: RenewOutcome) -> None:
        async with self._locks[shard_id]:
            lease = self.held.get(shard_id)
            if lease is None:
                return
            # Freshness counts from when the write was sent: the counter moved no earlier,
            # so a slow answer never makes the lease look younger than peers see it.
            sent = self._clock()
            try:
                renewed = await self.table.renew(lease, self.owner)
            except LeaseLost:
                if self.held.get(shard_id) is lease:
                    self._forget(shard_id, "lost")
                    outcome.lost.append(shard_id)
                return
            except CheckpointError as exc:
                self._metrics.dependency_error(self.mapping, "renew")
                if self.held.get(shard_id) is lease and self._self_fence(shard_id, exc):
                    outcome.lost.append(shard_id)
                return
            if self.held.get(shard_id) is not lease:
                # Fenced off (stale) while the answer was on its way: its shard was stopped as
                # lost. Putting it back would revive it with a stale send time; the table names
                # us, so the balancer re-takes it, fenced, once the old task has finished.
                return
            self.held[shard_id] = renewed
            self._renewed_at[shard_id] = sent

    def _self_fence(self, shard_id: str, exc: Exception) -> bool:
        """The table is unreachable: past a lease duration a peer may own the shard; stop it."""
        silent = self._clock() - self._renewed_at.get(shard_id, self._clock())
        log.warning("lease.renew_failed", shard=shard_id, error=str(exc), silent_s=round(silent, 1))
        if silent < self.settings.lease_duration:
            return False
        self._forget(shard_id, "lost")
        return True

    def fence_wait(self, longest: float) -> float:
        """Seconds until the soonest held lease goes stale, at most ``longest``: the fence
        loop wakes right then. Polling alone would stop a batch up to a poll interval after
        90 % of the lease, which is past the lease itself for short leases (0.9 x 1 s + 0.5 s)."""
        horizon = self.settings.lease_duration * STALE_FRACTION
        now = self._clock()
        due = [self._renewed_at.get(s, now) + horizon - now for s in self.held]
        return max(min([longest, *due]), MIN_FENCE_WAIT)

    def stale(self) -> list[str]:
        """Held leases not renewed for 90 % of the lease duration: a peer may take them a
        lease duration after our last renewal, so in-flight work must stop before then."""
        horizon = self.settings.lease_duration * STALE_FRACTION
        now = self._clock()
        return [s for s in self.held if now - self._renewed_at.get(s, now) >= horizon]

    def tracked(self, shard_id: str, target: Target) -> Target:
        """``target`` for ``shard_id``'s invocations, noting each one cancelled mid-flight (see
        ``_abandoned_at``): only those can outlive the shard's task."""
        return _TrackedTarget(target, partial(self._abandoned, shard_id))

    def _abandoned(self, shard_id: str) -> None:
        self._abandoned_at[shard_id] = self._clock()

    def ensure_fresh(self, shard_id: str) -> None:
        """Self-fencing before every invocation: raise LeaseLost unless the lease is held and
        was renewed recently enough (on our monotonic clock) that no peer can have taken it.

        A process paused past its lease (GC, SIGSTOP, a frozen VM) learns nothing until it
        writes; this check stops it before it invokes the function for a shard it lost.
        """
        renewed = self._renewed_at.get(shard_id)
        if shard_id not in self.held or renewed is None:
            raise LeaseLost(f"lease of {self.mapping}/{shard_id} is not held by {self.owner}")
        silent = self._clock() - renewed
        if silent > self.settings.lease_duration - self.settings.renew_interval:
            self._forget(shard_id, "lost")
            raise LeaseLost(
                f"lease of {self.mapping}/{shard_id} not renewed for {silent:.1f} s;"
                " a peer may own it"
            )

    async def checkpoint(self, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced checkpoint write. Raises LeaseLost if the lease is no longer ours."""
        async with self._locks[shard_id]:
            lease = self.held.get(shard_id)
            if lease is None:
                raise LeaseLost(f"lease of {self.mapping}/{shard_id} is not held by {self.owner}")
            sent = self._clock()
            try:
                written = await self.table.checkpoint(lease, self.owner, checkpoint)
            except LeaseLost:
                if self.held.get(shard_id) is lease:
                    self._forget(shard_id, "lost")
                raise
            if self.held.get(shard_id) is not lease:
                # Written, but fenced off (stale) meanwhile: the shard is being stopped as
                # lost; the lease is not revived (see _renew_one).
                raise LeaseLost(
                    f"lease of {self.mapping}/{shard_id} went stale while checkpointing"
                )
            self.held[shard_id] = written
            self._renewed_at[shard_id] = sent

    async def release(self, shard_id: str) -> None:
        """Give the lease up after the shard stopped and checkpointed (handoff, end, shutdown).

        A lease a peer asked for goes to that peer: we write it as the owner (a take fenced on
        our counter), so no third replica can grab it before the asker does; the asker sees a
        lease it owns but does not run, and takes it. Otherwise the lease becomes unowned.
        """
        async with self._locks[shard_id]:
            lease = self.held.pop(shard_id, None)
            asker = self._handing_to.pop(shard_id, None)
            if lease is None:
                return
            asker = asker or lease.pending_owner
            handing = bool(asker) and asker != self.owner
            if handing:
                done = await self.table.take(lease, asker or "") is not None
            else:
                done = await self.table.release(lease, self.owner)
        self._metrics.leases_held(self.mapping, len(self.held))
        if not done:
            # The counter moved: a peer took the lease meanwhile; nothing of ours to give.
            log.info("lease.release_refused", shard=shard_id)
            return
        if handing:
            self._metrics.lease_event(self.mapping, "handed_off")
        log.info("lease.released", shard=shard_id, to=asker if handing else None)

    def forget(self, shard_id: str) -> None:
        """Stop treating the lease as ours (it went stale); a fenced write would fail anyway."""
        if shard_id in self.held:
            self._forget(shard_id, "lost")

    def _forget(self, shard_id: str, event: str) -> None:
        self.held.pop(shard_id, None)
        self._handing_to.pop(shard_id, None)
        self._renewed_at.pop(shard_id, None)
        self._metrics.lease_event(self.mapping, event)
        self._metrics.leases_held(self.mapping, len(self.held))
        log.warning("lease.lost", shard=shard_id)


def _orphans(shards: Sequence[ShardInfo], existing: AbstractSet[str]) -> set[str]:
    """Listed shards with a parent that is neither listed nor has a lease.

    The parent aged out of the stream, or this listing hides it (an eventually consistent or
    partial answer). A lease made now would let the child be read before a hidden parent, so
    such a lease is made only when the previous listing showed the same orphan too.
    """
    listed = {s.shard_id for s in shards}
    return {
        s.shard_id
        for s in shards
        if any(p not in listed and p not in existing for p in s.parent_ids)
    }


_VANISHED = (
    "the shard left the stream before it was read to its end (trimmed by the retention):"
    " its unread records are lost; its lease is removed so that its children can start"
)


def report_reopened(shards: Sequence[ShardInfo], checkpoints: dict[str, Checkpoint]) -> None:
    """Say loudly when listed open shards hold SHARD_END (a stream re-created under the same
    name): they are not read, and resetting them automatically could re-read a live stream."""
    reopened = reopened_shards(shards, checkpoints)
    if reopened:
        log.error(
            "shard.reopened",
            reopened_shards=list(reopened),
            hint="an open shard has an old SHARD_END checkpoint: the stream was probably"
            " deleted and re-created under the same name, and these shards are not read;"
            " delete this mapping's checkpoints (or rename the mapping) to read the new stream",
        )


class LeasedCheckpointStore:
    """``CheckpointStore`` over the lease table: reads are plain, writes are fenced."""

    #: A lease item, window state included, must fit DynamoDB's 400 KB item limit.
    window_state_limit = WINDOW_STATE_LIMIT

    def __init__(self, coordinator: LeaseCoordinator) -> None:
        self._coordinator = coordinator
        self._table = coordinator.table

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's stored checkpoint."""
        lease = await self._table.get(mapping, shard_id)
        return None if lease is None else lease.checkpoint

    async def get_all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every stored checkpoint of the mapping."""
        return await self._coordinator.checkpoints()

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced write; LeaseLost when another replica owns the shard now."""
        await self._coordinator.checkpoint(shard_id, checkpoint)

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Retire a finished shard's lease."""
        await self._table.delete(mapping, shard_id)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping item's start instant, or None before the mapping's first start."""
        return await self._table.mapping_start(mapping)

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """A conditional put of the mapping item; the instant recorded, by whoever won."""
        return await self._table.pin_mapping_start(mapping, instant)

    async def aclose(self) -> None:
        """The table's client is owned by the service."""


def describe(lease: Lease) -> dict[str, Any]:
    """A lease in log-friendly form (no record data exists in leases)."""
    return {"shard": lease.shard_id, "owner": lease.owner, "counter": lease.counter}


class _TrackedTarget:
    """A target that reports an invocation cancelled before it returned (see
    :meth:`LeaseCoordinator.tracked`)."""

    def __init__(self, target: Target, on_abandoned: Callable[[], None]) -> None:
        self.target = target
        self.on_abandoned = on_abandoned
        self.function_arn = target.function_arn

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        try:
            return await self.target.invoke(event)
        except BaseException:  # a cancellation: targets turn failures into outcomes
            self.on_abandoned()
            raise

    async def aclose(self) -> None:
        await self.target.aclose()
