"""Parent-before-child planning of shards after resharding."""

from __future__ import annotations

import time

from poller.core.lineage import RetirementGate, ShardInfo, plan_shards, retired_checkpoints
from poller.types import SHARD_END, Checkpoint

END = Checkpoint(sequence_number=SHARD_END)
PROGRESS = Checkpoint(sequence_number="42")
#: Three generations g -> p -> c, where only the youngest, c, is still open.
THREE_GENERATIONS = (
    ShardInfo("g", closed=True),
    ShardInfo("p", ("g",), closed=True),
    ShardInfo("c", ("p",)),
)


def test_roots_are_ready() -> None:
    """Shards without parents start at once, in listing order."""
    plan = plan_shards([ShardInfo("a"), ShardInfo("b")], {})
    assert plan.ready == ("a", "b")
    assert not plan.blocked


def test_child_waits_for_unfinished_parent() -> None:
    """A split child waits until its parent is checkpointed at SHARD_END."""
    shards = [ShardInfo("p", closed=True), ShardInfo("c1", ("p",)), ShardInfo("c2", ("p",))]
    plan = plan_shards(shards, {"p": PROGRESS})
    assert plan.ready == ("p",)
    assert plan.blocked == {"c1": ("p",), "c2": ("p",)}
    plan = plan_shards(shards, {"p": END})
    assert plan.ready == ("c1", "c2")
    assert plan.finished == {"p"}


def test_merge_child_waits_for_both_parents() -> None:
    """A merged child needs every parent finished, not just one."""
    shards = [ShardInfo("a", closed=True), ShardInfo("b", closed=True), ShardInfo("m", ("a", "b"))]
    assert plan_shards(shards, {"a": END}).blocked == {"m": ("b",)}
    assert plan_shards(shards, {"a": END, "b": END}).ready == ("m",)


def test_aged_out_parent_does_not_block() -> None:
    """A parent no longer listed (past retention) cannot block its child."""
    plan = plan_shards([ShardInfo("c", ("gone",))], {})
    assert plan.ready == ("c",)


def test_parent_with_progressing_child_counts_as_finished() -> None:
    """After a parent's checkpoint is cleaned up, a child's checkpoint proves it finished."""
    shards = [ShardInfo("p", closed=True), ShardInfo("c", ("p",))]
    plan = plan_shards(shards, {"c": PROGRESS})
    assert "p" in plan.finished
    assert plan.ready == ("c",)


def test_grandchild_waits_for_its_own_parent_only() -> None:
    """Lineage is checked one generation at a time."""
    plan = plan_shards(THREE_GENERATIONS, {"g": END})
    assert plan.ready == ("p",)
    assert plan.blocked == {"c": ("p",)}


def test_finished_shards_are_not_ready() -> None:
    """A shard at SHARD_END is never started again."""
    plan = plan_shards([ShardInfo("a", closed=True)], {"a": END})
    assert plan.ready == ()
    assert plan.finished == {"a"}


def test_grandparent_stays_finished_after_retirement() -> None:
    """G -> P -> C with G's and P's checkpoints retired: C's checkpoint keeps both finished."""
    plan = plan_shards(THREE_GENERATIONS, {"c": PROGRESS})
    assert plan.finished == {"g", "p"}
    assert plan.ready == ("c",)


def test_finished_parent_is_kept_while_listed_and_retired_once_gone() -> None:
    """A listed parent's SHARD_END stays even when every child progresses: it is what keeps a
    later discovery from taking the parent for a new shard. It goes once the parent is gone."""
    shards = [ShardInfo("p", closed=True), ShardInfo("c1", ("p",)), ShardInfo("c2", ("p",))]
    assert retired_checkpoints(shards, {"p": END, "c1": PROGRESS}) == []
    assert retired_checkpoints(shards, {"p": END, "c1": PROGRESS, "c2": PROGRESS}) == []
    gone = shards[1:]
    assert retired_checkpoints(gone, {"p": END, "c1": PROGRESS}) == ["p"]


