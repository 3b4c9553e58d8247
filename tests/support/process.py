"""OS processes for tests: the service itself (crash, restart and signal tests), and servers
(emulators) started on a free loopback port and stopped with the test."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


class ServiceProcess:
    """``python -m poller run --config FILE`` in a subprocess, logging JSON to a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "poller", "run", "--config", str(self.config)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (other lines are skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: self.events("service.ready") or self._died(), timeout, "service.ready")
        assert not self._died(), self.log_path.read_text()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Kill the process if it still runs (test cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def assert_graceful_shutdown(proc: ServiceProcess) -> list[str]:
    """The log shows a graceful shutdown, each step, the drain finished before the stop;
    returns the names of every event logged."""
    events = [line["event"] for line in proc.logs()]
    for step in (
        "signal.received",
        "shutdown.intake_stopped",
        "shutdown.drained",
        "service.stopped",
    ):
        assert step in events, f"{step} missing from {events}"
    assert events.index("shutdown.drained") < events.index("service.stopped")
    return events


def run_cli(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``python -m poller ARGS`` from the repository, run to its end, its output captured as
    text; ``options`` go to :func:`subprocess.run`."""
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        **options,
    )


#: The ``launch`` fixture (tests/integration/conftest.py): starts a :class:`ServiceProcess`
#: from a config file, a log file name and optional environment, and kills it after the test.
Launch = Callable[..., ServiceProcess]


#: :func:`free_port` hands out ports below Linux's ephemeral range (32768-60999), where the
#: kernel picks the source ports of outgoing connections and the ports of ``bind(0)``: a port
#: probed there and released could be taken by any client before the emulator binds it.
_FIRST_PORT = 20000
#: Ports per block. Each pytest-xdist worker (and the serial session) probes a block of its own,
#: so parallel workers never hand one port to two emulators.
_BLOCK_SIZE = 1000
_BLOCKS = 12
_ports_lock = threading.Lock()
_ports: Iterator[int] | None = None


def _port_block() -> range:
    """This process's block: pytest-xdist names its workers gw0, gw1, ... in
    ``PYTEST_XDIST_WORKER`` (set before any test runs, inherited by subprocesses)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker.removeprefix("gw")) + 1 if worker.startswith("gw") else 0
    first = _FIRST_PORT + index % _BLOCKS * _BLOCK_SIZE
    return range(first, first + _BLOCK_SIZE)


def _port_cycle() -> Iterator[int]:
    """The block's ports in turn from a random one: a process's subprocesses (benchmarks) and
    concurrent serial sessions start at different places, and a released port is not offered
    again until the block wraps. SystemRandom, because pytest-randomly reseeds ``random``."""
    block = _port_block()
    start = random.SystemRandom().randrange(len(block))
    return itertools.islice(itertools.cycle(block), start, None)


def free_port() -> int:
    """A free loopback port (nothing bound to it now) from this worker's block."""
    global _ports
    with _ports_lock:
        if _ports is None:
            _ports = _port_cycle()
        for port in itertools.islice(_ports, _BLOCK_SIZE):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use (or in TIME_WAIT): the next one
            return port
    raise RuntimeError(f"no free loopback port in {_port_block()}")


@contextlib.contextmanager
def spawned(command: list[str], port: int, what: str, **popen: Any) -> Iterator[str]:
    """Run ``command`` (a server that will listen on ``port``) with its output discarded; yield
    its URL once it accepts connections, and terminate it when the block ends."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        wait_for_port(port, proc, what)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, limit: float = 30) -> None:
    """Wait until ``proc`` accepts connections on ``port``; fail if it exits or times out."""
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)
