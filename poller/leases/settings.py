"""Lease protocol timing: how long a lease lasts, how often it is renewed and balanced.

Built by the app from a mapping's ``checkpoints.dynamodb`` config and read by every part of
:mod:`poller.leases` and by the stream runner's renew, fence and balance loops.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Timing of the lease protocol (defaults: a 10 s lease, renewed about every 3 s)."""

    lease_duration: float = 10.0
    balance_interval: float = 5.0
    max_leases_per_replica: int | None = None
    #: How much longer than ``lease_duration`` a peer waits before taking a lease it saw stop
    #: moving. An owner that can no longer renew (a lease-table partition, a frozen process)
    #: may still have an invocation running that it started while its lease was fresh; that
    #: invocation ends within the target's timeout, so waiting that long more means a shard is
    #: never invoked by two replicas at once. A released lease is taken at once.
    takeover_grace: float = 0.0

    @property
    def takeover_after(self) -> float:
        """How long a peer's lease must stand still before this replica may take it."""
        return self.lease_duration + self.takeover_grace

    @property
    def renew_interval(self) -> float:
        """Renew about every third of the lease duration."""
        return self.lease_duration / 3
