"""How a replay shows its progress: a redrawn line on a terminal, structured log lines otherwise.

Data flow::

    ShardProcessor --settled(records)--> ReplayProgress.settled(shard, records)
    ReplayProgress.run (a task beside the replay) --every tick--> stderr line (a TTY) or a
        ``replay.progress`` JSON line on stdout (a pipe, a log collector)

Progress per shard is measured in time, not records (how many records a range holds is unknown
until it is read): the arrival time of the last record settled, between the shard's first
record and ``--to``. The ETA follows from the slowest shard's fraction and the time spent so far
(an estimate: it assumes records are spread evenly in time).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import anyio

from poller.operations.times import age_text
from poller.types import StreamRecord

#: Seconds between redraws on a terminal, and between log lines otherwise.
TTY_TICK, LOG_TICK = 0.5, 10.0


@dataclass(slots=True)
class ShardProgress:
    """One shard's records settled in this run, and how far in time they reached."""

    records: int = 0
    #: Arrival of the first and of the last record settled in this run.
    first: float | None = None
    reached: float | None = None
    done: bool = False

    def fraction(self, end: float) -> float:
        """How far between its first record and ``end`` the shard is, 0 to 1."""
        if self.done:
            return 1.0
        if self.first is None or self.reached is None:
            return 0.0
        return max(0.0, min(1.0, (self.reached - self.first) / max(end - self.first, 1e-9)))


class ReplayProgress:
    """Counts settled records per shard and reports them."""

    def __init__(
        self,
        replay_id: str,
        start: float,
        end: float,
        *,
        tty: bool | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.replay_id = replay_id
        self._start, self._end = start, end
        self.shards: dict[str, ShardProgress] = {}
        self._began = time.monotonic()
        self._out = out
        self._tty = sys.stderr.isatty() if tty is None else tty

    def shard(self, shard_id: str) -> ShardProgress:
        """The shard's entry (made on first use)."""
        return self.shards.setdefault(shard_id, ShardProgress())

    def settled(self, shard_id: str, records: Sequence[StreamRecord]) -> None:
        """Records of ``shard_id`` settled (delivered, or given up on)."""
        entry = self.shard(shard_id)
        entry.records += len(records)
        if records:
            if entry.first is None:
                entry.first = records[0].arrival_timestamp
            entry.reached = max(entry.reached or 0.0, records[-1].arrival_timestamp)

    @property
    def records(self) -> int:
        """Records settled in this run, every shard."""
        return sum(s.records for s in self.shards.values())

    @property
    def elapsed(self) -> float:
        """Seconds since the replay began."""
        return time.monotonic() - self._began

    def fraction(self) -> float:
        """How far the replay is, 0 to 1: the least advanced shard, each measured from its
        first record (records seldom begin right at --from)."""
        if not self.shards:
            return 0.0
        return min(s.fraction(self._end) for s in self.shards.values())

    def line(self) -> str:
        """One line: records per shard, rate, ETA."""
        elapsed = self.elapsed
        rate = self.records / elapsed if elapsed > 0 else 0.0
        done = self.fraction()
        eta = "?" if done <= 0 else age_text(elapsed * (1 - done) / done)
        shards = "  ".join(
            f"{shard_id[-6:]}:{s.records}{'*' if s.done else ''}"
            for shard_id, s in sorted(self.shards.items())
        )
        return f"replay {self.replay_id} {done:4.0%}  {rate:,.0f} rec/s  ETA {eta}  {shards}"

    def event(self, name: str, **fields: object) -> None:
        """A structured line (not on a terminal, where the redrawn line says it)."""
        if self._tty:
            return
        line = {"event": name, "replay": self.replay_id, "timestamp": _now(), **fields}
        print(json.dumps(line), file=self._out or sys.stdout, flush=True)

    def report(self) -> None:
        """Show the progress now."""
        if self._tty:
            print(f"\r\x1b[2K{self.line()}", end="", file=sys.stderr, flush=True)  # noqa: T201
            return
        elapsed = self.elapsed
        self.event(
            "replay.progress",
            records=self.records,
            rate=round(self.records / elapsed, 1) if elapsed > 0 else 0.0,
            fraction=round(self.fraction(), 3),
            shards={k: v.records for k, v in sorted(self.shards.items())},
        )

    def finish(self) -> None:
        """End the redrawn line."""
        if self._tty:
            self.report()
            print(file=sys.stderr)  # noqa: T201

    async def run(self) -> None:
        """Report every tick until cancelled."""
        while True:
            await anyio.sleep(TTY_TICK if self._tty else LOG_TICK)
            self.report()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
