"""Provisioned mode's scaling and receive pace, apart from any I/O: pure, with the clock passed in.

Where they sit::

    poller.queues.runner (provisioned mode)
        every second: Load (batches in flight, full batches, empty receives, failures,
                      backlog) --ProvisionedScaler.tick(now)--> how many pollers run
        every receive of a poller: ReceivePace.wait(now) --> seconds to wait first

AWS's provisioned mode (docs/aws-esm.md §2.3; services-sqs-scaling): an event poller handles up
to ten concurrent invokes and ten SQS polls a second, and a mapping scales by up to 1,000
concurrency a minute, between ``minimum_pollers`` and ``maximum_pollers``. Here:

* **Up**: while the pollers are busy (batches in flight at 80 % of capacity, or batches come
  back full with a backlog in the queue and no receive came back empty), capacity grows by at
  most 1,000 concurrency a minute, i.e. 100 pollers of ten, through a fractional credit, so
  that no minute ever adds more, however the ticks fall.
* **Down**: one poller per tick once the mapping has been idle for 30 seconds in a row: no
  backlog (or none read yet), no full batch, and what is in flight would fit in one poller
  fewer at half load. AWS documents no pace for scaling down; waiting 30 s keeps a bursty
  queue's pollers warm.
* Never below ``minimum_pollers`` (an idle mapping keeps that many long polls, as AWS bills
  it) nor above ``maximum_pollers``. Failures and throttles stop growth, and never shrink it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Batches one poller keeps in flight at most (AWS: ten concurrent invokes per poller).
BATCHES_PER_POLLER = 10
#: ReceiveMessage calls one poller makes per second at most (AWS: ten polls a second).
RECEIVES_PER_SECOND = 10
#: Concurrency added per minute at most (AWS: "up to 1,000 concurrency per minute").
CONCURRENCY_PER_MINUTE = 1000
#: Pollers added per second at most: 1,000 concurrency a minute in pollers of ten.
POLLERS_PER_SECOND = CONCURRENCY_PER_MINUTE / BATCHES_PER_POLLER / 60
#: Share of capacity in flight at which the pollers count as busy.
BUSY_SHARE = 0.8
#: Share of one poller fewer's capacity under which the pollers count as idle.
IDLE_SHARE = 0.5
#: Seconds of idleness in a row before the mapping sheds pollers.
IDLE_SECONDS = 30.0
#: The longest time one tick may count toward growth: ticks come every second, a late one
#: still earns its time, but minutes of waiting (a slow start, a stalled loop) earn no burst.
MAX_TICK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Load:
    """What the pollers reported since the last tick.

    Attributes:
        in_flight: batches received and not yet settled, now.
        full: batches gathered full (by count or 6 MB).
        empty: receives that came back with nothing.
        failures: failed or throttled batches.
        backlog: the queue's ApproximateNumberOfMessages as last read; None before any read
            succeeded (a failed read keeps the last value).
    """

    in_flight: int = 0
    full: int = 0
    empty: int = 0
    failures: int = 0
    backlog: int | None = None


class ProvisionedScaler:
    """How many event pollers a provisioned mapping runs, decided once a tick.

    Args:
        minimum: ``minimum_pollers``; the mapping starts with that many.
        maximum: ``maximum_pollers``.
        now: the clock's reading at start (seconds, any monotonic origin).
    """

    def __init__(self, minimum: int, maximum: int, *, now: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.pollers = minimum
        self._credit = 0.0
        self._last = now
        self._idle_since: float | None = None
        #: (when, how many) of the pollers added in the last minute
        self._added: deque[tuple[float, int]] = deque()

    @property
    def capacity(self) -> int:
        """Batches the running pollers may keep in flight."""
        return self.pollers * BATCHES_PER_POLLER

    def tick(self, load: Load, *, now: float) -> int:
        """Decide from what happened since the last tick; return how many pollers to run."""
        # Capped: a start that waited minutes for its queue, or a stalled loop, earns no
        # burst; the pace stays about 1.67 pollers a second.
        elapsed = min(max(0.0, now - self._last), MAX_TICK_SECONDS)
        self._last = now
        if self._busy(load):
            self._idle_since = None
            self._grow(elapsed, now)
            return self.pollers
        self._credit = 0.0  # growth is earned only while busy: no burst after a lull
        if load.failures or not self._idle(load):  # a failing batch never sheds a poller
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= IDLE_SECONDS:
            self.pollers = max(self.minimum, self.pollers - 1)
        return self.pollers

    def _busy(self, load: Load) -> bool:
        if load.failures:
            return False
        if load.in_flight >= BUSY_SHARE * self.capacity:
            return True
        backlog = load.backlog is None or load.backlog > 0
        return backlog and load.full > 0 and load.empty == 0

    def _idle(self, load: Load) -> bool:
        # Without a backlog reading, no full batch is the sign that nothing waits: an idle
        # queue's long polls come back empty only every 20 seconds, so most ticks see none.
        quiet = not load.backlog
        fewer = (self.pollers - 1) * BATCHES_PER_POLLER
        return quiet and load.full == 0 and load.in_flight < IDLE_SHARE * fewer

    def _grow(self, elapsed: float, now: float) -> None:
        if self.pollers >= self.maximum:
            self._credit = 0.0
            return
        while self._added and self._added[0][0] <= now - 60.0:
            self._added.popleft()
        # the credit of a long gap between ticks is spent at one tick: the minute's adds
        # before it must still leave room under the minute's limit
        room = int(POLLERS_PER_SECOND * 60) - sum(n for _, n in self._added)
        self._credit += POLLERS_PER_SECOND * elapsed
        added = max(0, min(int(self._credit), self.maximum - self.pollers, room))
        self.pollers += added
        self._credit = min(self._credit - added, 1.0)
        if added:
            self._added.append((now, added))


class ReceivePace:
    """At most :data:`RECEIVES_PER_SECOND` receives a second for one poller: each receive
    starts at least a tenth of a second after the one before, so no half-open second holds
    more than ten starts. A slow receive earns no burst after it.

    Args:
        now: the clock's reading at start.
        rate: receives a second.
    """

    def __init__(self, *, now: float, rate: float = RECEIVES_PER_SECOND) -> None:
        self._gap = 1.0 / rate
        self._next = now

    def wait(self, *, now: float) -> float:
        """Book the next receive; return how long to wait before making it."""
        start = max(now, self._next)
        self._next = start + self._gap
        return start - now
