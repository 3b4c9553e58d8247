"""Benchmark: time to drain an SQS backlog, default scaling against provisioned mode, on ministack.

The queue is filled with N messages of 100 bytes (parallel SendMessageBatch), then ``poller
run`` (its own process) drains it with batch_size 10 and no batching window, once per case:

* modes: ``default`` (Lambda's scaling: 5 pollers, +5 a second while batches come back full,
  up to 1,000 batches in flight) and ``provisioned`` (``provisioned_poller_config:
  {minimum_pollers: 20}``: 20 receive loops from the start, each with up to 10 batches in
  flight and 10 receives a second, +100 pollers a minute up to 200);
* handlers: ``noop`` (returns at once: the emulator and the service's own CPU set the pace) and
  ``sleep`` (100 ms per batch, asynchronous: the concurrency the scaling reaches sets it).

A case is timed from the handler's first call (process start-up and imports excluded) until
the queue is empty (nothing visible, nothing in flight: every message deleted). The service's
Prometheus endpoint is scraped every second meanwhile, for the pollers and the batches in
flight over time. Printed per case and round: the drain time, messages/s, the service's CPU
per 10,000 messages, the peak pollers and batches in flight, and a one-line timeline. After the
last round, the median drain time of each case.

Run (the machine is shared: run it alone, and note ``uptime``)::

    .venv/bin/python benchmarks/sqs_drain.py [--messages 50000] [--rounds 1]
        [--modes default,provisioned] [--handlers noop,sleep]

A quick check: ``--messages 2000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

# Run as a script: the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import start_service
from benchmarks.sqs_throughput import wait_empty
from tests.support.aws import aws_client
from tests.support.ministack import ministack
from tests.support.process import free_port
from tests.support.sqs import queue_arn

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Seconds the 100-ms handler sleeps per batch.
SLEEP_SECONDS = 0.1
#: Provisioned mode's minimum for the comparison (the issue's figure).
MINIMUM_POLLERS = 20

# -- the handlers, imported by the service process -------------------------------------------

_START_FILE = os.environ.get("POLLER_BENCH_START")
_EXPECTED = int(os.environ.get("POLLER_BENCH_MESSAGES", "0"))
_lock = threading.Lock()
_seen = 0


def _count(records: int) -> None:
    """Note the clocks at the first call, and a file when every message was seen."""
    global _seen
    with _lock:
        first = _seen == 0
        _seen += records
        last = _seen >= _EXPECTED
    if _START_FILE and first:
        Path(_START_FILE).write_text(json.dumps({"wall": time.time(), "cpu": time.process_time()}))
    if _START_FILE and last:
        Path(_START_FILE + ".seen").write_text(str(_seen))


def noop(event: dict[str, Any], context: Any) -> None:
    """Do nothing but count."""
    _count(len(event["Records"]))


async def sleep(event: dict[str, Any], context: Any) -> None:
    """Count, then take 100 ms (without holding a thread)."""
    _count(len(event["Records"]))
    await asyncio.sleep(SLEEP_SECONDS)


HANDLERS = {"noop": "benchmarks.sqs_drain:noop", "sleep": "benchmarks.sqs_drain:sleep"}

# -- filling and emptying -------------------------------------------------------------------


async def fill_queue(url: str, queue: str, messages: int, parallel: int = 16) -> str:
    """Create the queue if needed and send ``messages`` bodies of 100 bytes, 10 per call,
    ``parallel`` calls at once."""
    async with aws_client("sqs", url) as sqs:
        queue_url = str((await sqs.create_queue(QueueName=queue))["QueueUrl"])
        batches = [min(10, messages - i) for i in range(0, messages, 10)]
        limit = asyncio.Semaphore(parallel)

        async def send(size: int) -> None:
            async with limit:
                entries = [{"Id": str(i), "MessageBody": "x" * 100} for i in range(size)]
                response = await sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
                assert not response.get("Failed"), response["Failed"]

        await asyncio.gather(*(send(size) for size in batches))
        return queue_url


def process_cpu(pid: int) -> float:
    """User plus system CPU seconds of a process, all threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_drained(url: str, queue_url: str, proc: Any, seen: Path) -> float:
    """:func:`benchmarks.sqs_throughput.wait_empty`, with room for a 50,000-message drain."""
    return wait_empty(url, queue_url, proc, seen, timeout=1800)


# -- the service's gauges over time -----------------------------------------------------------

