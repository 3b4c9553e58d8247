"""poller.core.lineage's checks of stored state against the listing: ``vanished_shards``
(stored shards that left the listing unfinished, which the lease path forgets rather than lease
and fail to read forever) and ``reopened_shards`` (a stream re-created under the same name)."""

from __future__ import annotations

from poller.core.lineage import ShardInfo, reopened_shards, vanished_shards
from poller.types import SHARD_END, Checkpoint

END = Checkpoint(sequence_number=SHARD_END)
PROGRESS = Checkpoint(sequence_number="42")


def test_stored_shards_gone_from_the_listing_unfinished_have_vanished() -> None:
    """Trimmed mid-read, or never read at all, and no longer listed: nothing of them can be
    read any more. A shard at SHARD_END, or one whose child has progressed, is finished instead,
    and a listed shard is never vanished, however far it got."""
    listing = [ShardInfo("child", ("parent",)), ShardInfo("open")]
    stored = [
        ShardInfo("parent"),  # finished: its child has read past the start
        ShardInfo("done"),  # finished: read to its end
        ShardInfo("trimmed"),  # unfinished, gone
        ShardInfo("never-read"),  # no checkpoint, gone
        ShardInfo("open"),  # unfinished, but still listed
        ShardInfo("child", ("parent",)),
    ]
    checkpoints = {"child": PROGRESS, "done": END, "trimmed": PROGRESS, "open": PROGRESS}
    assert vanished_shards(listing, checkpoints, stored) == ["never-read", "trimmed"]


def test_nothing_vanishes_while_everything_stored_is_listed_or_finished() -> None:
    """An empty store, or a store the listing still covers, forgets nothing."""
    listing = [ShardInfo("a"), ShardInfo("b")]
    assert vanished_shards(listing, {}, []) == []
    assert vanished_shards(listing, {"a": PROGRESS}, [ShardInfo("a"), ShardInfo("b")]) == []
    assert vanished_shards([], {"x": END}, [ShardInfo("x")]) == []


def test_open_shards_checkpointed_at_shard_end_are_reopened() -> None:
    """An open shard cannot have been read to its end: a SHARD_END checkpoint on it is the old
    stream's. Closed shards at SHARD_END, open shards in progress or unread, are not."""
    listing = [
        ShardInfo("recreated"),
        ShardInfo("closed", closed=True),
        ShardInfo("reading"),
        ShardInfo("unread"),
    ]
    checkpoints = {"recreated": END, "closed": END, "reading": PROGRESS}
    assert reopened_shards(listing, checkpoints) == ("recreated",)
    assert reopened_shards(listing, {}) == ()
