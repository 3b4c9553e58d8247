"""Adversarial tests of the lease runtime (issue 11 review): many replicas, a slow and lossy
lease table, kills, drains and joins, on a simulated clock, checked for the invariant above all:
no shard is ever invoked by two replicas at once.

The simulation drives real :class:`LeaseCoordinator` objects the way ``StreamMappingRunner``
does (a renew loop, a fence loop, a balance loop and one worker per held shard, all concurrent
anyio tasks) against ``FakeLeaseTable`` behind a proxy that delays every call (sometimes past
the lease duration), fails some before they land and loses the answer of some after they land.
Time is a fake clock that a driver advances in small steps once every task is blocked, so a run
is deterministic for its seed. A worker "invokes" a shard only after the coordinator's own
``ensure_fresh`` passes, and stays invoking until its batch ends or the fence loop or a lost
lease cancels it; the checker records every invocation interval per shard.

Also here: targeted breaks found by the review (a fence that woke on a polling tick, after the
lease had expired for short leases; a late answer reviving a fenced-off lease) and balance runs
that must not oscillate (odd shard counts, a lease cap, a replica joining and leaving again).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from poller.checkpoints.dynamodb import Lease, Members
from poller.errors import CheckpointError, LeaseLost
from poller.leases import LeaseCoordinator, LeaseSettings
from poller.streams.ownership import (
    EXPIRY_MARGIN_SECONDS,
    FENCE_CHECK_SECONDS,
    HANDOFF_POLL_SECONDS,
)
from poller.types import Checkpoint
from tests.unit.test_lease_runtime import MAPPING, Clock, FakeLeaseTable, simulate, table_with
from tests.unit.test_lease_runtime import SimReplica as BalanceReplica

pytestmark = pytest.mark.anyio

SIM_SETTINGS = LeaseSettings(lease_duration=2.0, balance_interval=1.5)
STEP = 0.05
#: Event-loop passes per simulated step: enough for every woken task to run until it sleeps
#: again (the fake table never yields by itself), deterministic unlike a wall-clock wait.
PASSES = 30


async def settle() -> None:
    for _ in range(PASSES):
        await anyio.lowlevel.checkpoint()


class SimClock:
    """A monotonic clock that only the driver moves; tasks sleep on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._tick = anyio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        while self.now < until - 1e-9:
            await self._tick.wait()

    def advance(self) -> None:
        self.now = round(self.now + STEP, 6)
        tick, self._tick = self._tick, anyio.Event()
        tick.set()


