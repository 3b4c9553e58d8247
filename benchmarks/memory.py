"""Benchmark: peak RSS of ``poller run`` reading many backlogged shards (the read budget).

For each shard count: a Kinesis stream on moto's server (its own process) is filled with
``--records`` records of 1 KB per shard, then ``poller run`` (its own process) delivers them
all, batch size 100, to the benchmark's no-op Python handler, from TRIM_HORIZON. Printed per
run: the records, the event bytes per record, the wall time, and the service's peak RSS, read
from outside (``VmHWM`` in ``/proc/<pid>/status``, just before SIGTERM) and from inside (the
handler's ``ru_maxrss``). Then the RSS of the largest shard count relative to the smallest.

With ``--slow SECONDS`` the handler sleeps that long per batch (``bench_handler.sleepy``),
so reading outpaces delivery and the read budget fills, the case it exists for. The service
then runs for ``--duration`` seconds (not until every record is delivered) and the run also
prints the budget's gauges scraped from ``/metrics`` at the end: the bytes it held
(``poller_read_budget_used_bytes``, reads in flight included) and the records buffered.

The peak varies from run to run by several MB (how far reading gets ahead of delivery depends
on timing), about as much as the difference the ratio is meant to show; ``--repeat N`` runs
the service N times over each filled stream (each run from TRIM_HORIZON, with a checkpoint
store of its own) and the ratio compares the medians.

Run: ``.venv/bin/python benchmarks/memory.py [--shards 32 256] [--records 3000 1000]
[--budget-mib N] [--slow SECONDS --duration SECONDS] [--repeat N]`` (``--records`` per shard,
one per shard count; ``--budget-mib`` sets ``memory.read_budget_mib``, else the default
applies).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# Run as a script (scripts/bench): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_service
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    moto_server_process,
    put_records,
    stream_arn,
)
from tests.support.process import free_port
from tests.support.service_config import stream_mapping

RECORD_BYTES = 1024
BATCH_SIZE = 100
#: Streams filled at once (moto's server handles a few requests in parallel).
FILL_CONCURRENCY = 4


async def fill_stream(url: str, stream: str, shards: int, per_shard: int) -> None:
    """Create the stream and put ``per_shard`` records of 1 KB into each shard."""
    async with aws_client("kinesis", url) as kinesis:
        listing = await create_stream(kinesis, stream, shards)
        limiter = asyncio.Semaphore(FILL_CONCURRENCY)

        async def fill(shard: dict[str, Any]) -> None:
            async with limiter:
                entries = (
                    (f"k{n}", os.urandom(RECORD_BYTES), hash_key_for(shard))
                    for n in range(per_shard)
                )
                await put_records(kinesis, stream, entries)

        await asyncio.gather(*(fill(shard) for shard in listing))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB, read from outside it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """The sum over every label set of each named series on the service's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def run_service(
    url: str,
    stream: str,
    records: int,
    workdir: Path,
    budget_mib: float | None,
    *,
    slow: float = 0.0,
    duration: float = 60.0,
) -> dict[str, Any]:
    """Run ``poller run`` until the handler has seen ``records`` (with ``slow``: for
    ``duration`` seconds); its figures and peak RSS."""
    result = workdir / f"service-{time.monotonic_ns()}.json"
    env = {"POLLER_BENCH_RECORDS": str(records), "POLLER_BENCH_OUT": str(result)}
    port = free_port()
    sections: dict[str, Any] = {"observability": {"host": "127.0.0.1", "port": port}}
    if budget_mib is not None:
        sections["memory"] = {"read_budget_mib": budget_mib}
    handler = "benchmarks.bench_handler:handler"
    if slow:
        handler = "benchmarks.bench_handler:sleepy"
        env["POLLER_BENCH_SLEEP"] = str(slow)
    mapping = stream_mapping("bench", stream_arn(stream), handler, batch_size=BATCH_SIZE)
    started = time.monotonic()
    proc = start_service(workdir, url, mapping, env, **sections)
    deadline = started + (duration if slow else 1800)
    while not result.exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the service stopped before delivering every record")
        time.sleep(0.2)
    if not slow and not result.exists():
        proc.kill()
        raise RuntimeError("the service timed out before delivering every record")
    figures: dict[str, Any] = {"wall_s": time.monotonic() - started, "max_rss_mb": float("nan")}
    figures |= scrape(port, ("poller_read_budget_used_bytes", "poller_read_buffered_records"))
    figures["vmhwm_mb"] = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    if result.exists():
        figures |= dict(json.loads(result.read_text()))
    return figures


