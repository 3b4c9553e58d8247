"""Benchmark: the service against a plain aiobotocore GetRecords loop, on the same shards.

Puts N records of 100 bytes into a 4-shard stream on moto's server (its own process, so its
CPU is charged to neither side), then, in the same run:

* raw loop: one process, one task per shard, GetRecords(Limit=10000) from TRIM_HORIZON until
  every record was read. Nothing else.
* service: ``poller run`` in its own process, a no-op Python handler, batch_size 1000.

Both sides measure themselves from the moment their AWS client is ready (the service: when the
handler module is imported, which happens before its first ListShards) to the moment the last
record was in hand (the service: the end of the invocation that completed the count). They
report wall time, their own process CPU time and peak RSS. Printed: records/s of each and the
ratio, CPU microseconds per record of each and the ratio, peak RSS.

Run: ``.venv/bin/python benchmarks/kinesis_throughput.py [--records 100000] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from aiobotocore.session import get_session

REPO = Path(__file__).resolve().parents[1]
SHARDS = 4
ARN_PREFIX = "arn:aws:kinesis:us-east-1:123456789012:stream/"
CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.1)
        else:
            return proc, url
    raise RuntimeError("moto server did not start")


async def fill_stream(
    url: str, stream: str, records: int, shards: int = SHARDS, keys: int = 0
) -> None:
    """Create the stream and put the records, one shard at a time, 500 per call."""
    session = get_session()
    async with session.create_client("kinesis", "us-east-1", endpoint_url=url, **CREDS) as k:
        await k.create_stream(StreamName=stream, ShardCount=shards)
        await k.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
        listing = (await k.list_shards(StreamName=stream))["Shards"]
        data = b"x" * 100
        for i, shard in enumerate(listing):
            count = records // shards + (1 if i < records % shards else 0)
            hash_key = shard["HashKeyRange"]["StartingHashKey"]
            for start in range(0, count, 500):
                batch = [
                    {
                        "PartitionKey": f"k{(start + j) % keys if keys else start + j}",
                        "Data": data,
                        "ExplicitHashKey": hash_key,
                    }
                    for j in range(min(500, count - start))
                ]
                response = await k.put_records(StreamName=stream, Records=batch)
                assert response["FailedRecordCount"] == 0


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
    config = workdir / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "aws": {"region": "us-east-1", "endpoint_url": url},
                "checkpoints": {"path": str(workdir / f"ckpt-{time.monotonic_ns()}.db")},
                "logging": {"level": "WARNING", "format": "json"},
                "observability": {"host": "127.0.0.1", "port": 0},
                "mappings": [
                    {
                        "name": "bench",
                        "event_source_arn": f"{ARN_PREFIX}{stream}",
                        "starting_position": "TRIM_HORIZON",
                        "batch_size": 1000,
                        "target": {"type": "python", "handler": "benchmarks.bench_handler:handler"},
                        **(mapping or {}),
                    }
                ],
            }
        )
    )
    env = {
        **os.environ,
        **{k.upper(): v for k, v in CREDS.items()},
        "PYTHONPATH": str(REPO),
        "POLLER_BENCH_RECORDS": str(records),
        "POLLER_BENCH_OUT": str(result),
        **(env_extra or {}),
    }
    command = [sys.executable, "-m", "poller", "run", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=REPO, env=env)
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


def report(raw: dict[str, Any], svc: dict[str, Any], records: int) -> None:
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
    print(f"throughput ratio (service/raw)   {svc_rate / raw_rate:.2f}   (goal >= 0.8)")
    print(f"cpu per record ratio (service/raw) {svc_cpu / raw_cpu:.2f}   (goal <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="measure each side this many times")
    args = parser.parse_args()
    moto, url = start_moto()
    try:
        stream = f"bench-{os.getpid()}"
        started = time.monotonic()
        asyncio.run(fill_stream(url, stream, args.records))
        took = time.monotonic() - started
        print(f"put {args.records} records of 100 bytes into {SHARDS} shards in {took:.1f} s")
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(1, args.rounds + 1):
                raw = run_raw(url, stream, args.records)
                svc = run_service(url, stream, args.records, Path(tmp))
                print(f"--- round {round_no}")
                report(raw, svc, args.records)
    finally:
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
