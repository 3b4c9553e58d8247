"""Hostile review 15r: a rewind must never finish (skip) a shard it did not name.

Lineage (:mod:`poller.core.lineage`) counts a parent as finished as soon as any child's
checkpoint *shows progress* (holds a sequence number). ``--to-sequence CHILD=SEQ`` writes
exactly such a checkpoint on the child. Mid-reshard, while the parent is closed in the listing
but not yet read to its end (its checkpoint is a sequence number, not ``SHARD_END``), the child
is still blocked and has no checkpoint; rewinding it there makes the parent finished: the
parent's unread records are never delivered, and the child is read before them.
"""

from __future__ import annotations

from poller.core.lineage import ShardInfo, plan_shards
from poller.errors import ConfigError
from poller.operations.rewind_plan import parse_sequences, plan_rewind
from poller.types import Checkpoint

PARENT, CHILD = "shardId-000000000000", "shardId-000000000001"
LISTED = [ShardInfo(PARENT, closed=True), ShardInfo(CHILD, parent_ids=(PARENT,))]
#: Mid-reshard: the parent read up to record 100 of its closed range, the child not started.
STORED: dict[str, Checkpoint | None] = {PARENT: Checkpoint(sequence_number="100")}


def _checkpoints_after_apply() -> dict[str, Checkpoint] | None:
    """The stored checkpoints once the plan's targets are applied (None: refused)."""
    try:
        plan = plan_rewind(
            target=None,
            sequences=parse_sequences([f"{CHILD}=200"]),
            stored=STORED,
            listed=LISTED,
        )
    except ConfigError:
        return None
    after = {s: c for s, c in STORED.items() if c is not None}
    after.update({s: t.checkpoint(0.0) for s, t in plan.targets.items()})
    return after


def test_the_unfinished_parent_is_blocking_before_the_rewind() -> None:
    """Guard: before any rewind the parent is read first and the child waits for it."""
    plan = plan_shards(LISTED, {PARENT: Checkpoint(sequence_number="100")})
    assert plan.ready == (PARENT,)
    assert plan.blocked == {CHILD: (PARENT,)}


def test_rewinding_a_blocked_child_by_sequence_leaves_its_parent_unfinished() -> None:
    """Either the command refuses to move a child whose parent is unfinished, or, once the
    rewind is applied, the parent is still to be read before the child."""
    after = _checkpoints_after_apply()
    if after is None:
        return  # refused: nothing moved
    plan = plan_shards(LISTED, after)
    assert PARENT not in plan.finished, "the rewind of the child finished (skipped) its parent"
    assert plan.ready == (PARENT,)
