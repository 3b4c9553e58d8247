"""Where a shard starts reading: the mapping's start pin, and a shard's first position.

Data flow (one :class:`MappingStart` per stream mapping, owned by its runner)::

    runner, first refresh (LATEST) -> MappingStart.pin(listing): read the mapping's start
        instant, or record it (once per mapping, atomically, by whichever replica wins)
    ownership, a shard with no checkpoint -> MappingStart.checkpoint_for(shard): the checkpoint
        it starts from (solo: written for the first listing; leased: written into new leases)
    supervisor, a shard starting -> start_position(mapping, checkpoint): the GetShardIterator
        position the reader opens

Where a shard starts:

* after its checkpoint (``AFTER_SEQUENCE_NUMBER``) when it has one; inside a KPL aggregate
  (a sub-sequence checkpoint) at that record again, skipping the user records already settled;
* without one: TRIM_HORIZON, or the mapping's timestamp for AT_TIMESTAMP; for LATEST, the
  mapping's *start instant*. It is recorded once per mapping, atomically, apart from the shard
  checkpoints (``CheckpointStore.pin_mapping_start``: a row in SQLite, the mapping item of the
  lease table), by whichever replica starts the mapping first, and never re-pinned. Every shard
  that has no checkpoint starts from it, whoever meets it and whenever: shards of the first
  listing, shards missed by a crash or a racing replica, and children born later (all their
  records are newer, so for them the instant is their TRIM_HORIZON). Shards closed in the
  listing taken just before the instant was recorded start finished.
  Migration: a mapping that has checkpoints but no recorded instant (made by an older version)
  has started; it is pinned at the earliest pinned start among its checkpoints, or, if none is
  left, at 0, i.e. TRIM_HORIZON for shards without a checkpoint, as that version did: never a
  skip.

The pin is computed here and only here: :meth:`MappingStart.pin` reads or records it once, and
every start checkpoint, whichever ownership writes it, comes from
:meth:`MappingStart.checkpoint_for`.
"""

from __future__ import annotations

import time

import structlog

from poller.config import DynamoDBStreamMapping, KinesisMapping
from poller.core.lineage import ShardInfo
from poller.errors import CheckpointError
from poller.ports import StartPosition
from poller.types import SHARD_END, Checkpoint, CheckpointStore

StreamMapping = KinesisMapping | DynamoDBStreamMapping

log = structlog.get_logger("poller.streams")


class MappingStart:
    """The start instant of one LATEST mapping, read or recorded once per runner."""

    def __init__(self, mapping: StreamMapping, store: CheckpointStore) -> None:
        self._mapping = mapping
        self._store = store
        #: The mapping's start instant (LATEST), once :meth:`pin` has read or recorded it; 0.0
        #: means TRIM_HORIZON for shards without a checkpoint (a migrated mapping).
        self.instant: float | None = None
        #: Shards closed in the listing this replica took just before it recorded the instant
        #: itself: every record of theirs is older, so they start finished.
        self._closed_before: frozenset[str] = frozenset()

    @property
    def needs_pin(self) -> bool:
        """Only LATEST mappings start from a recorded instant."""
        return self._mapping.starting_position == "LATEST"

    async def pin(self, shards: list[ShardInfo]) -> None:
        """Read the recorded start instant, or record now on the mapping's first start
        (atomically: of several replicas starting together, one wins and all get its instant).

        ``shards`` is a listing taken *before* this call: its closed shards start finished when
        this replica records the instant. Idempotent: once known, the instant is kept.
        """
        if self.instant is not None:
            return
        name = self._mapping.name
        recorded = await self._store.mapping_start(name)
        if recorded is None:
            checkpoints = await self._store.get_all(name)
            instant = _migrated_start(checkpoints) if checkpoints else time.time()
            recorded = await self._store.pin_mapping_start(name, instant)
            if checkpoints:
                log.info("mapping.start_migrated", start_timestamp=recorded)
            elif recorded == instant:
                self._closed_before = frozenset(s.shard_id for s in shards if s.closed)
                log.info("mapping.initialized", starting_position="LATEST", start_timestamp=instant)
        self.instant = recorded

    def checkpoint_for(self, shard: ShardInfo) -> Checkpoint | None:
        """The checkpoint a shard without one starts from: for LATEST the mapping's start
        instant, whoever meets the shard first and whenever; None for TRIM_HORIZON and
        AT_TIMESTAMP, which need no pin.

        Raises:
            CheckpointError: LATEST, and the instant is not known yet (:meth:`pin` has not
                succeeded); retry after it does.
        """
        if not self.needs_pin:
            return None
        if self.instant is None:
            raise CheckpointError(f"mapping {self._mapping.name}: start instant not read yet")
        if shard.shard_id in self._closed_before:
            return Checkpoint(sequence_number=SHARD_END)
        if self.instant <= 0:
            return None  # a migrated mapping: TRIM_HORIZON, as the version that started it did
        return Checkpoint(start_timestamp=self.instant)


def start_position(mapping: StreamMapping, checkpoint: Checkpoint | None) -> StartPosition:
    """The position a shard's reader opens at, from its stored checkpoint (if any)."""
    if checkpoint is not None and checkpoint.sub_sequence_number is not None:
        # Inside a KPL aggregate: read it again and skip the user records already settled.
        return StartPosition(
            "AT_SEQUENCE_NUMBER",
            checkpoint.sequence_number,
            settled_through=checkpoint.sub_sequence_number,
        )
    if checkpoint is not None and checkpoint.sequence_number is not None:
        return StartPosition("AFTER_SEQUENCE_NUMBER", checkpoint.sequence_number)
    if checkpoint is not None and checkpoint.start_timestamp is not None:
        return StartPosition("AT_TIMESTAMP", timestamp=checkpoint.start_timestamp)
    if isinstance(mapping, KinesisMapping) and mapping.starting_position == "AT_TIMESTAMP":
        return StartPosition("AT_TIMESTAMP", timestamp=mapping.starting_position_timestamp)
    # TRIM_HORIZON mappings, and shards that appeared after a LATEST mapping started.
    return StartPosition("TRIM_HORIZON")


def _migrated_start(checkpoints: dict[str, Checkpoint]) -> float:
    """The start instant of a mapping started by a version that did not record it: the pin
    still held by a checkpoint, else 0 (TRIM_HORIZON for shards without one, as before)."""
    pins = [c.start_timestamp for c in checkpoints.values() if c.start_timestamp is not None]
    return min(pins, default=0.0)
