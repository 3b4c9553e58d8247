"""Figures for several replicas sharing shards through the DynamoDB lease table.

Runs real ``poller run`` processes against moto's server (its own process, for Kinesis) and
DynamoDB Local (the lease table, ``tests/support/dynamodb_local.py``), with the default
lease settings (10 s leases, renewed every ~3.3 s, balanced every ~5 s), on an 8-shard stream
under continuous writes, and prints:

* failover time: SIGKILL one of three replicas -> every orphaned shard delivering again
  (median and spread of N runs);
* join time: a third replica joining a running pair -> holding its share;
* duplicate deliveries under SIGKILL and under a rolling restart (SIGTERM each in turn);
* DynamoDB calls per minute at rest for 3 replicas x 8 shards (counted by an HTTP proxy in
  front of the lease table's endpoint, by operation).

Run: ``.venv/bin/python -m benchmarks.replicas [--runs 5] [--rest-seconds 60]``
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.support.aws import moto_server_process
from tests.support.dynamodb_local import dynamodb_local
from tests.support.fault_proxy import FaultProxy
from tests.support.replicas import Fleet, Writer, duplicates, leases, new_fleet, owner_counts, wait


def balanced(moto_url: str, table: str, names: set[str]) -> bool:
    counts = owner_counts(moto_url, table)
    return set(counts) == names and max(counts.values()) - min(counts.values()) <= 1


def start_balanced(fleet: Fleet, moto_url: str, table: str, names: str) -> None:
    """Start replicas ``names`` (one letter each) and wait until they share the shards."""
    fleet.start_all(names)
    wait(lambda: balanced(moto_url, table, set(names)), 60, "balance")


def failover_once(moto_url: str, store: str, workdir: Path) -> tuple[float, int]:
    fleet, stream, table, shards = new_fleet(workdir, moto_url, "bench", lease_store=store)
    try:
        with Writer(moto_url, stream, shards) as writer:
            start_balanced(fleet, moto_url, table, "abc")
            orphans = {lease.shard_id for lease in leases(moto_url, table) if lease.owner == "c"}
            fleet.procs["c"].signal(signal.SIGKILL)
            killed = time.time()

            def resumed_at() -> float | None:
                after = [b for b in fleet.batches() if b["started"] > killed]
                firsts: dict[str, float] = {}
                for b in after:
                    firsts.setdefault(b["records"][0][0], b["started"])
                if orphans <= set(firsts):
                    return max(firsts[s] for s in orphans)
                return None

            resumed: float = wait(resumed_at, 60, "failover")
        fleet.wait_delivered(writer, "all delivered")
        return resumed - killed, duplicates(fleet.delivered())
    finally:
        fleet.stop_all()


def join_time(moto_url: str, store: str, workdir: Path) -> float:
    fleet, stream, table, shards = new_fleet(workdir, moto_url, "bench", lease_store=store)
    try:
        with Writer(moto_url, stream, shards):
            start_balanced(fleet, moto_url, table, "ab")
            fleet.start("c").wait_ready(30)
            ready = time.monotonic()
            wait(lambda: owner_counts(moto_url, table).get("c", 0) >= 2, 60, "c's share")
            return time.monotonic() - ready
    finally:
        fleet.stop_all()


def rolling_restart_duplicates(moto_url: str, store: str, workdir: Path) -> tuple[int, int]:
    fleet, stream, table, shards = new_fleet(workdir, moto_url, "bench", lease_store=store)
    try:
        with Writer(moto_url, stream, shards) as writer:
            start_balanced(fleet, moto_url, table, "abc")
            for name in ("a", "b", "c"):
                fleet.procs[name].signal(signal.SIGTERM)
                fleet.procs[name].wait(40)
                fleet.start(name)
                wait(lambda: balanced(moto_url, table, {"a", "b", "c"}), 60, "rebalance")
        fleet.wait_delivered(writer, "all delivered")
        return duplicates(fleet.delivered()), len(set(writer.written) - set(fleet.delivered()))
    finally:
        fleet.stop_all()


def calls_at_rest(moto_url: str, store: str, workdir: Path, seconds: float) -> Counter[str]:
    with FaultProxy(store) as proxy:
        endpoints = {"dynamodb": proxy.url}
        fleet, _, table, _ = new_fleet(
            workdir, moto_url, "bench", endpoints=endpoints, lease_store=store
        )
        try:
            start_balanced(fleet, moto_url, table, "abc")
            before = len(proxy.requests)
            time.sleep(seconds)  # the measurement window itself
            window = proxy.requests[before:]
        finally:
            fleet.stop_all()
    return Counter(op.split(".")[-1] for op, _ in window if op.startswith("DynamoDB_"))


def main() -> None:
    # The replicas inherit these: dummy credentials for the emulator, never a real profile.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="failover measurements")
    parser.add_argument("--rest-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with (
        moto_server_process() as url,
        dynamodb_local() as store,
        tempfile.TemporaryDirectory() as tmp,
    ):
        root = Path(tmp)
        results = [
            failover_once(url, store, Path(tempfile.mkdtemp(dir=root))) for _ in range(args.runs)
        ]
        times = [t for t, _ in results]
        print(
            f"failover (SIGKILL 1 of 3, 8 shards): median {statistics.median(times):.1f} s,"
            f" min {min(times):.1f} s, max {max(times):.1f} s over {len(times)} runs"
        )
        print(f"duplicates under SIGKILL: {[d for _, d in results]} (batch size 20)")
        joined = join_time(url, store, Path(tempfile.mkdtemp(dir=root)))
        print(f"new replica to its share: {joined:.1f} s")
        dups, lost = rolling_restart_duplicates(url, store, Path(tempfile.mkdtemp(dir=root)))
        print(f"rolling restart of 3 replicas: {dups} duplicates, {lost} lost")
        calls = calls_at_rest(url, store, Path(tempfile.mkdtemp(dir=root)), args.rest_seconds)
        per_minute = {op: round(n * 60 / args.rest_seconds) for op, n in sorted(calls.items())}
        total = round(sum(calls.values()) * 60 / args.rest_seconds)
        print(f"DynamoDB calls per minute at rest, 3 replicas x 8 shards: {total} {per_minute}")


if __name__ == "__main__":
    main()
