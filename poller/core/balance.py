"""Lease balancing across replicas: which leases to take, to ask peers for, and to hand over.

Every balance cycle, each replica reads the lease table and calls :func:`plan_balance` with
what it saw. The plan is leader-less and converges, as the Kinesis Client Library's does, but
faster (peers.md §3 lessons), and without moving a lease twice:

* **Fair share.** Live replicas are counted from the table: owners of unexpired leases, and
  replicas that only have handoff requests pending (a replica that just started and holds
  nothing yet). The share is ``ceil(active leases / live replicas)``; nobody takes beyond it.
* **Take** this replica's own leases that it does not run (the table still names it after a
  lost response or a self-fenced lease: ours to re-take, through the same fenced take), then
  unowned and expired leases (an expired lease is free whoever owns it), up to the share.
* **Ask** the most loaded replicas to hand leases over while they hold two or more above us,
  several per cycle, so a new replica gets its share in about one cycle. Leases already asked
  for count as the asker's.
* **Each replica its own order** (:func:`rendezvous`) over peers' free leases, over the leases
  it may ask for, and between equally loaded owners: replicas that plan from the same view at
  once (survivors of a dead peer, the fleet after a table outage, replicas starting together)
  then mostly go for different leases, instead of all racing for the same first ones, where
  every conditional write but one fails and the leases spread over many cycles.
* **Hand over** (the owner's side): answer a request once it has stood for one cycle (so
  replicas that started together have all shown up); grant it only while it leaves the asker
  within its share and the owner no lower than the asker; decline the rest (the owner clears
  the request).
  A granted lease goes to the asker itself (the owner writes it as the new owner), never back
  to the pool where a third replica could grab it, which is what made leases of replicas that
  started together move as a pack every few seconds.

Handing over is graceful (the owner finishes its batch, checkpoints and hands the lease to the
asker), which is what makes rolling deploys free of duplicates. Only *active* leases count:
ones whose shard is ready (its parents are finished; a finished shard is never taken).
I/O-free and synchronous.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Set
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseView:
    """What the planner needs to know about one lease.

    ``expired`` is the observer's judgement; for its own leases the observer says False while
    it runs the shard, and True when the table names it but it does not run the shard.
    """

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
    #: (shard, asker): our leases to hand over to the replica that asked for them.
    grant: tuple[tuple[str, str], ...] = ()
    #: Our leases whose request we turn down (it would leave the asker above its share).
    decline: tuple[str, ...] = ()


def plan_balance(
    leases: Iterable[LeaseView],
    *,
    me: str,
    ready: Set[str],
    max_leases: int | None = None,
    standing: Set[str] | None = None,
    contested: Set[str] = frozenset(),
) -> BalancePlan:
    """Plan this replica's takes, handoff requests, grants and refusals for one cycle.

    ``standing`` names our leases whose request was already there at our previous cycle; only
    those are answered (None: all). Waiting one cycle lets every replica that started together
    show up before leases are handed out, so the share they are handed by is the final one.
    ``contested`` names leases a peer took just before us this cycle (our take failed): the
    view, which may lag, still shows them free, but they are not taken again; the room they
    leave goes to the next free leases in our order, so a lost race costs no cycle.
    """
    active = [lease for lease in leases if lease.shard_id in ready]
    live = [lease for lease in active if lease.owner is not None and not lease.expired]
    target = fair_share(active, live, me=me, max_leases=max_leases)
    mine = sum(1 for lease in live if lease.owner == me)
    free = [
        lease
        for lease in active
        if (lease.owner is None or lease.expired) and lease.shard_id not in contested
    ]
    own = sorted(lease.shard_id for lease in free if lease.owner == me)
    others = sorted(
        (lease for lease in free if lease.owner != me),
        key=lambda lease: (
            lease.owner is not None,
            lease.pending_owner != me,
            rendezvous(me, lease.shard_id),
        ),
    )
    room = max(target - mine - len(own), 0)
    take = (*own, *(lease.shard_id for lease in others[:room]))
    requests = _handoff_requests(live, me=me, have=mine + len(take), target=target)
    grant, decline = _answer_requests(
        live, me=me, have=mine + len(take), target=target, standing=standing
    )
    return BalancePlan(take=take, request=requests, target=target, grant=grant, decline=decline)


def rendezvous(me: str, name: str) -> tuple[bytes, str]:
    """Where ``name`` (a shard, a peer) comes in this replica's own order: a hash of both
    names (rendezvous hashing), the same at every cycle of this replica and unrelated between
    replicas; the name breaks the rare tie. Not CRC32: it is linear, so two replicas' CRCs of
    the same names differ by one XOR mask, and their orders are alike (halves the same)."""
    return hashlib.blake2b(f"{me}/{name}".encode(), digest_size=8).digest(), name


def fair_share(
    active: list[LeaseView], live: list[LeaseView], *, me: str, max_leases: int | None
) -> int:
    """``ceil(active / live replicas)``, capped; live replicas include pending askers."""
    replicas = {lease.owner for lease in live} | {me}
    replicas |= {lease.pending_owner for lease in live if lease.pending_owner is not None}
    target = math.ceil(len(active) / len(replicas)) if active else 0
    return target if max_leases is None else min(target, max_leases)


def _handoff_requests(
    live: list[LeaseView], *, me: str, have: int, target: int
) -> tuple[tuple[str, str], ...]:
    """Ask the most loaded owners for leases while they hold two or more above us."""
    theirs = [lease for lease in live if lease.owner != me]
    # Requests already made count as leases on their way: the asker's, no longer the owner's.
    have += sum(1 for lease in theirs if lease.pending_owner == me)
    if have >= target:
        return ()  # at rest: no need to order thousands of leases
    load = Counter(lease.pending_owner or lease.owner or "" for lease in theirs)
    # Each owner's leases nobody asked for yet, the next to ask for last (one pop per request:
    # a replica with nothing plans hundreds of requests over thousands of leases).
    askable: dict[str, list[str]] = {}
    for lease in sorted(
        (lease for lease in theirs if lease.pending_owner is None),
        key=lambda lease: rendezvous(me, lease.shard_id),
        reverse=True,
    ):
        askable.setdefault(lease.owner or "", []).append(lease.shard_id)
    # Each owner's place in our order, hashed once per plan rather than once per request.
    rank = {owner: rendezvous(me, owner) for owner in askable}
    requests: list[tuple[str, str]] = []
    while have < target and askable:
        owner = max(askable, key=lambda owner: (load[owner], rank[owner]))
        if load[owner] - have < 2:
            break
        # Only owners with leases left to ask for are chosen: an owner's load also counts
        # the leases it asked its peers for, so it may be the most loaded with none left.
        left = askable[owner]
        requests.append((left.pop(), owner))
        if not left:
            del askable[owner]
        load[owner] -= 1
        have += 1
    return tuple(requests)


def _answer_requests(
    live: list[LeaseView], *, me: str, have: int, target: int, standing: Set[str] | None
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Grant standing requests for our leases, least-loaded asker first, while the asker stays
    within its share and two or more below us; decline the others."""
    counts = Counter(lease.owner for lease in live)
    asked: dict[str, list[str]] = {}
    for lease in live:
        if (
            lease.owner == me
            and lease.pending_owner not in (None, me)
            and (standing is None or lease.shard_id in standing)
        ):
            asked.setdefault(lease.pending_owner or "", []).append(lease.shard_id)
    # Least-loaded asker first, then by shard: a heap of askers, each at its next shard (not
    # a min() over every request per answer: a fleet starting together asks one replica for
    # hundreds). An asker's count only changes when it is answered, and it is pushed back then.
    heap = []
    for asker, shards in asked.items():
        shards.sort(reverse=True)
        heap.append((counts[asker], shards[-1], asker))
    heapq.heapify(heap)
    grant: list[tuple[str, str]] = []
    decline: list[str] = []
    while heap:
        _, shard_id, asker = heapq.heappop(heap)
        shards = asked[asker]
        shards.pop()
        if counts[asker] < target and have - counts[asker] >= 2:
            grant.append((shard_id, asker))
            counts[asker] += 1
            have -= 1
        else:
            decline.append(shard_id)
        if shards:
            heapq.heappush(heap, (counts[asker], shards[-1], asker))
    return tuple(grant), tuple(decline)
