"""The leases one mapping holds on this replica: the state the coordinator's parts share.

The balancer adds leases it takes, the fence heartbeats and checkpoints them, the coordinator
releases them; each keeps here the lease as last written and since when (send time, on the
monotonic clock) peers are sure to see it alive: this replica's latest heartbeat that still
found the lease fresh. Peers judge a present member's leases by its heartbeat alone, so a take
or a checkpoint proves nothing to them and never makes a lease fresher. That is what staleness
is judged by. Every write to one lease goes through its lock, because takes and checkpoints
both move the counter they are conditioned on.
"""

from __future__ import annotations

import math
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
    """Held leases by shard, their freshness, their locks and the handoffs granted.

    Attributes:
        leases: the lease as last written by this replica, by shard.
        renewed_at: the lease's freshness: when the latest heartbeat that proves it alive to
            peers was sent (monotonic), by shard.
        beat_sent: when this replica's latest successful heartbeat was sent (monotonic), or
            None before the first one.
        handing_to: held leases granted to a peer, released to it once the shard drained.
    """

    def __init__(self, mapping: str, metrics: Metrics) -> None:
        self._mapping = mapping
        self._metrics = metrics
        self.leases: dict[str, Lease] = {}
        self.renewed_at: dict[str, float] = {}
        self.beat_sent: float | None = None
        #: A lease was lost since the latest balance: balance soon (re-take it if the table
        #: still names us, or take our share elsewhere).
        self.lost_since_balance = False
        self.handing_to: dict[str, str] = {}
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)

    def lock(self, shard_id: str) -> anyio.Lock:
        """The lock every write to ``shard_id``'s lease holds."""
        return self._locks[shard_id]

    def keep(self, shard_id: str, lease: Lease, fresh_from: float | None = None) -> None:
        """Hold ``lease`` as written (a checkpoint, a decline): its freshness stays, unless
        ``fresh_from`` (monotonic) says otherwise."""
        self.leases[shard_id] = lease
        if fresh_from is not None:
            self.renewed_at[shard_id] = fresh_from

    def adopt(self, shard_id: str, lease: Lease, beat_sent: float | None) -> None:
        """Hold ``lease``, just taken: fresh from ``beat_sent``, our latest heartbeat answered
        before the take was sent (peers judge the lease by our beat from now on: that beat
        landed before the take, so a peer that saw the take sees it too)."""
        self.leases[shard_id] = lease
        self.renewed_at[shard_id] = -math.inf if beat_sent is None else beat_sent

    def refresh(self, sent: float, answered: float, horizon: float) -> None:
        """A heartbeat sent at ``sent`` succeeded (answered at ``answered``): every held lease
        still fresh when the answer came (younger than ``horizon``) is fresh from ``sent``.

        A heartbeat is not fenced on any lease, so it must not revive one that may have passed
        to a peer: a peer takes a lease only once our beat *and* its counter stood still for a
        lease duration after the write that made it fresh, so a beat that landed before that
        (its answer came within ``horizon`` < the lease duration) was seen by any later read.
        """
        self.beat_sent = sent
        for shard_id, fresh in self.renewed_at.items():
            if answered - fresh < horizon:
                self.renewed_at[shard_id] = max(fresh, sent)

    def forget(self, shard_id: str, event: str) -> None:
        """Stop holding the lease, counting ``event`` (it was lost)."""
        self.leases.pop(shard_id, None)
        self.handing_to.pop(shard_id, None)
        self.renewed_at.pop(shard_id, None)
        self.lost_since_balance = True
        self._metrics.lease_event(self._mapping, event)
        self.report_count()
        log.warning("lease.lost", shard=shard_id)

    def report_count(self) -> None:
        """Publish how many leases are held."""
        self._metrics.leases_held(self._mapping, len(self.leases))


class Incarnation:
    """What this process, rather than its replica id, has done: a replica restarted under the
    same fixed ``replica_id`` finds its previous incarnation's leases in its own name.

    That incarnation (SIGKILLed, or only paused) may still run an invocation it started while
    its lease was fresh: its last heartbeat preceded our start, so it stops within the lease
    duration and its invocations end within the takeover grace. A lease the table gives us
    that this process never took, asked for or held is therefore re-taken only
    ``takeover_after`` after start, as a peer would; what this process took itself (a lost
    answer, a self-fenced lease) or asked to be handed is re-taken at once.
    """

    def __init__(self, inherited_until: float) -> None:
        #: Monotonic: from then on no lease can still be in a previous incarnation's hands.
        self.inherited_until = inherited_until
        self._touched: set[str] = set()

    def touch(self, shard_id: str) -> None:
        """This process sends a take of, or a handoff request for, ``shard_id``."""
        self._touched.add(shard_id)

    def touched(self, shard_id: str) -> bool:
        """Whether this process took or asked for ``shard_id``'s lease."""
        return shard_id in self._touched

    def inherited(self, shard_id: str, now: float) -> bool:
        """Whether ``shard_id``'s lease in our name may still be a previous incarnation's."""
        return now < self.inherited_until and shard_id not in self._touched


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
