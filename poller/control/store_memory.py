"""The mapping store in memory: one process, nothing durable. For tests, and the reference
the durable backends' contract tests hold to (``tests/integration/test_c2_store_contract.py``).

Data flow::

    poller.control.operations / poller.reconcile --MappingStore--> MemoryMappingStore
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from poller.control.store import (
    ChangeFn,
    MappingRecord,
    PairTaken,
    ReplicaAck,
    TooManyMappings,
    fresh_acks,
)


class MemoryMappingStore:
    """Implements :class:`~poller.control.store.MappingStore` in a dict."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._head = 0
        self._records: dict[str, MappingRecord] = {}
        self._acks: dict[str, ReplicaAck] = {}
        self._clock = clock

    async def head(self) -> int:
        """The current head revision."""
        return self._head

    async def records(self) -> dict[str, MappingRecord]:
        """Every stored record, by UUID."""
        return dict(self._records)

    async def get(self, uuid: str) -> MappingRecord | None:
        """One record, or None."""
        return self._records.get(uuid)

    async def create(self, record: MappingRecord, *, limit: int) -> MappingRecord:
        """Store a new record at the next head revision."""
        for existing in self._records.values():
            if existing.pair_key == record.pair_key:
                raise PairTaken(existing.uuid)
        if len(self._records) >= limit:
            raise TooManyMappings(limit)
        self._head += 1
        stored = replace(
            record, revision=self._head, created_revision=self._head, written=self._head
        )
        self._records[stored.uuid] = stored
        return stored

    async def update(self, uuid: str, change: ChangeFn) -> MappingRecord | None:
        """Apply ``change`` to the record; nothing else runs between the read and the write."""
        current = self._records.get(uuid)
        if current is None:
            return None
        new = change(current, self._head + 1)
        if new is None:
            return current
        if new.pair_key != current.pair_key:
            for existing in self._records.values():
                if existing.uuid != uuid and existing.pair_key == new.pair_key:
                    raise PairTaken(existing.uuid)
        self._head += 1
        stored = replace(new, written=self._head)
        self._records[uuid] = stored
        return stored

    async def finalize_delete(self, uuid: str, revision: int) -> bool:
        """Remove a deleted record still at ``revision``."""
        current = self._records.get(uuid)
        if current is None or current.revision != revision or current.desired != "Deleted":
            return False
        del self._records[uuid]
        self._head += 1
        return True

    async def set_processing_result(self, uuid: str, result: str) -> None:
        """Record ``LastProcessingResult`` without moving the head."""
        current = self._records.get(uuid)
        if current is not None:
            self._records[uuid] = replace(current, last_processing_result=result)

    async def ack(self, replica: str, applied: int) -> None:
        """``replica`` applied ``applied``, now; acks too old are forgotten."""
        now = self._clock()
        self._acks = fresh_acks(self._acks, now)
        self._acks[replica] = ReplicaAck(applied=applied, beat_at=now)

    async def acks(self) -> dict[str, ReplicaAck]:
        """Every replica's last ack, but those too old."""
        return fresh_acks(self._acks, self._clock())

    async def forget_replica(self, replica: str) -> None:
        """Drop ``replica``'s ack."""
        self._acks.pop(replica, None)

    async def aclose(self) -> None:
        """Nothing to release."""
