"""In-memory checkpoint store: a fake of ``CheckpointStore`` for unit tests of the pipeline.

Mapping start instants are kept apart from the checkpoints, as the durable stores keep them.
"""

from __future__ import annotations

from poller.core.windows import MAX_STATE_BYTES
from poller.types import Checkpoint


class MemoryCheckpointStore:
    """Keeps checkpoints in a dict and records every write in order.

    Args:
        window_state_limit: the largest window state it claims to hold (a store's limit).
    """

    def __init__(self, window_state_limit: int = MAX_STATE_BYTES) -> None:
        self.window_state_limit = window_state_limit
        self.checkpoints: dict[tuple[str, str], Checkpoint] = {}
        self.writes: list[tuple[str, str, Checkpoint]] = []
        self.starts: dict[str, float] = {}

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's checkpoint, or None."""
        return self.checkpoints.get((mapping, shard_id))

    async def get_all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every checkpoint of ``mapping``, by shard id."""
        return {s: c for (m, s), c in self.checkpoints.items() if m == mapping}

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        """Store the checkpoint and log the write."""
        self.checkpoints[(mapping, shard_id)] = checkpoint
        self.writes.append((mapping, shard_id, checkpoint))

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Forget the checkpoint."""
        self.checkpoints.pop((mapping, shard_id), None)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping's pinned start instant, or None."""
        return self.starts.get(mapping)

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Record ``instant`` unless a start is recorded; return the recorded one."""
        return self.starts.setdefault(mapping, instant)

    async def aclose(self) -> None:
        """Nothing to release."""
