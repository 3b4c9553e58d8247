"""Leader-less lease balancing: takes first, then handoff requests until within one."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from poller.core.balance import LeaseView, plan_balance


def views(
    owners: Mapping[str, str | None], expired: frozenset[str] = frozenset()
) -> list[LeaseView]:
    return [LeaseView(shard, owner, shard in expired) for shard, owner in owners.items()]


def test_first_replica_takes_everything() -> None:
    leases = views({f"s{i}": None for i in range(8)})
    plan = plan_balance(leases, me="a", ready={f"s{i}" for i in range(8)})
    assert plan.take == tuple(f"s{i}" for i in range(8))
    assert plan.request == ()


def test_unowned_before_expired() -> None:
    leases = [LeaseView("x", "dead", True), LeaseView("y", None, False)]
    plan = plan_balance(leases, me="a", ready={"x", "y"})
    assert plan.take == ("y", "x")


def test_new_replica_asks_for_its_share_in_one_cycle() -> None:
    """8 shards held by a and b (4 each); c joins: fair share is 3, so it asks for 3 handoffs,
    from the most loaded owners, and never leaves an owner below the joiner."""
    owners = {f"s{i}": ("a" if i < 4 else "b") for i in range(8)}
    plan = plan_balance(views(owners), me="c", ready=set(owners))
    assert plan.target == 3
    assert plan.take == ()
    assert len(plan.request) == 2  # a and b end with 3 each, c with 2: within one
    assert {owner for _, owner in plan.request} == {"a", "b"}


def test_within_one_means_no_requests() -> None:
    owners = {
        "s0": "a",
        "s1": "a",
        "s2": "a",
        "s3": "b",
        "s4": "b",
        "s5": "c",
        "s6": "c",
        "s7": "c",
    }
    assert plan_balance(views(owners), me="b", ready=set(owners)).request == ()


def test_expired_leases_of_a_dead_replica_are_shared() -> None:
    owners = {f"s{i}": ("dead" if i < 3 else "a" if i < 6 else "b") for i in range(8)}
    expired = {"s0", "s1", "s2"}
    plan = plan_balance(views(owners, frozenset(expired)), me="a", ready=set(owners))
    assert plan.target == 4  # 8 shards over the two live replicas
    assert plan.take == ("s0",)


def test_finished_and_blocked_shards_are_not_balanced() -> None:
    """Only ready shards count: a finished parent or a blocked child is never taken."""
    leases = views({"parent": None, "child": None, "other": None})
    plan = plan_balance(leases, me="a", ready={"other"})
    assert plan.take == ("other",)


def test_max_leases_per_replica_caps_the_target() -> None:
    leases = views({f"s{i}": None for i in range(8)})
    plan = plan_balance(leases, me="a", ready={f"s{i}" for i in range(8)}, max_leases=3)
    assert len(plan.take) == 3


def test_pending_requests_count_toward_the_share() -> None:
    """A request already made is not made again, and counts as a lease on its way."""
    owners = {f"s{i}": ("a" if i < 4 else "b") for i in range(8)}
    leases = [
        LeaseView(s, o, False, pending_owner="c" if s in {"s0", "s4"} else None)
        for s, o in owners.items()
    ]
    plan = plan_balance(leases, me="c", ready=set(owners))
    assert plan.request == ()


def test_a_handed_over_lease_is_taken_first() -> None:
    leases = [LeaseView("s1", None, False), LeaseView("s0", None, False, pending_owner="c")]
    plan = plan_balance(leases, me="c", ready={"s0", "s1"})
    assert plan.take[0] == "s0"


@pytest.mark.parametrize("seed", range(20))
def test_repeated_cycles_converge_within_one(seed: int) -> None:
    """Simulate replicas planning in turn (handoffs granted at once): counts end within one."""
    rng = random.Random(seed)
    replicas = [f"r{i}" for i in range(rng.randint(2, 5))]
    shards = [f"s{i}" for i in range(rng.randint(1, 24))]
    owner: dict[str, str | None] = {s: rng.choice([*replicas, None]) for s in shards}
    for _ in range(6):
        for me in rng.sample(replicas, len(replicas)):
            plan = plan_balance(
                [LeaseView(s, o, False) for s, o in owner.items()], me=me, ready=set(shards)
            )
            for shard in plan.take:
                owner[shard] = me
            for shard, _ in plan.request:
                owner[shard] = me
    counts = [sum(1 for o in owner.values() if o == r) for r in replicas]
    assert all(o is not None for o in owner.values())
    assert max(counts) - min(counts) <= 1, counts


def test_an_expired_lease_is_free_whoever_owns_it() -> None:
    """The table still names us but we do not run the shard (the coordinator says expired):
    ours to re-take first, even above the share."""
    leases = [LeaseView("s0", "a", True), LeaseView("s1", "a", False), LeaseView("s2", "b", False)]
    plan = plan_balance(leases, me="a", ready={"s0", "s1", "s2"})
    assert plan.take == ("s0",)


def test_replicas_with_only_pending_requests_count_toward_the_share() -> None:
    """c holds nothing yet but has asked for a lease: it is live, so the share of 6 is 2, not 3,
    and b asks for no more than that."""
    leases = [LeaseView(f"s{i}", "a", False, "c" if i == 5 else None) for i in range(6)]
    plan = plan_balance(leases, me="b", ready={f"s{i}" for i in range(6)})
    assert plan.target == 2
    assert len(plan.request) == 2


def test_the_owner_grants_within_the_askers_share_and_declines_the_rest() -> None:
    """a holds 6; b asked for 3, c for 1; the share is 2: least loaded asker first, b gets 2,
    c gets 1, b's third request is declined."""
    pending = {"s0": "b", "s1": "b", "s2": "b", "s3": "c"}
    leases = [LeaseView(f"s{i}", "a", False, pending.get(f"s{i}")) for i in range(6)]
    plan = plan_balance(leases, me="a", ready={f"s{i}" for i in range(6)})
    assert plan.target == 2
    assert sorted(plan.grant) == [("s0", "b"), ("s1", "b"), ("s3", "c")]
    assert plan.decline == ("s2",)


def test_a_request_is_answered_only_once_it_has_stood_a_cycle() -> None:
    leases = [LeaseView("s0", "a", False, "b"), LeaseView("s1", "a", False)]
    ready = {"s0", "s1"}
    assert plan_balance(leases, me="a", ready=ready, standing=set()).grant == ()
    assert plan_balance(leases, me="a", ready=ready, standing={"s0"}).grant == (("s0", "b"),)
