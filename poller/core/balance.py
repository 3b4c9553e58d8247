"""Lease balancing across replicas: which leases to take, and which to ask peers to hand off.

Every balance cycle, each replica reads the lease table and calls :func:`plan_balance` with
what it saw. The plan is leader-less and converges, as the Kinesis Client Library's does, but
faster (peers.md §3 lessons): take unowned and expired leases first, then ask the most loaded
replicas to hand leases over until the counts are within one, several per cycle, so a new
replica gets its share in about one cycle. Handing over is graceful (the owner finishes its
batch, checkpoints and releases), which is what makes rolling deploys free of duplicates.

Only *active* leases count: ones that are not finished (a finished shard is never taken) and
whose shard is ready (its parents are finished). I/O-free and synchronous.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Set
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseView:
    """What the planner needs to know about one lease."""

    shard_id: str
    owner: str | None
    expired: bool
    pending_owner: str | None = None


@dataclass(frozen=True, slots=True)
class BalancePlan:
    """The cycle's actions for this replica."""

    take: tuple[str, ...]
    #: (shard, current owner): ask the owner to hand the lease over to us.
    request: tuple[tuple[str, str], ...]
    #: The fair share this replica aims for.
    target: int


def plan_balance(
    leases: Iterable[LeaseView],
    *,
    me: str,
    ready: Set[str],
    max_leases: int | None = None,
) -> BalancePlan:
    """Plan this replica's takes and handoff requests for one cycle."""
    active = [lease for lease in leases if lease.shard_id in ready]
    owners = {lease.owner for lease in active if lease.owner and not lease.expired} | {me}
    target = math.ceil(len(active) / len(owners)) if active else 0
    if max_leases is not None:
        target = min(target, max_leases)
    mine = sum(1 for lease in active if lease.owner == me and not lease.expired)
    free = sorted(
        (lease for lease in active if lease.owner != me and (lease.owner is None or lease.expired)),
        key=lambda lease: (lease.owner is not None, lease.pending_owner != me, lease.shard_id),
    )
    take = tuple(lease.shard_id for lease in free[: max(target - mine, 0)])
    requests = _handoff_requests(active, me=me, have=mine + len(take), target=target)
    return BalancePlan(take=take, request=requests, target=target)


def _handoff_requests(
    active: list[LeaseView], *, me: str, have: int, target: int
) -> tuple[tuple[str, str], ...]:
    """Ask the most loaded owners for leases while they hold two or more above us."""
    live = [lease for lease in active if lease.owner and lease.owner != me and not lease.expired]
    # Requests already made count as leases on their way: ours, no longer their owner's.
    pending = [lease for lease in live if lease.pending_owner == me]
    load = Counter(lease.owner for lease in live if lease.owner and lease.pending_owner != me)
    have += len(pending)
    candidates = sorted(
        (lease for lease in live if lease.pending_owner is None), key=lambda lease: lease.shard_id
    )
    requests: list[tuple[str, str]] = []
    while have < target:
        owner, count = max(load.items(), key=lambda item: (item[1], item[0]), default=(None, 0))
        if owner is None or count - have < 2:
            break
        lease = next((c for c in candidates if c.owner == owner), None)
        if lease is None:
            break
        candidates.remove(lease)
        requests.append((lease.shard_id, owner))
        load[owner] -= 1
        have += 1
    return tuple(requests)
