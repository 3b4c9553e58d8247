"""What a finalized delete removes: the mapping's checkpoints, leases and start pin.

Data flow::

    poller.reconcile (a delete drained on every replica, control_api.delete_checkpoints)
        --forget_checkpoints--> the checkpoint backend (lease table items or SQLite rows)

Every removal is idempotent (deleting what is gone is fine), so a clean-up cut short by an
outage is simply run again; the outage itself propagates as CheckpointError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poller.checkpoints import SharedCheckpoints
from poller.checkpoints.dynamodb import MAPPING_ITEM, MEMBERS_ITEM
from poller.checkpoints.sqlite import SqliteCheckpointStore

if TYPE_CHECKING:
    from poller.checkpoints import Checkpoints


async def forget_checkpoints(checkpoints: Checkpoints, mapping: str) -> None:
    """Remove every checkpoint, lease and start pin of ``mapping`` (a deleted mapping's
    name, its UUID; no new mapping ever has it).

    Lease table: each lease the consistent Scan lists (owned or not: every replica drained
    the mapping before the delete was finalized), then the mapping item (the start pin) and
    the member item. SQLite: the mapping's rows of every table. In-memory: its entries.

    Raises:
        CheckpointError: the backend did not answer; what was removed stays removed.
    """
    if isinstance(checkpoints, SharedCheckpoints):
        await _forget_leases(checkpoints.table, mapping)
    elif isinstance(checkpoints.store, SqliteCheckpointStore):
        await checkpoints.store.forget_mapping(mapping)
    else:
        _forget_in_memory(checkpoints.store, mapping)


async def _forget_leases(table: Any, mapping: str) -> None:
    """Delete every lease of ``mapping``, then its start and member items (last: a shard
    left by an interrupted clean-up still starts from the pinned start if ever read)."""
    for lease in await table.list_leases(mapping):
        await table.delete(mapping, lease.shard_id)
    await table.delete(mapping, MAPPING_ITEM)
    await table.delete(mapping, MEMBERS_ITEM)


def _forget_in_memory(store: Any, mapping: str) -> None:
    """The in-memory checkpoint store of tests: drop the mapping's checkpoints and start."""
    for key in [key for key in store.checkpoints if key[0] == mapping]:
        del store.checkpoints[key]
    store.starts.pop(mapping, None)
