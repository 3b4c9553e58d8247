"""``poller rewind``'s plan: which shards move where, decided before anything is written.

Data flow::

    the command's arguments --parse_target / parse_sequences--> RewindTarget(s)
    the mapping's stored checkpoints + the stream's listing --plan_rewind--> RewindPlan:
        per shard, its current checkpoint and its target, and the shards left alone

No I/O: :mod:`poller.operations.rewind` reads the store and the stream, then writes the plan.
Every refusal is a :class:`~poller.errors.ConfigError` with one line, raised before anything
is written.

Which shards a rewind moves:

* ``--to-sequence SHARD=SEQ ...``: exactly the shards named, nothing else. Refused for a
  shard whose parent is still listed and not read to its end (lineage counts a parent as
  finished once a child's checkpoint holds a sequence number, so the parent's unread records
  would be skipped), and for a SEQ beyond the shard's stored checkpoint (sequence numbers grow
  within a shard: that moves forward, skipping records never delivered) unless
  ``--allow-skip`` says so;
* ``--to-timestamp`` / ``--to-trim-horizon`` / ``--to-latest``: every open shard of the mapping
  (listed open by the stream, or stored with a checkpoint that is not ``SHARD_END``).

Closed shards (``SHARD_END``) are never moved. Re-reading a parent before its children would
mean re-opening a finished lineage (the children stop until their parents end again), which
rewind does not do: ``--to-timestamp`` and ``--to-trim-horizon`` are refused while the mapping
has closed shards, unless ``--open-shards-only`` says to move the open shards alone (the closed
shards' records are then not re-delivered: ``poller replay`` re-delivers a time range across a
reshard without touching the checkpoints). ``--to-latest`` needs no such care: a closed shard
has nothing after its end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from poller.checkpoints.rewinds import RewindTarget
from poller.core.lineage import ShardInfo
from poller.errors import ConfigError, OperationError
from poller.operations.times import parse_time
from poller.types import Checkpoint

_SEQUENCE = re.compile(r"^[0-9]{1,128}$")


@dataclass(frozen=True, slots=True)
class RewindPlan:
    """What a rewind moves: ``targets`` by shard, from ``current``; ``closed`` is left alone."""

    targets: dict[str, RewindTarget]
    current: dict[str, Checkpoint | None]
    closed: tuple[str, ...]


def parse_instant(text: str, *, now: float | None = None) -> float:
    """An instant given as ISO 8601 (``2026-12-05T09:00:00Z``; no zone means UTC) or epoch
    seconds (:func:`~poller.operations.times.parse_time`, as ``replay`` reads them). Refused
    when unreadable, in the future or before 1970."""
    try:
        return parse_time(text, "--to-timestamp", now=time.time() if now is None else now)
    except OperationError as exc:
        raise _refuse(str(exc)) from None


def parse_sequences(items: Sequence[str]) -> dict[str, RewindTarget]:
    """``SHARD=SEQ`` arguments, each an AT_SEQUENCE_NUMBER target; one shard once."""
    targets: dict[str, RewindTarget] = {}
    for item in items:
        shard, sep, sequence = item.partition("=")
        shard, sequence = shard.strip(), sequence.strip()
        if not sep or not shard or not _SEQUENCE.match(sequence):
            raise _refuse(
                f"--to-sequence {item!r}: expected SHARD=SEQ, a shard id and a decimal"
                " sequence number"
            )
        if shard in targets:
            raise _refuse(f"--to-sequence: shard {shard} is named twice")
        targets[shard] = RewindTarget("sequence", sequence_number=sequence)
    return targets


def plan_rewind(
    *,
    target: RewindTarget | None,
    sequences: Mapping[str, RewindTarget],
    stored: Mapping[str, Checkpoint | None],
    listed: Sequence[ShardInfo],
    open_shards_only: bool = False,
    allow_skip: bool = False,
) -> RewindPlan:
    """The shards to move and where (see the module docstring for which).

    Args:
        target: the target of every open shard, or None with ``--to-sequence``.
        sequences: ``--to-sequence`` targets by shard.
        stored: every shard the backend knows for the mapping (a checkpoint, or None for a
            lease without one).
        listed: the stream's shards now.
        open_shards_only: move the open shards even though the mapping has closed ones.
        allow_skip: accept a ``--to-sequence`` beyond the shard's checkpoint.
    """
    closed = sorted(
        {s for s, c in stored.items() if c is not None and c.is_shard_end}
        | {s.shard_id for s in listed if s.closed}
    )
    known = sorted(set(stored) | {s.shard_id for s in listed})
    if target is None:
        for shard_id in sequences:
            if shard_id not in known:
                raise _refuse(
                    f"--to-sequence: unknown shard {shard_id} (known: {', '.join(known)})"
                )
            if shard_id in closed:
                raise _refuse(
                    f"--to-sequence: shard {shard_id} is closed; rewinding a closed shard would"
                    " re-open its lineage, which rewind does not do (see `poller replay`)"
                )
            _check_parents_ended(shard_id, listed, stored)
            if not allow_skip:
                _check_not_forward(shard_id, sequences[shard_id], stored.get(shard_id))
        return RewindPlan(dict(sequences), {s: stored.get(s) for s in sequences}, tuple(closed))
    if closed and target.kind in ("timestamp", "trim_horizon") and not open_shards_only:
        raise _refuse(
            f"the stream was resharded: closed shards {', '.join(closed)} would have to be"
            " re-read before their children, which rewind does not do; --open-shards-only"
            " moves the open shards alone (`poller replay` re-delivers the closed ones)"
        )
    shards = [s for s in known if s not in closed]
    if not shards:
        raise _refuse("the mapping has no open shard to rewind")
    return RewindPlan(
        {s: target for s in shards}, {s: stored.get(s) for s in shards}, tuple(closed)
    )


def _check_parents_ended(
    shard_id: str, listed: Sequence[ShardInfo], stored: Mapping[str, Checkpoint | None]
) -> None:
    """Refuse to move a child while a listed parent is not read to its end: the child's new
    checkpoint would make lineage count the parent as finished, skipping its unread records."""
    listed_ids = {s.shard_id for s in listed}
    parents = next((s.parent_ids for s in listed if s.shard_id == shard_id), ())
    for parent in parents:
        checkpoint = stored.get(parent)
        if parent in listed_ids and (checkpoint is None or not checkpoint.is_shard_end):
            raise _refuse(
                f"--to-sequence: shard {shard_id}'s parent {parent} is not read to its end;"
                " moving the child now would skip the parent's unread records"
            )


def _check_not_forward(shard_id: str, target: RewindTarget, current: Checkpoint | None) -> None:
    """Refuse a sequence number beyond the stored checkpoint's (sequence numbers grow within
    a shard, compared as integers): that skips records never delivered."""
    if current is None or current.sequence_number is None or current.is_shard_end:
        return
    if target.sequence_number is None or not current.sequence_number.isdigit():
        return
    if int(target.sequence_number) > int(current.sequence_number):
        raise _refuse(
            f"--to-sequence {shard_id}={target.sequence_number} is ahead of the shard's"
            f" checkpoint ({current.sequence_number}): records in between would be skipped;"
            " --allow-skip does it anyway"
        )


def _refuse(problem: str) -> ConfigError:
    return ConfigError([problem], source="poller rewind")
