"""The default takeover grace (issue 13): the target's timeout less a heartbeat interval (plus
a small margin for the start of the invocation).

A silent owner starts its last invocation no later than ``lease_duration - renew_interval``
after its last heartbeat was sent (``ensure_fresh``); a peer takes the lease no sooner than
``lease_duration + takeover_grace`` after it saw that heartbeat. So a grace of
``timeout - renew_interval`` is the least that keeps the owner's last invocation (which runs
for up to ``timeout``) from overlapping the peer's first. These tests play an owner cut off
from the lease table against a peer on the in-memory table and a fake clock, at 0.1 s steps,
and check the overlap (and that a grace a little shorter would allow one).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from poller.errors import LeaseLost
from poller.leases import LeaseCoordinator, LeaseSettings
from poller.streams.ownership import INVOCATION_START_MARGIN, takeover_grace
from tests.support.memory_lease_table import MemoryLeaseTable

pytestmark = pytest.mark.anyio

LEASE = 10.0
STEP = 0.1


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def python_mapping(target_timeout: float) -> SimpleNamespace:
    return SimpleNamespace(target=SimpleNamespace(type="python", timeout_seconds=target_timeout))


def test_the_default_grace_is_the_timeout_less_a_heartbeat_interval() -> None:
    """Plus a margin for the start of the invocation; configured wins; a Lambda target has no
    timeout here; never below 0."""
    renew = LEASE / 3
    mapping = python_mapping(45.0)
    expected = 45.0 - renew + INVOCATION_START_MARGIN
    assert takeover_grace(None, mapping, lease_duration=LEASE) == pytest.approx(expected)  # type: ignore[arg-type]
    assert takeover_grace(None, python_mapping(2.0), lease_duration=LEASE) == 0.0  # type: ignore[arg-type]
    assert takeover_grace(7.0, mapping, lease_duration=LEASE) == 7.0  # type: ignore[arg-type]
    lambda_ = SimpleNamespace(target=SimpleNamespace(type="lambda"))
    assert takeover_grace(None, lambda_, lease_duration=LEASE) == 0.0  # type: ignore[arg-type]


async def overlap(target_timeout: float, grace: float) -> float:
    """Seconds by which the cut-off owner's last invocation (started when ``ensure_fresh``
    last passed, running ``target_timeout``) outlives the moment the peer takes the lease; <= 0 when
    they do not overlap."""
    clock = Clock()
    table = MemoryLeaseTable(clock=clock)
    await table.create("m", "s0")
    settings = LeaseSettings(lease_duration=LEASE, takeover_grace=grace)

    def replica(name: str) -> LeaseCoordinator:
        return LeaseCoordinator(
            table,  # type: ignore[arg-type]  # the in-memory twin of our own table
            mapping="m",
            owner=name,
            settings=settings,
            clock=clock,
        )

    owner, peer = replica("a"), replica("b")
    await owner.heartbeat()
    await owner.balance()
    assert list(owner.held) == ["s0"]
    last_start: float | None = None
    beat_due = 0.0
    taken_at: float | None = None
    while taken_at is None:
        # The owner heartbeats on time until it is cut off at 1,010 s; its shard keeps
        # starting invocations for as long as ensure_fresh lets it.
        if clock.now < 1010.0 and clock.now >= beat_due:
            await owner.heartbeat()
            beat_due = clock.now + settings.renew_interval
        if "s0" in owner.held:
            try:
                owner.ensure_fresh("s0")
                last_start = clock.now
            except LeaseLost:
                pass
        if clock.now >= 1000.0 + 2 * STEP:
            await peer.heartbeat()
            if await peer.watch():
                await peer.balance()
            if "s0" in peer.held:
                taken_at = clock.now
        clock.now = round(clock.now + STEP, 6)
        assert clock.now < 1200.0, "the peer never took the lease"
    assert last_start is not None
    return last_start + target_timeout - taken_at


@pytest.mark.parametrize("target_timeout", [3.0, 8.0, 20.0])
async def test_with_the_default_grace_the_owners_last_invocation_ends_before_the_peer_starts(
    target_timeout: float,
) -> None:
    grace = takeover_grace(None, python_mapping(target_timeout), lease_duration=LEASE)  # type: ignore[arg-type]
    assert await overlap(target_timeout, grace) <= 0


async def test_a_grace_shorter_than_the_default_lets_them_overlap() -> None:
    """The same play with a grace one second short of the bound (less the margin): the check
    above is not vacuous."""
    timeout = 20.0
    grace = takeover_grace(None, python_mapping(timeout), lease_duration=LEASE)  # type: ignore[arg-type]
    assert await overlap(timeout, grace - INVOCATION_START_MARGIN - 1.0) > 0


async def test_our_own_cut_invocation_waits_the_whole_timeout_not_the_shorter_grace() -> None:
    """A shard stopped in the middle of an invocation: that call may have *just* started and
    runs for up to the timeout from now, so our own lease is re-taken only ``abandon_grace``
    (the whole timeout) after it was cut, not after the peer grace (timeout less a heartbeat
    interval)."""
    from tests.unit.test_review_grace import cancel_mid_invocation

    clock = Clock()
    table = MemoryLeaseTable(clock=clock)
    await table.create("m", "s0")
    settings = LeaseSettings(lease_duration=LEASE, takeover_grace=4.0, abandon_grace=8.0)
    me = LeaseCoordinator(
        table,  # type: ignore[arg-type]  # the in-memory twin of our own table
        mapping="m",
        owner="a",
        settings=settings,
        clock=clock,
    )
    await me.heartbeat()
    await me.balance()
    assert list(me.held) == ["s0"]
    await cancel_mid_invocation(me, "s0")
    me.forget("s0")  # the shard task stopped (lease lost, say) with the call cut off
    cut = clock.now
    await me.heartbeat()
    await me.balance(busy=set())
    assert me.held == {}
    assert me.next_expiry() == pytest.approx(cut + 8.0)
    clock.now = cut + 4.5  # past the peer grace, not past the abandon wait
    await me.heartbeat()
    await me.balance(busy=set())
    assert me.held == {}, "re-taken while our cut invocation may still run"
    clock.now = cut + 8.0
    await me.heartbeat()
    await me.balance(busy=set())
    assert list(me.held) == ["s0"]
