"""The lease runtime's logic against an in-memory lease table: re-taking leases this replica
still owns in the table, handing a lease to the replica that asked for it, and how often leases
move when replicas start together (counted, deterministically, on a fake clock).

``FakeLeaseTable`` is a fake of our own ``DynamoDBLeaseTable`` interface with the same
conditional semantics (every ownership write fenced on the observed counter). It can be taken
down (every call raises ``CheckpointError``, as an outage does) and can lose the response of a
write it applied (the write lands, the caller sees an error), which is how a replica comes to
hold a lease in the table that it has forgotten locally.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pytest

from poller.app import takeover_grace
from poller.checkpoints.dynamodb import Lease
from poller.errors import CheckpointError, LeaseLost
from poller.leases import LeaseCoordinator, LeaseSettings
from poller.types import Checkpoint
from tests.support.fake_members import FakeMemberItem

pytestmark = pytest.mark.anyio

MAPPING = "m"
SETTINGS = LeaseSettings(lease_duration=10.0, balance_interval=5.0)


class FakeLeaseTable(FakeMemberItem):
    """In-memory leases with DynamoDBLeaseTable's conditional writes; counts lease moves."""

    table = "fake"

    def __init__(self) -> None:
        self.items: dict[str, Lease] = {}
        self.down = False
        #: Operations whose next call is applied and then answered with an error.
        self.lose_next: set[str] = set()
        #: Per shard, every owner that took it over from a different owner (moves).
        self.moves: Counter[str] = Counter()
        self._last_owner: dict[str, str] = {}

    def _call(self, operation: str) -> None:
        if self.down:
            raise CheckpointError(f"lease table fake: {operation} failed with InternalServerError")

    def _answer(self, operation: str) -> None:
        if operation in self.lose_next:
            self.lose_next.discard(operation)
            raise CheckpointError(f"lease table fake: {operation}: response lost")

    def _store(self, lease: Lease) -> Lease:
        self.items[lease.shard_id] = lease
        if lease.owner is not None:
            previous = self._last_owner.get(lease.shard_id)
            if previous is not None and previous != lease.owner:
                self.moves[lease.shard_id] += 1
            self._last_owner[lease.shard_id] = lease.owner
        return lease

    async def list_leases(self, mapping: str) -> list[Lease]:
        self._call("Scan")
        return sorted(self.items.values(), key=lambda lease: lease.shard_id)

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        self._call("GetItem")
        return self.items.get(shard_id)

    async def create(
        self,
        mapping: str,
        shard_id: str,
        *,
        parent_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        self._call("PutItem")
        if shard_id in self.items:
            return False
        parents = tuple(sorted(set(parent_ids)))
        self.items[shard_id] = Lease(mapping, shard_id, None, 0, checkpoint, parents, None, 0, None)
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        self._call("take")
        current = self.items.get(lease.shard_id)
        if current is None or current.counter != lease.counter:
            return None
        taken = self._store(
            replace(current, owner=owner, counter=current.counter + 1, pending_owner=None)
        )
        self._answer("take")
        return taken

    def _fenced(self, lease: Lease, owner: str, call: str) -> Lease:
        current = self.items.get(lease.shard_id)
        if current is None or current.owner != owner or current.counter != lease.counter:
            raise LeaseLost(f"{call} of {lease.shard_id} refused", observed=current)
        return current

    async def renew(self, lease: Lease, owner: str) -> Lease:
        self._call("renew")
        current = self._fenced(lease, owner, "renew")
        renewed = self._store(replace(current, counter=current.counter + 1))
        self._answer("renew")
        return renewed

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        self._call("checkpoint")
        current = self._fenced(lease, owner, "checkpoint")
        written = self._store(replace(current, counter=current.counter + 1, checkpoint=checkpoint))
        self._answer("checkpoint")
        return written

    async def release(self, lease: Lease, owner: str) -> bool:
        self._call("release")
        try:
            current = self._fenced(lease, owner, "release")
        except LeaseLost:
            return False
        self.items[lease.shard_id] = replace(
            current, owner=None, counter=current.counter + 1, pending_owner=None
        )
        self._answer("release")
        return True

    async def request_handoff(self, lease: Lease, requester: str) -> bool:
        self._call("request_handoff")
        current = self.items.get(lease.shard_id)
        if lease.owner is None or current is None or current.owner != lease.owner:
            return False
        if current.pending_owner is not None:
            return False
        self.items[lease.shard_id] = replace(current, pending_owner=requester)
        return True

    async def delete(self, mapping: str, shard_id: str) -> None:
        self._call("DeleteItem")
        self.items.pop(shard_id, None)

    def owners(self) -> Counter[str | None]:
        return Counter(lease.owner for lease in self.items.values())


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def coordinator(
    table: FakeLeaseTable, owner: str, clock: Clock, settings: LeaseSettings = SETTINGS
) -> LeaseCoordinator:
    return LeaseCoordinator(
        table,  # type: ignore[arg-type]  # a fake of our own interface
        mapping=MAPPING,
        owner=owner,
        settings=settings,
        clock=clock,
    )


async def table_with(shards: int) -> FakeLeaseTable:
    table = FakeLeaseTable()
    for i in range(shards):
        await table.create(MAPPING, f"s{i}")
    return table


# -- defect 3: a lease the table still gives us is taken back -----------------------------------


async def test_a_lost_checkpoint_answer_leads_to_a_retake_once_the_shard_task_ended() -> None:
    """Our checkpoint lands but its answer is lost; the next one is refused (fenced on the
    counter we knew) with the table naming us (LeaseLost). The lease is forgotten and the shard
    stopped; once its task has finished, the next balance takes it back (one replica: nobody
    else would). (Protocol v1 learnt this from a renewal; v2 has no per-lease renewals.)"""
    table, clock = await table_with(1), Clock()
    me = coordinator(table, "a", clock)
    await me.balance()
    assert set(me.held) == {"s0"}

    table.lose_next.add("checkpoint")
    with pytest.raises(CheckpointError):
        await me.checkpoint("s0", Checkpoint(sequence_number="1"))
    with pytest.raises(LeaseLost):
        await me.checkpoint("s0", Checkpoint(sequence_number="2"))
    assert me.held == {}
    assert table.items["s0"].owner == "a"  # the table still names us

    await me.balance(busy={"s0"})  # the old shard task still runs: not yet
    assert me.held == {}
    assert me.awaiting_handoff  # poll fast until it can be re-taken

    await me.balance(busy=set())
    assert set(me.held) == {"s0"}
    assert table.items["s0"].owner == "a"
    me.ensure_fresh("s0")  # fresh from the take: invocations may go on


@pytest.mark.parametrize("how", ["stale", "ensure_fresh"])
async def test_a_lease_forgotten_for_staleness_is_retaken_when_the_table_answers(how: str) -> None:
    """The table is down past the lease: the shard self-fences (stale, or ensure_fresh before
    an invocation). When the table answers again, the next balance re-takes the lease it still
    names us for, fenced on the counter it observed."""
    table, clock = await table_with(2), Clock()
    me = coordinator(table, "a", clock)
    await me.balance()
    table.down = True
    clock.now += SETTINGS.lease_duration
    with pytest.raises(CheckpointError):
        await me.balance()
    if how == "stale":
        assert sorted(me.stale()) == ["s0", "s1"]
        for shard in me.stale():
            me.forget(shard)
    else:
        for shard in ("s0", "s1"):
            with pytest.raises(LeaseLost):
                me.ensure_fresh(shard)
    assert me.held == {}

    table.down = False
    counters = {s: lease.counter for s, lease in table.items.items()}
    await me.balance()
    assert sorted(me.held) == ["s0", "s1"]
    assert all(table.items[s].counter == counters[s] + 1 for s in counters)


async def test_an_expired_lease_of_ours_is_free_for_a_peer_too() -> None:
    """Expired is expired, whoever the table names: a peer takes it (fenced) after a lease
    duration without renewals."""
    table, clock = await table_with(1), Clock()
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await a.balance()
    a.forget("s0")  # a stopped the shard; the table still names a
    await b.balance()
    assert b.held == {}
    clock.now += SETTINGS.lease_duration
    await b.balance()
    assert set(b.held) == {"s0"}
    await a.balance()
    assert a.held == {}


async def test_a_peer_waits_the_takeover_grace_before_taking_a_silent_lease() -> None:
    """An owner cut off from the table stops starting invocations within its lease, but one it
    started in time may run for the target's timeout: a peer takes the lease only after the
    lease duration plus that grace, so the two never invoke the shard at once. A released lease
    needs no grace."""
    grace = 30.0
    settings = replace(SETTINGS, takeover_grace=grace)
    table, clock = await table_with(2), Clock()

    def with_grace(owner: str) -> LeaseCoordinator:
        return coordinator(table, owner, clock, settings)

    a, b = with_grace("a"), with_grace("b")
    await a.balance()
    assert sorted(a.held) == ["s0", "s1"]
    await a.release("s1")  # a clean release: free at once
    await b.balance()
    assert set(b.held) == {"s1"}
    # a goes silent (partitioned or frozen) with s0 in flight.
    clock.now += SETTINGS.lease_duration
    await b.balance()
    assert set(b.held) == {"s1"}, "taken while a's last invocation may still run"
    next_expiry = b.next_expiry()
    assert next_expiry is not None
    assert next_expiry >= clock.now + grace - 1
    clock.now += grace
    await b.balance()
    assert sorted(b.held) == ["s0", "s1"]


# -- defect 12b: handoffs go to the asker; fair share; nothing moves twice ----------------------


async def test_a_granted_lease_goes_to_the_asker_and_nobody_else() -> None:
    """a holds four leases; b asks for two. a grants them once the request has stood a cycle,
    drains and hands them over: the table names b at once, so c (balancing in between) cannot
    take them; b takes them next."""
    table, clock = await table_with(4), Clock()
    a, b, c = (coordinator(table, name, clock) for name in "abc")
    await a.balance()
    await b.balance()
    asked = {s for s, lease in table.items.items() if lease.pending_owner == "b"}
    assert len(asked) == 2

    assert (await a.balance()).handoffs == []  # first seen: wait a cycle for other askers
    granted = await a.balance()
    assert set(granted.handoffs) == asked
    for shard in granted.handoffs:  # the runner drains the shard, then releases it
        await a.release(shard)
    assert {s for s, lease in table.items.items() if lease.owner == "b"} == asked

    await c.balance()
    assert c.held == {}
    assert b.awaiting_handoff
    await b.balance()
    assert set(b.held) == asked
    assert sum(table.moves.values()) == 2


async def test_a_request_beyond_the_askers_share_is_declined() -> None:
    """b asked for three of six when it saw only a; c has since shown up (its request counts
    it as live). a grants each asker up to the share of two and declines the rest, clearing
    the request without giving the lease up."""
    table, clock = await table_with(6), Clock()
    a, b, c = (coordinator(table, name, clock) for name in "abc")
    await a.balance()
    await b.balance()
    await c.balance()
    assert Counter(lease.pending_owner for lease in table.items.values()) == {
        "b": 3,
        None: 2,
        "c": 1,
    }
    assert (await a.balance()).handoffs == []
    outcome = await a.balance()
    granted = Counter(table.items[s].pending_owner for s in outcome.handoffs)
    assert granted == {"b": 2, "c": 1}
    assert sum(1 for lease in table.items.values() if lease.pending_owner) == 3
    assert len(a.held) == 6  # nothing given up yet: granted shards drain first


@dataclass
class SimReplica:
    """A replica as the runner drives its coordinator: balance on a jittered interval, renew
    every third of the lease, drain a granted shard for a while and then release it."""

    coordinator: LeaseCoordinator
    next_balance: float
    next_renew: float
    draining: dict[str, float] = field(default_factory=dict)

    def busy(self) -> set[str]:
        return set(self.coordinator.held) | set(self.draining)


async def simulate(
    table: FakeLeaseTable,
    replicas: list[SimReplica],
    clock: Clock,
    seconds: float,
    rng: random.Random,
    drain: float = 0.8,
) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now = round(clock.now + 0.1, 3)
        for replica in rng.sample(replicas, len(replicas)):
            coord = replica.coordinator
            for shard, done in list(replica.draining.items()):
                if done <= clock.now:
                    del replica.draining[shard]
                    await coord.release(shard)
            if clock.now >= replica.next_renew:
                await coord.renew_all()
                replica.next_renew = clock.now + SETTINGS.renew_interval
            if clock.now >= replica.next_balance:
                outcome = await coord.balance(busy=replica.busy())
                for shard in outcome.handoffs:
                    replica.draining.setdefault(shard, clock.now + drain)
                interval = SETTINGS.balance_interval * rng.uniform(0.8, 1.2)
                if coord.awaiting_handoff:
                    interval = min(interval, 1.0)
                replica.next_balance = clock.now + interval


@pytest.mark.parametrize("seed", range(12))
async def test_replicas_starting_together_balance_evenly_moving_each_lease_at_most_once(
    seed: int,
) -> None:
    """3 replicas start within a second of each other on 6 shards (the hot-potato case: before,
    all six leases moved together every few seconds). They reach 2/2/2 within 30 s, no lease
    moves more than once, and over the next two minutes nothing moves at all."""
    rng = random.Random(seed)
    table, clock = await table_with(6), Clock()
    replicas = [
        SimReplica(coordinator(table, name, clock), clock.now + rng.uniform(0, 1), clock.now + 3.4)
        for name in ("a", "b", "c")
    ]
    await simulate(table, replicas, clock, 30, rng)
    assert sorted(table.owners().values()) == [2, 2, 2], table.owners()
    assert max(table.moves.values(), default=0) <= 1, table.moves
    assert sum(len(r.coordinator.held) for r in replicas) == 6

    settled = sum(table.moves.values())
    await simulate(table, replicas, clock, 120, rng)
    assert sum(table.moves.values()) == settled
    assert sorted(table.owners().values()) == [2, 2, 2]


@pytest.mark.parametrize("seed", range(6))
async def test_a_replica_joining_a_balanced_fleet_takes_its_share_in_one_move_each(
    seed: int,
) -> None:
    """Two replicas hold 8 shards 4/4; a third joins: 3/3/2 (or 2/3/3), each moved lease moves
    once, two moves in all."""
    rng = random.Random(seed)
    table, clock = await table_with(8), Clock()
    first = [SimReplica(coordinator(table, n, clock), clock.now, clock.now + 3.4) for n in "ab"]
    await simulate(table, first, clock, 30, rng)
    assert sorted(table.owners().values()) == [4, 4]
    before = Counter(table.moves)
    joiner = SimReplica(coordinator(table, "c", clock), clock.now, clock.now + 3.4)
    await simulate(table, [*first, joiner], clock, 30, rng)
    assert sorted(table.owners().values()) == [2, 3, 3]
    moved = table.moves - before
    assert sum(moved.values()) == 2
    assert max(moved.values()) == 1


async def test_an_outage_raises_from_balance_and_leaves_held_leases_alone() -> None:
    """During an outage balance raises CheckpointError (the runner counts it and retries);
    renewals fail without fencing until a lease duration has passed."""
    table, clock = await table_with(2), Clock()
    me = coordinator(table, "a", clock)
    await me.balance()
    table.down = True
    with pytest.raises(CheckpointError):
        await me.balance()
    clock.now += SETTINGS.renew_interval
    assert (await me.renew_all()).lost == []
    assert sorted(me.held) == ["s0", "s1"]
    clock.now += SETTINGS.lease_duration
    assert sorted((await me.renew_all()).lost) == ["s0", "s1"]
    assert me.held == {}


def test_the_fake_counts_moves_between_owners_only() -> None:
    table = FakeLeaseTable()
    lease = Lease(MAPPING, "s", None, 0, None, (), None, 0, None)
    for owner in ("a", "a", "b", "a"):
        lease = table._store(replace(lease, owner=owner, counter=lease.counter + 1))
    assert table.moves == {"s": 2}
    assert defaultdict(int, table.moves)["t"] == 0


def test_the_takeover_grace_defaults_to_the_targets_timeout() -> None:
    """Python and HTTP targets bound an invocation by their timeout; Lambda targets have none
    here (0 unless configured); a configured grace wins."""
    python = SimpleNamespace(target=SimpleNamespace(type="python", timeout_seconds=45.0))
    lambda_ = SimpleNamespace(target=SimpleNamespace(type="lambda"))
    assert takeover_grace(None, python) == 45.0  # type: ignore[arg-type]
    assert takeover_grace(None, lambda_) == 0.0  # type: ignore[arg-type]
    assert takeover_grace(120.0, lambda_) == 120.0  # type: ignore[arg-type]
