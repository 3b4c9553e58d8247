"""Benchmark: Kinesis enhanced fan-out (SubscribeToShard) against polling, all on ministack.

ministack (``tests/support/ministack.py``, a process of its own, so its CPU is charged to
nobody measured here) is the emulator whose SubscribeToShard works from aiobotocore. Its
subscriptions look at the shard every 0.2 s and push what is new, and send an empty event on an
idle shard every 5 s; its subscriptions last 300 s. Three parts, each runnable alone with
``--only``:

* latency: one idle 1-shard stream; an EFO mapping (consumer ARN), a polling mapping (stream
  ARN), each in its own ``poller run`` process, and a raw loop (aiobotocore
  ``subscribe_to_shard`` through a consumer of its own, in this process, no poller) read it at
  the same time. Single records are put at ``--rate`` per second on average (each gap drawn
  uniformly from 0.5 to 1.5 times the mean, so that puts meet ministack's 0.2 s loop at every
  phase), each carrying its put time
  (``time.time()`` taken just before the PutRecord call). A service's Python handler (this
  module's :func:`latency_handler`) notes ``time.time()`` when it is invoked; the raw loop
  notes it when the event stream yields the event holding the record. Latency = that time
  minus the put time (one machine, one clock). Warm-up records are put until all three sides
  have received one, and are not counted.
* idle: a stream of ``--shards`` idle shards; a polling mapping, then an EFO mapping, each
  alone in ``poller run``. After ``--warmup`` seconds, the service process's CPU (user +
  system, every thread, ``/proc/PID/stat``) over ``--seconds``, as ``benchmarks/idle.py``
  measures it. Polling calls GetRecords about once a second per shard; on ministack a
  subscription gets an empty event every 5 s.
* throughput: ``--records`` records of 100 bytes put into 4 shards before either side reads;
  a polling mapping, then an EFO mapping, from TRIM_HORIZON, batch size ``--batch-size``, into
  the no-op ``benchmarks.bench_handler`` (its clocks run from its import, before the service's
  clients exist, to the invocation that completes the count; see
  ``benchmarks/kinesis_throughput.py``). records/s and CPU microseconds per record over that
  window, and marginal CPU per record (less each side's start-up, measured on a
  ``SMALL_RECORDS`` stream). ministack pushes a subscription's whole backlog in one event (AWS
  caps an event's size), so EFO's figure here is the service's cost, not AWS's pace.

Run: ``.venv/bin/python benchmarks/efo.py [--only latency|idle|throughput] [--latency-records
100] [--rate 5] [--seed 1] [--shards 100] [--warmup 20] [--seconds 60] [--records 100000]
[--batch-size 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Run as a script (scripts/bench): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_service
from benchmarks.idle import process_cpu_seconds
from benchmarks.kinesis_throughput import SMALL_RECORDS, fill_stream
from tests.support.aws import aws_client, create_stream, stream_arn, unique
from tests.support.ministack import active_consumer, ministack
from tests.support.service_config import stream_mapping

#: Where :func:`latency_handler` appends ``<n> <put time> <receive time>`` lines.
LATENCY_OUT = "POLLER_BENCH_LATENCY_OUT"
#: The longest any part waits for a side to deliver what it was given.
PATIENCE = 600.0
_lock = threading.Lock()


def latency_handler(event: dict[str, Any], context: Any) -> None:
    """The latency part's handler: the receive time of every record, beside its put time."""
    received = time.time()
    lines = []
    for record in event["Records"]:
        body = json.loads(base64.b64decode(record["kinesis"]["data"]))
        lines.append(f"{body['n']} {body['put']} {received}\n")
    with _lock, open(os.environ[LATENCY_OUT], "a") as out:
        out.writelines(lines)


# --- latency -------------------------------------------------------------------------------


class Latencies:
    """Receive - put times of one side, keyed by record number (warm-up records are < 0)."""

    def __init__(self) -> None:
        self.by_record: dict[int, float] = {}

    def note(self, n: int, put: float, received: float) -> None:
        self.by_record.setdefault(n, received - put)

    def read_file(self, path: Path) -> None:
        if path.exists():
            for line in path.read_text().splitlines():
                n, put, received = line.split()
                self.note(int(n), float(put), float(received))

    def warmed(self) -> bool:
        return any(n < 0 for n in self.by_record)

    def complete(self, count: int) -> bool:
        return all(n in self.by_record for n in range(count))

    def measured(self, count: int) -> list[float]:
        return sorted(self.by_record[n] for n in range(count) if n in self.by_record)


