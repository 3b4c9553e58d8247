"""Lease protocol v2 (issue 13) on the in-memory lease table and a fake clock: heartbeats keep
every held lease fresh with one write, expiry needs the owner's beat *and* the lease's counter
to stand still, a lagging view never loses a lease, peers balance when the generation moves,
handoffs go end to end over it, and - in a randomized fleet of replicas that die, pause, join
and leave - no shard is ever held fresh by two replicas at once. The table's cost at rest does
not grow with the shards.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
import structlog

from poller.errors import CheckpointError
from poller.leases import STALE_FRACTION, LeaseCoordinator, LeaseSettings
from poller.types import Checkpoint
from tests.support.memory_lease_table import MemoryLeaseTable

pytestmark = pytest.mark.anyio

MAPPING = "m"
SETTINGS = LeaseSettings(lease_duration=10.0, balance_interval=5.0)
L = SETTINGS.lease_duration


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


async def new_table(shards: int, clock: Clock, **options: int) -> MemoryLeaseTable:
    table = MemoryLeaseTable(clock=clock, **options)  # type: ignore[arg-type]
    for i in range(shards):
        await table.create(MAPPING, f"s{i:04}")
    return table


def coordinator(
    table: MemoryLeaseTable, owner: str, clock: Clock, settings: LeaseSettings = SETTINGS
) -> LeaseCoordinator:
    return LeaseCoordinator(
        table,  # type: ignore[arg-type]  # the in-memory twin of our own table
        mapping=MAPPING,
        owner=owner,
        settings=settings,
        clock=clock,
    )


async def owners(table: MemoryLeaseTable) -> Counter[str | None]:
    return Counter(lease.owner for lease in await table.list_leases(MAPPING))


# -- heartbeats and self-fencing ------------------------------------------------------------


async def test_one_heartbeat_write_keeps_every_held_lease_fresh() -> None:
    """50 leases, a minute of heartbeats: nothing goes stale, and the only writes are the
    heartbeats (one each), not a renewal per lease."""
    clock = Clock()
    table = await new_table(50, clock)
    me = coordinator(table, "a", clock)
    await me.balance()
    assert len(me.held) == 50
    writes = table.writes
    for _ in range(18):
        clock.now += SETTINGS.renew_interval
        assert (await me.heartbeat()).lost == []
        assert me.stale() == []
    assert table.writes - writes == 18
    assert table.by_call["UpdateItem (heartbeat)"] >= 18
    me.ensure_fresh("s0000")


async def test_without_a_heartbeat_every_lease_goes_stale_at_ninety_percent() -> None:
    """The table goes down: heartbeats fail and move nothing; the fence loop wakes right when
    the leases reach 0.9 x the lease duration and finds them all stale."""
    clock = Clock()
    table = await new_table(3, clock)
    me = coordinator(table, "a", clock)
    await me.balance()
    table.down = True
    clock.now += SETTINGS.renew_interval
    assert (await me.heartbeat()).lost == []
    assert me.fence_wait(100) == pytest.approx(L * STALE_FRACTION - SETTINGS.renew_interval)
    assert me.stale() == []
    clock.now += L * STALE_FRACTION - SETTINGS.renew_interval
    assert sorted(me.stale()) == sorted(me.held)


async def test_a_heartbeat_answered_after_the_lease_went_stale_revives_nothing() -> None:
    """A process paused past 90 % of its lease (GC, SIGSTOP) may heartbeat before its fence
    loop runs: the heartbeat succeeds, but a peer may have taken the leases meanwhile (the
    heartbeat is fenced on no lease), so leases already stale stay stale."""
    clock = Clock()
    table = await new_table(2, clock)
    me = coordinator(table, "a", clock)
    await me.balance()
    clock.now += L * STALE_FRACTION + 0.1  # paused
    assert (await me.heartbeat()).lost == []
    assert sorted(me.stale()) == ["s0000", "s0001"]


async def test_no_lease_is_taken_before_a_heartbeat_succeeded() -> None:
    """A replica that cannot heartbeat (its first beat fails) takes nothing: it could not
    keep what it took alive."""

    class NoHeartbeat(MemoryLeaseTable):
        async def heartbeat(self, mapping: str, owner: str, beat: int) -> None:
            raise CheckpointError("lease table memory: UpdateItem (heartbeat) throttled")

    clock = Clock()
    table = NoHeartbeat(clock=clock)
    await table.create(MAPPING, "s0")
    me = coordinator(table, "a", clock)
    with pytest.raises(CheckpointError):
        await me.balance()
    assert me.held == {}
    assert await owners(table) == {None: 1}


# -- expiry: the owner's beat and the lease's counter --------------------------------------


async def test_a_live_owner_keeps_its_leases_though_their_counters_stand_still() -> None:
    """At rest v2 moves no counter; a peer must not take leases whose owner still beats. Once
    the owner stops beating, the peer takes them takeover_after after it last saw the beat
    move, not before."""
    clock = Clock()
    table = await new_table(4, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await a.balance()
    last_beat = clock.now
    for _ in range(60):  # a minute: b asks for its share, a answers; no lease expires
        clock.now += 1.0
        if clock.now - last_beat >= SETTINGS.renew_interval:
            await a.heartbeat()
            last_beat = clock.now
        await b.heartbeat()
        for replica in (a, b):
            if await replica.watch():
                for shard in (await replica.balance(busy=set(replica.held))).handoffs:
                    await replica.release(shard)
    assert (len(a.held), len(b.held)) == (2, 2), "a's live leases were taken as expired"

    # a dies: no more heartbeats after last_beat
    taken_at = None
    while taken_at is None:
        clock.now += 0.5
        await b.heartbeat()
        if await b.watch():
            await b.balance()
        if len(b.held) == 4:
            taken_at = clock.now
    assert last_beat + SETTINGS.takeover_after <= taken_at <= last_beat + L + 2.0


async def test_a_v1_owner_is_judged_by_its_counter_and_reported() -> None:
    """A replica of protocol v1 renews its lease's counter and does not heartbeat: a v2 peer
    keeps off the lease while the counter moves, says loudly that a v1 replica runs, and takes
    the lease once the counter stood still for takeover_after."""
    clock = Clock()
    table = await new_table(1, clock)
    (lease,) = await table.list_leases(MAPPING)
    lease = await table.take(lease, "old") or lease
    b = coordinator(table, "b", clock)
    with structlog.testing.capture_logs() as logs:
        for _ in range(10):
            clock.now += SETTINGS.renew_interval
            lease = await table.renew(lease, "old")
            await b.balance()
            assert b.held == {}
    assert [e["peer"] for e in logs if e["event"] == "lease.v1_peer_seen"] == ["old"]
    stopped = clock.now
    while not b.held:
        clock.now += 0.5
        await b.balance()
    assert clock.now >= stopped + SETTINGS.takeover_after


async def test_a_lagging_view_neither_loses_a_held_lease_nor_lets_a_peer_take_it() -> None:
    """The view lags behind the table (it still shows the leases unowned): the owner keeps
    them, and a peer's takes, fenced on the counters it saw, are refused."""
    clock = Clock()
    table = await new_table(2, clock, view_lag_seconds=50)
    clock.now += 100  # the view shows the leases as created, not what happens from now on
    a = coordinator(table, "a", clock)
    await a.balance()
    assert sorted(a.held) == ["s0000", "s0001"]
    await a.checkpoint("s0000", Checkpoint(sequence_number="5"))
    assert [lease.owner for lease in await table.lease_view(MAPPING)] == [None, None]

    b = coordinator(table, "b", clock)
    await b.balance()
    assert b.held == {}
    assert await owners(table) == {"a": 2}
    outcome = await a.balance()
    assert outcome.lost == []
    assert sorted(a.held) == ["s0000", "s0001"]


