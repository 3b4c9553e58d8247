"""Review R1 of lease protocol v2 (issue 13): attacks on the coordinator, each kept as a
regression test on the in-memory lease table and a fake clock.

- A replica restarted under the same ``replica_id`` (a fixed id in the config) finds its
  previous incarnation's leases in its own name: it must wait them out like a peer would
  (an invocation the old process started may still run for the takeover grace), yet still
  re-take at once what this incarnation itself took or was handed.
- A peer's change that lands between a balance's view read and its member read (the member
  item shows the generation move, the view predates it) must not be swallowed until the
  60 s safety net.
- Lost answers, a deleted member item and a mapping without shards change nothing for the
  worse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from poller.checkpoints.dynamodb import Lease
from poller.checkpoints.dynamodb.items import members_key
from poller.errors import CheckpointError
from poller.leases import LeaseCoordinator, LeaseSettings
from tests.support.memory_lease_table import MemoryLeaseTable

pytestmark = pytest.mark.anyio

MAPPING = "m"
SETTINGS = LeaseSettings(lease_duration=10.0, balance_interval=5.0, takeover_grace=5.0)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class HookedTable(MemoryLeaseTable):
    """Runs ``after_view`` once, right after the next view read is answered (a peer acting
    between a balance's view read and its member read)."""

    after_view: Callable[[], Awaitable[object]] | None = None

    async def lease_view(self, mapping: str) -> list[Lease]:
        view = await super().lease_view(mapping)
        hook, self.after_view = self.after_view, None
        if hook is not None:
            await hook()
        return view


async def new_table(shards: int, clock: Clock) -> HookedTable:
    table = HookedTable(clock=clock)
    for i in range(shards):
        await table.create(MAPPING, f"s{i:04}")
    return table


def coordinator(table: MemoryLeaseTable, owner: str, clock: Clock) -> LeaseCoordinator:
    return LeaseCoordinator(
        table,  # type: ignore[arg-type]  # the in-memory twin of our own table
        mapping=MAPPING,
        owner=owner,
        settings=SETTINGS,
        clock=clock,
    )


async def owners(table: MemoryLeaseTable) -> Counter[str | None]:
    return Counter(lease.owner for lease in await table.list_leases(MAPPING))


async def step(replicas: list[LeaseCoordinator], clock: Clock) -> None:
    """One second of the runner's loops: heartbeat, watch, balance when due, hand off."""
    clock.now += 1.0
    for replica in replicas:
        await replica.heartbeat()
        if await replica.watch():
            for shard in (await replica.balance(busy=set(replica.held))).handoffs:
                await replica.release(shard)


# -- a restart under the same replica id ----------------------------------------------------


async def test_a_restart_under_the_same_id_waits_out_its_previous_incarnation() -> None:
    """The old process is SIGKILLed mid-invocation and restarted at once with the same fixed
    replica id: its leases name the new process too, but the old one's invocation may run on
    for the takeover grace (a peer would wait ``takeover_after``), so the new process re-takes
    them only ``takeover_after`` after it started, woken for it without a view read per watch."""
    clock = Clock()
    table = await new_table(2, clock)
    old = coordinator(table, "a", clock)
    await old.balance()
    assert len(old.held) == 2
    clock.now += 1.0  # SIGKILL, restart
    new = coordinator(table, "a", clock)
    started = clock.now
    await new.balance()
    assert new.held == {}, "re-took the old incarnation's leases while they were fresh"
    assert old.stale() == []  # the old process (were it only paused) would still run them
    views = table.calls["Query"]
    while not new.held:
        await step([new], clock)
        assert clock.now <= started + SETTINGS.takeover_after + 1.0
    assert clock.now >= started + SETTINGS.takeover_after
    assert len(new.held) == 2
    assert table.calls["Query"] - views <= 4  # woken at the expiry, not polling the view


async def test_a_lease_whose_take_answer_was_lost_is_re_taken_at_once() -> None:
    """The take landed but its answer was lost: the table names us, this incarnation sent
    that take, so the next balance re-takes it without waiting."""
    clock = Clock()
    table = await new_table(1, clock)
    a = coordinator(table, "a", clock)
    table.lose_next.add("UpdateItem (take)")
    with pytest.raises(CheckpointError):
        await a.balance()
    assert await owners(table) == {"a": 1}
    assert a.held == {}
    await step([a], clock)
    assert list(a.held) == ["s0000"]


# -- a change seen in the member item but not in the view -----------------------------------


async def test_a_change_between_the_view_read_and_the_member_read_is_not_swallowed() -> None:
    """b starts and asks a for a lease just after a's balance read the view (a safety-net
    balance): a's member read in that balance shows the generation moved; a must look again
    soon, not at the next safety net a minute later."""
    clock = Clock()
    table = await new_table(2, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await a.balance()
    for _ in range(5):  # the rechecks pass: a is at rest
        await step([a], clock)
    for _ in range(int(SETTINGS.safety_balance_interval) + 1):
        clock.now += 1.0
        await a.heartbeat()
        if await a.watch():
            break
    table.after_view = b.balance  # b beats, asks a for one lease, bumps the generation
    await a.balance(busy=set(a.held))
    assert b.awaiting_handoff
    for _ in range(5):
        await step([a, b], clock)
    assert await owners(table) == {"a": 1, "b": 1}


# -- operators and odd mappings -------------------------------------------------------------


async def test_a_deleted_member_item_moves_no_lease() -> None:
    """An operator deletes the member item: every member looks absent for a moment, is
    re-created by the next heartbeats, and no lease changes hands."""
    clock = Clock()
    table = await new_table(4, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    for _ in range(20):
        await step([a, b], clock)
    assert await owners(table) == {"a": 2, "b": 2}
    held = {"a": set(a.held), "b": set(b.held)}
    table.items.pop(members_key(MAPPING))
    for _ in range(int(3 * SETTINGS.takeover_after)):
        await step([a, b], clock)
        assert a.stale() == []
        assert b.stale() == []
    assert {"a": set(a.held), "b": set(b.held)} == held
    assert set((await table.members(MAPPING)).beats) == {"a", "b"}


async def test_a_mapping_without_shards_balances_and_rests() -> None:
    """No lease at all: balances, watches and heartbeats work, and at rest only the
    heartbeat and the member read are sent."""
    clock = Clock()
    table = await new_table(0, clock)
    a = coordinator(table, "a", clock)
    await a.balance()
    for _ in range(10):
        await step([a], clock)
    calls = sum(table.calls.values())
    for _ in range(30):
        await step([a], clock)
    assert sum(table.calls.values()) - calls <= 30 + 30 + 2  # a beat and a read a second
    assert a.next_expiry() is None


# -- resharding: a child whose parent's lease the view does not show yet --------------------


class PerItemLagTable(MemoryLeaseTable):
    """A view index that has not caught up with some items yet: a GSI is eventually
    consistent per item, so it may show a child's lease before its parent's."""

    hidden: frozenset[str] = frozenset()

    async def lease_view(self, mapping: str) -> list[Lease]:
        view = await super().lease_view(mapping)
        return [lease for lease in view if lease.shard_id not in self.hidden]


async def test_a_child_is_not_taken_while_its_parents_lease_is_missing_from_the_view() -> None:
    """Parent p (unfinished) and child c after a resharding; the view shows c but not p yet.
    c must wait for p (order per partition key): a parent missing from the view is confirmed
    gone by a consistent read before its child counts as ready; a parent that is really gone
    (retired) costs that read once, not at every balance."""
    clock = Clock()
    table = PerItemLagTable(clock=clock)
    await table.create(MAPPING, "p")
    await table.create(MAPPING, "c", parent_ids=("p",))
    table.hidden = frozenset({"p"})
    a = coordinator(table, "a", clock)
    await a.balance()
    assert "c" not in a.held, "took a child before its parent finished"
    table.hidden = frozenset()
    await step([a], clock)
    await a.balance()
    assert list(a.held) == ["p"]
    await table.delete(MAPPING, "p")  # retired (finished, left the listing)
    await a.release("p")
    await a.balance()
    assert list(a.held) == ["c"]
    gets = table.calls["GetItem"]
    for _ in range(3):
        await a.balance()
    assert table.calls["GetItem"] - gets == 3  # the member reads: c is held, p not looked up


# -- a view index lagging longer than the recheck -------------------------------------------


async def test_changes_hidden_by_a_slow_view_index_are_seen_well_before_the_safety_net() -> None:
    """The view index lags 5 s behind (a GSI under load). New leases, then b's handoff
    request: a's balance and its first recheck two seconds later still read a view without
    them. a must keep looking a few times, not wait a minute for the safety net."""
    clock = Clock()
    table = MemoryLeaseTable(clock=clock, view_lag_seconds=5.0)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    await step([a], clock)
    for i in range(2):
        await table.create(MAPPING, f"s{i:04}")
    await table.bump_generation(MAPPING)  # as discovery does
    for _ in range(20):
        await step([a], clock)
    assert len(a.held) == 2
    for _ in range(25):
        await step([a, b], clock)
    assert await owners(table) == {"a": 1, "b": 1}


# -- probes that held: kept as regression tests ---------------------------------------------


async def test_max_leases_per_replica_is_never_exceeded_and_joiners_take_the_rest() -> None:
    clock = Clock()
    table = await new_table(10, clock)
    capped = LeaseSettings(lease_duration=10.0, balance_interval=5.0, max_leases_per_replica=3)
    fleet = [
        LeaseCoordinator(table, mapping=MAPPING, owner=name, settings=capped, clock=clock)  # type: ignore[arg-type]
        for name in "abcd"
    ]
    for joined in range(2, 5):
        for _ in range(20):
            await step(fleet[:joined], clock)
            assert all(len(replica.held) <= 3 for replica in fleet)
    counts = await owners(table)
    assert sum(counts.values()) == 10
    assert max(counts.values()) <= 3


async def test_a_paused_member_pruned_while_away_comes_back_without_its_leases() -> None:
    """a pauses (SIGSTOP) for longer than the prune delay: b takes its leases and prunes its
    entry. a resumes: its heartbeat puts it back, its leases stay stale (never revived), its
    balance reports them lost, and no lease is ever fresh on both."""
    clock = Clock()
    table = await new_table(2, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    for _ in range(20):
        await step([a, b], clock)
    assert len(a.held) == 1
    mine = set(a.held)
    for _ in range(int(SETTINGS.prune_after + SETTINGS.safety_balance_interval) + 5):
        await step([b], clock)
        assert not (set(a.held) - set(a.stale())) & set(b.held)
    assert set((await table.members(MAPPING)).beats) == {"b"}
    assert mine <= set(b.held)
    await a.heartbeat()
    assert sorted(a.stale()) == sorted(mine)
    outcome = await a.balance()
    assert sorted(outcome.lost) == sorted(mine)
    for _ in range(20):
        await step([a, b], clock)
        assert not (set(a.held) - set(a.stale())) & (set(b.held) - set(b.stale()))
    assert await owners(table) == {"a": 1, "b": 1}


async def test_heartbeats_that_land_with_lost_answers_stop_our_shards_before_a_peer_moves() -> None:
    """Every heartbeat of a lands but its answer is lost: a cannot prove itself alive, so its
    shards go stale at 90 % of the lease; b sees a's beat moving and takes nothing."""
    clock = Clock()
    table = await new_table(2, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    for _ in range(20):
        await step([a, b], clock)
    held = set(a.held)
    for second in range(30):
        table.lose_next.add("UpdateItem (heartbeat)")
        clock.now += 1.0
        await a.heartbeat()
        await step([b], clock)
        assert not held & set(b.held)
        if second >= SETTINGS.lease_duration:
            assert set(a.held) - set(a.stale()) == set()  # fenced: stale, or forgotten


async def fenced_step(replicas: list[LeaseCoordinator], clock: Clock) -> None:
    """One second of every loop of the runner, each replica on its own: the fence loop
    forgets stale leases (their shards stop); a table error ends only that replica's round."""
    clock.now += 1.0
    for replica in replicas:
        for shard in replica.stale():
            replica.forget(shard)
        try:
            await replica.heartbeat()
            if await replica.watch():
                for shard in (await replica.balance(busy=set(replica.held))).handoffs:
                    await replica.release(shard)
        except CheckpointError:
            continue


async def test_a_table_outage_longer_than_a_lease_fences_everyone_then_recovers() -> None:
    """The table is down for three lease durations: both replicas fence their shards, nobody
    takes anything meanwhile; once it is back they share the leases again, and no lease is
    ever fresh on both."""
    clock = Clock()
    table = await new_table(2, clock)
    a, b = coordinator(table, "a", clock), coordinator(table, "b", clock)
    for _ in range(20):
        await step([a, b], clock)
    assert await owners(table) == {"a": 1, "b": 1}
    table.down = True
    for _ in range(int(3 * SETTINGS.lease_duration)):
        await fenced_step([a, b], clock)
        assert not set(a.held) & set(b.held)
    assert a.held == b.held == {}
    table.down = False
    for _ in range(30):
        await fenced_step([a, b], clock)
        assert not set(a.held) & set(b.held)
    assert await owners(table) == {"a": 1, "b": 1}
    assert set(a.held) | set(b.held) == {"s0000", "s0001"}