def event_bytes_per_record() -> int:
    """The event bytes (``StreamRecord.size``, what the budget counts) of one 1 KB record."""
    from poller.ports import StartPosition
    from poller.testing import FakeStreamApi, Put

    api = FakeStreamApi()
    start = StartPosition("TRIM_HORIZON")
    api.add_shard("s")
    raws = api.add_page("s", [Put("k1", b"x" * RECORD_BYTES)])
    return api.converter("s", start)(raws)[0].size


def print_run(shards: int, per_shard: int, filled: float, svc: dict[str, Any], slow: float) -> None:
    """One run's figures."""
    total = shards * per_shard
    done = (
        f"ran {svc['wall_s']:.0f} s with a handler of {slow:g} s a batch"
        if slow
        else f"delivered in {svc['wall_s']:.1f} s, {total / svc['wall_s']:.0f} records/s"
    )
    print(
        f"{shards:4} shards x {per_shard:5} records ({total} records, filled in "
        f"{filled:.0f} s): {done}; peak RSS {svc['vmhwm_mb']:.0f} MB "
        f"(VmHWM), {svc['max_rss_mb']:.0f} MB (ru_maxrss); at the end the budget "
        f"held {svc['poller_read_budget_used_bytes'] / 2**20:.1f} MiB, "
        f"{svc['poller_read_buffered_records']:.0f} records buffered",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--records", type=int, nargs="+", default=[3000, 1000])
    parser.add_argument("--budget-mib", type=float, default=None)
    parser.add_argument("--slow", type=float, default=0.0, help="handler seconds per batch")
    parser.add_argument("--duration", type=float, default=60.0, help="with --slow, seconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per shard count (median)")
    args = parser.parse_args()
    if len(args.records) != len(args.shards):
        parser.error("give one --records value per --shards value")
    budget = "the default" if args.budget_mib is None else f"{args.budget_mib:g} MiB"
    print(f"read budget: {budget}; batch size {BATCH_SIZE}; records of {RECORD_BYTES} bytes")
    print(f"event bytes per record (what the budget counts): {event_bytes_per_record()}")
    peaks: list[float] = []
    with moto_server_process() as url, tempfile.TemporaryDirectory() as tmp:
        for shards, per_shard in zip(args.shards, args.records, strict=True):
            stream = f"mem-{shards}-{os.getpid()}"
            started = time.monotonic()
            asyncio.run(fill_stream(url, stream, shards, per_shard))
            filled = time.monotonic() - started
            total = shards * per_shard
            runs = []
            for _ in range(args.repeat):
                svc = run_service(
                    url,
                    stream,
                    total,
                    Path(tmp),
                    args.budget_mib,
                    slow=args.slow,
                    duration=args.duration,
                )
                runs.append(svc["vmhwm_mb"])
                print_run(shards, per_shard, filled, svc, args.slow)
            peaks.append(statistics.median(runs))
            if args.repeat > 1:
                print(f"{shards:4} shards: median peak RSS {peaks[-1]:.0f} MB of {len(runs)} runs")
    if len(peaks) > 1:
        print(f"peak RSS {args.shards[-1]} vs {args.shards[0]} shards: {peaks[-1] / peaks[0]:.2f}x")


if __name__ == "__main__":
    main()
