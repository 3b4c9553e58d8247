"""Leases across replicas: which shards this replica processes, fenced by the lease table.

Data flow (one :class:`LeaseCoordinator` per stream mapping, driven by its runner), lease
protocol v2, whose cost at rest grows with the replicas, not the shards::

    discovery  -> sync():      create a lease per new shard (parents, pinned start), retire
                               the leases of finished shards that left the listing
    heartbeat loop -> heartbeat(): one write to the mapping's member item every
                               lease_duration/3, whatever the number of leases held
    refresh loop -> watch():   read the member item (peers' heartbeats, the generation) every
                               lease_duration/10; balance() only when it calls for one
    balance    -> balance():   read the compact lease view, judge expiry, take / ask for
                               handoffs, grant or decline peers' requests (core.balance); bump
                               the generation after a change so peers look at once
    pipeline   -> checkpoint() through LeasedCheckpointStore: a fenced write; LeaseLost stops
                               the shard at once
    shard (re)start -> apply_rewind(): a pending ``poller rewind`` request's checkpoint, the
                               same fenced write as checkpoint() (watch() also keeps the
                               member item's rewindNotice, for ownership to look for requests)
    shard end, handoff, shutdown -> release(): the next owner may start at once (a granted
                               lease is written over to the asker, nobody else); leave() on exit

Expiry is judged by observation on *this replica's monotonic clock*, as the Kinesis Client
Library does, never by comparing wall clocks: a peer's lease is expired when its owner's
heartbeat stood still for ``takeover_after`` (an owner absent from the member map - a v1
replica - is judged by the lease's counter). A lease is fresh only from heartbeats (a take,
from the heartbeat before it), so a replica that cannot heartbeat stops its shards itself
before a peer can see them expire. Every take and checkpoint is fenced
on the lease's counter (its epoch); every write to one lease goes through one lock.

Modules: :mod:`.coordinator` (the runner's one entry point, releases, the generation),
:mod:`.discovery` (``sync``), :mod:`.watching` (the peers' heartbeats), :mod:`.balancing`
(``balance``), :mod:`.fencing` (heartbeats, staleness, fenced checkpoints), :mod:`.held` (the
held leases those share), :mod:`.store` (the fenced ``CheckpointStore``), :mod:`.settings`
(timing) and :mod:`.identity` (the replica's name).
"""

from __future__ import annotations

from poller.leases.balancing import TAKE_ROUNDS, BalanceOutcome
from poller.leases.coordinator import LeaseCoordinator
from poller.leases.discovery import report_reopened
from poller.leases.fencing import MIN_FENCE_WAIT, STALE_FRACTION, RenewOutcome
from poller.leases.identity import replica_identity
from poller.leases.settings import LeaseSettings
from poller.leases.store import LeasedCheckpointStore

__all__ = [
    "MIN_FENCE_WAIT",
    "STALE_FRACTION",
    "TAKE_ROUNDS",
    "BalanceOutcome",
    "LeaseCoordinator",
    "LeaseSettings",
    "LeasedCheckpointStore",
    "RenewOutcome",
    "replica_identity",
    "report_reopened",
]
