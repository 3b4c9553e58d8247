"""Lease balancing: which shards this replica takes, asks for, grants and declines.

Data flow: the runner's balance loop calls the coordinator's ``balance``, which lands here:
read the table, judge each lease's expiry by how long its counter has stood still on *this
replica's monotonic clock* (wall clocks of different tasks are never compared, as in the
Kinesis Client Library), let :func:`~poller.core.balance.plan_balance` decide, then take free
or expired leases (a fenced take), ask busy peers for handoffs, and grant or decline theirs.

A lease the table still gives this replica but that it does not run (a lost response, a lease
fenced off locally for staleness, a lease handed to it) is re-taken by the next balance, by the
same fenced take as any free lease, once no task of this replica runs its shard any more.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import structlog

from poller.checkpoints.dynamodb import Lease
from poller.core.balance import BalancePlan, LeaseView, plan_balance
from poller.core.lineage import ShardInfo, plan_shards
from poller.leases.held import LeaseContext

log = structlog.get_logger("poller.leases")

#: Looks at the table per balance cycle while peers win the races for free leases (replicas
#: starting together), so that the cycle ends with our handoff requests made.
TAKE_ROUNDS = 3


@dataclass(slots=True)
class BalanceOutcome:
    """What a balance cycle decided for the runner: shards to stop at once (lost), and shards
    to drain and hand over to the peer that asked (the lease goes to it on release)."""

    lost: list[str] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)


class Balancer:
    """One mapping's balance cycles on this replica, and what they remember between cycles."""

    def __init__(self, ctx: LeaseContext) -> None:
        self._ctx = ctx
        #: Each lease's counter as last seen, and since when (monotonic) it stood still.
        self._seen: dict[str, tuple[int, float]] = {}
        #: When an invocation of each shard was cancelled mid-flight (the shard stopped): the
        #: call itself may run on (a sync handler's thread, a remote function) for up to the
        #: takeover grace, so we re-take our own lease only after it.
        self._abandoned_at: dict[str, float] = {}
        #: Leases handed to us are waiting to be taken: poll faster than the balance interval.
        self.awaiting_handoff = False
        #: (shard, pending owner) as seen at the previous balance: requests still there at the
        #: next one are answered.
        self._asked: set[tuple[str, str | None]] = set()

    async def balance(self, busy: AbstractSet[str]) -> BalanceOutcome:
        """One balance cycle (see ``LeaseCoordinator.balance``)."""
        outcome = BalanceOutcome()
        # Not poller.retry: this is no failure to back off from but a race lost to a peer,
        # answered by looking at the new state at once, a bounded number of times.
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
            if shard_id in self._ctx.held.leases:
                self._ctx.held.handing_to[shard_id] = asker
                outcome.handoffs.append(shard_id)
        for shard_id in plan.decline:
            if shard_id not in self._ctx.held.handing_to:  # granted earlier: already draining
                await self._decline(shard_id)
        self.awaiting_handoff = bool(plan.request) or any(
            self._ctx.owner in (lease.pending_owner, lease.owner)
            and lease.shard_id not in self._ctx.held.leases
            and lease.shard_id not in self._abandoned_at  # next_expiry wakes us for those
            for lease in leases.values()
        )
        self._ctx.held.report_count()
        return outcome

    def note_abandoned(self, shard_id: str) -> None:
        """An invocation of ``shard_id`` was cancelled before it returned (see
        ``_abandoned_at``)."""
        self._abandoned_at[shard_id] = self._ctx.clock()

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires (see
        ``LeaseCoordinator.next_expiry``)."""
        held = self._ctx.held.leases
        horizon = [
            since + self._ctx.settings.takeover_after
            for shard_id, (_, since) in self._seen.items()
            if shard_id not in held
        ]
        horizon += [
            abandoned + self._ctx.settings.takeover_grace
            for shard_id, abandoned in self._abandoned_at.items()
            if shard_id not in held
        ]
        upcoming = [t for t in horizon if t > self._ctx.clock()]
        return min(upcoming, default=None)

    async def _observe(self, outcome: BalanceOutcome) -> dict[str, Lease]:
        """Read the table; forget (and report) held leases that are no longer ours."""
        leases = {
            lease.shard_id: lease for lease in await self._ctx.table.list_leases(self._ctx.mapping)
        }
        for shard_id in list(self._ctx.held.leases):
            lease = leases.get(shard_id)
            if lease is None or lease.owner != self._ctx.owner:
                self._ctx.held.forget(shard_id, "lost")
                outcome.lost.append(shard_id)
        return leases

    def _plan(self, leases: dict[str, Lease], busy: AbstractSet[str]) -> BalancePlan:
        now = self._ctx.clock()
        grace = self._ctx.settings.takeover_grace
        self._abandoned_at = {s: t for s, t in self._abandoned_at.items() if now - t < grace}
        views = [self._view(lease, now, busy) for lease in leases.values()]
        checkpoints = {s: lease.checkpoint for s, lease in leases.items() if lease.checkpoint}
        infos = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases.values()]
        ready = set(plan_shards(infos, checkpoints).ready)
        # Requests already there at our previous cycle (not a previous round of this one).
        standing = {s for s, lease in leases.items() if (s, lease.pending_owner) in self._asked}
        return plan_balance(
            views,
            me=self._ctx.owner,
            ready=ready,
            max_leases=self._ctx.settings.max_leases_per_replica,
            standing=standing,
        )

    def _view(self, lease: Lease, now: float, busy: AbstractSet[str]) -> LeaseView:
        counter, since = self._seen.get(lease.shard_id, (None, now))
        if counter != lease.counter:
            since = now
            self._seen[lease.shard_id] = (lease.counter, now)
        expired = lease.owner is None or now - since >= self._ctx.settings.takeover_after
        if lease.owner == self._ctx.owner:
            # Ours in the table: live while we run it (or its old task still winds down);
            # otherwise free for us to re-take (a lost response, a self-fenced lease, a
            # lease handed to us).
            # An invocation cancelled with its task may run on (a handler thread, a remote
            # call): re-take only once the takeover grace has passed since it was abandoned.
            expired = (
                lease.shard_id not in self._ctx.held.leases
                and lease.shard_id not in busy
                and lease.shard_id not in self._abandoned_at
            )
        return LeaseView(lease.shard_id, lease.owner, expired, lease.pending_owner)

    async def _take_all(self, leases: dict[str, Lease], shard_ids: Sequence[str]) -> bool:
        """Take each planned lease; False when a peer was faster for any of them."""
        results = [await self._take(leases[shard_id]) for shard_id in shard_ids]
        return all(results)

    async def _take(self, lease: Lease) -> bool:
        async with self._ctx.held.lock(lease.shard_id):
            sent = self._ctx.clock()
            taken = await self._ctx.table.take(lease, self._ctx.owner)
        if taken is None:
            return False  # a peer moved first; the next look sees the new state
        self._ctx.held.keep(lease.shard_id, taken, sent)
        event = "stolen" if lease.owner not in (None, self._ctx.owner) else "taken"
        self._ctx.metrics.lease_event(self._ctx.mapping, event)
        log.info("lease.acquired", shard=lease.shard_id, previous_owner=lease.owner, how=event)
        return True

    async def _ask(self, leases: dict[str, Lease], requests: Sequence[tuple[str, str]]) -> None:
        for shard_id, _ in requests:
            if await self._ctx.table.request_handoff(leases[shard_id], self._ctx.owner):
                log.info("lease.handoff_requested", shard=shard_id, owner=leases[shard_id].owner)

    async def _decline(self, shard_id: str) -> None:
        """Turn a peer's request down: re-take our own lease, which clears ``pendingOwner``
        (a fenced write on our counter, so it also counts as a renewal)."""
        async with self._ctx.held.lock(shard_id):
            lease = self._ctx.held.leases.get(shard_id)
            if lease is None:
                return
            # The held copy may predate the request (it leaves the counter alone): the take
            # is fenced on our counter all the same.
            sent = self._ctx.clock()
            kept = await self._ctx.table.take(lease, self._ctx.owner)
            if kept is None:
                return  # the counter moved under us: the next renewal reports the loss
            self._ctx.held.keep(shard_id, kept, sent)
        log.info("lease.handoff_declined", shard=shard_id)
