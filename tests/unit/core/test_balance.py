"""Leader-less lease balancing: takes first, then handoff requests until within one."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.balance import LeaseView, plan_balance


def views(
    owners: Mapping[str, str | None], expired: frozenset[str] = frozenset()
) -> list[LeaseView]:
    return [LeaseView(shard, owner, shard in expired) for shard, owner in owners.items()]


def test_first_replica_takes_everything() -> None:
    leases = views({f"s{i}": None for i in range(8)})
    plan = plan_balance(leases, me="a", ready={f"s{i}" for i in range(8)})
    assert sorted(plan.take) == [f"s{i}" for i in range(8)]
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
    assert len(plan.take) == 1  # a holds 3: one more reaches its share
    assert set(plan.take) <= expired


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


def test_own_leases_come_first_then_unowned_then_expired() -> None:
    """Ours to re-take first (even above the share), then leases nobody owns, then expired
    leases of peers; a lease handed to us leads the unowned ones."""
    leases = [
        LeaseView("e0", "dead", True),
        LeaseView("e1", "dead", True),
        LeaseView("u0", None, False),
        LeaseView("u1", None, False),
        LeaseView("h0", None, False, pending_owner="a"),
        LeaseView("m0", "a", True),
        LeaseView("m1", "a", True),
    ]
    plan = plan_balance(leases, me="a", ready={lease.shard_id for lease in leases})
    assert plan.take[:2] == ("m0", "m1")
    assert plan.take[2] == "h0"
    assert set(plan.take[3:5]) == {"u0", "u1"}
    assert set(plan.take[5:]) == {"e0", "e1"}


def test_takes_stop_at_the_share() -> None:
    """10 leases, 2 live replicas: a holds 2, so it takes 3 of the dead replica's 8 leases."""
    owners = {f"s{i}": ("a" if i < 2 else "dead") for i in range(10)}
    expired = frozenset(s for s, o in owners.items() if o == "dead")
    leases = [*views(owners, expired), LeaseView("b0", "b", False)]
    plan = plan_balance(leases, me="a", ready={lease.shard_id for lease in leases})
    assert plan.target == 6  # 11 leases over a and b
    assert len(plan.take) == 4
    assert set(plan.take) <= expired


def dead_replicas_leases(count: int) -> list[LeaseView]:
    """``count`` expired leases of a dead replica, and one live lease of each of r0..r9."""
    leases = [LeaseView(f"shardId-{i:012d}", "dead", True) for i in range(count)]
    return leases + [LeaseView(f"live-{i}", f"r{i}", False) for i in range(10)]


def test_each_replica_orders_free_leases_its_own_way() -> None:
    """Survivors of a dead replica try different leases first (all racing for the same ones
    makes all but one conditional write fail per lease); each replica's order is the same
    whatever the order the table returned the leases in."""
    leases = dead_replicas_leases(100)
    ready = {lease.shard_id for lease in leases}
    first = plan_balance(leases, me="r0", ready=ready).take
    again = plan_balance(random.Random(7).sample(leases, len(leases)), me="r0", ready=ready)
    assert again.take == first
    assert plan_balance(leases, me="r1", ready=ready).take != first


def test_survivors_mostly_take_different_leases_of_a_dead_replica() -> None:
    """10 survivors each take their share (10) of a dead replica's 100 leases: planned from
    the same view, their takes overlap about as little as random picks would (63 distinct
    leases expected), not all on the same 10."""
    leases = dead_replicas_leases(100)
    ready = {lease.shard_id for lease in leases}
    plans = [plan_balance(leases, me=f"r{i}", ready=ready) for i in range(10)]
    assert all(len(plan.take) == 10 for plan in plans)
    distinct = set().union(*(plan.take for plan in plans))
    assert len(distinct) >= 50, len(distinct)


def test_new_replicas_ask_for_different_leases() -> None:
    """Two replicas join a fleet of one at once: each asks for its share of the owner's 100
    leases, mostly not the same ones (a request for a lease already asked for fails)."""
    leases = [LeaseView(f"shardId-{i:012d}", "a", False) for i in range(100)]
    ready = {lease.shard_id for lease in leases}
    asked = [{s for s, _ in plan_balance(leases, me=me, ready=ready).request} for me in "bc"]
    assert [len(shards) for shards in asked] == [50, 50]  # 100 over a and the asker
    assert len(asked[0] & asked[1]) <= 35  # 25 expected of random picks


def test_new_replicas_spread_their_requests_over_equally_loaded_owners() -> None:
    leases = [LeaseView(f"s{i}", "a" if i % 2 else "b", False) for i in range(20)]
    ready = {lease.shard_id for lease in leases}
    first_asked = {plan_balance(leases, me=f"n{i}", ready=ready).request[0][1] for i in range(10)}
    assert first_asked == {"a", "b"}


def test_leases_a_peer_just_won_are_not_tried_again() -> None:
    """The view still shows free two leases our takes just lost to peers: the plan leaves
    them, and fills our share with the next free leases instead."""
    leases = dead_replicas_leases(100)
    ready = {lease.shard_id for lease in leases}
    first = plan_balance(leases, me="r0", ready=ready).take
    lost = set(first[:2])
    again = plan_balance(leases, me="r0", ready=ready, contested=lost).take
    assert len(again) == len(first) == 10
    assert not lost & set(again)
    assert set(first) - lost <= set(again)


def test_an_owner_whose_load_is_its_own_requests_is_not_asked_for_leases_it_lacks() -> None:
    """O owns one lease nobody asked for, and asked P for four: its load (five) is the
    highest, but only one of its leases can be asked for. Planning used to pop from O's
    empty list (IndexError) instead of turning to P."""
    leases = [LeaseView("o1", "O", False)]
    leases += [LeaseView(f"p{i}", "P", False, "O" if i < 4 else None) for i in range(8)]
    plan = plan_balance(leases, me="me", ready={lease.shard_id for lease in leases})
    assert plan.target == 3
    assert len(plan.request) == 2
    asked = dict(plan.request)
    assert set(asked.values()) <= {"O", "P"}
    assert all(not shard.startswith("p") or int(shard[1:]) >= 4 for shard in asked)


_NAMES = st.sampled_from(["me", "A", "B", "C", None])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(_NAMES, st.booleans(), _NAMES),
        max_size=24,
    ),
    st.integers(min_value=0, max_value=30) | st.none(),
)
def test_any_table_gives_a_plan_of_valid_actions(
    rows: list[tuple[str | None, bool, str | None]], max_leases: int | None
) -> None:
    """Whatever the table holds, planning does not fail, takes only free leases (or our
    own), asks only the owner of a live lease nobody asked for yet, and grants only ours."""
    leases = [
        LeaseView(f"s{i}", owner, expired, pending)
        for i, (owner, expired, pending) in enumerate(rows)
    ]
    by_id = {lease.shard_id: lease for lease in leases}
    plan = plan_balance(leases, me="me", ready=set(by_id), max_leases=max_leases, standing=None)
    for shard in plan.take:
        lease = by_id[shard]
        assert lease.owner in (None, "me") or lease.expired
    assert len(set(plan.take)) == len(plan.take)
    for shard, owner in plan.request:
        lease = by_id[shard]
        assert lease.owner == owner != "me"
        assert not lease.expired
        assert lease.pending_owner is None
    for shard, asker in plan.grant:
        assert by_id[shard].owner == "me"
        assert by_id[shard].pending_owner == asker