async def raw_subscriber(url: str, consumer_arn: str, shard_id: str, seen: Latencies) -> None:
    """The baseline: subscribe_to_shard and nothing else; subscribes again when ministack ends
    a subscription, after the last sequence number received."""
    position: dict[str, Any] = {"Type": "TRIM_HORIZON"}
    async with aws_client("kinesis", url) as kinesis:
        while True:
            response = await kinesis.subscribe_to_shard(
                ConsumerARN=consumer_arn, ShardId=shard_id, StartingPosition=position
            )
            async for event in response["EventStream"]:
                received = time.time()
                payload = event.get("SubscribeToShardEvent")
                if payload is None:
                    continue
                for record in payload["Records"]:
                    body = json.loads(record["Data"])
                    seen.note(body["n"], body["put"], received)
                continuation = payload["ContinuationSequenceNumber"]
                position = {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation}


async def put_one(kinesis: Any, stream: str, n: int) -> None:
    data = json.dumps({"n": n, "put": time.time()}).encode()
    await kinesis.put_record(StreamName=stream, Data=data, PartitionKey="k")


def refresh(sides: dict[str, Latencies], files: dict[str, Path]) -> None:
    for name, path in files.items():
        sides[name].read_file(path)


async def drive_latency(
    args: argparse.Namespace,
    url: str,
    stream: str,
    raw_consumer: str,
    sides: dict[str, Latencies],
    files: dict[str, Path],
) -> None:
    """Warm up until every side received a record, then put the measured ones at the rate."""
    async with aws_client("kinesis", url) as kinesis:
        shard_id = (await kinesis.list_shards(StreamName=stream))["Shards"][0]["ShardId"]
        raw = asyncio.create_task(raw_subscriber(url, raw_consumer, shard_id, sides["raw"]))
        jitter = random.Random(args.seed)
        try:
            deadline, warm = time.monotonic() + PATIENCE, -1
            while not all(side.warmed() for side in sides.values()):
                if time.monotonic() > deadline or raw.done():
                    raise RuntimeError(f"a side never received a warm-up record: {raw}")
                await put_one(kinesis, stream, warm)
                warm -= 1
                await asyncio.sleep(1.0)
                refresh(sides, files)
            await asyncio.sleep(2.0)  # let the last warm-up record's invocations finish
            for n in range(args.latency_records):
                await put_one(kinesis, stream, n)
                # Jittered gaps: ministack looks at a subscribed shard every 0.2 s, so puts at a
                # fixed pace would hit its loop at one phase and give each side a constant.
                await asyncio.sleep(jitter.uniform(0.5, 1.5) / args.rate)
            while not all(s.complete(args.latency_records) for s in sides.values()):
                if time.monotonic() > deadline or raw.done():
                    raise RuntimeError("a side did not receive every measured record")
                await asyncio.sleep(0.2)
                refresh(sides, files)
        finally:
            raw.cancel()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, min(len(values), round(share * len(values) + 0.5)))
    return values[rank - 1]


