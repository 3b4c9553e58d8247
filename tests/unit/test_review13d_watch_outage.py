"""Review 13d: bb662fd does not judge a peer's beat still across our own failed reads.

Attacks on that rule:

* liveness: reads that keep failing intermittently, forever, never keep a dead peer's beat
  from expiring; the delay grows with the failed run between answered reads (about
  ``(failed + 1) / 2`` times ``takeover_after`` when each answered read follows ``failed``
  lost ones), never without bound while some read answers;
* safety: the rule never makes a beat expire *earlier* than ``takeover_after`` of real
  stillness; in a fleet where one replica is cut off from the table (its every call fails)
  and the observers' own reads fail two times in three, no shard is ever fresh on two
  replicas, and the cut-off replica's leases are still taken.
"""

from __future__ import annotations

import random

import pytest

from poller.checkpoints.dynamodb.items import Members
from poller.errors import CheckpointError
from poller.leases import LeaseSettings
from poller.leases.watching import MemberWatch
from tests.support.scale_fleet import TableRoad, coordinator_on
from tests.unit.test_lease_review_r1 import MAPPING, Clock, fenced_step, new_table
from tests.unit.test_review13c_fleet_order import fresh_overlap

pytestmark = pytest.mark.anyio

SETTINGS = LeaseSettings(lease_duration=10.0, balance_interval=5.0, takeover_grace=0.0)
W = SETTINGS.watch_interval
T = SETTINGS.takeover_after


def dead_peer_expires_after(answers: list[bool], reads: int = 4000) -> float | None:
    """Reads every ``W`` seconds, answered or failed as ``answers`` says (cycled); a live
    peer beats, a dead one stopped at time 0. When the dead one's beat is judged still for
    ``takeover_after`` (None: never within ``reads``); asserts the live one never is."""
    watch = MemberWatch(T, SETTINGS.watched_gap)
    beat = 0
    for n in range(reads):
        now = n * W
        beat += 1
        if n and not answers[n % len(answers)]:
            try:
                with watch.reading():
                    raise CheckpointError("throttled")
            except CheckpointError:
                pass
            continue
        watch.observe(Members({"dead": 1, "live": beat}, 0), now, now)
        assert watch.still_for("live") < T, "a live peer judged still"
        if watch.still_for("dead") >= T:
            # Safety: never before the beat really stood still that long.
            assert now >= T
            return now
    return None


@pytest.mark.parametrize("failed", [0, 1, 2, 4, 9, 19])
def test_a_dead_peer_still_expires_when_reads_keep_failing(failed: int) -> None:
    """Each answered read follows ``failed`` failed ones, forever: the dead peer's beat is
    judged expired, later by the share of the gaps the rule does not count."""
    expired = dead_peer_expires_after([True] + [False] * failed)
    assert expired is not None, "a dead peer's beat never expired"
    period = (failed + 1) * W
    counted = min(period, SETTINGS.watched_gap)  # stillness credited per answered read
    bound = T / counted * period + period
    assert T <= expired <= bound


@pytest.mark.parametrize("seed", range(6))
def test_a_dead_peer_expires_under_random_read_failures(seed: int) -> None:
    """Half the reads fail at random: the beat still expires, within a few takeovers."""
    rng = random.Random(seed)
    answers = [rng.random() < 0.5 for _ in range(997)]
    expired = dead_peer_expires_after(answers)
    assert expired is not None
    assert expired <= 4 * T


@pytest.mark.parametrize("seed", range(3))
async def test_a_cut_off_replica_and_flaky_observers_never_share_a_fresh_lease(seed: int) -> None:
    """Three replicas settle on 30 leases; then one is cut off from the table (every call
    fails) while the two others lose half their reads at random. Never is a shard fresh on
    two replicas, and the cut-off replica's leases all go to the others within a bound."""
    clock = Clock()
    table = await new_table(30, clock)
    roads = [TableRoad(table, seed * 10 + i) for i in range(3)]
    replicas = [
        coordinator_on(road, mapping=MAPPING, owner=f"replica-{i}", settings=SETTINGS, clock=clock)
        for i, road in enumerate(roads)
    ]
    for _ in range(60):
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
    assert sum(len(r.held) for r in replicas) == 30
    cut = replicas[2]
    orphans = set(cut.held)
    assert orphans
    roads[2].cut = True
    for road in roads[:2]:
        road.read_failure = 0.5
    started = clock.now
    while not orphans <= set(replicas[0].held) | set(replicas[1].held):
        await fenced_step(replicas, clock)
        assert not fresh_overlap(replicas)
        assert clock.now - started <= 12 * T, "the cut-off replica's leases were never taken"
    assert not set(cut.held) - set(cut.stale())
