"""Review of the lease takeover grace (issue 11): attacks on the bound "a shard is never
invoked by two replicas at once", run on the in-memory lease table and fake clock of
``test_lease_runtime``.

The bound: an owner whose last confirmed renewal was sent at ``r`` starts no invocation after
``r + lease - renew_interval`` (``ensure_fresh``), and an invocation ends within the target's
timeout, so it is over by ``r + lease + timeout``. A peer counts from its own observation of
the counter, which is never earlier than the write that moved it, so waiting
``lease + grace`` (grace = timeout) on its clock is enough. These tests check that bound, the
paths it must not slow down (releases, handoffs), and the path it first missed: this replica
re-taking its *own* lease while an invocation cut off with the shard still runs (an abandoned
thread, a remote call).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import anyio
import pytest

from poller.errors import CheckpointError, LeaseLost
from poller.leases import LeaseCoordinator
from poller.types import Checkpoint, InvokeResult, Outcome
from tests.unit.test_lease_runtime import (
    SETTINGS,
    Clock,
    FakeLeaseTable,
    SimReplica,
    coordinator,
    simulate,
    table_with,
)
from tests.unit.test_targets_hostile import SleepingTarget

pytestmark = pytest.mark.anyio

GRACE = 30.0
GRACED = replace(SETTINGS, takeover_grace=GRACE)


def graced(table: FakeLeaseTable, owner: str, clock: Clock) -> LeaseCoordinator:
    return coordinator(table, owner, clock, settings=GRACED)


async def cancel_mid_invocation(coordinator: LeaseCoordinator, shard: str) -> None:
    """Start an invocation of ``shard`` through the coordinator's tracked target and cancel it
    (the fence stopping the shard task), as the runner does."""
    hanging = SleepingTarget()
    target = coordinator.tracked(shard, hanging)
    async with anyio.create_task_group() as tg:
        tg.start_soon(target.invoke, {})
        await hanging.started.wait()
        tg.cancel_scope.cancel()


async def fence_during_outage(table: FakeLeaseTable, me: LeaseCoordinator, clock: Clock) -> None:
    table.down = True
    clock.now += SETTINGS.lease_duration * 0.9
    assert me.stale() == ["s0"]
    me.forget("s0")  # the fence loop stops the shard


async def test_our_own_lease_is_retaken_only_after_the_grace_when_an_invocation_was_cut() -> None:
    """The table goes down past the lease; the shard self-fences in the middle of an
    invocation, which goes on (a sync handler's abandoned thread, a remote call) for up to the
    target's timeout. When the table answers again, the lease still names us: re-taking it at
    once would invoke the shard again beside that invocation. It is re-taken once the grace has
    passed since the invocation was cut, and the runner is woken for that moment."""
    table, clock = await table_with(1), Clock()
    me = graced(table, "a", clock)
    await me.balance()
    assert set(me.held) == {"s0"}

    await fence_during_outage(table, me, clock)
    await cancel_mid_invocation(me, "s0")
    cut = clock.now
    table.down = False

    await me.balance(busy=set())  # the shard task has ended; the invocation has not
    assert me.held == {}, "re-taken while our abandoned invocation may still run"
    assert me.next_expiry() == pytest.approx(cut + GRACE)
    assert not me.awaiting_handoff  # next_expiry wakes the runner; no 1 s polling for 30 s

    clock.now = cut + GRACE
    await me.balance(busy=set())
    assert set(me.held) == {"s0"}
    me.ensure_fresh("s0")


async def test_our_own_lease_is_retaken_at_once_when_no_invocation_was_running() -> None:
    """The same outage with the shard idle (between batches, or its invocations all returned):
    nothing can outlive the task, so the lease comes back on the first balance (defect 1)."""
    table, clock = await table_with(1), Clock()
    me = graced(table, "a", clock)
    await me.balance()
    target = me.tracked("s0", Answering())
    assert (await target.invoke({})).outcome is Outcome.SUCCESS  # a call that returned
    await fence_during_outage(table, me, clock)
    table.down = False
    await me.balance(busy=set())
    assert set(me.held) == {"s0"}


async def test_a_lost_checkpoint_answer_waits_the_grace_only_for_a_cut_invocation() -> None:
    """Our checkpoint lands but its answer is lost; the next one is refused (LeaseLost) with
    the table naming us, and the shard is stopped mid-invocation: same rule, the grace first.
    (Protocol v1 learnt of the loss from a renewal; v2 has none per lease.)"""
    table, clock = await table_with(1), Clock()
    me = graced(table, "a", clock)
    await me.balance()
    table.lose_next.add("checkpoint")
    with pytest.raises(CheckpointError):
        await me.checkpoint("s0", Checkpoint(sequence_number="1"))
    clock.now += SETTINGS.renew_interval
    with pytest.raises(LeaseLost):
        await me.checkpoint("s0", Checkpoint(sequence_number="2"))
    assert me.held == {}
    await cancel_mid_invocation(me, "s0")

    await me.balance(busy=set())
    assert me.held == {}
    clock.now += GRACE
    await me.balance(busy=set())
    assert set(me.held) == {"s0"}


class Answering:
    """A target whose invocations return at once."""

    function_arn = "arn:aws:lambda:us-east-1:000000000000:function:answers"

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        return InvokeResult(outcome=Outcome.SUCCESS)

    async def aclose(self) -> None:
        return None


async def test_a_peer_never_takes_before_the_owners_last_invocation_can_have_ended() -> None:
    """Worst case on the owner's side: its last confirmed renewal was sent at r (a later one
    landed but its answer was lost, so the owner still counts from r); it starts an invocation
    at the last moment ensure_fresh allows and that runs for the whole timeout. The peer, on
    its own clock, takes the lease only after that invocation is over."""
    table, clock = await table_with(1), Clock()
    owner, peer = graced(table, "a", clock), graced(table, "b", clock)
    await owner.balance()
    await peer.balance()  # the peer first sees the lease
    clock.now += SETTINGS.renew_interval
    confirmed = clock.now
    await owner.renew_all()
    await peer.balance()  # the peer sees the confirmed renewal's counter
    clock.now += 1.0
    table.lose_next.add("heartbeat")
    await owner.heartbeat()  # lands (the beat moves) but the owner never hears of it

    last_start = confirmed + SETTINGS.lease_duration - SETTINGS.renew_interval
    clock.now = last_start
    owner.ensure_fresh("s0")  # still allowed: the invocation starts now
    invocation_end = last_start + GRACE  # the grace defaults to the target's timeout
    clock.now += 0.01
    with pytest.raises(LeaseLost):
        owner.ensure_fresh("s0")  # and nothing starts after it

    taken_at = None
    while taken_at is None:
        clock.now += 0.5
        await peer.balance()
        if peer.held:
            taken_at = clock.now
    assert taken_at >= invocation_end


async def test_released_and_handed_off_leases_are_taken_at_once_despite_the_grace() -> None:
    """The grace is only for silent leases: a released lease and a lease handed to the replica
    that asked for it move on the next balance, with no wait."""
    table, clock = await table_with(2), Clock()
    a, b = graced(table, "a", clock), graced(table, "b", clock)
    await a.balance()
    assert sorted(a.held) == ["s0", "s1"]
    await b.balance()  # asks for its share (one)
    asked = [s for s, lease in table.items.items() if lease.pending_owner == "b"]
    assert len(asked) == 1
    await a.balance()  # first seen
    granted = (await a.balance()).handoffs
    assert granted == asked
    await a.release(granted[0])
    await b.balance()
    assert set(b.held) == set(granted), "a handed-off lease waited the grace"

    await a.release(next(iter(a.held)))  # shutdown: released
    await b.balance()
    assert sorted(b.held) == ["s0", "s1"], "a released lease waited the grace"


async def test_survivors_take_a_dead_replicas_share_once_its_leases_expire() -> None:
    """c dies holding two of six leases. For lease + grace the survivors still count it live
    (its leases have not expired), so their fair share stays two and they may ask it for
    handoffs that never come. Once lease + grace has passed, they split its leases between
    them, each ending with three, and no request to the dead replica blocks the take."""
    table, clock, rng = await table_with(6), Clock(), random.Random(7)
    replicas = [
        SimReplica(graced(table, name, clock), next_balance=clock.now, next_renew=clock.now)
        for name in "abc"
    ]
    await simulate(table, replicas, clock, 40.0, rng)
    assert sorted(len(r.coordinator.held) for r in replicas) == [2, 2, 2]

    survivors, died = replicas[:2], clock.now
    expiry = died + SETTINGS.lease_duration + GRACE
    while clock.now < expiry + 3 * SETTINGS.balance_interval:
        await simulate(table, survivors, clock, 1.0, rng)
        if clock.now < expiry - 1.0:
            held = [len(r.coordinator.held) for r in survivors]
            assert held == [2, 2], "a dead replica's lease taken before lease + grace"
    assert sorted(len(r.coordinator.held) for r in survivors) == [3, 3]
    assert table.owners()["c"] == 0


async def test_a_table_outage_while_a_peer_waits_does_not_shorten_the_grace() -> None:
    """The peer's own balance fails for a while (table down for it too): when it answers, the
    peer still counts from when it saw the counter move, never from before."""
    table, clock = await table_with(1), Clock()
    owner, peer = graced(table, "a", clock), graced(table, "b", clock)
    await owner.balance()
    clock.now += 1.0
    await owner.renew_all()
    renewed = clock.now
    table.down = True
    clock.now += 5.0
    with pytest.raises(CheckpointError):
        await peer.balance()
    table.down = False
    await peer.balance()  # first sight of the lease: counts from now, later than the renewal
    assert peer.held == {}
    clock.now = renewed + SETTINGS.lease_duration + GRACE
    await peer.balance()
    assert peer.held == {}, "the grace counts from the peer's first sight, not the renewal"
    clock.now += 5.0
    await peer.balance()
    assert set(peer.held) == {"s0"}
