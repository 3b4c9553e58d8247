"""The exclusivity and order checker: judges a history of deliveries against what was written.

Test handlers record every batch they run: the replica process, the shard, when the handler
started and when it returned, and the records (shard, sequence number, partition key) in the
order it received them (``tests/support/file_sink.py`` writes exactly that). A test also knows
what it wrote, in write order, and when it interrupted a replica (SIGKILL, a drain cut short by
its deadline) or a replica lost a lease (its ``lease.lost`` log line). :func:`check` then
asserts the delivery guarantees of the README's failure model:

* **exclusive**: no shard is invoked by two replica processes at once: two batches of one shard,
  from different processes, whose [start, end] intervals overlap, are a *concurrent
  invocation*. A batch that never returned (its process was killed) runs until that process's
  death; one still running at the end of the history runs for ever;
* **ordered**: for each partition key, first deliveries follow write order: a record first
  delivered before an earlier-written record of its key is an *order violation* (a batch's
  records count in their order in the batch; batches by start time);
* **nothing lost**: every written record is delivered at least once;
* **duplicates within the in-flight bound**: a record delivered again is allowed only if an
  earlier delivery of it was *in flight* at an interruption of its process on that shard: the
  batch started no later than the interruption and ended no earlier than ``window`` seconds
  before it. A batch is settled only once its checkpoint is written, so ``window`` is how long
  a checkpoint may lag its batch: a few seconds after a SIGKILL, a lease duration when a lease is
  lost (a lease-table outage lets checkpoint writes fail until the replica fences itself). Any
  other redelivery (a graceful handoff, a clean drain) is an *unexplained duplicate*.

The report counts each; :meth:`Report.problems` lists the violations (empty means the history
passed), with enough detail to find them in the replicas' logs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class Record:
    shard: str
    sequence: str
    key: str

    @property
    def id(self) -> tuple[str, str]:
        return (self.shard, self.sequence)


@dataclass(frozen=True)
class Batch:
    """One handler run: ``process`` identifies the replica process (name and pid, say)."""

    process: str
    shard: str
    started: float
    finished: float | None  # None: the handler never returned
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Interruption:
    """``process`` stopped without settling its batches at ``at`` (on ``shard``, or on every
    shard if None): batches in flight then, or ending up to ``window`` s before, may repeat."""

    process: str
    at: float
    window: float
    shard: str | None = None
    died: bool = False  # the process is gone: its unfinished batches end here


@dataclass
class Report:
    written: int = 0
    delivered: int = 0  # deliveries, duplicates included
    distinct_delivered: int = 0
    duplicates: int = 0  # deliveries beyond the first
    unexplained_duplicates: list[tuple[Record, str]] = field(default_factory=list)
    lost: list[Record] = field(default_factory=list)
    order_violations: list[tuple[Record, Record]] = field(default_factory=list)
    concurrent_invocations: list[tuple[Batch, Batch]] = field(default_factory=list)

    def figures(self) -> dict[str, int]:
        return {
            "written": self.written,
            "delivered": self.delivered,
            "distinct delivered": self.distinct_delivered,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "unexplained duplicates": len(self.unexplained_duplicates),
            "order violations": len(self.order_violations),
            "concurrent invocations": len(self.concurrent_invocations),
        }

    def problems(self) -> list[str]:
        """One line per violation kind found, with the first few examples."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} lost, e.g. {self.lost[:3]}")
        if self.order_violations:
            found.append(
                f"{len(self.order_violations)} order violations (record first delivered before"
                f" an earlier record of its key), e.g. {self.order_violations[:3]}"
            )
        if self.concurrent_invocations:
            pairs = [_describe_overlap(a, b) for a, b in self.concurrent_invocations[:3]]
            found.append(f"{len(self.concurrent_invocations)} concurrent invocations: {pairs}")
        if self.unexplained_duplicates:
            found.append(
                f"{len(self.unexplained_duplicates)} duplicates outside the in-flight bound,"
                f" e.g. {self.unexplained_duplicates[:3]}"
            )
        return found

    def summary(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in self.figures().items())


