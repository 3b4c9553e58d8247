"""Hostile review 15r: ``--to-sequence`` ahead of the shard's checkpoint.

The option's help says "deliver record SEQ of SHARD again", and the command is a *rewind*. A
sequence number beyond the shard's checkpoint is no rewind: applied, it moves the checkpoint
past records that were never delivered (here 101 to 199), silently. Kinesis and DynamoDB
Streams sequence numbers grow within a shard, so the plan can tell, and must refuse it before
anything is written (like every other refusal of the plan).
"""

from __future__ import annotations

import pytest

from poller.core.lineage import ShardInfo
from poller.errors import PollerError
from poller.operations.rewind_plan import parse_sequences, plan_rewind
from poller.types import Checkpoint

SHARD = "shardId-000000000000"


def test_a_sequence_ahead_of_the_checkpoint_is_refused() -> None:
    with pytest.raises(PollerError):
        plan_rewind(
            target=None,
            sequences=parse_sequences([f"{SHARD}=200"]),
            stored={SHARD: Checkpoint(sequence_number="100")},
            listed=[ShardInfo(SHARD)],
        )


def test_a_sequence_at_or_behind_the_checkpoint_is_planned() -> None:
    """Guard: the ordinary rewind (the record just delivered, or an older one)."""
    for sequence in ("100", "42"):
        plan = plan_rewind(
            target=None,
            sequences=parse_sequences([f"{SHARD}={sequence}"]),
            stored={SHARD: Checkpoint(sequence_number="100")},
            listed=[ShardInfo(SHARD)],
        )
        assert plan.targets[SHARD].sequence_number == sequence
