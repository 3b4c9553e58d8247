"""Lease protocol timing: how long a lease lasts, how often this replica heartbeats, watches
its peers and balances.

Built by the app from a mapping's ``checkpoints.dynamodb`` config and read by every part of
:mod:`poller.leases` and by the stream runner's heartbeat, fence and refresh loops.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Timing of the lease protocol (defaults: a 10 s lease, a heartbeat about every 3 s, the
    peers' heartbeats read every second)."""

    lease_duration: float = 10.0
    balance_interval: float = 5.0
    max_leases_per_replica: int | None = None
    #: How much longer than ``lease_duration`` a peer waits before taking a lease it saw stop
    #: moving. An owner that can no longer renew (a lease-table partition, a frozen process)
    #: may still have an invocation running that it started while its lease was fresh; that
    #: invocation ends within the target's timeout, so waiting that long more means a shard is
    #: never invoked by two replicas at once. A released lease is taken at once.
    takeover_grace: float = 0.0
    #: How long after an invocation of one of our shards was cancelled mid-flight (the shard
    #: stopped) we wait before re-taking that lease ourselves: the call may run on (a sync
    #: handler's thread, a remote function) for up to the target's timeout from *now*, unlike a
    #: silent peer's last call, which started at least a heartbeat interval before its lease
    #: went stale. None: ``takeover_grace``.
    abandon_grace: float | None = None

    @property
    def takeover_after(self) -> float:
        """How long a peer's lease must stand still before this replica may take it."""
        return self.lease_duration + self.takeover_grace

    @property
    def abandoned_wait(self) -> float:
        """How long a lease of ours whose invocation was cancelled waits before we re-take it."""
        return self.takeover_grace if self.abandon_grace is None else self.abandon_grace

    @property
    def renew_interval(self) -> float:
        """Heartbeat about every third of the lease duration."""
        return self.lease_duration / 3

    @property
    def watch_interval(self) -> float:
        """Read the peers' heartbeats every tenth of the lease duration: a dead peer is seen
        within this of its expiry."""
        return self.lease_duration / 10

    @property
    def watched_gap(self) -> float:
        """After our reads of the table failed, how much of the time since the previous
        answered read still counts as a peer's beat seen standing still (two watch intervals:
        a read or two lost cost nothing). The rest of an outage does not: peers could not beat
        either. A live peer cut off only by a whole-table outage then looks still for less
        than a beat interval before it, this, and a beat interval after it (0.87 of a lease
        duration), so it is never judged expired for the outage."""
        return 2 * self.watch_interval

    @property
    def safety_balance_interval(self) -> float:
        """Balance at least this often even when no peer changed anything (a change missed,
        e.g. a generation bump that failed)."""
        return self.balance_interval * 12

    @property
    def prune_after(self) -> float:
        """A peer's heartbeat entry that stood still this long (and owns no lease) is removed."""
        return 3 * self.takeover_after
