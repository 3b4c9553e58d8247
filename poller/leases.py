"""Leases across replicas: which shards this replica processes, fenced by the lease table.

Data flow (one :class:`LeaseCoordinator` per stream mapping, driven by its runner)::

    discovery  -> sync():      create a lease per shard (parents recorded, first start pinned)
    balance    -> balance():   read the table, judge expiry, take / ask for handoffs (core.balance)
    renew loop -> renew_all(): fenced renewals every lease_duration/3; report lost leases and
                               handoff requests from peers
    pipeline   -> checkpoint() through LeasedCheckpointStore: a fenced write; LeaseLost stops
                               the shard at once
    shard end, handoff, shutdown -> release(): the next owner may start at once

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
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import structlog

from poller.checkpoints.dynamodb import WINDOW_STATE_LIMIT, DynamoDBLeaseTable, Lease, LeaseLost
from poller.core.balance import LeaseView, plan_balance
from poller.core.lineage import ShardInfo, plan_shards
from poller.errors import CheckpointError
from poller.observability.metrics import Metrics, NullMetrics
from poller.types import Checkpoint

log = structlog.get_logger("poller.leases")


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Timing of the lease protocol (defaults: a 10 s lease, renewed about every 3 s)."""

    lease_duration: float = 10.0
    balance_interval: float = 5.0
    max_leases_per_replica: int | None = None

    @property
    def renew_interval(self) -> float:
        """Renew about every third of the lease duration."""
        return self.lease_duration / 3


