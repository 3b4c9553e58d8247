"""Shard lineage: which shards of a stream may be read now, from where, and what to forget.

After a reshard, records of one partition key continue in a child shard, so a child must not
be read until every parent has been read to its end and settled; otherwise a key's newer
records could be delivered before its older ones. The shard coordinator calls
:func:`plan_shards` after every shard discovery with the listing and the stored checkpoints,
and starts what it returns; :func:`retired_checkpoints` says which stored shards may be
forgotten. I/O-free and synchronous; every function is iterative and linear in the shards and
checkpoints given (a DynamoDB stream rolls its shards over every ~4 h, so a long-lived
mapping's lineage is a long chain: recursion would overflow the stack after some weeks).

Rules (as the Kinesis Client Library applies them, see peers.md §3):

* A checkpoint *shows progress* when it holds a sequence number or ``SHARD_END``. A pinned
  start (``start_timestamp`` alone) is no progress: it only says where reading will begin.
* A shard is *finished* when its checkpoint is ``SHARD_END``, or when any descendant shows
  progress (the parent's own checkpoint may have been retired after its children moved on;
  looking through the descendants keeps a grandparent finished too).
* A shard is *ready* when it is not finished and every parent is finished or no longer listed
  (a parent that aged out of the stream's retention cannot block its children).
* A stored shard is *retired* (its checkpoint or lease deleted) once it is **no longer
  listed** and a descendant shows progress. While a finished shard is still listed its
  ``SHARD_END`` stays: it is what stops a later discovery from taking the shard for a new one
  (and re-reading it). Requiring a descendant's progress, not the shard's own ``SHARD_END``,
  makes an empty or partial listing (a transient error, eventual consistency) harmless: the
  witness stays stored, so a shard that was hidden once and listed again is still finished.
  So the store holds the listed shards, finished parents whose children have read nothing
  yet, and unfinished shards that aged out; the ``SHARD_END`` of the last shards of a stream
  that ends (a DynamoDB stream disabled) stays until the mapping is removed. The lease path
  also retires a shard only when two consecutive listings leave it out
  (:class:`RetirementGate`).
* A listed *open* shard with a ``SHARD_END`` checkpoint cannot happen within one stream: it
  means the stream was deleted and re-created under the same name (Kinesis numbers the new
  shards from ``shardId-000000000000`` again) and the checkpoints are the old stream's.
  :func:`reopened_shards` names such shards so the runner can say so loudly; they are not
  reset automatically (see the README, "Resharding").
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


def shows_progress(checkpoint: Checkpoint | None) -> bool:
    """Whether a checkpoint proves the shard was read (a sequence number or ``SHARD_END``)."""
    return checkpoint is not None and checkpoint.sequence_number is not None


def _finish(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]
) -> tuple[set[str], set[str]]:
    """Every shard id finished by the rules, listed or only named as a parent, as two sets:
    those at ``SHARD_END`` themselves, and the ancestors of a shard that shows progress.

    Walks up from each shard that shows progress through its ancestors, visiting each shard
    once: O(shards + parent links), and a cycle in a malformed listing simply ends the walk.
    """
    parents: dict[str, tuple[str, ...]] = {}
    for shard in shards:
        parents[shard.shard_id] = shard.parent_ids
    at_end = {s for s, checkpoint in checkpoints.items() if checkpoint.is_shard_end}
    ancestors: set[str] = set()
    pending = [s for s in parents if shows_progress(checkpoints.get(s))]
    while pending:
        for parent in parents.get(pending.pop(), ()):
            if parent not in ancestors:
                ancestors.add(parent)
                pending.append(parent)
    return at_end, ancestors


def _finished_ids(shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]) -> set[str]:
    """Every shard id finished by the rules, listed or only named as a parent."""
    at_end, ancestors = _finish(shards, checkpoints)
    return at_end | ancestors


def finished_shards(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]
) -> frozenset[str]:
    """The ids of the given shards that are finished, by the rules in the module docstring."""
    listed = list(shards)
    finished = _finished_ids(listed, checkpoints)
    return frozenset(s.shard_id for s in listed if s.shard_id in finished)


def retired_checkpoints(
    shards: Iterable[ShardInfo],
    checkpoints: Mapping[str, Checkpoint],
    *,
    stored: Iterable[ShardInfo] = (),
) -> list[str]:
    """Stored shards that may be deleted: finished and no longer listed.

    Args:
        shards: the current listing.
        checkpoints: the stored checkpoints, by shard id.
        stored: what the store knows of shards beyond their checkpoints (a lease item's
            parents, or an item with no checkpoint at all); their parent links let a finished
            chain that left the listing be recognised as finished.
    """
    listed = list(shards)
    listed_ids = {s.shard_id for s in listed}
    known = list(stored)
    # Only a finish witnessed by a descendant's progress: that witness (or a later one) stays
    # stored, so the shard stays finished if an empty or partial listing hid it and the next
    # listing names it again. A finish resting on the shard's own SHARD_END would be gone
    # with the item, and the shard would come back unfinished and be read again.
    _, witnessed = _finish([*known, *listed], checkpoints)
    candidates = {*checkpoints, *(s.shard_id for s in known)}
    return sorted(s for s in candidates if s not in listed_ids and s in witnessed)


def vanished_shards(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint], stored: Iterable[ShardInfo]
) -> list[str]:
    """Stored shards that left the listing unfinished: trimmed before they were read to their
    end (a service down longer than the retention), or shards of a stream that is gone.

    Nothing of them can be read any more. The lease path forgets them: a lease of such a shard
    would otherwise look ready to the balancer, be taken and fail to read forever, and block
    its children (which the listing's rule lets go: an unlisted parent never blocks).
    """
    listed_ids = {s.shard_id for s in shards}
    known = list(stored)
    finished = _finished_ids([*known, *shards], checkpoints)
    return sorted(
        {s.shard_id for s in known if s.shard_id not in listed_ids and s.shard_id not in finished}
    )


class RetirementGate:
    """Lets a retirement through only once two consecutive listings agree the shard is gone.

    One listing that hides shards (an empty or partial answer) then retires nothing; only a
    second glitch in a row hiding the same shards could, and even then the witness rule of
    :func:`retired_checkpoints` keeps them finished while the listing names their children.
    In memory: a restart just delays retirements by one discovery.
    """

    def __init__(self) -> None:
        self._previous: frozenset[str] = frozenset()
        self._current: frozenset[str] = frozenset()

    def confirmed(self, candidates: Iterable[str], *, new_listing: bool) -> list[str]:
        """The candidates that were candidates at the previous listing too.

        Args:
            candidates: what :func:`retired_checkpoints` returns for the current listing.
            new_listing: whether this listing is newer than the one of the previous call
                (the same listing may be planned several times between two discoveries).
        """
        if new_listing:
            self._previous = self._current
        self._current = frozenset(candidates)
        return sorted(self._current & self._previous)


def reopened_shards(
    shards: Iterable[ShardInfo], checkpoints: Mapping[str, Checkpoint]
) -> tuple[str, ...]:
    """Listed open shards whose checkpoint is ``SHARD_END``: the stream was re-created under
    the same name and the checkpoints are the old stream's (see the module docstring)."""
    return tuple(
        s.shard_id
        for s in shards
        if not s.closed and (c := checkpoints.get(s.shard_id)) is not None and c.is_shard_end
    )


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
