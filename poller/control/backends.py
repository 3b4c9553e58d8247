"""Opens the mapping store that goes with the checkpoint backend.

Data flow::

    poller.checkpoints.open_checkpoints --> Checkpoints --open_mapping_store--> MappingStore
        (the lease table's for DynamoDB, the checkpoint database's for SQLite, memory for
        the in-memory checkpoint store of tests)

(Owned by helper H2; the signature is fixed by the lead.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from poller.checkpoints import Checkpoints
    from poller.control.store import MappingStore


async def open_mapping_store(checkpoints: Checkpoints) -> MappingStore:
    """The mapping store kept beside ``checkpoints`` (same table, or same database)."""
    raise NotImplementedError
