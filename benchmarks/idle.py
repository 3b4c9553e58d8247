"""Benchmark: the CPU an idle service spends polling empty shards at Lambda's cadence.

Starts moto's server in a process of its own (its CPU is charged to nobody measured here),
creates N idle shards, and runs ``poller run`` in another process:

* ``--source kinesis`` (default): one stream of N shards, one mapping (polled once a second
  per shard, as Lambda polls an idle Kinesis shard);
* ``--source dynamodb``: N tables with a stream each (moto gives a table's stream one shard),
  one mapping per stream (polled four times a second per shard, as Lambda does).

After ``--warmup`` seconds (every shard has its iterator and is polling) it reads the service
process's own CPU time (user + system, every thread, from ``/proc/PID/stat``) twice,
``--seconds`` apart, and prints CPU as a percentage of one core, the GetRecords calls the
emulator answered in the window (counted by a pass-through proxy, which keeps connections
alive as AWS does), and the CPU per call. ``--direct`` talks to moto without the proxy: calls
are not counted, and moto answers every request with ``Connection: close``, so each poll also
opens a TCP connection.

``--profile`` runs the service under cProfile, enabled only for the measured window (signals
to a small wrapper process), and prints the top of the profile by cumulative and by own time.
The profile counts the event loop thread's CPU time, not wall time: on a busy machine wall
time charges other processes' turns (and the emulator's) to whatever call was waiting. CPU figures
from a profiled run include the profiler's own overhead; measure without it.

Run: ``.venv/bin/python benchmarks/idle.py [--shards 100] [--seconds 60] [--source kinesis]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (scripts/bench): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import CREDENTIALS, REPO
from tests.support.aws import aws_client, create_stream, moto_server_process, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.process import write_config
from tests.support.service_config import service_config, stream_mapping

#: The clock ticks of /proc/PID/stat's utime and stime.
TICKS = os.sysconf("SC_CLK_TCK")
#: The wrapper that runs the service with a profiler switched by SIGUSR1 (on) and SIGUSR2
#: (off, write the stats to argv[2]); the service's own SIGTERM handling is untouched.
PROFILED_CHILD = """
import cProfile, signal, sys, time
sys.path.insert(0, sys.argv[3])
profile = cProfile.Profile(time.thread_time)
def start(*_):
    profile.enable()
def stop(*_):
    profile.disable()
    profile.dump_stats(sys.argv[2])
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
from poller.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


async def make_kinesis(url: str, shards: int) -> list[str]:
    """One stream of ``shards`` idle shards; its ARN."""
    name = unique("idle")
    async with aws_client("kinesis", url) as kinesis:
        await create_stream(kinesis, name, shards)
    return [stream_arn(name)]


async def make_dynamodb(url: str, shards: int) -> list[str]:
    """``shards`` tables with a stream each (one shard per stream on moto); their stream ARNs."""
    arns = []
    async with aws_client("dynamodb", url) as ddb:
        for _ in range(shards):
            response = await ddb.create_table(
                TableName=unique("idle"),
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
                StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
            )
            arns.append(response["TableDescription"]["LatestStreamArn"])
    return arns


def write_service_config(workdir: Path, endpoint: str, arns: list[str]) -> Path:
    """One mapping per source ARN, read from LATEST into the benchmarks' no-op handler."""
    mappings = [
        stream_mapping(
            f"idle{i}", arn, "benchmarks.bench_handler:handler", starting_position="LATEST"
        )
        for i, arn in enumerate(arns)
    ]
    config = service_config(
        endpoint,
        mappings[0],
        checkpoints={"path": str(workdir / "idle.db")},
        logging={"level": "WARNING", "format": "json"},
    )
    config["mappings"] = mappings
    return write_config(workdir / "idle.yaml", config)


def start(config: Path, profile_out: Path | None, log: Path) -> subprocess.Popen[bytes]:
    if profile_out is None:
        command = [sys.executable, "-m", "poller", "run", "--config", str(config)]
    else:
        command = [sys.executable, "-c", PROFILED_CHILD, str(config), str(profile_out), str(REPO)]
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO), "POLLER_BENCH_OUT": os.devnull}
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def print_profile(path: Path, lines: int) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)


def measure(args: argparse.Namespace, url: str, arns: list[str], workdir: Path) -> None:
    with FaultProxy(url, record=False) as proxy:
        proxy.latency(0.0, "GetRecords")  # a pass-through rule: it only counts the calls
        config = write_service_config(workdir, url if args.direct else proxy.url, arns)
        profile_out = workdir / "idle.prof" if args.profile else None
        proc = start(config, profile_out, workdir / "service.log")
        try:
            time.sleep(args.warmup)
            if proc.poll() is not None:
                sys.exit("the service stopped:\n" + (workdir / "service.log").read_text()[-3000:])
            if profile_out is not None:
                proc.send_signal(signal.SIGUSR1)
            calls0 = _get_records_calls(proxy)
            (user0, sys0), wall0 = process_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)
            (user, system), wall = process_cpu_seconds(proc.pid), time.monotonic() - wall0
            user, system = user - user0, system - sys0
            calls = _get_records_calls(proxy) - calls0
            if profile_out is not None:
                proc.send_signal(signal.SIGUSR2)
                time.sleep(2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    report(args, user, system, wall, calls)
    if profile_out is not None:
        print_profile(profile_out, args.lines)
        if args.profile_out:
            args.profile_out.write_bytes(profile_out.read_bytes())


def _get_records_calls(proxy: FaultProxy) -> int:
    """GetRecords calls the proxy has forwarded so far (counted by a pass-through rule)."""
    return int(proxy.injected["latency"])


def report(args: argparse.Namespace, user: float, system: float, wall: float, calls: int) -> None:
    cpu = user + system
    share = cpu / wall * 100
    print(f"source             {args.source}, {args.shards} idle shards")
    print(f"window             {wall:.1f} s after {args.warmup:.0f} s warm-up")
    print(f"service CPU        {cpu:.2f} s = {share:.2f} % of one core")
    print(f"  user / system    {user:.2f} s / {system:.2f} s")
    print(f"per 100 shards     {share * 100 / args.shards:.2f} % of one core   (goal <= 2 %)")
    if calls:
        print(f"GetRecords calls   {calls} ({calls / wall:.0f}/s)")
        print(f"CPU per call       {cpu / calls * 1e6:.0f} us")
    if args.profile:
        print("(profiled run: the figures include cProfile's overhead)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--source", choices=("kinesis", "dynamodb"), default="kinesis")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the window")
    parser.add_argument("--lines", type=int, default=25, help="profile lines printed")
    parser.add_argument(
        "--profile-out", type=Path, help="with --profile: also keep the raw pstats file here"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="talk to moto directly, without the counting proxy (moto closes every connection)",
    )
    args = parser.parse_args()
    make = make_kinesis if args.source == "kinesis" else make_dynamodb
    with moto_server_process() as url, tempfile.TemporaryDirectory() as tmp:
        arns = asyncio.run(make(url, args.shards))
        measure(args, url, arns, Path(tmp))


if __name__ == "__main__":
    main()
