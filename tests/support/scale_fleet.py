"""What the scale benchmarks add to the replica fleet: many shards, a fast stream emulator,
cheap reads of the sink and per-process figures; and, for fleets simulated in one process
(``benchmarks/lease_sim.py``, the lease protocol's unit tests), each replica's road to the
shared in-memory lease table, which can be cut off or made to lose reads.

``tests/support/replicas.py`` runs a few replicas on an 8-shard stream, writing shard after
shard. At hundreds of shards that writer and re-reading the whole sink on every poll cost more
than the replicas, so here: ministack (a pure-Python emulator, from its own venv under
``.work/ministack-venv``; one GetRecords costs about 1.5 ms there against 5 ms on moto) as the
stream, a :class:`Feeder` that puts one record into every shard per tick in PutRecords calls of
500, a :class:`SinkTail` that reads only the new lines of the shared sink, the CPU time and RSS
of a replica from ``/proc``, and the lease acquisitions its JSON log reports.

In process, every replica is a real ``LeaseCoordinator`` made by :func:`coordinator_on` over
its own :class:`TableRoad` to one ``MemoryLeaseTable``: a partition or throttling hits one
replica, not the table (whose ``down`` is an outage for all).
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from poller.errors import CheckpointError
from poller.leases import LeaseCoordinator, LeaseSettings
from tests.support.aws import aws_client, hash_key_for, put_records

# Moved to tests/support/ministack.py; re-exported for the scale benchmark and its test.
from tests.support.ministack import ministack as ministack
from tests.support.ministack import ministack_available as ministack_available
from tests.support.process import ServiceProcess

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


class Feeder:
    """Puts one record into every shard per tick (``interval`` seconds) from a thread, so that
    each shard delivers about once a tick: a shard that delivers is a shard that runs."""

    def __init__(self, url: str, stream: str, shards: list[dict[str, Any]], interval: float):
        self.url, self.stream, self.shards, self.interval = url, stream, shards, interval
        self.written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Feeder:
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: anyio.run(self._run), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    async def _run(self) -> None:
        async with aws_client("kinesis", self.url) as kinesis:
            tick = 0
            while not self._stop.is_set():
                entries = [
                    (f"t{tick}-s{i}", b"{}", hash_key_for(s)) for i, s in enumerate(self.shards)
                ]
                await put_records(kinesis, self.stream, entries)
                self.written += len(entries)
                tick += 1
                await anyio.sleep(self.interval)


class SinkTail:
    """The sink's batches, read incrementally (each poll parses only the lines added since)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: list[dict[str, Any]] = []
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return self.batches
        with open(self.path, "rb") as sink:
            sink.seek(self._offset)
            data = sink.read()
        complete = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += complete
        for line in data[:complete].splitlines():
            if line.strip():
                self.batches.append(json.loads(line))
        return self.batches

    def first_since(self, since: float, but: str = "") -> dict[str, tuple[float, str]]:
        """Per shard, the start (wall clock) and replica of its first batch started after
        ``since`` by any replica but ``but`` (a killed one, whose last batch may look later)."""
        firsts: dict[str, tuple[float, str]] = {}
        for batch in self.read():
            if batch["started"] > since and batch["records"] and batch["replica"] != but:
                firsts.setdefault(batch["records"][0][0], (batch["started"], batch["replica"]))
        return firsts


@dataclass(frozen=True, slots=True)
class Usage:
    """A process's CPU time (user + system, seconds) and resident memory (MB)."""

    cpu_s: float
    rss_mb: float


def usage(pid: int) -> Usage:
    """:class:`Usage` of ``pid`` from ``/proc`` (no psutil in the venv)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return Usage(cpu, rss_pages * _PAGE_MB)


def log_time(line: dict[str, Any]) -> float:
    """A JSON log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def acquisitions(procs: list[ServiceProcess], since: float) -> list[dict[str, Any]]:
    """Every ``lease.acquired`` logged by ``procs`` after ``since`` (epoch seconds)."""
    return [
        line for proc in procs for line in proc.events("lease.acquired") if log_time(line) > since
    ]


class TableRoad:
    """One replica's road to the shared in-memory lease table: while ``cut`` every call fails
    (the replica is partitioned from the table), and each read (view, members) fails with
    probability ``read_failure``, drawn from a generator seeded with ``seed`` (a run repeats).
    """

    _READS = frozenset({"lease_view", "members"})

    def __init__(self, table: Any, seed: int = 0) -> None:
        self._table = table
        self.cut = False
        self.read_failure = 0.0
        self._rng = random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._table, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.cut:
                raise CheckpointError(f"lease table {name}: cut off (simulated)")
            if name in self._READS and self._rng.random() < self.read_failure:
                raise CheckpointError(f"lease table {name}: throttled (simulated)")
            return await attribute(*args, **kwargs)

        return call


def coordinator_on(
    road: TableRoad,
    *,
    mapping: str,
    owner: str,
    settings: LeaseSettings,
    clock: Callable[[], float],
) -> LeaseCoordinator:
    """A real coordinator of ``mapping`` for replica ``owner``, reaching the table by ``road``
    and reading time from the simulation's ``clock``."""
    return LeaseCoordinator(
        road,  # type: ignore[arg-type]  # duck-typed like the in-memory table behind it
        mapping=mapping,
        owner=owner,
        settings=settings,
        clock=clock,
    )