@contextmanager
def service(
    workdir: Path, url: str, mapping: dict[str, Any], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``poller run`` with ``mapping`` in a directory of its own (config and checkpoints),
    stopped with SIGTERM on leaving."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = start_service(workdir, url, mapping, env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_latency(args: argparse.Namespace, url: str, workdir: Path) -> None:
    stream = unique("efo-lat")
    arn = stream_arn(stream)

    async def setup() -> tuple[str, str]:
        async with aws_client("kinesis", url) as kinesis:
            await create_stream(kinesis, stream, 1)
            efo = await active_consumer(kinesis, arn, "bench-efo")
            raw = await active_consumer(kinesis, arn, "bench-raw")
        return efo, raw

    efo_consumer, raw_consumer = asyncio.run(setup())
    target = "benchmarks.efo:latency_handler"
    files = {"EFO": workdir / "lat-efo.txt", "polling": workdir / "lat-poll.txt"}
    sides = {"EFO": Latencies(), "polling": Latencies(), "raw": Latencies()}
    efo_mapping = stream_mapping("bench", efo_consumer, target, batch_size=100)
    poll_mapping = stream_mapping("bench", arn, target, batch_size=100)
    efo_env, poll_env = {LATENCY_OUT: str(files["EFO"])}, {LATENCY_OUT: str(files["polling"])}
    with (
        service(workdir / "lat-efo", url, efo_mapping, efo_env),
        service(workdir / "lat-poll", url, poll_mapping, poll_env),
    ):
        asyncio.run(drive_latency(args, url, stream, raw_consumer, sides, files))
    print(
        f"\n== put -> invoke latency, 1 idle shard, {args.latency_records} single records "
        f"at {args.rate:g}/s on average (jittered gaps)"
    )
    print(f"{'side':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'records':>8}")
    labels = {
        "EFO": "EFO mapping (poller run)",
        "polling": "polling mapping (poller run)",
        "raw": "raw subscribe_to_shard loop",
    }
    for name, label in labels.items():
        values = sides[name].measured(args.latency_records)
        print(
            f"{label:28} {percentile(values, 0.5) * 1e3:8.0f} {percentile(values, 0.99) * 1e3:8.0f}"
            f" {values[-1] * 1e3:8.0f} {len(values):8}"
        )
    print(
        "method: clock starts just before PutRecord (time.time() in the record); ends when the\n"
        "  service's Python handler is invoked (EFO, polling) or when the raw loop's event\n"
        "  stream yields the event (raw). All three read the same records at the same time;\n"
        "  ministack looks at a subscribed shard every 0.2 s, so EFO waits 0-0.2 s for it."
    )


# --- idle ----------------------------------------------------------------------------------


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to loopback ``port`` (IPv4): an EFO
    service holds one per subscribed shard, so this shows that it subscribed to every shard."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        count += remote_port == port and state == "01" and inode in inodes
    return count


def idle_cpu(
    args: argparse.Namespace, url: str, workdir: Path, mapping: dict[str, Any]
) -> tuple[float, float, int]:
    """CPU seconds of the service over the window after warm-up, the window's length, and the
    service's connections to the emulator at the window's end."""
    with service(workdir, url, mapping, {"POLLER_BENCH_OUT": os.devnull}) as proc:
        time.sleep(args.warmup)
        if proc.poll() is not None:
            raise RuntimeError("the idle service stopped during warm-up")
        (user0, sys0), wall0 = process_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        (user, system), wall = process_cpu_seconds(proc.pid), time.monotonic() - wall0
        if proc.poll() is not None:
            raise RuntimeError("the idle service stopped during the window")
        connections = connections_to(proc.pid, urlparse(url).port or 80)
    return (user - user0) + (system - sys0), wall, connections


def run_idle(args: argparse.Namespace, url: str, workdir: Path) -> None:
    stream = unique("efo-idle")
    arn = stream_arn(stream)

    async def setup() -> str:
        async with aws_client("kinesis", url) as kinesis:
            await create_stream(kinesis, stream, args.shards)
            return await active_consumer(kinesis, arn, "bench-idle")

    consumer = asyncio.run(setup())
    target = "benchmarks.bench_handler:handler"
    polling = stream_mapping("bench", arn, target, starting_position="LATEST")
    efo = stream_mapping("bench", consumer, target, starting_position="LATEST")
    figures = {
        "polling mapping": idle_cpu(args, url, workdir / "idle-poll", polling),
        "EFO mapping": idle_cpu(args, url, workdir / "idle-efo", efo),
    }
    print(f"\n== idle CPU, {args.shards} idle shards, {args.seconds:g} s after {args.warmup:g} s")
    print(f"{'side':28} {'CPU s':>8} {'% core':>8} {'% per 100 shards':>17} {'connections':>11}")
    for label, (cpu, wall, connections) in figures.items():
        share = cpu / wall * 100
        print(
            f"{label:28} {cpu:8.2f} {share:8.2f} {share * 100 / args.shards:17.2f} {connections:11}"
        )
    print(
        "method: the service process's user + system CPU (all threads, /proc/PID/stat) over the\n"
        "  window, each side alone; polling reads each idle shard about once a second, an EFO\n"
        "  subscription on ministack gets an empty event every 5 s (AWS: at least every 5 s).\n"
        "  connections: the service's open TCP connections to ministack at the window's end\n"
        "  (EFO: one per subscribed shard, plus any pooled ones)."
    )


# --- throughput ----------------------------------------------------------------------------


def run_backlog(
    url: str, source_arn: str, records: int, batch_size: int, workdir: Path
) -> dict[str, Any]:
    """``poller run`` from TRIM_HORIZON until the no-op handler has seen ``records``; its
    figures (wall and CPU seconds from the handler's import)."""
    result = workdir / f"result-{time.monotonic_ns()}.json"
    mapping = stream_mapping(
        "bench", source_arn, "benchmarks.bench_handler:handler", batch_size=batch_size
    )
    env = {"POLLER_BENCH_RECORDS": str(records), "POLLER_BENCH_OUT": str(result)}
    with service(workdir / f"svc-{time.monotonic_ns()}", url, mapping, env) as proc:
        deadline = time.monotonic() + PATIENCE
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service stopped or timed out before delivering all")
            time.sleep(0.1)
    return dict(json.loads(result.read_text()))


def run_throughput(args: argparse.Namespace, url: str, workdir: Path) -> None:
    big, small = unique("efo-tp"), unique("efo-tp-small")
    started = time.monotonic()
    asyncio.run(fill_stream(url, big, args.records))
    asyncio.run(fill_stream(url, small, SMALL_RECORDS))
    took = time.monotonic() - started

    async def consumers() -> tuple[str, str]:
        async with aws_client("kinesis", url) as kinesis:
            return (
                await active_consumer(kinesis, stream_arn(big), "bench-tp"),
                await active_consumer(kinesis, stream_arn(small), "bench-tp"),
            )

    big_consumer, small_consumer = asyncio.run(consumers())
    sides = {
        "polling mapping": (stream_arn(big), stream_arn(small)),
        "EFO mapping": (big_consumer, small_consumer),
    }
    rows = []
    for label, (big_arn, small_arn) in sides.items():
        whole = run_backlog(url, big_arn, args.records, args.batch_size, workdir)
        start_up = run_backlog(url, small_arn, SMALL_RECORDS, args.batch_size, workdir)
        rows.append((label, whole, start_up))
    print(
        f"\n== throughput, {args.records} records of 100 bytes in 4 shards (put in {took:.1f} s),"
        f" batch size {args.batch_size}"
    )
    print(
        f"{'side':28} {'records/s':>10} {'cpu us/rec':>10} {'marginal':>9} "
        f"{'start-up ms':>11} {'peak RSS MB':>11}"
    )
    for label, whole, start_up in rows:
        rate = args.records / whole["wall_s"]
        per_record = whole["cpu_s"] / args.records * 1e6
        extra = args.records - SMALL_RECORDS
        # Below ten times the small run, the difference is mostly noise: not printed.
        marginal = (whole["cpu_s"] - start_up["cpu_s"]) / extra * 1e6
        shown = f"{marginal:9.1f}" if args.records >= 10 * SMALL_RECORDS else f"{'-':>9}"
        print(
            f"{label:28} {rate:10.0f} {per_record:10.1f} {shown} "
            f"{start_up['cpu_s'] * 1e3:11.0f} {whole['max_rss_mb']:11.0f}"
        )
    print(
        "method: a backlog put before the service starts; the clocks run from the handler\n"
        "  module's import (before any client exists) to the invocation completing the count;\n"
        "  CPU is the service process's. marginal = (CPU of this run - CPU of a run over\n"
        f"  {SMALL_RECORDS} records) / the difference in records; start-up ms = CPU of that small\n"
        "  run. ministack pushes a shard's whole backlog in one event, every 0.2 s."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("latency", "idle", "throughput"))
    parser.add_argument("--latency-records", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="latency: records put per second")
    parser.add_argument("--seed", type=int, default=1, help="latency: seed of the put gaps")
    parser.add_argument("--shards", type=int, default=100, help="idle: shards of the stream")
    parser.add_argument("--warmup", type=float, default=20.0, help="idle: seconds of warm-up")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle: the measured window")
    parser.add_argument("--records", type=int, default=100_000, help="throughput: the backlog")
    parser.add_argument("--batch-size", type=int, default=1000, help="throughput: batch size")
    args = parser.parse_args()
    parts = {"latency": run_latency, "idle": run_idle, "throughput": run_throughput}
    with ministack() as url, tempfile.TemporaryDirectory() as tmp:
        print(f"ministack at {url}; figures from a shared 2-core machine are noisy")
        for name, run in parts.items():
            if args.only in (None, name):
                workdir = Path(tmp) / name
                workdir.mkdir()
                run(args, url, workdir)


if __name__ == "__main__":
    main()
