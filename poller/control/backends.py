"""Opens the mapping store that goes with the checkpoint backend.

Data flow::

    poller.checkpoints.open_checkpoints --> Checkpoints --open_mapping_store--> MappingStore
        (the lease table's for DynamoDB, the checkpoint database's for SQLite, memory for
        the in-memory checkpoint store of tests)

The memory store is kept per checkpoint store (or per in-memory lease table), so that replicas
of one test that share their checkpoints share their mappings too, as they would on a table.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from poller.checkpoints import SharedCheckpoints
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.control.store_dynamodb import DynamoDBMappingStore
from poller.control.store_memory import MemoryMappingStore
from poller.control.store_sqlite import SqliteMappingStore

if TYPE_CHECKING:
    from poller.checkpoints import Checkpoints
    from poller.control.store import MappingStore

#: The memory mapping store of each test checkpoint store or lease table, while it lives.
_MEMORY_STORES: weakref.WeakKeyDictionary[object, MemoryMappingStore] = weakref.WeakKeyDictionary()


async def open_mapping_store(checkpoints: Checkpoints) -> MappingStore:
    """The mapping store kept beside ``checkpoints`` (same table, or same database).

    Raises:
        CheckpointError: the SQLite tables could not be created.
    """
    if isinstance(checkpoints, SharedCheckpoints):
        table = checkpoints.table
        if isinstance(table, DynamoDBLeaseTable):
            return DynamoDBMappingStore(table.table_calls)
        return _memory_store_of(table)  # the in-memory twin of the lease table (tests)
    if isinstance(checkpoints.store, SqliteCheckpointStore):
        return await SqliteMappingStore(checkpoints.store).open()
    return _memory_store_of(checkpoints.store)


def _memory_store_of(owner: object) -> MemoryMappingStore:
    store = _MEMORY_STORES.get(owner)
    if store is None:
        store = _MEMORY_STORES[owner] = MemoryMappingStore()
    return store