_GAUGE = re.compile(
    r"^(poller_provisioned_pollers|poller_sqs_concurrency|poller_sqs_in_flight_batches)"
    r"\{[^}]*\} ([0-9.e+]+)$",
    re.MULTILINE,
)


class Scraper(threading.Thread):
    """Reads the service's /metrics once a second: (wall time, pollers, batches in flight)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._done = threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self._done.wait(1.0):
            try:
                with urllib.request.urlopen(self._url, timeout=2) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            values = {name: float(value) for name, value in _GAUGE.findall(text)}
            pollers = values.get("poller_provisioned_pollers") or values.get(
                "poller_sqs_concurrency", 0
            )
            in_flight = int(values.get("poller_sqs_in_flight_batches", 0))
            self.samples.append((time.time(), int(pollers), in_flight))

    def stop(self) -> None:
        self._done.set()
        self.join(5)


# -- one case ---------------------------------------------------------------------------------


def mapping_for(mode: str, handler: str, queue: str) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "event_source_arn": queue_arn(queue),
        "batch_size": 10,
        "target": {"type": "python", "handler": HANDLERS[handler]},
    }
    if mode == "provisioned":
        mapping["provisioned_poller_config"] = {"minimum_pollers": MINIMUM_POLLERS}
    return mapping


def run_case(url: str, mode: str, handler: str, messages: int, workdir: Path) -> dict[str, Any]:
    queue = f"drain-{mode}-{handler}-{time.monotonic_ns()}"
    filled = time.monotonic()
    queue_url = asyncio.run(fill_queue(url, queue, messages))
    fill_s = time.monotonic() - filled
    start = workdir / f"start-{time.monotonic_ns()}.json"
    env = {"POLLER_BENCH_START": str(start), "POLLER_BENCH_MESSAGES": str(messages)}
    port = free_port()
    proc = start_service(
        workdir,
        url,
        mapping_for(mode, handler, queue),
        env,
        observability={"enabled": True, "host": "127.0.0.1", "port": port},
    )
    scraper = Scraper(port)
    scraper.start()
    try:
        emptied_at = wait_drained(url, queue_url, proc, Path(f"{start}.seen"))
        cpu = process_cpu(proc.pid)
    finally:
        scraper.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    began = json.loads(start.read_text())
    samples = [(t - began["wall"], p, f) for t, p, f in scraper.samples if t <= emptied_at]
    return {
        "mode": mode,
        "handler": handler,
        "fill_s": fill_s,
        "drain_s": emptied_at - began["wall"],
        "cpu_s": cpu - began["cpu"],
        "samples": samples,
    }


def report(case: dict[str, Any], messages: int) -> None:
    drain, samples = case["drain_s"], case["samples"]
    peak_pollers = max((p for _, p, _ in samples), default=0)
    peak_flight = max((f for _, _, f in samples), default=0)
    print(
        f"{case['mode']:12} {case['handler']:6} drain {drain:7.1f} s"
        f"  {messages / drain:7.0f} msg/s  cpu {case['cpu_s'] / messages * 1e4:5.2f} s/10k"
        f"  peak pollers {peak_pollers:4}  peak in flight {peak_flight:4}"
        f"  (filled in {case['fill_s']:.1f} s)"
    )
    every = max(1, len(samples) // 12)
    timeline = "  ".join(f"{t:.0f}s:{p}/{f}" for t, p, f in samples[::every] if t >= 0)
    print(f"    pollers/in-flight over time: {timeline}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="default,provisioned")
    parser.add_argument("--handlers", default="noop,sleep")
    args = parser.parse_args()
    modes, handlers = args.modes.split(","), args.handlers.split(",")
    drains: dict[tuple[str, str], list[float]] = {}
    print(f"--- {args.messages} messages of 100 bytes; uptime: {os.getloadavg()}")
    with ministack() as url, tempfile.TemporaryDirectory() as tmp:
        for round_no in range(1, args.rounds + 1):
            print(f"--- round {round_no}")
            for handler in handlers:
                for mode in modes:
                    case = run_case(url, mode, handler, args.messages, Path(tmp))
                    report(case, args.messages)
                    drains.setdefault((mode, handler), []).append(case["drain_s"])
    print(f"--- median drain time over {args.rounds} round(s)")
    for (mode, handler), times in drains.items():
        print(f"{mode:12} {handler:6} {statistics.median(times):7.1f} s")


if __name__ == "__main__":
    main()
