"""DynamoDB lease table: shard ownership and checkpoints shared by several replicas.

One item per (mapping, shard), keyed ``leaseKey = "<mapping>#<shardId>"``, with the attribute
names of the Kinesis Client Library's lease table::

    leaseKey                      S   hash key
    mapping, shardId              S   the two halves of the key, for filtering and display
    leaseOwner                    S   the replica holding the lease; absent when unowned
    leaseCounter                  N   the fencing token: +1 on every take/renew/checkpoint/release
    checkpoint                    S   a sequence number or SHARD_END
    startTimestamp                N   a pinned LATEST start (epoch seconds), before any sequence
    windowState                   S   a tumbling window's open window and state (JSON)
    parentShardId                 SS  parent shard ids; absent when none (sets cannot be empty)
    ownerSwitchesSinceCheckpoint  N   +1 per change of owner, 0 after a checkpoint (churn signal)
    pendingOwner                  S   graceful handoff: a replica asking the owner to let go
    renewedAt                     N   writer's wall clock at the last take/renew/checkpoint

Besides the leases, each mapping that has started has one *mapping item*, keyed
``leaseKey = "<mapping>#__mapping__"`` (no shard id is spelled so)::

    leaseKey                      S   "<mapping>#__mapping__"
    startOf                       S   the mapping (deliberately not ``mapping``, so every Scan
                                      filtered on ``mapping`` - leases, checkpoints, status,
                                      balancing, older versions - never sees it)
    startTimestamp                N   the instant the mapping first started (epoch seconds);
                                      0 for "from TRIM_HORIZON" (see ``poller.streams.start``)
    pinnedAt                      N   the writer's wall clock when it was recorded (display)

It is written once, with ``attribute_not_exists(leaseKey)``, by whichever replica starts the
mapping first, and never changed: every shard that has no checkpoint yet starts from it.

This module is only the I/O layer: every write is one conditional ``UpdateItem`` (or
``PutItem``), and the lease manager above it decides when to take, renew, steal and hand off.
Every ownership or checkpoint write is conditional on the ``leaseCounter`` the caller observed,
so a replica that lost its lease (paused, partitioned, slow) can never overwrite the new owner's
state: its write fails and it learns that it was fenced off. ``request_handoff`` is the one
write that leaves the counter alone, so it never fences the owner out.

Expiry is for the caller to judge by observation, as KCL does: a lease whose counter has not
moved for the lease duration on the observer's *monotonic* clock is expired. ``renewedAt`` is a
wall-clock value written by whichever host renewed, and is for display only.

A replica must keep one current :class:`Lease` per shard and serialise its writes to it (renew
and checkpoint both move the counter, so two concurrent writers from one replica fence each
other). When a fenced write fails, :class:`LeaseLost` carries the item as DynamoDB held it.

Modules: :mod:`.items` (the :class:`Lease` and the wire format), :mod:`.calls` (requests and
their failures), :mod:`.schema` (creating the table) and :mod:`.table` (the operations).
Names with a leading underscore are private to this package.
"""

from __future__ import annotations

from poller.checkpoints.dynamodb.items import (
    MAPPING_ITEM,
    WINDOW_STATE_LIMIT,
    Lease,
    is_mapping_item,
    lease_from_item,
    lease_key,
)
from poller.checkpoints.dynamodb.table import DynamoDBLeaseTable

__all__ = [
    "MAPPING_ITEM",
    "WINDOW_STATE_LIMIT",
    "DynamoDBLeaseTable",
    "Lease",
    "is_mapping_item",
    "lease_from_item",
    "lease_key",
]
