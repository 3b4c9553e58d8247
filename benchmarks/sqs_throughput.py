"""Benchmark: an SQS mapping against a plain aiobotocore receive/delete loop, on the same queue.

The emulator runs in its own process (so its CPU is charged to neither side): moto's server by
default, with the test-only SQS speed-up of ``tests/support/sqs.py`` applied (stock moto spends
O(queue depth) per message and manages about 12 messages/s at 5,000 messages deep), or
ministack (``--emulator ministack``), which serves a message for a fraction of what either
side spends on it, so there the clients' own cost sets the pace. The queue is filled with N
messages of 100 bytes, then, in the same run:

* raw loop: one process, ``--concurrency`` tasks each doing ReceiveMessage(10, all
  attributes) then DeleteMessageBatch, until N messages were deleted. Nothing else.
* service: the queue is filled again to N, then ``poller run`` in its own process with a
  no-op Python handler (this module's :func:`handler`), batch_size 10, window 0 (so the API
  calls are the raw loop's: one receive, one invoke, one delete per batch), scaling capped at
  ``--concurrency``.

The raw loop measures itself from the moment its client is ready to its last delete. The
service is measured from its first invocation (so neither side pays for process start-up,
imports or botocore's model loading; the service's first receive, one of hundreds, falls
outside) until the queue is empty (nothing visible, nothing in flight: every message
deleted), its CPU read from ``/proc`` at that moment (every thread). Printed per round:
messages/s, CPU microseconds per message and peak RSS of each side, the service/raw ratios,
and the emulator's CPU per message over each side's whole run (busy near its wall time means
the emulator set the pace). After the last round: the medians over the rounds of each side's
CPU per message and of the ratio.

Run: ``.venv/bin/python benchmarks/sqs_throughput.py [--messages 5000] [--rounds 1]
[--emulator moto|ministack]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script (its own --raw child too): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiobotocore.config import AioConfig

from benchmarks.harness import start_service
from benchmarks.kinesis_throughput import emulator_pid, with_emulator_cpu
from tests.support.aws import aws_client, moto_server_process
from tests.support.ministack import ministack
from tests.support.sqs import queue_arn, queue_depth, send_bodies

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# -- the no-op handler, imported by the service process -------------------------------------

_START_FILE = os.environ.get("POLLER_BENCH_START")
_EXPECTED = int(os.environ.get("POLLER_BENCH_MESSAGES", "0"))
_lock = threading.Lock()
_seen = 0


def handler(event: dict[str, Any], context: Any) -> None:
    """Do nothing but count: note the clocks at the first call, and when all were seen."""
    global _seen
    with _lock:
        first = _seen == 0
        _seen += len(event["Records"])
        last = _seen >= _EXPECTED
    if _START_FILE and first:
        Path(_START_FILE).write_text(json.dumps({"wall": time.time(), "cpu": time.process_time()}))
    if _START_FILE and last:
        Path(_START_FILE + ".seen").write_text(str(_seen))


# -- helpers ---------------------------------------------------------------------------------


async def fill_queue(url: str, queue: str, messages: int) -> str:
    """Create the queue if needed and send ``messages`` bodies of 100 bytes, 10 per call."""
    async with aws_client("sqs", url) as sqs:
        queue_url = str((await sqs.create_queue(QueueName=queue))["QueueUrl"])
        await send_bodies(sqs, queue_url, ["x" * 100] * messages)
        return queue_url


# -- the raw loop ----------------------------------------------------------------------------


async def raw_loop(url: str, queue_url: str, messages: int, concurrency: int) -> dict[str, Any]:
    """Receive and delete until ``messages`` were deleted; measure wall and CPU time."""
    config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=50)
    async with aws_client("sqs", url, config) as sqs:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        deleted = 0

        async def worker() -> None:
            nonlocal deleted
            while deleted < messages:
                response = await sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
                batch = response.get("Messages", [])
                if not batch:
                    continue
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ]
                result = await sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
                assert not result.get("Failed"), result
                deleted += len(batch)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": wall, "cpu_s": cpu, "messages": deleted, "max_rss_mb": rss}


def run_raw(url: str, queue_url: str, messages: int, concurrency: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--raw", url, queue_url, str(messages), str(concurrency)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


# -- the service -----------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """User plus system CPU seconds of a process, all threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_empty(
    url: str, queue_url: str, proc: subprocess.Popen[bytes], seen: Path, timeout: float = 900
) -> float:
    """Wait until the handler has seen every message (a file appears: polling the queue all
    along would load moto during the service's run only), then until the queue is empty
    (the last deletes are done). Return the wall clock (time.time()) of that moment."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the service stopped or timed out before emptying the queue")

    while not seen.exists():
        check()
        time.sleep(0.02)

    async def poll() -> float:
        async with aws_client("sqs", url) as sqs:
            while sum(await queue_depth(sqs, queue_url)):
                check()
                await asyncio.sleep(0.02)
            return time.time()

    return asyncio.run(poll())


def run_service(
    url: str, queue: str, queue_url: str, messages: int, concurrency: int, workdir: Path
) -> dict[str, Any]:
    start = workdir / f"start-{time.monotonic_ns()}.json"
    mapping = {
        "event_source_arn": queue_arn(queue),
        "batch_size": 10,
        "scaling_config": {"maximum_concurrency": max(2, concurrency)},
        "target": {"type": "python", "handler": "benchmarks.sqs_throughput:handler"},
    }
    env = {"POLLER_BENCH_START": str(start), "POLLER_BENCH_MESSAGES": str(messages)}
    proc = start_service(workdir, url, mapping, env, observability={"enabled": False})
    try:
        emptied_at = wait_empty(url, queue_url, proc, Path(f"{start}.seen"))
        cpu = process_cpu(proc.pid)
        rss = process_peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    began = json.loads(start.read_text())
    return {
        "wall_s": emptied_at - began["wall"],
        "cpu_s": cpu - began["cpu"],
        "messages": messages,
        "max_rss_mb": rss,
    }


# -- report ----------------------------------------------------------------------------------


def report(raw: dict[str, Any], svc: dict[str, Any], messages: int) -> tuple[float, float]:
    """Print one round; return (raw, service) CPU microseconds per message."""
    raw_rate, svc_rate = messages / raw["wall_s"], messages / svc["wall_s"]
    raw_cpu, svc_cpu = raw["cpu_s"] / messages * 1e6, svc["cpu_s"] / messages * 1e6
    print(f"messages                   {messages}")
    for name, rate, cpu, rss in (
        ("raw loop", raw_rate, raw_cpu, raw["max_rss_mb"]),
        ("service", svc_rate, svc_cpu, svc["max_rss_mb"]),
    ):
        print(
            f"{name:12} messages/s {rate:8.0f}   cpu/message {cpu:6.1f} us   peak RSS {rss:.0f} MB"
        )
    print(f"throughput ratio (service/raw)     {svc_rate / raw_rate:.2f}")
    print(f"cpu per message ratio (service/raw) {svc_cpu / raw_cpu:.2f}   (goal <= 1.2)")
    for name, run in (("raw loop", raw), ("service", svc)):
        if run.get("emulator_cpu_s"):
            print(
                f"{name:12} emulator CPU {run['emulator_cpu_s']:6.1f} s"
                f" = {run['emulator_cpu_s'] / messages * 1e6:5.1f} us/message"
                " (its whole run, filling excluded)"
            )
    return raw_cpu, svc_cpu


def report_medians(rounds: list[tuple[float, float]]) -> None:
    """The medians over the rounds: each side's CPU per message, and the ratio (the median
    of the rounds' ratios, each round's two sides having run in the same minute or two)."""
    raw = statistics.median(r for r, _ in rounds)
    svc = statistics.median(s for _, s in rounds)
    ratio = statistics.median(s / r for r, s in rounds)
    print(f"--- median of {len(rounds)} rounds")
    print(f"raw loop     cpu/message {raw:6.1f} us")
    print(f"service      cpu/message {svc:6.1f} us")
    print(f"cpu per message ratio (service/raw) {ratio:.2f}   (goal <= 1.2)")


@contextlib.contextmanager
def emulator(name: str) -> Iterator[str]:
    """The SQS emulator, in its own process: moto with the SQS speed-up, or ministack."""
    if name == "ministack":
        with ministack() as url:
            yield url
    else:
        with moto_server_process(speed_up_sqs=True) as url:
            yield url


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--raw":
        url, queue_url, messages, concurrency = sys.argv[2:6]
        result = asyncio.run(raw_loop(url, queue_url, int(messages), int(concurrency)))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=5, help="raw tasks; service cap")
    parser.add_argument("--rounds", type=int, default=1, help="measure each side this many times")
    parser.add_argument("--emulator", choices=("moto", "ministack"), default="moto")
    args = parser.parse_args()
    with emulator(args.emulator) as url:
        queue = f"bench-{os.getpid()}"
        server = emulator_pid(url)
        rounds: list[tuple[float, float]] = []
        with tempfile.TemporaryDirectory() as tmp:
            for round_no in range(1, args.rounds + 1):
                started = time.monotonic()
                queue_url = asyncio.run(fill_queue(url, queue, args.messages))
                took = time.monotonic() - started
                print(f"--- round {round_no}: sent {args.messages} messages in {took:.1f} s")
                raw = with_emulator_cpu(
                    server, run_raw, url, queue_url, args.messages, args.concurrency
                )
                asyncio.run(fill_queue(url, queue, args.messages))
                svc = with_emulator_cpu(
                    server,
                    run_service,
                    url,
                    queue,
                    queue_url,
                    args.messages,
                    args.concurrency,
                    Path(tmp),
                )
                rounds.append(report(raw, svc, args.messages))
                sys.stdout.flush()
        report_medians(rounds)


if __name__ == "__main__":
    main()
