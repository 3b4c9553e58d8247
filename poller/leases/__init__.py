"""Leases across replicas: which shards this replica processes, fenced by the lease table.

Data flow (one :class:`LeaseCoordinator` per stream mapping, driven by its runner)::

    discovery  -> sync():      create a lease per new shard (parents, pinned start), retire
                               the leases of finished shards that left the listing
    balance    -> balance():   read the table, judge expiry, take / ask for handoffs, grant or
                               decline peers' requests (core.balance)
    renew loop -> renew_all(): fenced renewals every lease_duration/3; report lost leases
    pipeline   -> checkpoint() through LeasedCheckpointStore: a fenced write; LeaseLost stops
                               the shard at once
    shard end, handoff, shutdown -> release(): the next owner may start at once (a granted
                               lease is written over to the asker, nobody else)

Expiry is judged as the Kinesis Client Library does: a lease is expired when its counter has not
changed for ``lease_duration`` *on this replica's monotonic clock*. Wall clocks of different
tasks are never compared. A replica that cannot renew a lease for ``lease_duration`` stops the
shard itself, since a peer may already have taken it. Every write to one lease goes through one
lock, because renewals and checkpoints both move the counter they are conditioned on.

Modules: :mod:`.coordinator` (the runner's one entry point, and releases), :mod:`.discovery`
(``sync``), :mod:`.balancing` (``balance``), :mod:`.fencing` (renewals, staleness, fenced
checkpoints), :mod:`.held` (the held leases those share), :mod:`.store` (the fenced
``CheckpointStore``), :mod:`.settings` (timing) and :mod:`.identity` (the replica's name).
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
