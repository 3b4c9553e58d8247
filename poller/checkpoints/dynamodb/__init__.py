"""DynamoDB lease table: shard ownership and checkpoints shared by several replicas.

One item per (mapping, shard), keyed ``leaseKey = "<mapping>#<shardId>"``, with the attribute
names of the Kinesis Client Library's lease table::

    leaseKey                      S   hash key
    mapping, shardId              S   the two halves of the key, for filtering and display
    leaseOwner                    S   the replica holding the lease; absent when unowned
    leaseCounter                  N   the fencing token (the lease's epoch): +1 on every take,
                                      checkpoint and release (and renew, which only v1 uses)
    checkpoint                    S   a sequence number or SHARD_END
    startTimestamp                N   a pinned LATEST start (epoch seconds), before any sequence
    windowState                   S   a tumbling window's open window and state (JSON)
    parentShardId                 SS  parent shard ids; absent when none (sets cannot be empty)
    ownerSwitchesSinceCheckpoint  N   +1 per change of owner, 0 after a checkpoint (churn signal)
    pendingOwner                  S   graceful handoff: a replica asking the owner to let go
    renewedAt                     N   writer's wall clock at the last take/renew/checkpoint
    rewindId, rewindTo            S   ``poller rewind``: the latest request (an id, the target as
                                      JSON, see ``poller.checkpoints.rewinds``); written without
                                      moving the counter, like ``pendingOwner``
    rewindApplied, rewindApplied{By,From,To}
                                  S   the request applied (its id), by whom, from and to where:
                                      written with the new checkpoint, in the same fenced write

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

Lease protocol v2 adds a *member item* per mapping, ``leaseKey = "<mapping>#__members__"``
(attribute ``membersOf``, again not ``mapping``): the replicas' heartbeats (``members``, a map
of replica id to beat) and ``generation``, bumped after every change of assignments. A replica
beats that one item instead of renewing each lease, so the table's cost at rest grows with the
replicas, not the shards (see :mod:`.members`). Balancing reads the *view index*
``mapping-shard-index`` (hash ``mapping``, range ``shardId``; every lease attribute but
``windowState``), one eventually consistent Query instead of a consistent Scan of the whole
table (see :mod:`.view`). :meth:`DynamoDBLeaseTable.ensure_table` creates a table with the
index, and adds the index in place to a table made by an older version (see :mod:`.schema`).

The member item also carries ``rewindNotice`` (S), the id of the mapping's latest rewind
request: replicas read that item every second anyway, so a rewind reaches the owners at no
cost at rest (see :mod:`poller.streams.ownership`).

This module is only the I/O layer: every write is one conditional ``UpdateItem`` (or
``PutItem``), and the lease manager above it decides when to take, renew, steal and hand off.
Every ownership or checkpoint write is conditional on the ``leaseCounter`` the caller observed,
so a replica that lost its lease (paused, partitioned, slow) can never overwrite the new owner's
state: its write fails and it learns that it was fenced off. ``request_handoff`` and
``request_rewind`` are the writes that leave the counter alone, so they never fence the owner
out; ``apply_rewind`` is fenced like a checkpoint (by the owner, or, on an unowned lease, by
``poller rewind`` on ``attribute_not_exists(leaseOwner)`` and the counter it read).

Expiry is for the caller to judge by observation, as KCL does, on the observer's *monotonic*
clock: in v2 a lease is expired when neither its owner's beat nor its counter has moved for
the takeover time (see :mod:`poller.leases`). ``renewedAt`` is a wall-clock value written by
whichever host wrote the lease last, and is for display only.

A replica must keep one current :class:`Lease` per shard and serialise its writes to it (renew
and checkpoint both move the counter, so two concurrent writers from one replica fence each
other). When a fenced write fails, :class:`LeaseLost` carries the item as DynamoDB held it.

Modules: :mod:`.items` (the :class:`Lease`, :class:`Members` and the wire format),
:mod:`.calls` (requests and their failures), :mod:`.schema` (creating and migrating the table),
:mod:`.members` (the member item), :mod:`.view` (the lease view) and :mod:`.table` (the
operations on leases).
Names with a leading underscore are private to this package.
"""

from __future__ import annotations

from poller.checkpoints.dynamodb.items import (
    MAPPING_ITEM,
    MEMBERS_ITEM,
    VIEW_INDEX,
    WINDOW_STATE_LIMIT,
    Lease,
    Members,
    is_mapping_item,
    lease_from_item,
    lease_key,
    members_key,
)
from poller.checkpoints.dynamodb.table import DynamoDBLeaseTable

__all__ = [
    "MAPPING_ITEM",
    "MEMBERS_ITEM",
    "VIEW_INDEX",
    "WINDOW_STATE_LIMIT",
    "DynamoDBLeaseTable",
    "Lease",
    "Members",
    "is_mapping_item",
    "lease_from_item",
    "lease_key",
    "members_key",
]
