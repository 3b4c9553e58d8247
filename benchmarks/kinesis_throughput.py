"""Benchmark: the service against a plain aiobotocore GetRecords loop, on the same shards.

Puts N records of 100 bytes into a 4-shard stream on an emulator in its own process (so its CPU
is charged to neither side): moto's server by default, or ministack (``--emulator ministack``).
Then, in the same run:

* raw loop: one process, one task per shard, GetRecords(Limit=10000) from TRIM_HORIZON until
  every record was read. Nothing else.
* service: ``poller run`` in its own process, a no-op Python handler, batch_size 1000.

Both sides measure themselves over the same window: from just before their AWS clients are
created (the service: when the handler module is imported, which happens while the targets are
built, before any client exists) to the moment the last record was in hand (the service: the
end of the invocation that completed the count). They report wall time, their own process CPU
time and peak RSS. Printed, for each side and as ratios:

* records/s, and CPU microseconds per record: the whole window's CPU over the records. It
  includes each side's fixed start-up (client creation and the model loading it triggers,
  ListShards, iterators; for the service also leases, checkpoints and its tasks), which is
  not per-record work and weighs less the more records are read.
* marginal CPU per record, and marginal records/s: the same, less that fixed part. Each
  round also runs both sides on a small stream of ``SMALL_RECORDS`` records (same shards,
  same record size, same settings); marginal = (CPU, or wall time, of the big run - that of
  the small run) / (records - SMALL_RECORDS). Both sides' whole-window figures stay printed
  beside it.

The emulator's own CPU over each side's run is printed too. On moto it is busy about 95 % of
either side's window (about 110 us of its CPU per record), so both sides read at moto's pace and
the ratio can only be about 1.0. ministack serves a record for about 10 us, so there the
clients' own cost sets the pace and the ratio shows what the service's read path is worth.

Run: ``.venv/bin/python benchmarks/kinesis_throughput.py [--records 100000] [--rounds 1]
[--emulator moto|ministack]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script (scripts/bench): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import REPO, start_service
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    moto_server_process,
    put_records,
    stream_arn,
)
from tests.support.ministack import ministack
from tests.support.service_config import stream_mapping

SHARDS = 4
#: Records of the small stream whose run measures each side's fixed start-up CPU.
SMALL_RECORDS = 1000


async def fill_stream(
    url: str, stream: str, records: int, shards: int = SHARDS, keys: int = 0
) -> None:
    """Create the stream and put the records (100 bytes each), one shard at a time, 500 per
    call; partition keys cycle through ``keys`` keys if given."""
    async with aws_client("kinesis", url) as kinesis:
        listing = await create_stream(kinesis, stream, shards)
        for i, shard in enumerate(listing):
            count = records // shards + (1 if i < records % shards else 0)
            entries = (
                (f"k{n % keys if keys else n}", b"x" * 100, hash_key_for(shard))
                for n in range(count)
            )
            await put_records(kinesis, stream, entries)


def emulator_pid(url: str) -> int | None:
    """The pid of the emulator listening on ``url``'s port: moto names it on its command line,
    ministack in its environment (found through /proc; None where it cannot be)."""
    port = url.rsplit(":", 1)[1].encode()
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"moto.server" in b" ".join(argv) and port in argv) or (
            b"GATEWAY_PORT=" + port in environ and b"ministack" in b" ".join(argv)
        ):
            return int(entry.name)
    return None


@contextlib.contextmanager
def emulator(name: str) -> Iterator[str]:
    """The Kinesis emulator the sides read from, in its own process: moto (the default, the
    tests' emulator; it serves about 9k records/s here, so both sides wait on it) or ministack
    (about 3x as fast, so the clients' own cost sets the pace)."""
    if name == "ministack":
        with ministack() as url:
            yield url
    else:
        with moto_server_process() as url:
            yield url


def process_cpu(pid: int | None) -> float:
    """A process's CPU seconds so far (user + system), or 0 where /proc cannot say."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_emulator_cpu(pid: int | None, run: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one side, adding the emulator's CPU seconds over its whole run as ``emulator_cpu_s``:
    busy near its wall time means the emulator, not the side, set the pace."""
    before = process_cpu(pid)
    result: dict[str, Any] = run(*args, **kwargs)
    result["emulator_cpu_s"] = process_cpu(pid) - before
    return result


def run_raw(url: str, stream: str, records: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "raw_loop.py"), url, stream, str(records)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def run_service(
    url: str,
    stream: str,
    records: int,
    workdir: Path,
    *,
    mapping: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``poller run`` until the benchmark handler has seen ``records``; return its figures."""
    result = workdir / f"service-{time.monotonic_ns()}.json"
    fields = {"batch_size": 1000, **(mapping or {})}
    target = fields.pop("target", "benchmarks.bench_handler:handler")
    env = {"POLLER_BENCH_RECORDS": str(records), "POLLER_BENCH_OUT": str(result)}
    proc = start_service(
        workdir,
        url,
        stream_mapping("bench", stream_arn(stream), target, **fields),
        env | (env_extra or {}),
    )
    deadline = time.monotonic() + 600
    while not result.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the service stopped or timed out before delivering every record")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    time.sleep(0.1)
    return dict(json.loads(result.read_text()))


def report(
    raw: dict[str, Any],
    svc: dict[str, Any],
    records: int,
    small: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> None:
    """Print one round; ``small`` holds the raw loop's and the service's small-stream runs."""
    raw_rate, svc_rate = records / raw["wall_s"], records / svc["wall_s"]
    raw_cpu, svc_cpu = raw["cpu_s"] / records * 1e6, svc["cpu_s"] / records * 1e6
    print(f"records                    {records}")
    for name, rate, cpu, rss in (
        ("raw loop", raw_rate, raw_cpu, raw["max_rss_mb"]),
        ("service", svc_rate, svc_cpu, svc["max_rss_mb"]),
    ):
        print(
            f"{name:12} records/s {rate:10.0f}   cpu/record {cpu:6.1f} us   peak RSS {rss:.0f} MB"
        )
    print(f"throughput ratio (service/raw)   {svc_rate / raw_rate:.2f}   (goal >= 1.0)")
    print(
        f"cpu per record ratio (service/raw) {svc_cpu / raw_cpu:.2f}"
        "   (goal <= 0.37: 5 us where raw costs 13.4 us)"
    )
    for name, run in (("raw loop", raw), ("service", svc)):
        if run.get("emulator_cpu_s"):
            print(
                f"{name:12} emulator CPU {run['emulator_cpu_s']:6.1f} s"
                f" = {run['emulator_cpu_s'] / records * 1e6:5.1f} us/record"
                " (its whole run, start-up and shut-down included)"
            )
    if small is None or records <= SMALL_RECORDS:
        return
    extra = records - SMALL_RECORDS
    raw_marginal = (raw["cpu_s"] - small[0]["cpu_s"]) / extra * 1e6
    svc_marginal = (svc["cpu_s"] - small[1]["cpu_s"]) / extra * 1e6
    # The same split for time: the small run's wall time is each side's fixed start-up
    # (clients, ListShards, iterators; the service's checkpoints and tasks too) plus its few
    # records, so what is left is the rate once reading.
    raw_steady = extra / max(raw["wall_s"] - small[0]["wall_s"], 1e-9)
    svc_steady = extra / max(svc["wall_s"] - small[1]["wall_s"], 1e-9)
    for name, run, marginal, steady in (
        ("raw loop", small[0], raw_marginal, raw_steady),
        ("service", small[1], svc_marginal, svc_steady),
    ):
        print(
            f"{name:12} start-up cpu {run['cpu_s'] * 1e3:6.0f} ms, wall {run['wall_s'] * 1e3:6.0f}"
            f" ms ({SMALL_RECORDS} records)   marginal cpu/record {marginal:6.1f} us,"
            f" records/s {steady:8.0f}"
        )
    print(f"marginal cpu per record ratio (service/raw) {svc_marginal / raw_marginal:.2f}")
    print(f"marginal throughput ratio (service/raw) {svc_steady / raw_steady:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="measure each side this many times")
    parser.add_argument("--emulator", choices=("moto", "ministack"), default="moto")
    args = parser.parse_args()
    with emulator(args.emulator) as url:
        stream, small_stream = f"bench-{os.getpid()}", f"bench-small-{os.getpid()}"
        started = time.monotonic()
        asyncio.run(fill_stream(url, stream, args.records))
        asyncio.run(fill_stream(url, small_stream, SMALL_RECORDS))
        took = time.monotonic() - started
        print(
            f"put {args.records} (and {SMALL_RECORDS}) records of 100 bytes into {SHARDS} "
            f"shards of {args.emulator} in {took:.1f} s"
        )
        server = emulator_pid(url)
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(1, args.rounds + 1):
                raw = with_emulator_cpu(server, run_raw, url, stream, args.records)
                svc = with_emulator_cpu(server, run_service, url, stream, args.records, Path(tmp))
                small = (
                    run_raw(url, small_stream, SMALL_RECORDS),
                    run_service(url, small_stream, SMALL_RECORDS, Path(tmp)),
                )
                print(f"--- round {round_no}")
                report(raw, svc, args.records, small)


if __name__ == "__main__":
    main()
