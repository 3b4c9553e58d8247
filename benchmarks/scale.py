"""Figures for a large fleet: N shards x R replicas as ``poller run`` processes.

The stream lives on ministack (``tests/support/scale_fleet.py``; ``--streams moto`` for moto's
server), the lease table on DynamoDB Local behind a counting HTTP proxy
(``tests/support/fault_proxy.py``), every replica delivers to the shared JSON-lines sink
(``tests/support/file_sink.py``: per batch the replica, the shard, and when the handler ran),
and a feeder puts one record into every shard per second. Default lease timing (10 s leases)
with a 3 s takeover grace (the sink handler's timeout), as ``benchmarks/replicas.py``.

Reports, in this order:

* time to full assignment: from starting R replicas together to every shard delivering, with
  the leases spread evenly (at most one apart);
* CPU (% of one core, from process CPU time) and RSS per replica, delivering and at rest;
* DynamoDB calls per minute at rest (the feeder stopped, so no checkpoints), by operation;
* lease moves when a replica joins (an R+1-th) and when one leaves (SIGTERM): the leases
  acquired (``lease.acquired`` logs) and the shards whose owner differs before and after;
* failover: SIGKILL one replica -> each of its shards delivering again on another (median of
  ``--failover-runs``; the killed one is restarted and the fleet rebalanced between runs);
* concurrent invocations: pairs of batches of one shard from two processes whose handler runs
  overlapped (must be 0).

Run: ``.venv/bin/python -m benchmarks.scale [--shards 256] [--replicas 4] [--rest-seconds 60]
[--failover-runs 5] [--skip-moves]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio

from tests.support.aws import moto_server_process, unique
from tests.support.dynamodb_local import dynamodb_local
from tests.support.fault_proxy import FaultProxy
from tests.support.replicas import (
    LEASE_STORES,
    Fleet,
    fleet_config,
    leases,
    make_stream,
    overlaps,
    wait,
)
from tests.support.scale_fleet import Feeder, SinkTail, acquisitions, log_time, ministack, usage

NAMES = "abcdefghijklmnopqrstuvwxyz"
#: Seconds each wait for the fleet may take before the run fails (2 shared cores).
SETTLE_LIMIT = 300.0


class ScaleRun:
    """One fleet on one stream and one lease table, and the measurements made on it."""

    def __init__(self, args: argparse.Namespace, streams: str, store: str, proxy: FaultProxy):
        self.args, self.streams, self.store, self.proxy = args, streams, store, proxy
        self.workdir = Path(tempfile.mkdtemp(prefix="scale-"))
        stream, self.table = unique("scale"), unique("leases")
        self.shards = anyio.run(make_stream, streams, stream, args.shards)
        self.shard_ids = {s["ShardId"] for s in self.shards}
        LEASE_STORES[self.table] = store  # our own reads go around the counting proxy
        config = fleet_config(
            self.workdir, streams, stream, self.table, endpoints={"dynamodb": proxy.url}
        )
        self.sink = self.workdir / "sink.jsonl"
        self.fleet = Fleet(self.workdir, config, self.sink, sleep=0.0)
        self.tail = SinkTail(self.sink)
        self.feeder = Feeder(streams, stream, self.shards, interval=1.0)
        self.names = NAMES[: args.replicas]

    # -- observations --------------------------------------------------------------------

    def owners(self) -> dict[str, str | None]:
        return {lease.shard_id: lease.owner for lease in leases(self.streams, self.table)}

    def balanced(self, names: str) -> bool:
        owners = self.owners()
        counts = Counter(owners.values())
        return (
            set(owners) >= self.shard_ids
            and set(counts) == set(names)
            and max(counts.values()) - min(counts.values()) <= 1
        )

    def delivering_since(
        self, since: float, shard_ids: set[str], but: str = ""
    ) -> dict[str, tuple[float, str]]:
        """The first batch after ``since`` of each of ``shard_ids`` by any replica but
        ``but``, once all have one."""
        firsts = self.tail.first_since(since, but)
        return firsts if shard_ids <= set(firsts) else {}

    def settle(self, names: str, since: float, what: str) -> float:
        """Wait until ``names`` share the leases evenly and every shard delivered after
        ``since``; return when (epoch seconds)."""

        def settled() -> float | None:
            if self.delivering_since(since, self.shard_ids) and self.balanced(names):
                return time.time()
            return None

        done: float = wait(settled, SETTLE_LIMIT, what)
        return done

    # -- phases --------------------------------------------------------------------------

    def assignment(self) -> None:
        self.feeder.start()
        started = time.time()
        self.fleet.start_all(self.names)
        done = self.settle(self.names, started, "full assignment")
        print(
            f"time to full assignment ({self.args.shards} shards x {len(self.names)}"
            f" replicas, started together): {done - started:.1f} s"
        )

    def resources(self, what: str, seconds: float) -> None:
        procs = {n: self.fleet.procs[n] for n in self.names}
        pids = {n: p.proc.pid for n, p in procs.items() if p.proc is not None}
        before = {n: usage(pid) for n, pid in pids.items()}
        time.sleep(seconds)  # the measurement window itself
        after = {n: usage(pid) for n, pid in pids.items()}
        cpu = {n: 100 * (after[n].cpu_s - before[n].cpu_s) / seconds for n in pids}
        rss = {n: after[n].rss_mb for n in pids}
        print(
            f"CPU per replica {what} (% of a core over {seconds:.0f} s):"
            f" {', '.join(f'{n} {c:.1f}' for n, c in cpu.items())};"
            f" RSS MB: {', '.join(f'{n} {r:.0f}' for n, r in rss.items())}"
        )

    def at_rest(self) -> None:
        self.feeder.stop()
        time.sleep(5)  # the last batches checkpoint
        before = len(self.proxy.requests)
        self.resources("at rest", self.args.rest_seconds)
        window = self.proxy.requests[before:]
        calls = Counter(op.split(".")[-1] for op, _ in window if op.startswith("DynamoDB_"))
        per_minute = {op: round(n * 60 / self.args.rest_seconds) for op, n in sorted(calls.items())}
        total = round(sum(calls.values()) * 60 / self.args.rest_seconds)
        print(
            f"DynamoDB calls per minute at rest, {len(self.names)} replicas x"
            f" {self.args.shards} shards: {total} {per_minute}"
        )
        self.feeder.start()

    def moves(self, event: str, names: str, change: Iterator[None], leaver: str = "") -> None:
        """Run ``change`` (a join or a leave), then report the leases that moved."""
        owners_before = self.owners()
        held = Counter(owners_before.values())
        ideal = held[leaver] if leaver else self.args.shards // len(names)
        since = time.time()
        next(change)
        done = self.settle(names, since, f"rebalance after {event}")
        owners_after = self.owners()
        net = sum(owners_before.get(s) != owners_after.get(s) for s in self.shard_ids)
        procs = list(self.fleet.procs.values())
        acquired = len(acquisitions(procs, since))
        print(
            f"lease moves on {event}: {acquired} leases acquired, {net} shards changed owner"
            f" (ideal {ideal}),"
            f" settled in {done - since:.1f} s"
        )

    def join_and_leave(self) -> None:
        new = NAMES[len(self.names)]
        joined = self.names + new

        def join() -> Iterator[None]:
            self.fleet.start(new)
            yield

        def leave() -> Iterator[None]:
            proc = self.fleet.procs[new]
            proc.signal(signal.SIGTERM)
            proc.wait(60)
            yield

        self.moves(f"a replica joins (to {len(joined)})", joined, join())
        self.moves("a replica leaves (SIGTERM)", self.names, leave(), leaver=new)

    def taken_at(self, orphans: set[str], victim: str, killed: float) -> float:
        """When the last of ``orphans`` was acquired by a peer (from their logs)."""
        peers = [p for name, p in self.fleet.procs.items() if name != victim]
        found = {
            line["shard"]: log_time(line)
            for line in acquisitions(peers, killed)
            if line.get("previous_owner") == victim and line["shard"] in orphans
        }
        return max(found.values(), default=float("nan"))

    def failover_once(self) -> tuple[float, float]:
        victim = self.names[-1]
        orphans = {s for s, owner in self.owners().items() if owner == victim}
        assert orphans, f"{victim} holds no lease to fail over"
        self.fleet.procs[victim].signal(signal.SIGKILL)
        killed = time.time()

        def resumed() -> float | None:
            firsts = self.delivering_since(killed, orphans, but=victim)
            return max(firsts[s][0] for s in orphans) if firsts else None

        back: float = wait(resumed, SETTLE_LIMIT, "failover")
        taken = self.taken_at(orphans, victim, killed)
        self.fleet.procs[victim].wait(10)
        since = time.time()
        self.fleet.start(victim)
        self.settle(self.names, since, "rebalance after restart")
        return taken - killed, back - killed

    def failovers(self) -> None:
        runs, takes = [], []
        for n in range(self.args.failover_runs):
            taken, delivering = self.failover_once()
            runs.append(delivering)
            takes.append(taken)
            print(
                f"  failover run {n + 1}: leases taken {taken:.1f} s, delivering {delivering:.1f} s"
            )
        print(
            f"failover, leases taken (SIGKILL to the last orphan acquired): median"
            f" {statistics.median(takes):.1f} s over {len(takes)} runs:"
            f" {[round(t, 1) for t in takes]}"
        )
        print(
            f"failover, delivering again (SIGKILL 1 of {len(self.names)},"
            f" {self.args.shards} shards): median"
            f" {statistics.median(runs):.1f} s, min {min(runs):.1f} s, max {max(runs):.1f} s"
            f" over {len(runs)} runs: {[round(r, 1) for r in runs]}"
        )

    def exclusivity(self) -> None:
        batches = self.tail.read()
        found = overlaps(batches)
        print(f"concurrent invocations of a shard: {len(found)} (over {len(batches)} batches)")
        for shard, earlier, later in found[:5]:
            print(
                f"  {shard}: {earlier['replica']} {earlier['started']:.3f}-"
                f"{earlier['finished']:.3f} vs {later['replica']} {later['started']:.3f}"
            )

    def close(self) -> None:
        self.feeder.stop()
        self.fleet.stop_all()


@contextlib.contextmanager
def stream_emulator(kind: str) -> Iterator[str]:
    with ministack() if kind == "ministack" else moto_server_process() as url:
        yield url


def main() -> None:
    # The replicas inherit these: dummy credentials for the emulator, never a real profile.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rest-seconds", type=float, default=60.0)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--failover-runs", type=int, default=5)
    parser.add_argument("--skip-moves", action="store_true", help="no join/leave")
    parser.add_argument("--streams", choices=("ministack", "moto"), default="ministack")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures as measured
    with (
        stream_emulator(args.streams) as streams,
        dynamodb_local() as store,
        FaultProxy(store) as proxy,
    ):
        run = ScaleRun(args, streams, store, proxy)
        try:
            run.assignment()
            run.resources("delivering (1 record/shard/s)", args.load_seconds)
            run.at_rest()
            if not args.skip_moves:
                run.join_and_leave()
            if args.failover_runs:
                run.failovers()
        finally:
            run.close()
        run.exclusivity()


if __name__ == "__main__":
    main()
