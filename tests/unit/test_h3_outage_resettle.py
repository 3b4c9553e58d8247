"""A whole-table outage, then the fleet resettles (issue 13, helper H3): on the in-memory
lease table and a fake clock.

While the table is down nobody can heartbeat, so every peer's beat stands still. The first
replica whose reads come back must not take that for a fleet of dead peers (counting itself
alone, taking every lease, then handing them back one cycle later): each replica re-takes
its own leases and nothing else moves. A peer that really died meanwhile still loses its
leases, a lease duration (and the grace) after the reads came back. No shard is ever fresh on
two replicas.
"""

from __future__ import annotations

import math
import random

import pytest

from poller.leases import LeaseCoordinator, LeaseSettings
from tests.unit.test_lease_review_r1 import MAPPING, Clock, fenced_step, new_table, owners
from tests.unit.test_review13c_fleet_order import fresh_overlap

pytestmark = pytest.mark.anyio

SHARDS = 64
REPLICAS = 4


def fleet(table: object, clock: Clock, grace: float) -> list[LeaseCoordinator]:
    settings = LeaseSettings(lease_duration=10.0, balance_interval=5.0, takeover_grace=grace)
    return [
        LeaseCoordinator(
            table,  # type: ignore[arg-type]  # the in-memory twin of our own table
            mapping=MAPPING,
            owner=f"replica-{i}",
            settings=settings,
            clock=clock,
        )
        for i in range(REPLICAS)
    ]


async def settle(replicas: list[LeaseCoordinator], clock: Clock, rng: random.Random) -> None:
    """Run the fleet until every lease is held and the shares are within one (at most 60 s)."""
    for _ in range(60):
        rng.shuffle(replicas)
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
        counts = [len(replica.held) for replica in replicas]
        if sum(counts) == SHARDS and max(counts) - min(counts) <= 1:
            return
    raise AssertionError(f"not settled: {[len(replica.held) for replica in replicas]}")


async def outage(replicas: list[LeaseCoordinator], clock: Clock, seconds: int) -> None:
    table = replicas[0].table
    table.down = True  # type: ignore[attr-defined]  # the in-memory table
    for _ in range(seconds):
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
    assert all(replica.held == {} for replica in replicas), "nobody fenced its shards"
    table.down = False  # type: ignore[attr-defined]


@pytest.mark.parametrize(("grace", "seed"), [(0.0, 0), (0.0, 1), (3.0, 2), (3.0, 3)])
async def test_after_a_whole_table_outage_each_replica_takes_back_its_own(
    grace: float, seed: int
) -> None:
    """The table is down for two lease durations; once it is back, no replica ever holds more
    than its share (plus one), and at most a few leases change owner."""
    rng = random.Random(seed)
    clock = Clock()
    table = await new_table(SHARDS, clock)
    replicas = fleet(table, clock, grace)
    await settle(replicas, clock, rng)
    before = {lease.shard_id: lease.owner for lease in await table.list_leases(MAPPING)}
    await outage(replicas, clock, 20)
    share = math.ceil(SHARDS / REPLICAS)
    most = 0
    for _ in range(30):
        rng.shuffle(replicas)
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
        most = max(most, *(len(replica.held) for replica in replicas))
    assert most <= share + 1, f"one replica took {most} of {SHARDS} leases after the outage"
    after = {lease.shard_id: lease.owner for lease in await table.list_leases(MAPPING)}
    moved = sum(1 for shard, owner in after.items() if owner != before[shard])
    assert moved <= REPLICAS, f"{moved} leases changed owner"
    counts = await owners(table)
    assert sum(counts.values()) == SHARDS
    assert None not in counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts


async def test_a_peer_dead_through_the_outage_loses_its_leases_a_lease_after_it() -> None:
    """One replica dies during the outage: the survivors take its leases once its beat has
    stood still for ``takeover_after`` of their own reads after the table came back (not
    before, not much later), and no lease is ever fresh on two replicas."""
    rng = random.Random(7)
    clock = Clock()
    table = await new_table(SHARDS, clock)
    replicas = fleet(table, clock, 0.0)
    await settle(replicas, clock, rng)
    dead = replicas.pop()
    orphans = set(dead.held)
    await outage([*replicas, dead], clock, 20)
    back = clock.now
    after = replicas[0].settings.takeover_after
    while not orphans <= {s for replica in replicas for s in replica.held}:
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
        taken = orphans & {s for replica in replicas for s in replica.held}
        assert not taken or clock.now - back >= after, "a dead peer's lease taken too early"
        assert clock.now - back <= after + 10, "the dead peer's leases were never taken"
    await settle(replicas, clock, rng)
