"""The lease coordinator: the one object a stream mapping's runner asks about its leases.

:class:`LeaseCoordinator` owns the parts of the protocol and keeps its public face in one
place: :class:`~poller.leases.discovery.LeaseDiscovery` (``sync``),
:class:`~poller.leases.balancing.Balancer` (``balance``, ``next_expiry``),
:class:`~poller.leases.fencing.LeaseFence` (``renew_all``, ``fence_wait``, ``stale``,
``ensure_fresh``, ``checkpoint``) and the :class:`~poller.leases.held.HeldLeases` they share.
Releasing a lease (shard end, handoff, shutdown) is done here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from functools import partial

import structlog

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.core.lineage import ShardInfo
from poller.leases.balancing import BalanceOutcome, Balancer
from poller.leases.discovery import LeaseDiscovery
from poller.leases.fencing import LeaseFence, RenewOutcome, TrackedTarget
from poller.leases.held import HeldLeases, LeaseContext
from poller.leases.settings import LeaseSettings
from poller.observability.metrics import Metrics, NullMetrics
from poller.types import Checkpoint, Target

log = structlog.get_logger("poller.leases")


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
        self._holdings = HeldLeases(mapping, self._metrics)
        self._discovery = LeaseDiscovery(table, mapping)
        context = LeaseContext(
            table, self._holdings, mapping, owner, settings, self._metrics, clock
        )
        self._balancer = Balancer(context)
        self._fence = LeaseFence(context)

    @property
    def held(self) -> dict[str, Lease]:
        """The leases this replica holds, by shard, as last written."""
        return self._holdings.leases

    @property
    def awaiting_handoff(self) -> bool:
        """Leases handed to us are waiting to be taken: poll faster than the balance interval."""
        return self._balancer.awaiting_handoff

    # -- discovery and balance ----------------------------------------------------------------

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
        await self._discovery.sync(shards, initial)

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
        return await self._balancer.balance(busy)

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires, if nothing changes (monotonic).

        The runner wakes for it, so a dead replica's shards move at expiry rather than up to a
        balance interval later.
        """
        return self._balancer.next_expiry()

    # -- renewals and fenced writes -------------------------------------------------------

    async def renew_all(self) -> RenewOutcome:
        """Renew every held lease, concurrently (one slow call must not age the others);
        report the lost ones. (Peers' handoff requests are answered by :meth:`balance`.)"""
        return await self._fence.renew_all()

    def fence_wait(self, longest: float) -> float:
        """Seconds until the soonest held lease goes stale, at most ``longest``: the fence
        loop wakes right then. Polling alone would stop a batch up to a poll interval after
        90 % of the lease, which is past the lease itself for short leases (0.9 x 1 s + 0.5 s)."""
        return self._fence.fence_wait(longest)

    def stale(self) -> list[str]:
        """Held leases not renewed for 90 % of the lease duration: a peer may take them a
        lease duration after our last renewal, so in-flight work must stop before then."""
        return self._fence.stale()

    def tracked(self, shard_id: str, target: Target) -> Target:
        """``target`` for ``shard_id``'s invocations, noting each one cancelled mid-flight:
        only those can outlive the shard's task, so our own lease is re-taken only a takeover
        grace after it."""
        return TrackedTarget(target, partial(self._balancer.note_abandoned, shard_id))

    def ensure_fresh(self, shard_id: str) -> None:
        """Self-fencing before every invocation: raise LeaseLost unless the lease is held and
        was renewed recently enough (on our monotonic clock) that no peer can have taken it.

        A process paused past its lease (GC, SIGSTOP, a frozen VM) learns nothing until it
        writes; this check stops it before it invokes the function for a shard it lost.
        """
        self._fence.ensure_fresh(shard_id)

    async def checkpoint(self, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced checkpoint write. Raises LeaseLost if the lease is no longer ours."""
        await self._fence.checkpoint(shard_id, checkpoint)

    async def release(self, shard_id: str) -> None:
        """Give the lease up after the shard stopped and checkpointed (handoff, end, shutdown).

        A lease a peer asked for goes to that peer: we write it as the owner (a take fenced on
        our counter), so no third replica can grab it before the asker does; the asker sees a
        lease it owns but does not run, and takes it. Otherwise the lease becomes unowned.
        """
        holdings = self._holdings
        async with holdings.lock(shard_id):
            lease = holdings.leases.pop(shard_id, None)
            asker = holdings.handing_to.pop(shard_id, None)
            if lease is None:
                return
            asker = asker or lease.pending_owner
            handing = bool(asker) and asker != self.owner
            if handing:
                done = await self.table.take(lease, asker or "") is not None
            else:
                done = await self.table.release(lease, self.owner)
        holdings.report_count()
        if not done:
            # The counter moved: a peer took the lease meanwhile; nothing of ours to give.
            log.info("lease.release_refused", shard=shard_id)
            return
        if handing:
            self._metrics.lease_event(self.mapping, "handed_off")
        log.info("lease.released", shard=shard_id, to=asker if handing else None)

    def forget(self, shard_id: str) -> None:
        """Stop treating the lease as ours (it went stale); a fenced write would fail anyway."""
        if shard_id in self._holdings.leases:
            self._holdings.forget(shard_id, "lost")
