"""Shard discovery into the lease table: a lease per new shard, none for finished ones.

Data flow: the runner's discovery lists the shards and calls the coordinator's ``sync``, which
lands here: missing leases are created (parents recorded, the pinned start as checkpoint), the
leases of finished shards that left the listing are retired, and a listing that hides a parent
is not trusted until the next one agrees (see :class:`~poller.core.lineage.RetirementGate`).

The table is read through the compact lease view (eventually consistent, cheap); only when
that read calls for a write (a new shard, a shard to retire: rare) is the plan made again from
the consistent Scan, so that a lagging view never re-creates a lease just retired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import structlog

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.core.lineage import (
    RetirementGate,
    ShardInfo,
    finished_shards,
    reopened_shards,
    retired_checkpoints,
    vanished_shards,
)
from poller.types import Checkpoint

log = structlog.get_logger("poller.leases")

_VANISHED = (
    "the shard left the stream before it was read to its end (trimmed by the retention):"
    " its unread records are lost; its lease is removed so that its children can start"
)


@dataclass(frozen=True, slots=True)
class _SyncPlan:
    """The writes a listing calls for: leases to create and (confirmed) to delete."""

    creates: list[ShardInfo]
    deletes: list[str]
    gone: set[str]
    checkpoints: dict[str, Checkpoint]


class LeaseDiscovery:
    """Keeps one mapping's leases in line with the shard listings."""

    def __init__(self, table: DynamoDBLeaseTable, mapping: str) -> None:
        self._table = table
        self._mapping = mapping
        #: Shards left out of the previous listing too (see ``RetirementGate``).
        self._retirements = RetirementGate()
        #: Orphans the previous listing showed too (see :meth:`_unconfirmed_orphans`).
        self._orphans = RetirementGate()

    async def sync(
        self, shards: Sequence[ShardInfo], initial: Callable[[ShardInfo], Checkpoint | None]
    ) -> bool:
        """Bring the table in line with a fresh listing (see ``LeaseCoordinator.sync``);
        whether a lease was created or deleted (peers should look)."""
        plan = self._plan(shards, await self._table.lease_view(self._mapping), new_listing=True)
        if plan.creates or plan.deletes:
            consistent = await self._table.list_leases(self._mapping)
            plan = self._plan(shards, consistent, new_listing=False)
        changed = False
        for shard in plan.creates:
            changed |= await self._table.create(
                self._mapping,
                shard.shard_id,
                parent_ids=shard.parent_ids,
                checkpoint=initial(shard),
            )
        report_reopened(shards, plan.checkpoints)
        for shard_id in plan.deletes:
            await self._table.delete(self._mapping, shard_id)
            changed = True
            if shard_id in plan.gone:
                log.warning("lease.vanished", vanished_shard=shard_id, reason=_VANISHED)
            else:
                log.info("lease.retired", retired_shard=shard_id)
        return changed

    def _plan(
        self, shards: Sequence[ShardInfo], leases: Sequence[Lease], *, new_listing: bool
    ) -> _SyncPlan:
        """What a listing calls for, given the leases read. The gates move on to a new
        listing only once per listing (``new_listing``), however often it is planned."""
        existing = {lease.shard_id for lease in leases}
        checkpoints = {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}
        stored = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases]
        finished = finished_shards([*stored, *shards], checkpoints)
        waiting = self._unconfirmed_orphans(shards, existing, new_listing=new_listing)
        known = existing | finished | waiting  # once: per shard it made sync O(shards^2)
        creates = [s for s in shards if s.shard_id not in known]
        if not shards:  # an empty listing (none taken yet, or a glitch) proves nothing is gone
            return _SyncPlan(creates, [], set(), checkpoints)
        retired = retired_checkpoints(shards, checkpoints, stored=stored)
        gone = vanished_shards(shards, checkpoints, stored)
        deletes = self._retirements.confirmed([*retired, *gone], new_listing=new_listing)
        return _SyncPlan(creates, deletes, set(gone), checkpoints)

    def _unconfirmed_orphans(
        self, shards: Sequence[ShardInfo], existing: set[str], *, new_listing: bool
    ) -> set[str]:
        """Listed shards not to give a lease yet: orphans (see :func:`_orphans`) that the
        previous listing did not show as orphans too, and their listed descendants.

        On a mapping's first start (no lease yet) the listing is trusted: every root of a
        DynamoDB stream is an orphan (its parent aged out), and waiting a discovery interval
        would delay the start. Later, a new orphan is rare (a parent and its child born and
        trimmed while the service was down) or a listing that hides a parent.
        """
        found = _orphans(shards, existing)
        confirmed = self._orphans.confirmed(found, new_listing=new_listing)
        if not existing:
            return set()
        waiting = found - set(confirmed)
        grew = bool(waiting)
        while grew:  # descendants too: a child must not get a lease before its parent
            more = {s.shard_id for s in shards if waiting & set(s.parent_ids)} - waiting
            waiting |= more
            grew = bool(more)
        return waiting


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
