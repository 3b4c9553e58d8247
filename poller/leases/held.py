"""The leases one mapping holds on this replica: the state the coordinator's parts share.

The balancer adds leases it takes, the fence renews and checkpoints them, the coordinator
releases them; each keeps here the lease as last written and when that write was sent (on the
monotonic clock), which is what staleness is judged by. Every write to one lease goes through
its lock, because renewals and checkpoints both move the counter they are conditioned on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.leases.settings import LeaseSettings
from poller.observability.metrics import Metrics

log = structlog.get_logger("poller.leases")


class HeldLeases:
    """Held leases by shard, their last renewal, their locks and the handoffs granted.

    Attributes:
        leases: the lease as last written by this replica, by shard.
        renewed_at: when the write that produced it was sent (monotonic), by shard.
        handing_to: held leases granted to a peer, released to it once the shard drained.
    """

    def __init__(self, mapping: str, metrics: Metrics) -> None:
        self._mapping = mapping
        self._metrics = metrics
        self.leases: dict[str, Lease] = {}
        self.renewed_at: dict[str, float] = {}
        self.handing_to: dict[str, str] = {}
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)

    def lock(self, shard_id: str) -> anyio.Lock:
        """The lock every write to ``shard_id``'s lease holds."""
        return self._locks[shard_id]

    def keep(self, shard_id: str, lease: Lease, sent: float) -> None:
        """Hold ``lease`` as written by a write sent at ``sent``."""
        self.leases[shard_id] = lease
        self.renewed_at[shard_id] = sent

    def forget(self, shard_id: str, event: str) -> None:
        """Stop holding the lease, counting ``event`` (it was lost)."""
        self.leases.pop(shard_id, None)
        self.handing_to.pop(shard_id, None)
        self.renewed_at.pop(shard_id, None)
        self._metrics.lease_event(self._mapping, event)
        self.report_count()
        log.warning("lease.lost", shard=shard_id)

    def report_count(self) -> None:
        """Publish how many leases are held."""
        self._metrics.leases_held(self._mapping, len(self.leases))


@dataclass(frozen=True, slots=True)
class LeaseContext:
    """What the coordinator's parts (the balancer, the fence) all work with: one mapping's
    lease table, this replica's identity, the timing, and the leases it holds."""

    table: DynamoDBLeaseTable
    held: HeldLeases
    mapping: str
    owner: str
    settings: LeaseSettings
    metrics: Metrics
    #: Monotonic seconds: what lease staleness is judged by.
    clock: Callable[[], float]
