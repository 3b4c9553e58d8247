"""The lease coordinator: the one object a stream mapping's runner asks about its leases.

:class:`LeaseCoordinator` owns the parts of the protocol and keeps its public face in one
place: :class:`~poller.leases.discovery.LeaseDiscovery` (``sync``),
:class:`~poller.leases.watching.MemberWatch` (``watch``, ``balance_due``),
:class:`~poller.leases.balancing.Balancer` (``balance``, ``next_expiry``),
:class:`~poller.leases.fencing.LeaseFence` (``heartbeat``, ``fence_wait``, ``stale``,
``ensure_fresh``, ``checkpoint``) and the :class:`~poller.leases.held.HeldLeases` they share.
Releasing a lease (shard end, handoff, shutdown), leaving the member map and bumping the
generation after a change of assignments are done here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from functools import partial

import structlog

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.core.lineage import ShardInfo
from poller.errors import CheckpointError
from poller.leases.balancing import BalanceOutcome, Balancer
from poller.leases.discovery import LeaseDiscovery
from poller.leases.fencing import LeaseFence, RenewOutcome, TrackedTarget
from poller.leases.held import HeldLeases, LeaseContext
from poller.leases.settings import LeaseSettings
from poller.leases.watching import MemberWatch
from poller.observability.metrics import Metrics, NullMetrics
from poller.types import Checkpoint, Target

log = structlog.get_logger("poller.leases")

#: A balance is followed by one more this much later at the least (see ``_recheck_delay``).
RECHECK_SECONDS = 2.0
#: Rechecks after a change come at doubling gaps up to this many times the first gap (2, 4
#: and 8 s at default): a view index lagging longer than the first gap (a GSI under load)
#: is still caught within seconds, not at the safety net, for three view reads per change.
RECHECK_BACKOFF_LIMIT = 4


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
        self._holdings = HeldLeases(mapping, self._metrics)
        self._discovery = LeaseDiscovery(table, mapping)
        context = LeaseContext(
            table, self._holdings, mapping, owner, settings, self._metrics, clock
        )
        self._watch = MemberWatch(settings.takeover_after, settings.watched_gap)
        self._balancer = Balancer(context, self._watch)
        self._fence = LeaseFence(context)
        #: A balance is due (the watch saw a change); cleared by a successful balance.
        self._due = True
        #: A change of assignments peers have not been told of (a generation bump failed).
        self._bump_owed = False
        #: When to look once more after a balance a change called for (monotonic): the view
        #: is eventually consistent, and the change may not have shown in it yet.
        self._recheck_at: float | None = None
        #: The gap before ``_recheck_at`` (doubled at each recheck), None when none is due.
        self._recheck_gap: float | None = None
        #: The member item's ``rewindNotice`` at the last watch (``poller rewind``).
        self.rewind_notice: str | None = None

    @property
    def held(self) -> dict[str, Lease]:
        """The leases this replica holds, by shard, as last written."""
        return self._holdings.leases

    @property
    def awaiting_handoff(self) -> bool:
        """Leases handed to us are waiting to be taken: balance at every watch."""
        return self._balancer.awaiting_handoff

    # -- watching the peers -------------------------------------------------------------------

    async def watch(self) -> bool:
        """Read the member item (one consistent GetItem): the peers' heartbeats and the
        generation. True when a balance is due (see :meth:`balance_due`). Raises
        CheckpointError when the table fails (a balance is then not due for that reason)."""
        sent = self._clock()
        with self._watch.reading():
            members = await self.table.members(self.mapping)
        self.rewind_notice = members.rewind_notice
        if self._watch.observe(members, sent, self._clock()):
            self._due = True
        if self._bump_owed:
            await self._bump()
        return self.balance_due()

    @property
    def _recheck_delay(self) -> float:
        """How long after a balance to look again: long enough for the view index to show
        what changed (DynamoDB's GSIs usually lag well under a second)."""
        return max(2 * self.settings.watch_interval, RECHECK_SECONDS)

    def balance_due(self) -> bool:
        """Whether a balance should run now: the watch saw the generation move, a member come
        or go or a member's beat expire; we lost a lease; a handoff is pending for or by us; a
        peer's lease expired since the last balance; or the safety-net interval passed."""
        balancer = self._balancer
        if self._due or self._holdings.lost_since_balance:
            return True
        if balancer.awaiting_handoff or balancer.asked_of_us:
            return True
        if balancer.balanced_at is None or balancer.expiry_passed():
            return True
        if self._recheck_at is not None and self._clock() >= self._recheck_at:
            return True
        return self._clock() - balancer.balanced_at >= self.settings.safety_balance_interval

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
        if await self._discovery.sync(shards, initial):
            await self._bump()

    async def checkpoints(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint of the mapping, by shard."""
        leases = await self.table.list_leases(self.mapping)
        return {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}

    async def balance(self, busy: AbstractSet[str] = frozenset()) -> BalanceOutcome:
        """One balance cycle: read the heartbeats and the view, take, ask for handoffs, answer
        peers' requests; then bump the generation if anything changed, so peers look.

        ``busy`` names the shards whose task still runs on this replica: a lease the table
        still gives us is re-taken only once its old task has finished. Nothing is taken or
        asked for until a heartbeat succeeded (one is sent first if needed). Raises
        CheckpointError when the table fails (the runner retries next cycle); what was done
        before stays done.
        """
        if not self._fence.beat_recently:
            # At start-up before the heartbeat loop's first answer, or its next one is near:
            # what is taken now is fresh from this beat.
            await self._fence.beat()
        # A balance a change called for is followed by one more (the view may lag the change).
        rescheduled = self._schedule_recheck()
        outcome = await self._balancer.balance(busy, may_take=self._fence.beating)
        if rescheduled and self._recheck_gap is not None:
            self._recheck_at = self._clock() + self._recheck_gap
        # A change seen only by the member read (after the view) calls for one more look.
        self._due, self._holdings.lost_since_balance = self._balancer.missed_change, False
        if outcome.changed or self._bump_owed:
            await self._bump()
        return outcome

    def _schedule_recheck(self) -> bool:
        """Plan the looks that follow a balance a change called for: the view is eventually
        consistent and may not show the change yet, so look again after ``_recheck_delay``,
        then at doubling gaps (up to ``RECHECK_BACKOFF_LIMIT`` times it). Whether the plan
        changed (the recheck time is then set after this balance)."""
        first = self._recheck_delay
        if self._due:
            self._recheck_gap = first
        elif self._recheck_at is not None and self._clock() >= self._recheck_at:
            gap = 2 * (self._recheck_gap or first)
            self._recheck_gap = gap if gap <= first * RECHECK_BACKOFF_LIMIT else None
            self._recheck_at = None if self._recheck_gap is None else self._recheck_at
        else:
            return False  # a balance for another reason: the planned recheck stands
        return True

    def next_expiry(self) -> float | None:
        """When the soonest lease of another replica expires, if nothing changes (monotonic).

        The runner wakes for it, so a dead replica's shards move at expiry rather than up to a
        balance interval later.
        """
        return self._balancer.next_expiry()

    async def _bump(self) -> None:
        """Tell peers that assignments changed (they read the view at their next watch). A
        failed bump is owed and retried at the next watch or balance; it never fails the
        change it reports."""
        try:
            await self.table.bump_generation(self.mapping)
        except CheckpointError as exc:
            self._bump_owed = True
            log.warning("lease.generation_bump_failed", error=str(exc))
            return
        self._bump_owed = False
        self._watch.bumped()

    # -- heartbeats and fenced writes ---------------------------------------------------------

    async def heartbeat(self) -> RenewOutcome:
        """One heartbeat for every lease held (one write, whatever their number); report the
        leases fenced off because the table was unreachable for a lease duration."""
        return await self._fence.heartbeat()

    #: The protocol-v1 name of :meth:`heartbeat` (renewals are heartbeats now).
    renew_all = heartbeat

    async def leave(self) -> None:
        """Remove this replica's heartbeat entry (clean shutdown, after every release), and
        bump the generation so peers rebalance at once. Raises CheckpointError."""
        await self.table.leave(self.mapping, self.owner)
        await self._bump()

    def fence_wait(self, longest: float) -> float:
        """Seconds until the soonest held lease goes stale, at most ``longest``: the fence
        loop wakes right then. Polling alone would stop a batch up to a poll interval after
        90 % of the lease, which is past the lease itself for short leases (0.9 x 1 s + 0.5 s)."""
        return self._fence.fence_wait(longest)

    def stale(self) -> list[str]:
        """Held leases not proven alive (heartbeat, take, checkpoint) for 90 % of the lease
        duration: a peer may take them a lease duration after, so in-flight work must stop
        before then."""
        return self._fence.stale()

    def tracked(self, shard_id: str, target: Target) -> Target:
        """``target`` for ``shard_id``'s invocations, noting each one cancelled mid-flight:
        only those can outlive the shard's task, so our own lease is re-taken only a takeover
        grace after it."""
        return TrackedTarget(target, partial(self._balancer.note_abandoned, shard_id))

    def ensure_fresh(self, shard_id: str) -> None:
        """Self-fencing before every invocation: raise LeaseLost unless the lease is held and
        was proven alive recently enough (on our monotonic clock) that no peer can have taken it.

        A process paused past its lease (GC, SIGSTOP, a frozen VM) learns nothing until it
        writes; this check stops it before it invokes the function for a shard it lost.
        """
        self._fence.ensure_fresh(shard_id)

    async def checkpoint(self, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced checkpoint write. Raises LeaseLost if the lease is no longer ours."""
        await self._fence.checkpoint(shard_id, checkpoint)

    async def apply_rewind(self, shard_id: str, rewind_id: str, checkpoint: Checkpoint) -> bool:
        """A rewind's checkpoint, fenced like :meth:`checkpoint`; False when the request changed
        meanwhile. Raises LeaseLost if the lease is no longer ours."""
        return await self._fence.apply_rewind(shard_id, rewind_id, checkpoint)

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
            holdings.renewed_at.pop(shard_id, None)
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
        await self._bump()

    def forget(self, shard_id: str) -> None:
        """Stop treating the lease as ours (it went stale); a fenced write would fail anyway."""
        if shard_id in self._holdings.leases:
            self._holdings.forget(shard_id, "lost")