def _describe_overlap(a: Batch, b: Batch) -> str:
    end = "never" if a.finished is None else _clock(a.finished)
    return (
        f"{a.shard}: {a.process} ran {_clock(a.started)}-{end},"
        f" {b.process} began {_clock(b.started)}"
    )


def _clock(epoch: float) -> str:
    """An epoch time as the UTC time of day the replicas' logs show."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S.%f")[:-3]


def check(
    written: Iterable[Record],
    batches: Iterable[Batch],
    interruptions: Iterable[Interruption] = (),
) -> Report:
    """Judge the history; see the module docstring for each rule."""
    written = list(written)
    interruptions = list(interruptions)
    batches = sorted(batches, key=lambda b: b.started)
    # A handler that never returned did not deliver: its batch counts only for exclusivity.
    deliveries = [
        (record, batch)
        for batch in batches
        if batch.finished is not None
        for record in batch.records
    ]
    report = Report(written=len(written), delivered=len(deliveries))
    delivered_ids = {record.id for record, _ in deliveries}
    report.distinct_delivered = len(delivered_ids)
    report.lost = [record for record in written if record.id not in delivered_ids]
    report.order_violations = _order_violations(written, deliveries)
    report.concurrent_invocations = _overlaps(batches, _deaths(interruptions))
    report.duplicates, report.unexplained_duplicates = _duplicates(deliveries, interruptions)
    return report


def _order_violations(
    written: list[Record], deliveries: list[tuple[Record, Batch]]
) -> list[tuple[Record, Record]]:
    """Pairs (earlier-written, later-written) of one key whose first deliveries are inverted."""
    first: dict[tuple[str, str], int] = {}
    for position, (record, _) in enumerate(deliveries):
        first.setdefault(record.id, position)
    by_key: dict[str, list[Record]] = defaultdict(list)
    for record in written:
        if record.id in first:  # lost records are counted as lost, not as disorder
            by_key[record.key].append(record)
    violations = []
    for records in by_key.values():
        latest: Record | None = None  # the written-earlier record delivered last so far
        for record in records:
            if latest is not None and first[record.id] < first[latest.id]:
                violations.append((latest, record))
            else:
                latest = record
    return violations


def _deaths(interruptions: list[Interruption]) -> dict[str, float]:
    deaths: dict[str, float] = {}
    for stop in interruptions:
        if stop.died:
            deaths[stop.process] = min(deaths.get(stop.process, math.inf), stop.at)
    return deaths


def _overlaps(batches: list[Batch], deaths: dict[str, float]) -> list[tuple[Batch, Batch]]:
    """Pairs of batches of one shard from different processes whose runs overlapped."""
    found = []
    by_shard: dict[str, list[Batch]] = defaultdict(list)
    for batch in batches:
        by_shard[batch.shard].append(batch)
    for runs in by_shard.values():
        running: list[tuple[float, Batch]] = []  # (end, batch), of batches started so far
        for batch in runs:  # in start order
            running = [(end, b) for end, b in running if end > batch.started]
            found += [(b, batch) for _, b in running if b.process != batch.process]
            end = batch.finished if batch.finished is not None else deaths.get(batch.process)
            running.append((math.inf if end is None else end, batch))
    return found


def _duplicates(
    deliveries: list[tuple[Record, Batch]], interruptions: list[Interruption]
) -> tuple[int, list[tuple[Record, str]]]:
    """All redeliveries, and those no interruption explains (with the process that delivered
    the record before)."""
    seen: dict[tuple[str, str], list[Batch]] = defaultdict(list)
    total, unexplained = 0, []
    for record, batch in deliveries:
        earlier = seen[record.id]
        if earlier:
            total += 1
            if not any(_in_flight(previous, interruptions) for previous in earlier):
                unexplained.append((record, earlier[-1].process))
        earlier.append(batch)
    return total, unexplained


def _in_flight(batch: Batch, interruptions: list[Interruption]) -> bool:
    """Whether ``batch`` was unsettled when its process was interrupted on its shard."""
    ended = batch.finished if batch.finished is not None else math.inf
    return any(
        stop.process == batch.process
        and stop.shard in (None, batch.shard)
        and batch.started <= stop.at
        and ended >= stop.at - stop.window
        for stop in interruptions
    )