class FaultyTable:
    """FakeLeaseTable with a network in front: latency each way (sometimes past the lease),
    requests that fail before they land, and answers lost after the write landed."""

    table = "faulty"

    def __init__(self, inner: FakeLeaseTable, clock: SimClock, rng: random.Random) -> None:
        self.inner = inner
        self.clock = clock
        self.rng = rng
        self.faults = True
        #: Owners whose renewals and checkpoints hang (a table that stopped answering them).
        self.stalled: set[str] = set()

    async def _delay(self) -> None:
        if not self.faults:
            return
        roll = self.rng.random()
        if roll < 0.02:
            await self.clock.sleep(self.rng.uniform(2.0, 5.0))  # longer than the lease
        elif roll < 0.2:
            await self.clock.sleep(self.rng.uniform(0.05, 1.0))

    async def _call(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        await self._delay()
        if self.faults and self.rng.random() < 0.05:
            raise CheckpointError(f"lease table faulty: {name} could not reach DynamoDB")
        result = await call()  # applied: LeaseLost and refusals come back like answers
        await self._delay()
        if self.faults and self.rng.random() < 0.05:
            raise CheckpointError(f"lease table faulty: {name}: response lost")
        return result

    async def list_leases(self, mapping: str) -> list[Lease]:
        leases: list[Lease] = await self._call("Scan", lambda: self.inner.list_leases(mapping))
        return leases

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        taken: Lease | None = await self._call("take", lambda: self.inner.take(lease, owner))
        return taken

    async def renew(self, lease: Lease, owner: str) -> Lease:
        if owner in self.stalled:
            await self.clock.sleep(1000)
        renewed: Lease = await self._call("renew", lambda: self.inner.renew(lease, owner))
        return renewed

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        if owner in self.stalled:
            await self.clock.sleep(1000)
        written: Lease = await self._call(
            "checkpoint", lambda: self.inner.checkpoint(lease, owner, checkpoint)
        )
        return written

    async def release(self, lease: Lease, owner: str) -> bool:
        released: bool = await self._call("release", lambda: self.inner.release(lease, owner))
        return released

    async def request_handoff(self, lease: Lease, requester: str) -> bool:
        asked: bool = await self._call(
            "request_handoff", lambda: self.inner.request_handoff(lease, requester)
        )
        return asked

    # Lease protocol v2: the member item and the view go through the same faulty network.

    async def lease_view(self, mapping: str) -> list[Lease]:
        leases: list[Lease] = await self._call("Query", lambda: self.inner.lease_view(mapping))
        return leases

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        lease: Lease | None = await self._call("get", lambda: self.inner.get(mapping, shard_id))
        return lease

    async def members(self, mapping: str) -> Members:
        members: Members = await self._call("members", lambda: self.inner.members(mapping))
        return members

    async def heartbeat(self, mapping: str, owner: str, beat: int) -> None:
        if owner in self.stalled:
            await self.clock.sleep(1000)
        await self._call("heartbeat", lambda: self.inner.heartbeat(mapping, owner, beat))

    async def leave(self, mapping: str, owner: str) -> None:
        await self._call("leave", lambda: self.inner.leave(mapping, owner))

    async def prune_member(self, mapping: str, owner: str, beat: int) -> bool:
        pruned: bool = await self._call(
            "prune_member", lambda: self.inner.prune_member(mapping, owner, beat)
        )
        return pruned

    async def bump_generation(self, mapping: str) -> None:
        await self._call("bump_generation", lambda: self.inner.bump_generation(mapping))


@dataclass
class Invocations:
    """Every invocation interval per shard; fails at once when two replicas overlap."""

    clock: SimClock
    running: dict[str, dict[str, float]] = field(default_factory=dict)
    done: list[tuple[str, str, float, float]] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)

    def start(self, shard: str, replica: str) -> None:
        others = {r: t for r, t in self.running.setdefault(shard, {}).items() if r != replica}
        if others:
            self.overlaps.append(
                f"t={self.clock.now:.2f} {replica} invokes {shard} while {others} invoke it"
            )
        self.running[shard][replica] = self.clock.now

    def end(self, shard: str, replica: str) -> None:
        started = self.running.get(shard, {}).pop(replica, None)
        if started is not None:
            self.done.append((shard, replica, started, self.clock.now))


@dataclass
class SimShard:
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    stop: bool = False
    lost: bool = False


