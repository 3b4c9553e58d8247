"""The scale benchmark and the lease simulation, run tiny so that they do not rot.

``benchmarks/scale.py`` runs 8 shards x 2 replicas for a short window (real ``poller run``
processes, DynamoDB Local for the lease table, ministack or moto for the stream) and must print
every figure with no concurrent invocation of a shard; ``benchmarks/lease_sim.py`` runs 200
shards x 5 replicas through every event, and its exclusivity check must catch a shard that two
replicas both run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import anyio
import pytest

from benchmarks.lease_sim import ProtocolViolation, Simulation, simulate
from tests.support.dynamodb_local import unavailable_reason
from tests.support.process import REPO
from tests.support.scale_fleet import ministack_available


def sim_args(**overrides: object) -> argparse.Namespace:
    settings: dict[str, object] = {
        "shards": 200,
        "replicas": 5,
        "rest_seconds": 60.0,
        "failover_runs": 2,
        "outage_seconds": 20.0,
        "takeover_grace": 3.0,
        "view_lag": 0.5,
        "seed": 13,
        "skip_moves": False,
    }
    return argparse.Namespace(**{**settings, **overrides})


def test_the_simulation_prints_every_figure_and_finds_no_two_owners(
    capsys: pytest.CaptureFixture[str],
) -> None:
    anyio.run(simulate, sim_args())
    out = capsys.readouterr().out
    for figure in (
        "time to full assignment (200 shards x 5 replicas",
        "calls per minute at rest (5 replicas x 200 shards)",
        "lease moves on a replica joins",
        "lease moves on a replica leaves (clean)",
        "failover (kill 1, 200 shards): median",
        "whole-table outage of 20 s: resettled",
        "one replica cut off for 20 s: resettled",
        "no shard ever had two fresh owners",
    ):
        assert figure in out, out


def test_the_simulation_stops_on_a_shard_run_by_two_replicas() -> None:
    async def double_owner() -> None:
        sim = Simulation(sim_args(shards=20, replicas=2))
        sim.start("r00")
        sim.start("r01")
        await sim.run_until(sim.settled, 120, "assignment")
        theirs, mine = sim.replicas["r00"], sim.replicas["r01"]
        shard_id, lease = next(iter(theirs.coord.held.items()))
        before = set(mine.coord.held)
        # r01 comes to believe it holds r00's fresh lease: the check must say so at once.
        mine.coord.held[shard_id] = lease
        mine.coord._holdings.renewed_at[shard_id] = sim.clock.now
        sim._check(mine, before)

    with pytest.raises(ProtocolViolation, match="held and fresh on r01 and r00"):
        anyio.run(double_owner)


@pytest.mark.slow
@pytest.mark.timeout(600)  # real processes on 2 shared cores: about 1 to 3 minutes
def test_the_scale_benchmark_prints_every_figure_with_no_concurrent_invocation() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    streams = "moto" if ministack_available() else "ministack"
    command = [sys.executable, "-m", "benchmarks.scale", "--shards", "8", "--replicas", "2"]
    command += ["--rest-seconds", "10", "--load-seconds", "3", "--failover-runs", "1"]
    command += ["--streams", streams]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "time to full assignment (8 shards x 2 replicas",
        "CPU per replica at rest",
        "DynamoDB calls per minute at rest, 2 replicas x 8 shards",
        "lease moves on a replica joins (to 3)",
        "lease moves on a replica leaves (SIGTERM)",
        "failover, leases taken (SIGKILL to the last orphan acquired): median",
        "failover, delivering again (SIGKILL 1 of 2, 8 shards): median",
        "concurrent invocations of a shard: 0 ",
    ):
        assert figure in done.stdout, done.stdout + done.stderr
