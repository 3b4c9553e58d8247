"""The enhanced fan-out benchmark, run tiny so that it does not rot.

``benchmarks/efo.py`` runs its three parts on ministack (put-to-invoke latency of an EFO
mapping, a polling mapping and a raw SubscribeToShard loop; idle CPU of both mappings;
throughput on a backlog) with sizes small enough for a test, and must print every row. No
figure is checked: performance comes from the benchmark run by hand, never from a timed test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.ministack import ministack_available
from tests.support.process import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)  # real processes on 2 shared cores: about half a minute to 2 minutes
def test_the_efo_benchmark_prints_every_row() -> None:
    reason = ministack_available()
    if reason is not None:
        pytest.skip(reason)
    command = [sys.executable, "-m", "benchmarks.efo", "--latency-records", "5", "--rate", "10"]
    command += ["--shards", "3", "--warmup", "3", "--seconds", "2", "--records", "1500"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for row in (
        "== put -> invoke latency, 1 idle shard, 5 single records",
        "EFO mapping (poller run)",
        "polling mapping (poller run)",
        "raw subscribe_to_shard loop",
        "== idle CPU, 3 idle shards",
        "== throughput, 1500 records of 100 bytes in 4 shards",
    ):
        assert row in done.stdout, done.stdout + done.stderr
    # Each of the three parts prints a row per mapping and the method under its table.
    assert done.stdout.count("\nEFO mapping ") == 3, done.stdout
    assert done.stdout.count("\npolling mapping ") == 3, done.stdout
    assert done.stdout.count("method: ") == 3, done.stdout
