"""The nemesis: three replicas under a seeded random schedule of faults, judged by the checker.

In the style of Jepsen. Three ``python -m poller run`` processes share a Kinesis stream (moto's
server, behind a fault proxy) through the ``dynamodb`` lease backend (DynamoDB Local, behind a
second fault proxy). Their handler (``tests/support/file_sink.py``) records every batch. A writer
puts records continuously with a few partition keys per shard. Meanwhile the nemesis runs a
schedule drawn from ``random.Random(seed)``:

* ``kill``: SIGKILL a replica, restart it a little later;
* ``term_slow``: make batches slow (longer than a lease), SIGTERM a replica while it runs one,
  wait for it to exit, restart it (a rolling deploy with a slow function);
* ``restart_together``: SIGTERM every replica, then start all three at the same instant;
* ``lease_outage``: the lease table answers nothing (errors or dropped connections) for seconds;
* ``lease_lost_writes``: lease-table writes are applied but their answers are lost;
* ``lease_latency``: the lease table answers slowly;
* ``kinesis_errors`` / ``kinesis_throttle`` / ``kinesis_outage``: Kinesis reads fail.

The schedule and the seed are printed first; ``NEMESIS_SEED`` replays a run. At the end the
faults are healed, the writer stops, every record must be delivered within a deadline, the
replicas stop, and :func:`tests.support.checker.check` judges the history: no shard invoked by
two replicas at once, per-key order of first deliveries, nothing lost, duplicates only from
batches in flight at a kill, an abandoned drain or a lost lease. A replica that exits on its own
(an outage is never a reason to exit) is a finding too; it is restarted so that the run goes on.

``python -m tests.nemesis.harness --minutes 30 [--seed N]`` (``scripts/nemesis``) runs a long
schedule and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support import file_sink
from tests.support.aws import unique
from tests.support.checker import Batch, Interruption, Record, Report, check
from tests.support.fault_proxy import FaultProxy, Mode
from tests.support.process import ServiceProcess, write_config
from tests.support.replicas import LEASE_STORES, Fleet, Writer, fleet_mapping, make_stream
from tests.support.service_config import service_config
from tests.support.waiting import wait_for

REPLICAS = ("a", "b", "c")
SHARDS = 4
LEASE_SECONDS = 10.0
DRAIN_SECONDS = 20.0
#: Above the slowest batch the schedule makes (LEASE_SECONDS + 12).
HANDLER_TIMEOUT_SECONDS = LEASE_SECONDS + 15
#: How long after its handler returns a batch's checkpoint may still be unwritten at a kill.
KILL_WINDOW = 5.0
#: A lost lease: checkpoints may have failed for up to a lease duration before it.
LEASE_LOST_WINDOW = LEASE_SECONDS + 5.0
KINDS = {
    "kill": 3,
    "term_slow": 2,
    "restart_together": 1,
    "lease_outage": 2,
    "lease_lost_writes": 1,
    "lease_latency": 1,
    "kinesis_errors": 1,
    "kinesis_throttle": 1,
    "kinesis_outage": 1,
}


@dataclass(frozen=True)
class Step:
    """One scheduled fault: ``at`` seconds after the start."""

    at: float
    kind: str
    replica: str = ""
    seconds: float = 0.0
    detail: str = ""

    def __str__(self) -> str:
        who = f" {self.replica}" if self.replica else ""
        more = f" ({self.detail})" if self.detail else ""
        return f"t={self.at:6.1f}s {self.kind}{who} {self.seconds:.1f}s{more}"


def make_schedule(seed: int, duration: float) -> list[Step]:
    """A random schedule of faults over ``duration`` seconds, the same for the same seed."""
    rng = random.Random(seed)
    steps: list[Step] = []
    at = rng.uniform(8, 12)  # the replicas start together and balance first
    while at < duration - 5:
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        step = _draw_step(rng, at, kind)
        steps.append(step)
        at += rng.uniform(3, 8) + (step.seconds if kind.startswith("lease") else 2)
    return steps


def _draw_step(rng: random.Random, at: float, kind: str) -> Step:
    replica = rng.choice(REPLICAS)
    if kind == "kill":
        return Step(at, kind, replica, rng.uniform(1, 5), "down for")
    if kind == "term_slow":
        slow = rng.choice([LEASE_SECONDS + 8, LEASE_SECONDS + 12, 4.0])
        return Step(at, kind, replica, slow, "slow batches; SIGTERM whoever runs one first")
    if kind == "restart_together":
        return Step(at, kind)
    if kind == "lease_outage":
        return Step(at, kind, seconds=rng.uniform(3, 15), detail=rng.choice(["error", "drop"]))
    if kind == "lease_lost_writes":
        return Step(at, kind, seconds=rng.uniform(4, 10), detail=rng.choice(["error", "drop"]))
    if kind == "lease_latency":
        return Step(at, kind, seconds=rng.uniform(4, 10), detail=f"{rng.uniform(0.3, 2):.1f}s")
    if kind == "kinesis_outage":
        return Step(at, kind, seconds=rng.uniform(3, 10))
    return Step(at, kind, seconds=rng.uniform(5, 15), detail=f"rate {rng.uniform(0.1, 0.5):.2f}")


@dataclass
class Result:
    seed: int
    schedule: list[Step]
    report: Report
    injected: Counter[str]  # faulted calls by proxy and kind
    steps: Counter[str]  # schedule steps applied, by kind
    skipped: list[Step] = field(default_factory=list)  # steps past the schedule's end
    unexpected_exits: list[str] = field(default_factory=list)
    undelivered_at_deadline: int = 0
    lease_acquisitions: int = 0
    workdir: Path | None = None

    def problems(self) -> list[str]:
        found = list(self.report.problems())
        if self.unexpected_exits:
            found.append(f"replicas exited on their own: {self.unexpected_exits}")
        return found

    def describe(self) -> str:
        lines = [
            f"nemesis seed {self.seed} (replay: NEMESIS_SEED={self.seed})",
            "schedule:",
            *(f"  {step}" for step in self.schedule),
            f"figures: {self.report.summary()}",
            f"schedule steps applied by kind: {dict(sorted(self.steps.items()))}",
            f"steps skipped (the schedule overran its length): {len(self.skipped)}",
            f"faulted calls by kind: {dict(sorted(self.injected.items()))}",
            f"lease acquisitions: {self.lease_acquisitions}",
            f"replica logs and sink: {self.workdir}",
        ]
        lines += [f"PROBLEM: {problem}" for problem in self.problems()]
        return "\n".join(lines)


def seed_from_env() -> int:
    """``NEMESIS_SEED`` if set (to replay a run), else a fresh random seed."""
    given = os.environ.get("NEMESIS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 2**31)


class Nemesis:
    """One run: the cluster, the schedule, then the check (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        moto_url: str,
        lease_store: str,
        seed: int,
        duration: float,
        *,
        say: Callable[[str], None] = print,
        settle_seconds: float = 90.0,
    ) -> None:
        self.workdir, self.moto_url, self.lease_store = workdir, moto_url, lease_store
        self.seed, self.duration, self.say = seed, duration, say
        self.settle_seconds = settle_seconds
        self.schedule = make_schedule(seed, duration)
        self.actions: Counter[str] = Counter()
        self.skipped: list[Step] = []
        self.interruptions: list[Interruption] = []
        self.unexpected_exits: list[str] = []
        self.all_procs: list[tuple[str, ServiceProcess]] = []
        self._expected_down: set[str] = set()
        self._lock = threading.Lock()
        self.slow_flag = workdir / "slow-flag"
        self.begun = workdir / "begun.jsonl"

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Result:
        self.say(f"nemesis seed {self.seed} (replay: NEMESIS_SEED={self.seed})")
        for step in self.schedule:
            self.say(f"  {step}")
        with ExitStack() as stack:
            ddb = stack.enter_context(FaultProxy(self.lease_store, seed=self.seed, record=False))
            kinesis = stack.enter_context(
                FaultProxy(self.moto_url, seed=self.seed + 1, record=False)
            )
            self.ddb_proxy, self.kinesis_proxy = ddb, kinesis
            stream, table = unique("nemesis"), unique("leases")
            self.table = table
            LEASE_STORES[table] = self.lease_store
            shards = _run_async(make_stream, self.moto_url, stream, SHARDS)
            self.fleet = self._fleet(stream, table)
            stack.callback(self._stop_everything)
            writer = Writer(self.moto_url, stream, shards, per_round=2, keys_per_shard=3)
            with self._watching():
                with writer:
                    self._start_together()
                    self._follow_schedule()
                    self._heal()
                undelivered = self._settle(writer)
            self._stop_all_gracefully()
            injected = _prefixed("lease_table_", ddb.injected) + _prefixed(
                "kinesis_", kinesis.injected
            )
        return Result(
            seed=self.seed,
            schedule=self.schedule,
            report=self._judge(writer),
            injected=injected,
            steps=self.actions,
            skipped=self.skipped,
            unexpected_exits=self.unexpected_exits,
            undelivered_at_deadline=undelivered,
            lease_acquisitions=sum(len(p.events("lease.acquired")) for _, p in self.all_procs),
            workdir=self.workdir,
        )

    def _follow_schedule(self) -> None:
        began = time.monotonic()
        for step in self.schedule:
            if time.monotonic() - began > self.duration:
                # A long step overran the schedule: keep the run's length bounded.
                self.skipped.append(step)
                continue
            _sleep_until(began + step.at)
            self.say(f"nemesis: {step}")
            self._apply(step)
        _sleep_until(began + self.duration)

    def _fleet(self, stream: str, table: str) -> Fleet:
        # The handler's timeout covers the slowest batch, so no invocation outlives it; the
        # takeover grace (the target's timeout by default) then keeps a peer off a shard while
        # an owner cut off from the lease table may still be invoking it.
        mapping = fleet_mapping(stream, handler_timeout=HANDLER_TIMEOUT_SECONDS)
        endpoints = {"dynamodb": self.ddb_proxy.url, "kinesis": self.kinesis_proxy.url}
        config = service_config(
            self.moto_url,
            mapping,
            checkpoints={
                "backend": "dynamodb",
                "table": table,
                "lease_duration_seconds": LEASE_SECONDS,
            },
            endpoints=endpoints,
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": DRAIN_SECONDS},
        )
        path = write_config(self.workdir / "replica.yaml", config)
        env = file_sink.env(self.workdir / "sink.jsonl", slow_flag=self.slow_flag, begun=self.begun)
        return Fleet(self.workdir, path, self.workdir / "sink.jsonl", sleep=0.02, env=env)

    # -- the steps -------------------------------------------------------------------------

    def _apply(self, step: Step) -> None:
        self.actions[step.kind] += 1
        ddb, kinesis = self.ddb_proxy, self.kinesis_proxy
        rate = float(step.detail.split()[-1]) if step.detail.startswith("rate") else 0.0
        if step.kind == "kill":
            self._kill(step.replica)
            time.sleep(step.seconds)  # the schedule's downtime, not a wait for a condition
            self._start(step.replica)
        elif step.kind == "term_slow":
            self._term_during_slow_batch(step.replica, step.seconds)
        elif step.kind == "restart_together":
            self._terminate_all()
            self._start_together()
        elif step.kind == "lease_outage":
            ddb.outage(step.seconds, mode="drop" if step.detail == "drop" else "error")
        elif step.kind == "lease_lost_writes":
            mode: Mode = "drop" if step.detail == "drop" else "error"
            writes = ["PutItem", "UpdateItem", "DeleteItem"]
            ddb.lose_responses(writes, rate=0.3, mode=mode, seconds=step.seconds)
        elif step.kind == "lease_latency":
            ddb.latency(float(step.detail.rstrip("s")), duration=step.seconds, jitter=0.5)
        elif step.kind == "kinesis_errors":
            reads = ["GetRecords", "GetShardIterator", "ListShards"]
            kinesis.error_rate(rate, reads, seconds=step.seconds)
        elif step.kind == "kinesis_throttle":
            kinesis.throttle(rate, ["GetRecords", "GetShardIterator"], seconds=step.seconds)
        elif step.kind == "kinesis_outage":
            kinesis.outage(step.seconds, mode="drop")

    def _kill(self, name: str) -> None:
        proc = self.fleet.procs[name]
        with self._lock:
            self._expected_down.add(name)
        proc.signal(signal.SIGKILL)
        at = time.time()
        proc.wait(10)
        stop = Interruption(_process(name, proc), at, KILL_WINDOW, died=True)
        with self._lock:
            self.interruptions.append(stop)

    def _term_during_slow_batch(self, name: str, slow: float) -> None:
        """Make batches slow, SIGTERM the first replica that starts one (``name`` if none
        does within 20 s), let it drain and exit, and start it again."""
        self.slow_flag.write_text(str(slow))
        since = time.time()
        try:
            name = wait_for(lambda: self._in_a_slow_batch(since), 20, "a slow batch")
        except AssertionError:
            self.say(f"nemesis: no batch started in 20 s; SIGTERM {name} anyway")
        self.say(f"nemesis: SIGTERM {name} during a {slow:.0f} s batch")
        self._terminate([name])
        self.slow_flag.unlink(missing_ok=True)
        self._start(name)

    def _in_a_slow_batch(self, since: float) -> str | None:
        """The replica that first started a batch after ``since``, if any did."""
        running = {p.proc.pid: n for n, p in self.fleet.procs.items() if p.proc is not None}
        for line in _read(self.begun):
            if line["started"] > since and line["pid"] in running:
                return running[line["pid"]]
        return None

    def _terminate(self, names: list[str]) -> None:
        """SIGTERM ``names`` at once, wait for each to exit (drain + margin, else SIGKILL)."""
        procs = {name: self.fleet.procs[name] for name in names}
        with self._lock:
            self._expected_down.update(names)
        for proc in procs.values():
            proc.signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                proc.wait(DRAIN_SECONDS + 15)
            except subprocess.TimeoutExpired:
                hung = f"{name} did not exit {DRAIN_SECONDS + 15}s after SIGTERM"
                self.unexpected_exits.append(hung)
                proc.stop()
            self._record_exit(name, proc)

    def _record_exit(
        self, name: str, proc: ServiceProcess, window: float | None = None, exited: float = 0.0
    ) -> None:
        """The process is gone (at ``exited``, else now): its unfinished batches end then. After
        a SIGTERM, only batches it abandoned at the drain deadline (if it hit it) may be
        unsettled (``window``)."""
        exited = exited or time.time()
        if window is None:
            deadline = [_stamp(e) for e in proc.events("shutdown.drain_deadline")]
            window = exited - min(deadline) + 1 if deadline else 0.0
        stop = Interruption(_process(name, proc), exited, window, died=True)
        with self._lock:
            self.interruptions.append(stop)

    def _terminate_all(self) -> None:
        self._terminate(list(REPLICAS))

    def _start(self, name: str) -> None:
        proc = self.fleet.start(name)
        self.all_procs.append((name, proc))
        with self._lock:
            self._expected_down.discard(name)

    def _start_together(self) -> None:
        for name in REPLICAS:
            self._start(name)

    def _heal(self) -> None:
        self.ddb_proxy.heal()
        self.kinesis_proxy.heal()
        self.slow_flag.unlink(missing_ok=True)

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """Restart (and report) any replica that exits while the nemesis did not stop it."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                for name, proc in list(self.fleet.procs.items()):
                    with self._lock:
                        if name in self._expected_down or proc.proc is None:
                            continue
                        code = proc.proc.poll()
                    if code is not None:
                        self._unexpected_exit(name, proc, code)

        thread = threading.Thread(target=watch, name="nemesis-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)

    def _unexpected_exit(self, name: str, proc: ServiceProcess, code: int) -> None:
        """Report a replica that exited on its own, count it as interrupted, restart it."""
        logs = proc.logs()
        tail = proc.log_path.read_text(errors="replace").strip().splitlines()[-1:]
        finding = f"{name} exit {code}: {[e.get('event') for e in logs[-3:]]} {tail}"
        self.unexpected_exits.append(finding)
        self.say(f"nemesis: FINDING {finding}")
        # It may have run with failing checkpoints (an outage) before exiting; it exited at its
        # last log line at the latest (this poll may notice it late).
        seen = max((_stamp(e) for e in logs if "timestamp" in e), default=time.time())
        self._record_exit(name, proc, window=LEASE_LOST_WINDOW, exited=seen)
        self._start(name)

    # -- the end ---------------------------------------------------------------------------

    def _settle(self, writer: Writer) -> int:
        """Wait (with a deadline) for every record written; how many never came."""
        written = set(writer.written)
        try:
            wait_for(
                lambda: written <= set(self.fleet.delivered()),
                self.settle_seconds,
                "every record delivered",
                interval=0.5,
            )
        except AssertionError:
            missing = len(written - set(self.fleet.delivered()))
            self.say(f"nemesis: {missing} records still undelivered after {self.settle_seconds}s")
            return missing
        return 0

    def _stop_all_gracefully(self) -> None:
        running = [n for n, p in self.fleet.procs.items() if p.proc and p.proc.poll() is None]
        self._terminate(running)

    def _stop_everything(self) -> None:
        for _, proc in self.all_procs:
            proc.stop()

    def _judge(self, writer: Writer) -> Report:
        written = [Record(s, q, writer.keys[(s, q)]) for s, q in writer.written]
        return check(written, self._history(), [*self.interruptions, *self._lost_leases()])

    def _history(self) -> list[Batch]:
        names = {p.proc.pid: n for n, p in self.all_procs if p.proc is not None}
        finished = file_sink.read(str(self.fleet.sink))
        ended = {(line["pid"], line["started"]) for line in finished}
        batches = [
            Batch(
                f"{names.get(line['pid'], '?')}/{line['pid']}",
                line["records"][0][0],
                line["started"],
                line["finished"],
                tuple(Record(*record) for record in line["records"]),
            )
            for line in finished
        ]
        batches += [
            Batch(
                f"{names.get(line['pid'], '?')}/{line['pid']}",
                line["shard"],
                line["started"],
                None,
                (),
            )
            for line in _read(self.begun)
            if (line["pid"], line["started"]) not in ended
        ]
        return batches

    def _lost_leases(self) -> list[Interruption]:
        return [
            Interruption(
                _process(name, proc), _stamp(event), LEASE_LOST_WINDOW, shard=event["shard"]
            )
            for name, proc in self.all_procs
            for event in proc.events("lease.lost")
        ]


def _process(name: str, proc: ServiceProcess) -> str:
    assert proc.proc is not None
    return f"{name}/{proc.proc.pid}"


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # a line cut by a SIGKILL
    return lines


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def _prefixed(prefix: str, counts: Counter[str]) -> Counter[str]:
    return Counter({prefix + kind: n for kind, n in counts.items()})


def _sleep_until(deadline: float) -> None:
    """Keep to the schedule (this is the schedule's clock, not a wait for a condition)."""
    time.sleep(max(0.0, deadline - time.monotonic()))


def _run_async(function: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return anyio.run(function, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a long nemesis schedule (see the docstring).")
    parser.add_argument("--minutes", type=float, default=30.0, help="schedule length")
    parser.add_argument("--seed", type=int, default=None, help="replay a seed (default: random)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else seed_from_env()
    # The replicas inherit these: dummy credentials for the emulators, never a real profile.
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ.pop("AWS_PROFILE", None)
    from tests.support.aws import moto_server_process
    from tests.support.dynamodb_local import dynamodb_local

    workdir = Path(tempfile.mkdtemp(prefix="nemesis-"))
    with moto_server_process() as moto_url, dynamodb_local() as lease_store:
        nemesis = Nemesis(workdir, moto_url, lease_store, seed, args.minutes * 60)
        result = nemesis.run()
    print(result.describe())  # noqa: T201 - the script's report
    return 1 if result.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
