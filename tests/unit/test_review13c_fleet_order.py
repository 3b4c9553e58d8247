"""Hostile review 13c: per-replica rendezvous order and ``contested`` takes, with many
replicas starting at once and the lease table down for a while, on the in-memory table."""

from __future__ import annotations

import random

import pytest

from poller.leases import LeaseCoordinator
from tests.unit.test_lease_review_r1 import (
    SETTINGS,
    Clock,
    coordinator,
    fenced_step,
    new_table,
    owners,
)

pytestmark = pytest.mark.anyio


def fresh_overlap(replicas: list[LeaseCoordinator]) -> set[str]:
    """Shards that two replicas both hold as fresh (both could be invoking them)."""
    seen: set[str] = set()
    both: set[str] = set()
    for replica in replicas:
        fresh = set(replica.held) - set(replica.stale())
        both |= fresh & seen
        seen |= fresh
    return both


@pytest.mark.parametrize("seed", range(4))
async def test_a_fleet_starting_together_through_an_outage_shares_every_lease(seed: int) -> None:
    """3-7 replicas start in the same second on 7-40 shards; the table is down for two lease
    durations; never a shard fresh on two replicas, and at the end every lease is owned and
    the counts are within one."""
    rng = random.Random(seed)
    clock = Clock()
    shards = rng.randint(7, 40)
    table = await new_table(shards, clock)
    replicas = [coordinator(table, f"replica-{i}", clock) for i in range(rng.randint(3, 7))]
    for second in range(120):
        if second == 15:
            table.down = True
        if second == 15 + int(2 * SETTINGS.lease_duration):
            table.down = False
        rng.shuffle(replicas)
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas), second
    counts = await owners(table)
    assert None not in counts, counts
    assert sum(counts.values()) == shards
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert len(counts) == len(replicas)
