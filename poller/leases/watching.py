"""Watching the peers: their heartbeats and the assignment generation, from the member item.

Data flow: the coordinator's ``watch`` (every ``watch_interval``, from the runner's refresh
loop) and every ``balance`` read the mapping's member item (one consistent GetItem) and hand it
to :class:`MemberWatch`, which remembers, on *this replica's monotonic clock*, since when each
peer's beat has stood still. The balancer judges expiry by it (a peer's lease is expired when
its beat and its counter both stood still for ``takeover_after``); the watch says when a
balance is due (the generation moved, a peer came or went, a peer's beat just expired).

A peer absent from the map (a replica of protocol v1, which does not heartbeat, or one that
left) is a state of its own, "absent", timed like a beat: its leases are then judged by their
counters, which v1 replicas move at every renewal.

A beat's stillness is not counted across a stretch where our own reads of the table failed:
when a read answers after failed ones, the time since the previous answered read counts only
up to ``watched_gap`` (a read or two lost costs nothing). A whole-table outage stops every
peer's beat along with our reads: a beat that stood still through it says nothing of its
writer, and judging it expired made the first replica back count itself alone, take every
lease, and hand them back a cycle later. (Had only we been cut off or paused, live peers'
beats moved meanwhile and look fresh anyway; a dead peer's beat is judged by the time we
watched it.) A beat already expired stays so. Expiry only ever comes later for this rule,
never earlier: fencing (a replica that cannot heartbeat stops its shards before a peer may
take them) is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from poller.checkpoints.dynamodb import Members
from poller.errors import CheckpointError


@dataclass(frozen=True, slots=True)
class Beat:
    """A peer's beat as last seen (None: absent from the map) and since when (monotonic) it
    stood still."""

    value: int | None
    since: float


class MemberWatch:
    """What this replica knows of one mapping's member item, and since when."""

    def __init__(self, takeover_after: float, watched_gap: float) -> None:
        self._takeover_after = takeover_after
        self._watched_gap = watched_gap
        self._beats: dict[str, Beat] = {}
        #: When the latest read was *sent* (monotonic); None before the first one. A beat seen
        #: in it stood still at least until then (the read was served after it was sent).
        self.read_at: float | None = None
        self.generation: int | None = None
        #: The latest read's beats (for pruning: a removal is conditional on the beat seen).
        self.latest: dict[str, int] = {}
        #: Generation bumps of our own since the latest read: not a reason to look again.
        self._own_bumps = 0
        #: A read of ours failed since the latest answered one (see the module docstring).
        self._failed = False

    def bumped(self) -> None:
        """We bumped the generation (a successful write)."""
        self._own_bumps += 1

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Around a read of the table (the member item, the view): notes when it fails."""
        try:
            yield
        except CheckpointError:
            self._failed = True
            raise

    def observe(self, members: Members, sent: float, answered: float) -> bool:
        """Take in a read sent at ``sent`` and answered at ``answered``; True when a balance is
        due because of it: the generation moved, a member appeared or vanished, or a member's
        beat expired since the previous read.

        A new beat counts as standing still from when the read showing it was *answered* (the
        beat was written, and its writer alive, no later); a seen beat stood still until the
        latest read was *sent* (it may have been served just after): a slow answer never
        makes a beat look older than it is. After failed reads, the time since the previous
        answered read counts only up to ``watched_gap`` (see the module docstring)."""
        previous_read = self.read_at
        moved = (
            self.generation is not None and members.generation != self.generation + self._own_bumps
        )
        self._own_bumps = 0
        joined_or_left = previous_read is not None and set(members.beats) != set(self.latest)
        self.generation = members.generation
        self.latest = dict(members.beats)
        last = sent if previous_read is None else previous_read
        unwatched = sent - last - self._watched_gap if self._failed else 0.0
        self._failed = False
        for owner in set(self._beats) | set(members.beats):
            value = members.beats.get(owner)
            seen = self._beats.get(owner)
            if seen is None or seen.value != value:
                self._beats[owner] = Beat(value, answered)
            elif unwatched > 0 and last - seen.since < self._takeover_after:
                # Not yet expired at the previous read: the outage (past watched_gap) is not
                # stillness we saw; an expired beat stays expired.
                self._beats[owner] = Beat(value, seen.since + unwatched)
        self.read_at = max(sent, previous_read or sent)
        first = previous_read is None
        return first or moved or joined_or_left or self._expired_between(previous_read, sent)

    def _expired_between(self, before: float | None, now: float) -> bool:
        """Whether a present member's beat crossed ``takeover_after`` in (before, now]."""
        if before is None:
            return False
        return any(
            before < beat.since + self._takeover_after <= now
            for owner, beat in self._beats.items()
            if beat.value is not None and owner in self.latest
        )

    def still_for(self, owner: str, now: float | None = None) -> float:
        """How long ``owner``'s beat (or its absence) has stood still, as of the latest read
        (or ``now``, which must be no later than it); 0 before any read."""
        if self.read_at is None:
            return 0.0
        beat = self._beats.get(owner)
        since = self.read_at if beat is None else beat.since
        return max((self.read_at if now is None else now) - since, 0.0)

    def since(self, owner: str) -> float | None:
        """Since when ``owner``'s beat (or absence) stood still, if it was ever seen."""
        beat = self._beats.get(owner)
        return None if beat is None else beat.since

    def present(self, owner: str) -> bool:
        """Whether ``owner`` was in the map at the latest read."""
        return owner in self.latest

    def track(self, owner: str) -> None:
        """Start timing an owner seen in the lease view but never in the map: absent since the
        latest read (which did not show it)."""
        if owner not in self._beats and self.read_at is not None:
            self._beats[owner] = Beat(None, self.read_at)

    def forget(self, owner: str) -> None:
        """Stop tracking ``owner`` (pruned from the map)."""
        self._beats.pop(owner, None)
        self.latest.pop(owner, None)