async def test_a_lease_gone_from_the_view_is_lost_only_when_a_consistent_read_agrees() -> None:
    """A lease missing from the view (index lag) stays held while the consistent read finds
    it ours; once it is really gone (deleted), it is reported lost."""
    clock = Clock()
    table = await new_table(1, clock)
    a = coordinator(table, "a", clock)
    await a.balance()
    table.view_lag_calls = 10_000
    await table.delete(MAPPING, "s0000")
    table.view_lag_calls = 0
    await table.create(MAPPING, "s0000")  # a different lease now (unowned, counter 0)
    await table.delete(MAPPING, "s0000")
    assert (await a.balance()).lost == ["s0000"]


# -- watching and the generation -----------------------------------------------------------


async def test_a_change_by_a_peer_triggers_a_balance_at_the_next_watch() -> None:
    """At rest a watch calls for no balance; once a peer changed assignments (it bumped the
    generation) the next watch does."""
    clock = Clock()
    table = await new_table(2, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await a.balance()
    await b.heartbeat()
    assert await a.watch()  # b joined the member map
    await a.balance()
    await settle(a, b, clock, 25)  # b takes its share by a handoff; the rechecks pass
    for _ in range(10):
        clock.now += 1.0
        await a.heartbeat()
        await b.heartbeat()
        assert not await a.watch()
        assert not await b.watch()
    assert await owners(table) == {"a": 1, "b": 1}
    await a.release(next(iter(a.held)))
    assert await b.watch()


async def settle(a: LeaseCoordinator, b: LeaseCoordinator, clock: Clock, seconds: int) -> None:
    """Heartbeat, watch and balance as due for ``seconds``."""
    for _ in range(seconds):
        clock.now += 1.0
        for replica in (a, b):
            await replica.heartbeat()
            if await replica.watch():
                for shard in (await replica.balance(busy=set(replica.held))).handoffs:
                    await replica.release(shard)


async def test_a_balance_runs_at_least_every_safety_interval() -> None:
    clock = Clock()
    table = await new_table(1, clock)
    a = coordinator(table, "a", clock)
    await a.balance()
    rechecks = []
    for _ in range(30):  # the rechecks after a balance a change called for: 2, 4 and 8 s apart
        clock.now += 1.0
        await a.heartbeat()
        if await a.watch():
            await a.balance()
            rechecks.append(clock.now)
    assert len(rechecks) == 3
    balanced = rechecks[-1]
    clock.now = balanced + SETTINGS.safety_balance_interval - 1
    await a.heartbeat()
    assert not await a.watch()
    clock.now = balanced + SETTINGS.safety_balance_interval
    await a.heartbeat()
    assert await a.watch()


async def test_a_handoff_goes_end_to_end_over_the_generation() -> None:
    """a holds four leases; b joins and asks for two; driven only by watches (no balance
    timer), a grants them, drains, hands them over, and b takes them: 2/2, two moves."""
    clock = Clock()
    table = await new_table(4, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await a.balance()
    for _ in range(10):
        clock.now += 1.0
        for replica in (a, b):
            await replica.heartbeat()
            if await replica.watch():
                for shard in (await replica.balance(busy=set(replica.held))).handoffs:
                    await replica.release(shard)
    assert await owners(table) == {"a": 2, "b": 2}
    assert len(a.held) == 2
    assert len(b.held) == 2


async def test_a_dead_members_entry_is_pruned_and_a_clean_leave_removes_ours() -> None:
    clock = Clock()
    table = await new_table(1, clock)
    a = coordinator(table, "a", clock)
    await table.heartbeat(MAPPING, "ghost", 1)
    await a.balance()
    clock.now += SETTINGS.prune_after
    await a.heartbeat()
    await a.balance()
    assert set((await table.members(MAPPING)).beats) == {"a"}
    generation = (await table.members(MAPPING)).generation
    await a.release("s0000")
    await a.leave()
    members = await table.members(MAPPING)
    assert members.beats == {}
    assert members.generation >= generation + 2


# -- the table's cost at rest ---------------------------------------------------------------


async def rest_calls(shards: int) -> int:
    """Table calls of 4 replicas over 5 minutes at rest, after they balanced."""
    clock = Clock()
    table = await new_table(shards, clock)
    fleet = [Replica(coordinator(table, n, clock)) for n in "abcd"]
    rng = random.Random(1)
    await run(fleet, clock, 120.0, rng)
    assert sum(len(r.coordinator.held) for r in fleet) == shards
    before = table.reads + table.writes
    await run(fleet, clock, 300.0, rng)
    return table.reads + table.writes - before


async def test_calls_at_rest_do_not_grow_with_the_shards() -> None:
    few, many = await rest_calls(16), await rest_calls(256)
    assert abs(many - few) <= 0.1 * few, (few, many)


# -- a randomized fleet: never two fresh owners ---------------------------------------------


@dataclass
class Replica:
    """A replica driven the way the runner drives it: heartbeats every renew interval, a fence
    check, a watch every watch interval (balancing when due), granted shards drained for a
    moment and then released."""

    coordinator: LeaseCoordinator
    next_beat: float = 0.0
    next_watch: float = 0.0
    draining: dict[str, float] = field(default_factory=dict)
    dead: bool = False
    paused_until: float = 0.0
    leaving: bool = False

    async def step(self, now: float, rng: random.Random) -> None:
        coord = self.coordinator
        if self.dead or now < self.paused_until:
            return
        # After a pause the heartbeat task may run before the fence task: either order is safe.
        if rng.random() < 0.5:
            await self._beat(now)
        for shard in coord.stale():
            coord.forget(shard)
            self.draining.pop(shard, None)
        for shard, done in list(self.draining.items()):
            if done <= now:
                del self.draining[shard]
                await coord.release(shard)
        await self._beat(now)
        if now >= self.next_watch:
            self.next_watch = now + coord.settings.watch_interval
            try:
                if await coord.watch() and not self.leaving:
                    outcome = await coord.balance(busy=set(coord.held) | set(self.draining))
                    for shard in outcome.handoffs:
                        self.draining.setdefault(shard, now + rng.uniform(0.1, 2.0))
            except CheckpointError:
                pass

    async def _beat(self, now: float) -> None:
        if now >= self.next_beat:
            self.next_beat = now + self.coordinator.settings.renew_interval
            await self.coordinator.heartbeat()

    def fresh(self, now: float) -> set[str]:
        """The shards this replica may invoke now (what ``ensure_fresh`` allows)."""
        if self.dead or now < self.paused_until:
            return set()
        coord, settings = self.coordinator, self.coordinator.settings
        bound = settings.lease_duration - settings.renew_interval
        return {s for s in coord.held if now - coord._holdings.renewed_at.get(s, -1e9) <= bound}


async def run(fleet: list[Replica], clock: Clock, seconds: float, rng: random.Random) -> list[str]:
    violations: list[str] = []
    end = clock.now + seconds
    while clock.now < end:
        clock.now = round(clock.now + 0.1, 3)
        for replica in rng.sample(fleet, len(fleet)):
            await replica.step(clock.now, rng)
            holders: Counter[str] = Counter()
            for other in fleet:
                holders.update(other.fresh(clock.now))
            violations += [f"t={clock.now} {s} fresh on {n}" for s, n in holders.items() if n > 1]
    return violations


@pytest.mark.parametrize("seed", range(8))
async def test_a_fleet_that_dies_pauses_joins_and_leaves_never_has_two_fresh_owners(
    seed: int,
) -> None:
    rng = random.Random(seed)
    clock = Clock()
    settings = replace(SETTINGS, lease_duration=4.0, balance_interval=2.0)
    table = await new_table(12, clock, view_lag_calls=rng.randint(0, 30))
    names = iter(f"r{i}" for i in range(100))
    fleet = [Replica(coordinator(table, next(names), clock, settings)) for _ in range(4)]
    violations = await run(fleet, clock, 20.0, rng)
    for _ in range(30):
        live = [r for r in fleet if not r.dead]
        roll = rng.random()
        if roll < 0.25 and len(live) > 1:
            rng.choice(live).dead = True  # SIGKILL
        elif roll < 0.5 and live:
            rng.choice(live).paused_until = clock.now + rng.uniform(
                0.5, 3 * settings.lease_duration
            )
        elif roll < 0.65 and len(live) > 1:
            leaver = rng.choice(live)  # SIGTERM: release everything, leave
            leaver.leaving = True
            for shard in list(leaver.coordinator.held):
                await leaver.coordinator.release(shard)
            await leaver.coordinator.leave()
            leaver.dead = True
        else:
            fleet.append(Replica(coordinator(table, next(names), clock, settings)))
        violations += await run(fleet, clock, rng.uniform(1.0, 8.0), rng)
    # Long enough for a safety-net balance: a lagging view may hide a release from the balance
    # that the release's generation bump called for, and from its recheck.
    violations += await run(fleet, clock, settings.safety_balance_interval + 20.0, rng)
    assert violations == []
    live = [r for r in fleet if not r.dead]
    held = Counter(s for r in live for s in r.coordinator.held)
    assert set(held) == {f"s{i:04}" for i in range(12)}, "a dead replica's shards never moved"
    assert max(held.values()) == 1