class SimReplica:
    """A replica's lease runtime as StreamMappingRunner drives it, on the simulated clock."""

    def __init__(
        self,
        name: str,
        table: FaultyTable,
        clock: SimClock,
        rng: random.Random,
        log: Invocations,
        settings: LeaseSettings = SIM_SETTINGS,
        batches: tuple[float, ...] = (0.1, 0.3, 0.8, 2.0, 4.0),
    ) -> None:
        self.name = name
        self.clock = clock
        self.rng = rng
        self.log = log
        self.coordinator = LeaseCoordinator(
            table,  # type: ignore[arg-type]  # a fake of our own interface
            mapping=MAPPING,
            owner=name,
            settings=settings,
            clock=clock,
        )
        self.settings = settings
        self.batches = batches
        self.shards: dict[str, SimShard] = {}
        self.stopping = False
        self.scope = anyio.CancelScope()
        self.exited = False

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew_loop)
                tg.start_soon(self._fence_loop)
                await self._balance_loop(tg)
        self.exited = True
        for shard in list(self.log.running):
            self.log.end(shard, self.name)  # killed: the process and its invocations are gone

    def kill(self) -> None:
        self.scope.cancel()

    def drained(self) -> bool:
        return self.stopping and not self.shards

    async def _renew_loop(self) -> None:
        while not self.drained():
            await self.clock.sleep(self.settings.renew_interval)
            for shard in (await self.coordinator.renew_all()).lost:
                self._stop(shard, lost=True)

    async def _fence_loop(self) -> None:
        while not self.drained():
            await self.clock.sleep(self.coordinator.fence_wait(FENCE_CHECK_SECONDS))
            for shard in self.coordinator.stale():
                self.coordinator.forget(shard)
                self._stop(shard, lost=True)

    def _stop(self, shard: str, *, lost: bool) -> None:
        control = self.shards.get(shard)
        if control is None:
            return
        control.stop = True
        if lost:
            control.lost = True
            control.scope.cancel()

    async def _balance_loop(self, tg: anyio.abc.TaskGroup) -> None:
        while not self.stopping:
            coord = self.coordinator
            try:
                outcome = await coord.balance(busy=frozenset(self.shards))
                for shard in outcome.handoffs:
                    self._stop(shard, lost=False)
            except CheckpointError:
                pass
            finally:
                for shard in set(self.shards) - set(coord.held):
                    self._stop(shard, lost=True)
            for shard in sorted(coord.held):
                if shard not in self.shards and not self.stopping:
                    self.shards[shard] = SimShard()
                    tg.start_soon(self._worker, shard)
            interval = self.settings.balance_interval * self.rng.uniform(0.8, 1.2)
            if coord.awaiting_handoff:
                interval = min(interval, HANDOFF_POLL_SECONDS)
            expiry = coord.next_expiry()
            if expiry is not None:  # as the runner does: balance just after a peer's expiry
                interval = min(interval, max(expiry - self.clock.now + EXPIRY_MARGIN_SECONDS, 0.1))
            await self.clock.sleep(interval)
        for control in self.shards.values():
            control.stop = True

    async def _worker(self, shard: str) -> None:
        control = self.shards[shard]
        coord = self.coordinator
        settled = False
        try:
            with control.scope:
                while not control.stop and not self.stopping:
                    coord.ensure_fresh(shard)
                    self.log.start(shard, self.name)
                    try:
                        await self.clock.sleep(self.rng.choice(self.batches))
                    finally:
                        self.log.end(shard, self.name)
                    await self._checkpoint(shard)
                settled = True
        except LeaseLost:
            pass
        finally:
            if settled and not control.lost:
                with anyio.CancelScope(shield=True), contextlib.suppress(CheckpointError):
                    await coord.release(shard)
            del self.shards[shard]

    async def _checkpoint(self, shard: str) -> None:
        while True:
            try:
                await self.coordinator.checkpoint(shard, Checkpoint(sequence_number="1"))
                return
            except LeaseLost:
                raise
            except CheckpointError:
                await self.clock.sleep(0.2)


def fresh_holders(replicas: list[SimReplica], shard: str, clock: SimClock) -> list[str]:
    """Replicas whose own coordinator would let an invocation of ``shard`` start now."""
    holders = []
    for replica in replicas:
        coord = replica.coordinator
        renewed = coord._holdings.renewed_at.get(shard)
        if replica.exited or shard not in coord.held or renewed is None:
            continue
        if clock.now - renewed <= SIM_SETTINGS.lease_duration - SIM_SETTINGS.renew_interval:
            holders.append(replica.name)
    return holders


