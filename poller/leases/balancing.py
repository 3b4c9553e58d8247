"""Lease balancing: which shards this replica takes, asks for, grants and declines.

Data flow: the runner's refresh loop calls the coordinator's ``balance`` when the watch says
one is due (or as a safety net), which lands here: read the compact lease view (eventually
consistent), judge each lease's expiry on *this replica's monotonic clock* (wall clocks of
different tasks are never compared, as in the Kinesis Client Library): a peer's lease is
expired when its owner's heartbeat (:mod:`.watching`) stood still for ``takeover_after`` (an
owner absent from the member map, a v1 replica, is judged by the lease's counter). Then
:func:`~poller.core.balance.plan_balance` decides, and this replica takes free or expired
leases (a take fenced on the counter seen), asks busy peers for handoffs, and grants or
declines theirs.

The view may lag. That stays safe because every take is fenced on the counter it saw (a stale
counter just fails), a held lease is judged lost only when the view shows another owner at a
counter at least as new as ours (or a consistent read finds it gone), and stale checkpoints
only delay a shard's readiness.

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
from poller.errors import CheckpointError
from poller.leases.held import Incarnation, LeaseContext
from poller.leases.watching import MemberWatch
from poller.types import Checkpoint

log = structlog.get_logger("poller.leases")

#: A lease's shard, parents and checkpoint: what its readiness depends on.
_Lineage = tuple[str, tuple[str, ...], Checkpoint | None]

#: Looks at the table per balance cycle while peers win the races for free leases (replicas
#: starting together), so that the cycle ends with our handoff requests made.
TAKE_ROUNDS = 3


@dataclass(slots=True)
class BalanceOutcome:
    """What a balance cycle decided for the runner: shards to stop at once (lost), and shards
    to drain and hand over to the peer that asked (the lease goes to it on release).
    ``changed``: this replica changed assignments (took, asked, declined), so peers should
    look (the coordinator bumps the generation)."""

    lost: list[str] = field(default_factory=list)
    handoffs: list[str] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True, slots=True)
class _Seen:
    """A lease's counter and owner as last seen in the view, and since when (monotonic) the
    counter stood still."""

    counter: int
    owner: str | None
    since: float


class Balancer:
    """One mapping's balance cycles on this replica, and what they remember between cycles."""

    def __init__(self, ctx: LeaseContext, watch: MemberWatch) -> None:
        self._ctx = ctx
        self._watch = watch
        #: Each lease as last seen in the view (see :class:`_Seen`).
        self._seen: dict[str, _Seen] = {}
        #: Each lease's view as last planned: reused while it reads the same (at 10,000 leases
        #: building them anew for every cycle cost more than the plan itself).
        self._views: dict[str, LeaseView] = {}
        #: The leases (their shards, and the lineage of those with parents or a checkpoint)
        #: at the previous plan, and the ready shards they gave: planning lineage is linear
        #: in the leases, and it rarely changes.
        self._lineage: tuple[AbstractSet[str], list[_Lineage], set[str]] = (set(), [], set())
        #: The leases seen in the view by owner, as of the latest plan (for ``_horizons``).
        self._by_owner: dict[str | None, list[str]] = {}
        #: When an invocation of each shard was cancelled mid-flight (the shard stopped): the
        #: call itself may run on (a sync handler's thread, a remote function) for up to the
        #: takeover grace, so we re-take our own lease only after it.
        self._abandoned_at: dict[str, float] = {}
        #: Leases handed to us are waiting to be taken: balance at every watch.
        self.awaiting_handoff = False
        #: A peer asked for one of our leases: balance at every watch to answer it.
        self.asked_of_us = False
        #: (shard, pending owner) as seen at the previous balance: requests still there at the
        #: next one are answered.
        self._asked: set[tuple[str, str | None]] = set()
        #: When the latest cycle ended (monotonic), None before the first.
        self.balanced_at: float | None = None
        #: When the view of the current cycle was answered (monotonic).
        self._view_at = 0.0
        self._v1_reported: set[str] = set()
        #: Our own leases from before this process started wait (see Incarnation).
        self._incarnation = Incarnation(ctx.clock() + ctx.settings.takeover_after)
        #: The latest cycle's member read showed a change its view read may predate (a peer
        #: acted between the two reads): the coordinator balances again at once.
        self.missed_change = False

    async def balance(self, busy: AbstractSet[str], *, may_take: bool) -> BalanceOutcome:
        """One balance cycle (see ``LeaseCoordinator.balance``). ``may_take``: this replica's
        heartbeat is fresh; without one it takes and asks for nothing (it could not keep it)."""
        outcome = BalanceOutcome()
        # Not poller.retry: this is no failure to back off from but a race lost to a peer,
        # answered by looking at the new state at once, a bounded number of times.
        contested: set[str] = set()
        for _ in range(TAKE_ROUNDS):
            leases = await self._observe(outcome)
            plan = self._plan(leases, busy, contested)
            if await _found_hidden_parents(self._ctx, leases, plan.take):
                plan = self._plan(leases, busy, contested)  # a child waits for its parent
            lost = await self._take_all(leases, plan.take if may_take else (), outcome)
            if not lost:
                break
            # A peer won a race for a free lease: look again at once, so that our requests
            # (which also make us count as a live replica for the others) go out this cycle,
            # and take other free leases instead of those (the view may not show them taken
            # yet: retrying them would fail again, and leave our share to a later cycle).
            contested |= lost
        self._asked = {
            (s, lease.pending_owner) for s, lease in leases.items() if lease.pending_owner
        }
        await self._ask(leases, plan.request if may_take else (), outcome)
        for shard_id, asker in plan.grant:
            if shard_id in self._ctx.held.leases:
                self._ctx.held.handing_to[shard_id] = asker
                outcome.handoffs.append(shard_id)
        for shard_id in plan.decline:
            if shard_id not in self._ctx.held.handing_to:  # granted earlier: already draining
                await self._decline(shard_id, outcome)
        self._note_handoffs(leases, plan)
        await self._prune(leases)
        self._ctx.held.report_count()
        self.balanced_at = self._ctx.clock()
        return outcome

    def _note_handoffs(self, leases: dict[str, Lease], plan: BalancePlan) -> None:
        me, held = self._ctx.owner, self._ctx.held.leases
        self.awaiting_handoff = bool(plan.request) or any(
            me in (lease.pending_owner, lease.owner)
            and lease.shard_id not in held
            and lease.shard_id not in self._abandoned_at  # next_expiry wakes us for those
            and not self._incarnation.inherited(lease.shard_id, self._ctx.clock())  # and those
            for lease in leases.values()
        )
        self.asked_of_us = any(
            lease.pending_owner not in (None, me) and lease.shard_id in held
            for lease in leases.values()
        )

    def note_abandoned(self, shard_id: str) -> None:
        """An invocation of ``shard_id`` was cancelled before it returned (see
        ``_abandoned_at``)."""
        self._abandoned_at[shard_id] = self._ctx.clock()

    def _horizons(self) -> list[float]:
        """When each lease of another replica expires if nothing moves (monotonic): one time
        per present owner, not per lease (this runs at every watch of every replica)."""
        held, after, me = self._ctx.held.leases, self._ctx.settings.takeover_after, self._ctx.owner
        horizon = []
        if any(
            shard_id not in held and not self._incarnation.touched(shard_id)
            for shard_id in self._by_owner.get(me, ())
        ):  # a previous incarnation's lease
            horizon.append(self._incarnation.inherited_until)
        for owner, shards in self._by_owner.items():
            if owner in (None, me):
                continue
            beat_since = self._watch.since(owner or "")
            if beat_since is not None and self._watch.present(owner or ""):
                # Judged by its beat alone: one time, if any of its leases is not ours yet.
                if any(shard_id not in held for shard_id in shards):
                    horizon.append(beat_since + after)
                continue
            for shard_id in shards:
                seen = self._seen.get(shard_id)
                if shard_id in held or seen is None:
                    continue
                since = seen.since if beat_since is None else max(seen.since, beat_since)
                horizon.append(since + after)
        horizon += [
            abandoned + self._ctx.settings.abandoned_wait
            for shard_id, abandoned in self._abandoned_at.items()
            if shard_id not in held
        ]
        return horizon

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires (see
        ``LeaseCoordinator.next_expiry``)."""
        now = self._ctx.clock()
        return min((t for t in self._horizons() if t > now), default=None)

    def expiry_passed(self) -> bool:
        """Whether a lease expired (if nothing moved) since the latest cycle."""
        if self.balanced_at is None:
            return False
        now, last = self._ctx.clock(), self.balanced_at
        return any(last < t <= now for t in self._horizons())

    async def _observe(self, outcome: BalanceOutcome) -> dict[str, Lease]:
        """Read the view; forget (and report) held leases that are no longer ours.

        The view may lag: a held lease is lost only when the view shows another owner at a
        counter at least as new as ours, or a consistent read cannot find it; where the view
        is older than our own last write, our copy stands in for it.
        """
        ctx = self._ctx
        with self._watch.reading():
            view = await ctx.table.lease_view(ctx.mapping)
        self._view_at = ctx.clock()
        # The heartbeats are read after the view: an owner whose beat looks expired in this
        # read cannot have taken (or re-taken) a lease the view shows it holding since (its
        # take is fresh only from a beat that landed before it, hence before this read).
        sent, first = ctx.clock(), self._watch.read_at is None
        with self._watch.reading():
            members = await ctx.table.members(ctx.mapping)
        changed = self._watch.observe(members, sent, ctx.clock())
        self.missed_change = changed and not first
        leases = {lease.shard_id: lease for lease in view}
        for shard_id, mine in list(ctx.held.leases.items()):
            seen = leases.get(shard_id)
            if seen is None:
                seen = await ctx.table.get(ctx.mapping, shard_id)
                if seen is not None:
                    leases[shard_id] = seen
            if seen is None or (seen.owner != ctx.owner and seen.counter >= mine.counter):
                if ctx.held.leases.get(shard_id) is mine:
                    ctx.held.forget(shard_id, "lost")
                    outcome.lost.append(shard_id)
            elif seen.counter < mine.counter:
                leases[shard_id] = mine  # the view predates our write
        return leases

    def _plan(
        self, leases: dict[str, Lease], busy: AbstractSet[str], contested: AbstractSet[str]
    ) -> BalancePlan:
        now = self._ctx.clock()
        grace = self._ctx.settings.abandoned_wait
        self._abandoned_at = {s: t for s, t in self._abandoned_at.items() if now - t < grace}
        for gone in self._seen.keys() - leases.keys():
            del self._seen[gone]
            self._views.pop(gone, None)
        views = self._views_of(leases, busy)
        # Requests already there at our previous cycle (not a previous round of this one).
        standing = {
            s
            for s, lease in leases.items()
            if lease.pending_owner and (s, lease.pending_owner) in self._asked
        }
        return plan_balance(
            views,
            me=self._ctx.owner,
            ready=self._ready(leases),
            max_leases=self._ctx.settings.max_leases_per_replica,
            standing=standing,
            contested=contested,
        )

    def _ready(self, leases: dict[str, Lease]) -> set[str]:
        """The shards whose lineage lets them be read (see ``plan_shards``), planned again
        only when the shards, or the parents or checkpoint of one, changed (a lease with
        neither plays no part in lineage but its own readiness)."""
        lineage = [
            (s, lease.parent_ids, lease.checkpoint)
            for s, lease in leases.items()
            if lease.parent_ids or lease.checkpoint
        ]
        shards, previous, ready = self._lineage
        if lineage != previous or leases.keys() != shards:
            checkpoints = {s: checkpoint for s, _, checkpoint in lineage if checkpoint}
            infos = [ShardInfo(s, lease.parent_ids) for s, lease in leases.items()]
            ready = set(plan_shards(infos, checkpoints).ready)
            self._lineage = (set(leases), lineage, ready)
        return ready

    def _views_of(self, leases: dict[str, Lease], busy: AbstractSet[str]) -> list[LeaseView]:
        """Every lease as the planner sees it, on our clock. One pass, in one function: at
        10,000 leases this runs for every cycle of every replica. A peer's beat is judged
        once per owner; a lease's view is reused while it reads the same."""
        me, seen_of, views = self._ctx.owner, self._seen, self._views
        latest = self._watch.latest  # the members present at the latest read
        expired_owners: dict[str | None, bool] = {None: True}  # unowned: free
        by_owner: dict[str | None, list[str]] = {}
        planned = []
        for lease in leases.values():
            shard_id, owner = lease.shard_id, lease.owner
            seen = seen_of.get(shard_id)
            if seen is None or seen.counter != lease.counter or seen.owner != owner:
                seen = self._saw(lease, seen)
            by_owner.setdefault(owner, []).append(shard_id)
            expired = expired_owners.get(owner)
            if owner == me:
                expired = self._own_expired(shard_id, busy)
            elif owner is not None and (expired is None or (expired and owner not in latest)):
                # The owner's beat not judged yet in this plan, or an absent owner's lease.
                expired = self._peer_expired(owner, seen, expired, expired_owners)
            view = views.get(shard_id)
            if (
                view is None
                or view.owner != owner
                or view.expired != expired
                or view.pending_owner != lease.pending_owner
            ):
                view = views[shard_id] = LeaseView(
                    shard_id, owner, bool(expired), lease.pending_owner
                )
            planned.append(view)
        self._by_owner = by_owner
        return planned

    def _saw(self, lease: Lease, seen: _Seen | None) -> _Seen:
        """Note a lease whose counter (or owner) changed since the previous view."""
        if seen is not None and seen.counter == lease.counter:
            seen = _Seen(seen.counter, lease.owner, seen.since)
        else:
            if seen is not None and seen.owner == lease.owner:
                self._report_v1(lease)
            seen = _Seen(lease.counter, lease.owner, self._view_at)
        self._seen[lease.shard_id] = seen
        return seen

    def _own_expired(self, shard_id: str, busy: AbstractSet[str]) -> bool:
        """Ours in the table: live while we run it (or its old task still winds down);
        otherwise free for us to re-take (a lost response, a self-fenced lease, a lease handed
        to us). An invocation cancelled with its task may run on (a handler thread, a remote
        call): re-take only once the takeover grace has passed since it was abandoned."""
        return (
            shard_id not in self._ctx.held.leases
            and shard_id not in busy
            and shard_id not in self._abandoned_at
            and not self._incarnation.inherited(shard_id, self._view_at)
        )

    def _peer_expired(
        self,
        owner: str,
        seen: _Seen,
        beat_expired: bool | None,
        expired_owners: dict[str | None, bool],
    ) -> bool:
        """A member's leases expire with its beat: its takes and checkpoints never make a
        lease fresher for it (see HeldLeases), so the counter need not be watched (the view is
        read rarely: a busy shard's counter would look as if it just moved). An owner absent
        from the map (a v1 replica, which renews counters, or one gone) is judged by the
        counter too, and by how long it has been absent. ``beat_expired``: the owner's beat
        as judged earlier in this plan (None: not yet)."""
        after = self._ctx.settings.takeover_after
        if beat_expired is None:
            self._watch.track(owner)
            beat_expired = expired_owners[owner] = self._watch.still_for(owner) >= after
        if beat_expired and not self._watch.present(owner):
            return self._view_at - seen.since >= after
        return beat_expired

    def _report_v1(self, lease: Lease) -> None:
        """A live owner absent from the member map moved its counter: a v1 replica, which
        would take v2 replicas' leases (they do not move counters at rest)."""
        owner = lease.owner
        if owner in (None, self._ctx.owner) or self._watch.present(owner or ""):
            return
        if owner in self._v1_reported:
            return
        self._v1_reported.add(owner or "")
        log.error(
            "lease.v1_peer_seen",
            peer=owner,
            shard=lease.shard_id,
            hint="a replica of lease protocol v1 renews leases this replica does not; it"
            " would take this replica's leases: stop every v1 replica before starting v2 ones",
        )

    async def _take_all(
        self, leases: dict[str, Lease], shard_ids: Sequence[str], outcome: BalanceOutcome
    ) -> set[str]:
        """Take each planned lease; return those a peer was faster for."""
        lost = {shard_id for shard_id in shard_ids if not await self._take(leases[shard_id])}
        outcome.changed |= len(lost) < len(shard_ids)
        return lost

    async def _take(self, lease: Lease) -> bool:
        self._incarnation.touch(lease.shard_id)
        async with self._ctx.held.lock(lease.shard_id):
            beat_sent = self._ctx.held.beat_sent
            taken = await self._ctx.table.take(lease, self._ctx.owner)
        if taken is None:
            return False  # a peer moved first; the next look sees the new state
        self._ctx.held.adopt(lease.shard_id, taken, beat_sent)
        event = "stolen" if lease.owner not in (None, self._ctx.owner) else "taken"
        self._ctx.metrics.lease_event(self._ctx.mapping, event)
        log.info("lease.acquired", shard=lease.shard_id, previous_owner=lease.owner, how=event)
        return True

    async def _ask(
        self,
        leases: dict[str, Lease],
        requests: Sequence[tuple[str, str]],
        outcome: BalanceOutcome,
    ) -> None:
        for shard_id, _ in requests:
            self._incarnation.touch(shard_id)  # the lease may be handed to us
            if await self._ctx.table.request_handoff(leases[shard_id], self._ctx.owner):
                outcome.changed = True
                log.info("lease.handoff_requested", shard=shard_id, owner=leases[shard_id].owner)

    async def _decline(self, shard_id: str, outcome: BalanceOutcome) -> None:
        """Turn a peer's request down: re-take our own lease, which clears ``pendingOwner``
        (a fenced write on our counter)."""
        async with self._ctx.held.lock(shard_id):
            lease = self._ctx.held.leases.get(shard_id)
            if lease is None:
                return
            # The held copy may predate the request (it leaves the counter alone): the take
            # is fenced on our counter all the same.
            kept = await self._ctx.table.take(lease, self._ctx.owner)
            if kept is None:
                return  # the counter moved under us: the next balance reports the loss
            self._ctx.held.keep(shard_id, kept)
        outcome.changed = True
        log.info("lease.handoff_declined", shard=shard_id)

    async def _prune(self, leases: dict[str, Lease]) -> None:
        """Remove the entries of members dead for ``prune_after`` that own nothing, so the
        member item does not grow with every replica ever started. Best effort."""
        involved = {lease.owner for lease in leases.values()}
        involved |= {lease.pending_owner for lease in leases.values()}
        for owner, beat in list(self._watch.latest.items()):
            if owner == self._ctx.owner or owner in involved:
                continue
            if self._watch.still_for(owner) < self._ctx.settings.prune_after:
                continue
            try:
                pruned = await self._ctx.table.prune_member(self._ctx.mapping, owner, beat)
            except CheckpointError as exc:
                log.warning("lease.prune_failed", member=owner, error=str(exc))
                return
            if pruned:
                self._watch.forget(owner)
                log.info("lease.member_pruned", member=owner)


async def _found_hidden_parents(
    ctx: LeaseContext, leases: dict[str, Lease], takes: Sequence[str]
) -> bool:
    """Look up, by a consistent read, the parents of shards about to be taken that the view
    does not show; add those found to ``leases``; whether any was found.

    The view index is eventually consistent per item: it may show a child's lease before its
    parent's, and a parent missing from the view would make the child ready (read before its
    parent finished: out of order per partition key). A parent really gone (retired, aged
    out) costs one read per take of its child; nothing is read at rest.
    """
    missing = {p for shard_id in takes for p in leases[shard_id].parent_ids if p not in leases}
    found = False
    for parent_id in sorted(missing):
        parent = await ctx.table.get(ctx.mapping, parent_id)
        if parent is not None:
            leases[parent_id] = parent
            found = True
    return found
