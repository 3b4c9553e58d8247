"""Rewind requests: a new position for a shard's checkpoint, asked for by ``poller rewind``.

Data flow::

    poller rewind --RewindTarget.encode()--> the checkpoint backend (a row of the SQLite
        ``rewinds`` table, or ``rewindId`` / ``rewindTo`` on the shard's lease item)
    the shard's owner, when the shard (re)starts --RewindTarget.checkpoint(now)--> the new
        checkpoint, written by the same write as any checkpoint (fenced when leased), which
        also marks the request applied
    poller rewind <--applied (by whom, from which position)-- the backend

A target is stored as the operator gave it (``latest`` included), and turned into a
checkpoint only by whoever applies it, at that moment: ``--to-latest`` means the records that
arrive after the rewind is applied. Positions are checkpoints the engine already knows how to
start from (:func:`poller.streams.start.start_position`):

* ``timestamp``: ``Checkpoint(start_timestamp=T)``, an AT_TIMESTAMP start (as a pinned LATEST
  start is stored);
* ``trim_horizon``: ``Checkpoint(start_timestamp=0)``, AT_TIMESTAMP at the epoch, i.e. the
  oldest record in retention (DynamoDB Streams, which has no AT_TIMESTAMP, reads from
  TRIM_HORIZON and keeps the records at or after the instant: all of them);
* ``latest``: ``Checkpoint(start_timestamp=<apply time>)``;
* ``sequence``: ``Checkpoint(sequence_number=SEQ, sub_sequence_number=-1)``, which starts
  AT_SEQUENCE_NUMBER SEQ with no user record settled: the record SEQ is delivered again.

A shard that reached ``SHARD_END`` before its request is applied is never moved (a re-opened
parent would be read again beside its running children): whoever applies the request marks it
done with ``applied_to`` :data:`SKIPPED_AT_SHARD_END` instead, and the command reports the
shard as skipped.

A tumbling window's state is not carried over: a rewound shard starts with no window open.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, cast

from poller.types import Checkpoint

#: ``applied_to`` of a request marked done without moving its shard, which had ended.
SKIPPED_AT_SHARD_END = "skipped: the shard had ended"

RewindKind = Literal["timestamp", "trim_horizon", "latest", "sequence"]
_KINDS: tuple[RewindKind, ...] = ("timestamp", "trim_horizon", "latest", "sequence")


@dataclass(frozen=True, slots=True)
class RewindTarget:
    """Where a rewind moves one shard: ``kind``, with its ``timestamp`` (epoch seconds) or
    ``sequence_number``."""

    kind: RewindKind
    timestamp: float | None = None
    sequence_number: str | None = None

    def checkpoint(self, now: float | None = None) -> Checkpoint:
        """The checkpoint this target means when applied at ``now`` (default: the clock)."""
        if self.kind == "timestamp" and self.timestamp is not None:
            return Checkpoint(start_timestamp=self.timestamp)
        if self.kind == "trim_horizon":
            return Checkpoint(start_timestamp=0.0)
        if self.kind == "sequence" and self.sequence_number is not None:
            # sub -1: the aggregate at SEQ (or the plain record SEQ) with nothing settled in it,
            # so the reader opens AT_SEQUENCE_NUMBER and delivers SEQ again.
            return Checkpoint(sequence_number=self.sequence_number, sub_sequence_number=-1)
        if self.kind == "latest":
            return Checkpoint(start_timestamp=time.time() if now is None else now)
        raise ValueError(f"incomplete rewind target {self!r}")

    def encode(self) -> str:
        """Compact JSON, as stored in the backend."""
        body: dict[str, object] = {"kind": self.kind}
        if self.timestamp is not None:
            body["timestamp"] = self.timestamp
        if self.sequence_number is not None:
            body["sequence"] = self.sequence_number
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> RewindTarget:
        """Parse :meth:`encode`'s output. Raises ValueError when it is not one, or not a
        complete one (a timestamp without its instant, a sequence without its number): what is
        decoded can always be turned into a checkpoint."""
        try:
            target = cls._parse(json.loads(text))
            target.checkpoint(0.0)  # complete?
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"not a rewind target: {text!r}") from None
        return target

    @classmethod
    def _parse(cls, body: dict[str, object]) -> RewindTarget:
        kind = body.get("kind")
        if kind not in _KINDS:
            raise ValueError(kind)
        timestamp, sequence = body.get("timestamp"), body.get("sequence")
        return cls(
            kind=kind,
            timestamp=None if timestamp is None else float(cast(float, timestamp)),
            sequence_number=None if sequence is None else str(sequence),
        )

    def describe(self) -> str:
        """For people: ``AT_TIMESTAMP 2026-12-05T09:00:00Z``, ``TRIM_HORIZON``, ..."""
        if self.kind == "timestamp" and self.timestamp is not None:
            return f"AT_TIMESTAMP {format_instant(self.timestamp)}"
        if self.kind == "sequence":
            return f"AT_SEQUENCE_NUMBER {self.sequence_number}"
        return "TRIM_HORIZON" if self.kind == "trim_horizon" else "LATEST (at apply time)"


def describe_checkpoint(checkpoint: Checkpoint | None) -> str:
    """A checkpoint for people, in the words of the position it starts from."""
    if checkpoint is None:
        return "none (the mapping's starting position)"
    if checkpoint.is_shard_end:
        return "SHARD_END"
    if checkpoint.sequence_number is not None:
        if checkpoint.sub_sequence_number is not None and checkpoint.sub_sequence_number < 0:
            return f"AT_SEQUENCE_NUMBER {checkpoint.sequence_number}"
        sub = checkpoint.sub_sequence_number
        suffix = "" if sub is None else f" (sub {sub})"
        return f"AFTER_SEQUENCE_NUMBER {checkpoint.sequence_number}{suffix}"
    if checkpoint.start_timestamp is not None and checkpoint.start_timestamp <= 0:
        return "TRIM_HORIZON"
    if checkpoint.start_timestamp is not None:
        return f"AT_TIMESTAMP {format_instant(checkpoint.start_timestamp)}"
    return "none"


def format_instant(epoch: float) -> str:
    """UTC, ISO 8601, to the millisecond."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RewindState:
    """One shard's rewind request as stored: what was asked, and whether it was applied."""

    shard_id: str
    rewind_id: str
    target: RewindTarget
    applied: bool
    applied_by: str | None = None
    applied_from: str | None = None
    applied_to: str | None = None

    @property
    def skipped(self) -> bool:
        """Marked done without moving the shard: it had ended (``SHARD_END``) by the time the
        request was applied, and a finished shard is never re-opened."""
        return self.applied and self.applied_to == SKIPPED_AT_SHARD_END