async def run_nemesis(seed: int, *, replicas: int, shards: int, seconds: float) -> list[str]:
    """Run the fleet under a random schedule of kills, drains, joins and table faults; return
    every violation found (two replicas invoking, or holding a fresh lease, at once)."""
    rng = random.Random(seed)
    clock = SimClock()
    inner = FakeLeaseTable()
    for i in range(shards):
        await inner.create(MAPPING, f"s{i}")
    table = FaultyTable(inner, clock, rng)
    log = Invocations(clock)
    fleet: list[SimReplica] = []
    violations: list[str] = []
    names = iter(f"r{i}" for i in range(1000))
    async with anyio.create_task_group() as tg:

        def join() -> None:
            replica = SimReplica(next(names), table, clock, rng, log)
            fleet.append(replica)
            tg.start_soon(replica.run)

        for _ in range(replicas):
            join()
        for _ in range(round(seconds / STEP)):
            clock.advance()
            await settle()
            for i in range(shards):
                holders = fresh_holders(fleet, f"s{i}", clock)
                if len(holders) > 1:
                    violations.append(f"t={clock.now:.2f} s{i} fresh for {holders}")
            live = [r for r in fleet if not r.exited and not r.stopping]
            roll = rng.random()
            if roll < 0.004 and live:
                rng.choice(live).kill()
            elif roll < 0.008 and live:
                rng.choice(live).stopping = True  # SIGTERM: drain
            elif roll < 0.014 and len(live) < replicas + 2:
                join()
        table.faults = False
        for replica in fleet:
            replica.stopping = True
        for _ in range(round(30 / STEP)):
            clock.advance()
            await settle()
        for replica in fleet:
            replica.kill()
    assert {shard for shard, *_ in log.done} == {f"s{i}" for i in range(shards)}, "idle run"
    return [*violations, *log.overlaps]


@pytest.mark.parametrize("seed", range(8))
async def test_ten_replicas_on_four_shards_never_invoke_a_shard_twice_at_once(seed: int) -> None:
    """10 replicas x 4 shards, kills, drains, joins and leaves, a lease table that is slow
    (sometimes slower than the lease), fails and loses answers: never two invocations of a
    shard at once, and never two replicas with a fresh lease on one shard (seed printed on
    failure)."""
    violations = await run_nemesis(seed, replicas=10, shards=4, seconds=120)
    assert violations == [], f"seed={seed}: {violations[:5]}"


@pytest.mark.parametrize("draining", [False, True], ids=["running", "draining"])
@pytest.mark.parametrize("lease_duration", [1.0, 2.0, 3.0, 4.0])
async def test_a_replica_whose_renewals_hang_stops_invoking_before_a_peer_can_start(
    lease_duration: float, draining: bool
) -> None:
    """Replica a runs long batches; the table stops answering its renewals (they hang). A peer
    b, balancing on its own schedule, takes the shard once the lease has not moved for a lease
    duration. a's fence must cancel the in-flight batch before then, whatever the phase of its
    fence checks (before: checks every 0.5 s after 90 % of the lease, i.e. up to 0.9 L + 0.5 s,
    later than L for leases under 5 s; the config allows 1 s). Draining (SIGTERM) at that
    moment changes nothing: the drain renews, so it fences too."""
    settings = LeaseSettings(lease_duration=lease_duration, balance_interval=0.5)
    for phase in range(10):
        rng = random.Random(phase)
        clock = SimClock()
        inner = FakeLeaseTable()
        await inner.create(MAPPING, "s0")
        table = FaultyTable(inner, clock, rng)
        table.faults = False
        log = Invocations(clock)
        a = SimReplica("a", table, clock, rng, log, settings, batches=(30.0,))
        b = SimReplica("b", table, clock, rng, log, settings, batches=(30.0,))
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            for _ in range(round((2 + phase * 0.05) / STEP)):
                clock.advance()
                await settle()
            assert log.running.get("s0", {}).keys() == {"a"}
            table.stalled.add("a")
            a.stopping = draining
            tg.start_soon(b.run)
            for _ in range(round(4 * lease_duration / STEP)):
                clock.advance()
                await settle()
            assert any(r == "b" for _, r, *_ in log.done) or "b" in log.running["s0"]
            a.kill()
            b.kill()
        assert log.overlaps == [], f"phase {phase}: {log.overlaps}"


