"""Shard lineage: which shards of a stream may be read now, and from where.

After a reshard, records of one partition key continue in a child shard, so a child must not
be read until every parent has been read to its end and settled; otherwise a key's newer
records could be delivered before its older ones. The shard coordinator calls
:func:`plan_shards` after every shard discovery with the listing and the stored checkpoints,
and starts what it returns. I/O-free and synchronous.

Rules (as the Kinesis Client Library applies them, see peers.md §3):

* A shard is *finished* when its checkpoint is ``SHARD_END``, or when any child has a
  checkpoint or is finished itself (the parent's own checkpoint may have been retired after its
  children moved on; looking through the descendants keeps a grandparent finished too).
* A shard is *ready* when it is not finished and every parent is finished or no longer listed
  (a parent that aged out of the stream's retention cannot block its children).
* A ``SHARD_END`` checkpoint is *retired* (deleted) once every listed child of the shard has a
  checkpoint, or once the shard itself is no longer listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from poller.types import Checkpoint


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """What discovery knows about one shard."""

    shard_id: str
    parent_ids: tuple[str, ...] = ()
    #: True when the shard is closed (it has an ending sequence number).
    closed: bool = False


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """The outcome of planning: shards to start, and shards found finished."""

    ready: tuple[str, ...]
    finished: frozenset[str]
    #: Shards that wait for a parent, with the parents they wait for.
    blocked: Mapping[str, tuple[str, ...]]


def _children_by_parent(shards: Iterable[ShardInfo]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for shard in shards:
        for parent in shard.parent_ids:
            children.setdefault(parent, []).append(shard.shard_id)
    return children


def finished_shards(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]
) -> frozenset[str]:
    """The ids of listed shards that are finished, by the rules in the module docstring."""
    listed = list(shards)
    children = _children_by_parent(listed)
    known: dict[str, bool] = {}

    def finished(shard_id: str) -> bool:
        if shard_id not in known:
            known[shard_id] = False  # a cycle (malformed listing) must not recurse forever
            checkpoint = checkpoints.get(shard_id)
            known[shard_id] = (checkpoint is not None and checkpoint.is_shard_end) or any(
                child in checkpoints or finished(child) for child in children.get(shard_id, ())
            )
        return known[shard_id]

    return frozenset(s.shard_id for s in listed if finished(s.shard_id))


def retired_checkpoints(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]
) -> list[str]:
    """``SHARD_END`` checkpoints that may be deleted: all children progress, or aged out."""
    listed = list(shards)
    listed_ids = {s.shard_id for s in listed}
    children = _children_by_parent(listed)
    retired = []
    for shard_id, checkpoint in checkpoints.items():
        if not checkpoint.is_shard_end:
            continue
        kids = children.get(shard_id, [])
        if shard_id not in listed_ids or (kids and all(k in checkpoints for k in kids)):
            retired.append(shard_id)
    return sorted(retired)


def plan_shards(shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]) -> ShardPlan:
    """Split the listed shards into ready, finished and blocked ones.

    Ready shards come in listing order, which for Kinesis and DynamoDB is creation order.
    """
    listed = list(shards)
    listed_ids = {s.shard_id for s in listed}
    finished = finished_shards(listed, checkpoints)
    ready: list[str] = []
    blocked: dict[str, tuple[str, ...]] = {}
    for shard in listed:
        if shard.shard_id in finished:
            continue
        waiting = tuple(p for p in shard.parent_ids if p in listed_ids and p not in finished)
        if waiting:
            blocked[shard.shard_id] = waiting
        else:
            ready.append(shard.shard_id)
    return ShardPlan(ready=tuple(ready), finished=finished, blocked=blocked)