@dataclass(slots=True)
class RenewOutcome:
    """What a round of renewals found."""

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
        #: Leases handed to us are waiting to be taken: poll faster than the balance interval.
        self.awaiting_handoff = False

    # -- discovery and balance ----------------------------------------------------------------

    async def sync(
        self, shards: Sequence[ShardInfo], initial: Callable[[ShardInfo], Checkpoint | None]
    ) -> None:
        """Create a lease for every listed shard that has none.

        On the mapping's first start (no leases at all) each lease gets ``initial(shard)`` as its
        checkpoint (how a LATEST start is pinned); shards found later start without one.
        """
        existing = {lease.shard_id for lease in await self.table.list_leases(self.mapping)}
        first_start = not existing
        for shard in shards:
            if shard.shard_id not in existing:
                checkpoint = initial(shard) if first_start else None
                await self.table.create(
                    self.mapping, shard.shard_id, parent_ids=shard.parent_ids, checkpoint=checkpoint
                )

    async def checkpoints(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint of the mapping, by shard."""
        leases = await self.table.list_leases(self.mapping)
        return {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}

    async def balance(self) -> list[str]:
        """One balance cycle: observe, take, ask for handoffs. Returns the leases lost meanwhile."""
        leases = {lease.shard_id: lease for lease in await self.table.list_leases(self.mapping)}
        now = self._clock()
        views = [self._view(lease, now) for lease in leases.values()]
        lost = [s for s in self.held if s not in leases or leases[s].owner != self.owner]
        for shard_id in lost:
            self._forget(shard_id, "lost")
        checkpoints = {s: lease.checkpoint for s, lease in leases.items() if lease.checkpoint}
        infos = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases.values()]
        ready = set(plan_shards(infos, checkpoints).ready)
        plan = plan_balance(
            views, me=self.owner, ready=ready, max_leases=self.settings.max_leases_per_replica
        )
        for shard_id in plan.take:
            await self._take(leases[shard_id])
        for shard_id, _ in plan.request:
            if await self.table.request_handoff(leases[shard_id], self.owner):
                log.info("lease.handoff_requested", shard=shard_id, owner=leases[shard_id].owner)
        self.awaiting_handoff = bool(plan.request) or any(
            lease.pending_owner == self.owner and lease.shard_id not in self.held
            for lease in leases.values()
        )
        self._metrics.leases_held(self.mapping, len(self.held))
        return lost

    def _view(self, lease: Lease, now: float) -> LeaseView:
        counter, since = self._seen.get(lease.shard_id, (None, now))
        if counter != lease.counter:
            since = now
            self._seen[lease.shard_id] = (lease.counter, now)
        expired = lease.owner is None or now - since >= self.settings.lease_duration
        return LeaseView(lease.shard_id, lease.owner, expired, lease.pending_owner)

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires, if nothing changes (monotonic).

        The runner wakes for it, so a dead replica's shards move at expiry rather than up to a
        balance interval later.
        """
        horizon = [
            since + self.settings.lease_duration
            for shard_id, (_, since) in self._seen.items()
            if shard_id not in self.held
        ]
        upcoming = [t for t in horizon if t > self._clock()]
        return min(upcoming, default=None)

    async def _take(self, lease: Lease) -> None:
        async with self._locks[lease.shard_id]:
            sent = self._clock()
            taken = await self.table.take(lease, self.owner)
        if taken is None:
            return  # a peer moved first; next cycle sees the new state
        self.held[lease.shard_id] = taken
        self._renewed_at[lease.shard_id] = sent
        event = "stolen" if lease.owner not in (None, self.owner) else "taken"
        self._metrics.lease_event(self.mapping, event)
        log.info("lease.acquired", shard=lease.shard_id, previous_owner=lease.owner, how=event)

    # -- renewals and fenced writes -------------------------------------------------------

    async def renew_all(self) -> RenewOutcome:
        """Renew every held lease, concurrently (one slow call must not age the others);
        report the lost ones and the peers' handoff requests."""
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
                self._forget(shard_id, "lost")
                outcome.lost.append(shard_id)
                return
            except CheckpointError as exc:
                if self._self_fence(shard_id, exc):
                    outcome.lost.append(shard_id)
                return
            self.held[shard_id] = renewed
            self._renewed_at[shard_id] = sent
        if renewed.pending_owner:
            outcome.handoffs.append(shard_id)

    def _self_fence(self, shard_id: str, exc: Exception) -> bool:
        """The table is unreachable: past a lease duration a peer may own the shard; stop it."""
        silent = self._clock() - self._renewed_at.get(shard_id, self._clock())
        log.warning("lease.renew_failed", shard=shard_id, error=str(exc), silent_s=round(silent, 1))
        if silent < self.settings.lease_duration:
            return False
        self._forget(shard_id, "lost")
        return True

    def stale(self) -> list[str]:
        """Held leases not renewed for 90 % of the lease duration: a peer may take them a
        lease duration after our last renewal, so in-flight work must stop before then."""
        horizon = self.settings.lease_duration * 0.9
        now = self._clock()
        return [s for s in self.held if now - self._renewed_at.get(s, now) > horizon]

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
                self.held[shard_id] = await self.table.checkpoint(lease, self.owner, checkpoint)
            except LeaseLost:
                self._forget(shard_id, "lost")
                raise
            self._renewed_at[shard_id] = sent

    async def release(self, shard_id: str) -> None:
        """Give the lease up after the shard stopped and checkpointed (handoff, end, shutdown)."""
        async with self._locks[shard_id]:
            lease = self.held.pop(shard_id, None)
            if lease is None:
                return
            await self.table.release(lease, self.owner)
        event = "handed_off" if lease.pending_owner else "released"
        if lease.pending_owner:
            self._metrics.lease_event(self.mapping, "handed_off")
        log.info("lease.released", shard=shard_id, to=lease.pending_owner, how=event)
        self._metrics.leases_held(self.mapping, len(self.held))

    def forget(self, shard_id: str) -> None:
        """Stop treating the lease as ours (it went stale); a fenced write would fail anyway."""
        if shard_id in self.held:
            self._forget(shard_id, "lost")

    def _forget(self, shard_id: str, event: str) -> None:
        self.held.pop(shard_id, None)
        self._renewed_at.pop(shard_id, None)
        self._metrics.lease_event(self.mapping, event)
        self._metrics.leases_held(self.mapping, len(self.held))
        log.warning("lease.lost", shard=shard_id)


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

    async def aclose(self) -> None:
        """The table's client is owned by the service."""


def describe(lease: Lease) -> dict[str, Any]:
    """A lease in log-friendly form (no record data exists in leases)."""
    return {"shard": lease.shard_id, "owner": lease.owner, "counter": lease.counter}