# -- balance: no oscillation ----------------------------------------------------------------


def fleet(
    table: FakeLeaseTable, clock: Clock, names: str, rng: random.Random, **settings: Any
) -> list[BalanceReplica]:
    lease_settings = LeaseSettings(lease_duration=10.0, balance_interval=5.0, **settings)
    return [
        BalanceReplica(
            LeaseCoordinator(
                table,  # type: ignore[arg-type]  # a fake of our own interface
                mapping=MAPPING,
                owner=name,
                settings=lease_settings,
                clock=clock,
            ),
            clock.now + rng.uniform(0, 1),
            clock.now + 3.4,
        )
        for name in names
    ]


@pytest.mark.parametrize("seed", range(6))
async def test_two_replicas_on_an_odd_number_of_shards_settle_and_stay_still(seed: int) -> None:
    """5 shards, 2 replicas started together: 3/2, each lease moved at most once, and then
    nothing moves for two minutes (the replica with 2 never asks for the third one's 3rd)."""
    rng = random.Random(seed)
    table, clock = await table_with(5), Clock()
    replicas = fleet(table, clock, "ab", rng)
    await simulate(table, replicas, clock, 30, rng)
    assert sorted(table.owners().values()) == [2, 3], table.owners()
    assert max(table.moves.values(), default=0) <= 1, table.moves
    settled = sum(table.moves.values())
    await simulate(table, replicas, clock, 120, rng)
    assert sum(table.moves.values()) == settled


@pytest.mark.parametrize("seed", range(6))
async def test_a_lease_cap_leaves_the_surplus_unowned_without_moving_anything(seed: int) -> None:
    """7 shards, 3 replicas capped at 2 leases each: 2/2/2 and one unowned lease that nobody
    can take; nobody asks for it back and forth."""
    rng = random.Random(seed)
    table, clock = await table_with(7), Clock()
    replicas = fleet(table, clock, "abc", rng, max_leases_per_replica=2)
    await simulate(table, replicas, clock, 30, rng)
    assert table.owners() == {"a": 2, "b": 2, "c": 2, None: 1}, table.owners()
    settled = sum(table.moves.values())
    await simulate(table, replicas, clock, 120, rng)
    assert sum(table.moves.values()) == settled
    assert all(len(r.coordinator.held) == 2 for r in replicas)


@pytest.mark.parametrize("seed", range(4))
async def test_a_replica_joining_and_leaving_repeatedly_moves_only_its_share(seed: int) -> None:
    """a and b hold 6 shards 3/3; c joins, takes its share, drains (releases) and leaves, five
    times over. Each visit moves at most c's share to c and back; a and b end 3/3 again."""
    rng = random.Random(seed)
    table, clock = await table_with(6), Clock()
    steady = fleet(table, clock, "ab", rng)
    await simulate(table, steady, clock, 30, rng)
    for visit in range(5):
        before = sum(table.moves.values())
        (visitor,) = fleet(table, clock, "c", rng)
        await simulate(table, [*steady, visitor], clock, 30, rng)
        assert len(visitor.coordinator.held) == 2, (visit, table.owners())
        for shard in sorted(visitor.coordinator.held):
            await visitor.coordinator.release(shard)
        await simulate(table, steady, clock, 30, rng)
        assert sorted(table.owners().values()) == [3, 3], (visit, table.owners())
        assert sum(table.moves.values()) - before <= 4, (visit, table.moves)


# -- a late answer must not bring a fenced-off lease back ------------------------------------


