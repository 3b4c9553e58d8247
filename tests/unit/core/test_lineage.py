"""Parent-before-child planning of shards after resharding."""

from __future__ import annotations

from poller.core.lineage import ShardInfo, plan_shards, retired_checkpoints
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


def test_retire_parent_once_every_child_has_a_checkpoint() -> None:
    shards = [ShardInfo("p", closed=True), ShardInfo("c1", ("p",)), ShardInfo("c2", ("p",))]
    assert retired_checkpoints(shards, {"p": END, "c1": PROGRESS}) == []
    assert retired_checkpoints(shards, {"p": END, "c1": PROGRESS, "c2": PROGRESS}) == ["p"]


def test_retire_finished_shard_that_aged_out() -> None:
    assert retired_checkpoints([ShardInfo("c")], {"gone": END, "c": PROGRESS}) == ["gone"]


def test_never_retire_unfinished_or_childless_shards() -> None:
    """A checkpoint in progress, or a closed shard whose children are not listed yet, stays."""
    shards = [ShardInfo("a"), ShardInfo("b", closed=True)]
    assert retired_checkpoints(shards, {"a": PROGRESS, "b": END}) == []


def test_cycle_in_listing_does_not_recurse_forever() -> None:
    shards = [ShardInfo("a", ("b",)), ShardInfo("b", ("a",))]
    plan = plan_shards(shards, {})
    assert plan.ready == ()
    assert set(plan.blocked) == {"a", "b"}