def test_a_pinned_start_is_no_progress() -> None:
    """A child holding only its pinned LATEST start has read nothing: its parent is not
    finished by it, is still read first, and is not retired."""
    shards = [ShardInfo("p", closed=True), ShardInfo("c", ("p",))]
    pinned = {"c": Checkpoint(start_timestamp=1.0)}
    plan = plan_shards(shards, pinned)
    assert plan.ready == ("p",)
    assert plan.blocked == {"c": ("p",)}
    assert retired_checkpoints(shards[1:], {"p": Checkpoint(start_timestamp=1.0), **pinned}) == []


def test_unlisted_chain_known_only_from_the_store_is_retired() -> None:
    """Lease items of a chain that left the listing, with no checkpoint of their own, are
    finished by a listed descendant's progress and retired (the leak of defect 8)."""
    stored = [ShardInfo("a"), ShardInfo("b", ("a",)), ShardInfo("c", ("b",))]
    listing = [ShardInfo("d", ("c",)), ShardInfo("e", ("d",))]
    assert retired_checkpoints(listing, {"e": PROGRESS}, stored=stored) == ["a", "b", "c"]
    assert retired_checkpoints(listing, {}, stored=stored) == []


def test_lineage_of_a_year_of_rollovers_is_iterative_and_linear() -> None:
    """A chain of 100,000 generations (DynamoDB rolls a shard over every ~4 h: 45 years) is
    planned without recursion, in well under a second."""
    chain = [ShardInfo("s0", closed=True)]
    chain += [ShardInfo(f"s{i}", (f"s{i - 1}",), closed=True) for i in range(1, 100_000)]
    started = time.process_time()  # CPU time: CI's load stretches the wall clock
    plan = plan_shards(chain, {"s99999": PROGRESS})
    assert len(plan.finished) == 99_999
    assert plan.ready == ("s99999",)
    assert retired_checkpoints(chain[-1:], {"s99999": PROGRESS}, stored=chain[:-1]) == sorted(
        s.shard_id for s in chain[:-1]
    )
    assert time.process_time() - started < 5


def test_retire_finished_shard_that_aged_out() -> None:
    """Gone from the listing and witnessed finished by a child's progress: retired."""
    listing = [ShardInfo("c", ("gone",))]
    assert retired_checkpoints(listing, {"gone": END, "c": PROGRESS}) == ["gone"]


def test_a_shard_end_without_a_witness_is_kept() -> None:
    """A SHARD_END whose children are unknown or have read nothing stays even when the shard
    is not listed: the listing may have hidden it (and its children) once, and without the
    item the shard would come back unfinished and be read again."""
    assert retired_checkpoints([ShardInfo("c")], {"gone": END, "c": PROGRESS}) == []
    pinned = {"gone": END, "c": Checkpoint(start_timestamp=1.0)}
    assert retired_checkpoints([ShardInfo("c", ("gone",))], pinned) == []


def test_retirement_needs_two_listings_that_leave_the_shard_out() -> None:
    """The gate: a candidate of one listing only is never retired; the same listing planned
    again does not count as a second one."""
    gate = RetirementGate()
    assert gate.confirmed(["a", "b"], new_listing=True) == []
    assert gate.confirmed(["a", "b"], new_listing=False) == []
    assert gate.confirmed(["b", "c"], new_listing=True) == ["b"]
    assert gate.confirmed([], new_listing=True) == []
    assert gate.confirmed(["c"], new_listing=True) == []


def test_never_retire_unfinished_or_childless_shards() -> None:
    """A checkpoint in progress, or a closed shard whose children are not listed yet, stays."""
    shards = [ShardInfo("a"), ShardInfo("b", closed=True)]
    assert retired_checkpoints(shards, {"a": PROGRESS, "b": END}) == []


def test_cycle_in_listing_does_not_recurse_forever() -> None:
    shards = [ShardInfo("a", ("b",)), ShardInfo("b", ("a",))]
    plan = plan_shards(shards, {})
    assert plan.ready == ()
    assert set(plan.blocked) == {"a", "b"}
