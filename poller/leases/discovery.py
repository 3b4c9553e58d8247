"""Shard discovery into the lease table: a lease per new shard, none for finished ones.

Data flow: the runner's discovery lists the shards and calls the coordinator's ``sync``, which
lands here: missing leases are created (parents recorded, the pinned start as checkpoint), the
leases of finished shards that left the listing are retired, and a listing that hides a parent
is not trusted until the next one agrees (see :class:`~poller.core.lineage.RetirementGate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet

import structlog

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
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
    ) -> None:
        """Bring the table in line with a fresh listing (see ``LeaseCoordinator.sync``)."""
        leases = await self._table.list_leases(self._mapping)
        existing = {lease.shard_id for lease in leases}
        checkpoints = {lease.shard_id: lease.checkpoint for lease in leases if lease.checkpoint}
        stored = [ShardInfo(lease.shard_id, lease.parent_ids) for lease in leases]
        finished = finished_shards([*stored, *shards], checkpoints)
        waiting = self._unconfirmed_orphans(shards, existing)
        for shard in shards:
            if shard.shard_id not in existing | finished | waiting:
                await self._table.create(
                    self._mapping,
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
            await self._table.delete(self._mapping, shard_id)
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