class GatedTable(FakeLeaseTable):
    """Renewals and checkpoints land, but their answers wait for ``gate`` (a slow table)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()

    async def renew(self, lease: Lease, owner: str) -> Lease:
        renewed = await super().renew(lease, owner)
        await self.gate.wait()
        return renewed

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        written = await super().checkpoint(lease, owner, checkpoint)
        await self.gate.wait()
        return written


async def checkpoint_refused(me: LeaseCoordinator) -> None:
    """The checkpoint lands, but the shard was fenced off meanwhile: it must stop (LeaseLost)."""
    with pytest.raises(LeaseLost):
        await me.checkpoint("s0", Checkpoint(sequence_number="7"))


@pytest.mark.parametrize("write", ["renew", "checkpoint"])
async def test_a_write_answered_after_the_lease_went_stale_does_not_bring_it_back(
    write: str,
) -> None:
    """A renewal (or checkpoint) is answered after the fence loop found the lease stale and
    stopped its shard. Before: the late answer put the lease back into ``held`` with its old,
    stale send time, so the runner restarted the shard on it and the next check fenced it off
    again (or, with a lost check, a shard ran whose task had been cancelled as lost). After:
    the lease stays forgotten until the balancer re-takes it through the fenced take."""
    table, clock = GatedTable(), Clock()
    await table.create(MAPPING, "s0")
    me = LeaseCoordinator(
        table,  # type: ignore[arg-type]  # a fake of our own interface
        mapping=MAPPING,
        owner="a",
        settings=LeaseSettings(lease_duration=10.0),
        clock=clock,
    )
    await me.balance()
    async with anyio.create_task_group() as tg:
        if write == "renew":
            tg.start_soon(me.renew_all)
        else:
            tg.start_soon(checkpoint_refused, me)
        await settle()
        clock.now += 9.5
        assert me.stale() == ["s0"]
        me.forget("s0")
        table.gate.set()
    assert me.held == {}
    await me.balance()  # ours in the table, not running: re-taken, fenced on its counter
    assert set(me.held) == {"s0"}
    me.ensure_fresh("s0")


# -- handoffs under faults --------------------------------------------------------------------


def coordinators(table: FakeLeaseTable, clock: Clock, names: str) -> list[LeaseCoordinator]:
    return [
        LeaseCoordinator(
            table,  # type: ignore[arg-type]  # a fake of our own interface
            mapping=MAPPING,
            owner=name,
            settings=LeaseSettings(lease_duration=10.0, balance_interval=5.0),
            clock=clock,
        )
        for name in names
    ]


async def granted_to_b(table: FakeLeaseTable, a: LeaseCoordinator, b: LeaseCoordinator) -> str:
    """a holds three leases, b asks for one, a grants it after a cycle: the granted shard."""
    await a.balance()
    await b.balance()
    await a.balance()
    (shard,) = (await a.balance()).handoffs
    return shard


async def test_a_grant_whose_answer_is_lost_still_reaches_the_asker_alone() -> None:
    """a writes the granted lease over to b; the write lands, its answer is lost (release
    raises). The table names b: a does not take it back, c leaves it alone, b takes it."""
    table, clock = await table_with(3), Clock()
    a, b, c = coordinators(table, clock, "abc")
    shard = await granted_to_b(table, a, b)
    table.lose_next.add("take")
    with pytest.raises(CheckpointError):
        await a.release(shard)
    assert table.items[shard].owner == "b"
    await a.balance()
    await c.balance()
    assert shard not in a.held
    assert shard not in c.held
    await b.balance()
    assert shard in b.held
    assert table.moves[shard] == 1


async def test_an_asker_that_died_before_the_grant_costs_one_lease_duration() -> None:
    """b asks and dies; a grants to b all the same (the request stood). The lease names a dead
    replica: it expires a lease duration later and a live replica takes it, fenced."""
    table, clock = await table_with(3), Clock()
    a, b, c = coordinators(table, clock, "abc")
    shard = await granted_to_b(table, a, b)
    await a.release(shard)  # b is gone from here on
    await c.balance()
    assert shard not in c.held
    clock.now += 10.0
    await c.balance()
    assert shard in c.held
    c.ensure_fresh(shard)
