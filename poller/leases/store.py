"""The checkpoint store of a leased mapping: the pipeline's checkpoints, fenced by its leases.

Data flow: the shard processor's checkpointer writes through :class:`LeasedCheckpointStore`
like through any ``CheckpointStore``; a write goes to the coordinator's fenced ``checkpoint``
and raises :class:`~poller.errors.LeaseLost` (stopping the shard at once) when another replica
owns the shard now. Reads go to the lease table directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from poller.checkpoints.dynamodb import WINDOW_STATE_LIMIT
from poller.types import Checkpoint

if TYPE_CHECKING:
    from poller.leases.coordinator import LeaseCoordinator


class LeasedCheckpointStore:
    """``CheckpointStore`` over the lease table: reads are plain, writes are fenced."""

    #: A lease item, window state included, must fit DynamoDB's 400 KB item limit.
    window_state_limit = WINDOW_STATE_LIMIT

    def __init__(self, coordinator: LeaseCoordinator) -> None:
        self._coordinator = coordinator
        self._table = coordinator.table

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's stored checkpoint."""
        lease = await self._table.get(mapping, shard_id)
        return None if lease is None else lease.checkpoint

    async def get_all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every stored checkpoint of the mapping."""
        return await self._coordinator.checkpoints()

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced write; LeaseLost when another replica owns the shard now."""
        await self._coordinator.checkpoint(shard_id, checkpoint)

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Retire a finished shard's lease."""
        await self._table.delete(mapping, shard_id)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping item's start instant, or None before the mapping's first start."""
        return await self._table.mapping_start(mapping)

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """A conditional put of the mapping item; the instant recorded, by whoever won."""
        return await self._table.pin_mapping_start(mapping, instant)

    async def aclose(self) -> None:
        """The table's client is owned by the service."""
