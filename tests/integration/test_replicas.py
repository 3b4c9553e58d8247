"""Several replicas share a stream through the DynamoDB lease table (separate OS processes,
one moto server): balance, failover, rolling restart, fencing and a joining replica."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.aws import moto_server_process
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.process import REPO, run_cli
from tests.support.replicas import (
    Fleet,
    Writer,
    duplicates,
    leases,
    new_fleet,
    overlaps,
    owner_counts,
    wait,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """Overrides the session's in-process moto: several replica processes hammer this one."""
    with moto_server_process() as url:
        yield url


@pytest.fixture
def fleet(tmp_path: Path, moto_url: str) -> Iterator[tuple[Fleet, str, str, list[dict[str, str]]]]:
    lease_store = require_dynamodb_local()  # the lease table on DynamoDB Local, not moto
    replicas, stream, table, shards = new_fleet(
        tmp_path, moto_url, "fleet", lease_store=lease_store
    )
    try:
        yield replicas, stream, table, shards
    finally:
        replicas.stop_all()


def balanced(moto_url: str, table: str, names: set[str]) -> bool:
    counts = owner_counts(moto_url, table)
    return set(counts) == names and sorted(counts.values()) in ([2, 3, 3], [4, 4], [8])


def test_three_replicas_converge_to_3_3_2_without_overlap(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """Three replicas on eight shards end with 3/3/2 leases; no shard is ever processed by two
    replicas at once."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("abc")
        wait(lambda: balanced(moto_url, table, {"a", "b", "c"}), 60, "a 3/3/2 split")
        wait(lambda: len(replicas.delivered()) >= 200, 60, "traffic")
    replicas.wait_delivered(writer, "every record delivered")
    assert overlaps(replicas.batches()) == []
    assert sorted(owner_counts(moto_url, table).values()) == [2, 3, 3]


def test_failover_after_sigkill(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL one of three replicas: its shards resume on the survivors within 20 s (default
    lease settings); nothing is lost; duplicates stay within its in-flight batches."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("abc")
        wait(lambda: balanced(moto_url, table, {"a", "b", "c"}), 60, "a 3/3/2 split")
        victim = "c"
        orphans = {lease.shard_id for lease in leases(moto_url, table) if lease.owner == victim}
        replicas.procs[victim].signal(signal.SIGKILL)
        killed_at = time.time()

        def resumed() -> bool:
            after = [b for b in replicas.batches() if b["started"] > killed_at]
            return orphans <= {b["records"][0][0] for b in after}

        wait(resumed, 30, "the orphaned shards delivering again")
        failover = (
            max(
                min(
                    b["started"]
                    for b in replicas.batches()
                    if b["started"] > killed_at and b["records"][0][0] == s
                )
                for s in orphans
            )
            - killed_at
        )
    replicas.wait_delivered(writer, "every record delivered")
    assert failover <= 20, f"failover took {failover:.1f} s"
    assert duplicates(replicas.delivered()) <= 20 * len(orphans)
    assert {lease.owner for lease in leases(moto_url, table)} == {"a", "b"}


def test_rolling_restart_has_no_duplicates(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM each replica in turn and start it again, under continuous writes: zero
    duplicates and zero lost records (graceful handoffs, no waiting for expiry)."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("abc")
        wait(lambda: balanced(moto_url, table, {"a", "b", "c"}), 60, "a 3/3/2 split")
        for name in ("a", "b", "c"):
            proc = replicas.procs[name]
            proc.signal(signal.SIGTERM)
            assert proc.wait(40) == 0
            replicas.start(name)
            wait(
                lambda: balanced(moto_url, table, {"a", "b", "c"}),
                60,
                f"balance after restarting {name}",
            )
    replicas.wait_delivered(writer, "every record delivered")
    assert duplicates(replicas.delivered()) == 0
    assert overlaps(replicas.batches()) == []


def test_paused_replica_is_fenced(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP a replica past its lease: its shards move. After SIGCONT it learns it lost every
    one of them (its fenced writes are refused) and starts no batch on them until it acquires a
    lease again through balancing."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("ab")
        wait(lambda: balanced(moto_url, table, {"a", "b"}), 60, "a 4/4 split")
        paused = replicas.procs["b"]
        # A lease a peer handed over is written to b before b adopts it; b can only learn
        # it lost the leases it had adopted (acquired) itself.
        adopted = {str(e["shard"]) for e in paused.events("lease.acquired")}
        held = {
            lease.shard_id
            for lease in leases(moto_url, table)
            if lease.owner == "b" and lease.shard_id in adopted
        }
        paused.signal(signal.SIGSTOP)
        wait(lambda: owner_counts(moto_url, table).get("a") == 8, 40, "a taking b's leases")
        resumed_at = time.time()
        paused.signal(signal.SIGCONT)

        def lost_after_resume() -> set[str]:
            return {e["shard"] for e in paused.events("lease.lost") if stamp(e) > resumed_at}

        wait(lambda: lost_after_resume() >= held, 30, "b noticing it lost every lease")
    replicas.wait_delivered(writer, "every record delivered")
    reacquired = [stamp(e) for e in paused.events("lease.acquired") if stamp(e) > resumed_at]
    until = min(reacquired, default=float("inf"))
    assert paused.proc is not None
    late = [
        b
        for b in replicas.batches()
        if b["pid"] == paused.proc.pid
        and resumed_at < b["started"] < until
        and b["records"][0][0] in held
    ]
    assert late == [], "the fenced replica started batches on shards it no longer owned"


def stamp(event: dict[str, object]) -> float:
    """A log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_new_replica_gets_its_share_within_two_cycles(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """A third replica joining a running pair receives its share within two balance cycles."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards):
        replicas.start_all("ab")
        wait(lambda: balanced(moto_url, table, {"a", "b"}), 60, "a 4/4 split")
        joined = replicas.start("c")
        joined.wait_ready(30)
        ready_at = time.monotonic()
        wait(lambda: owner_counts(moto_url, table).get("c", 0) >= 2, 30, "c's share")
        took = time.monotonic() - ready_at
    assert took <= 2 * 5 + 5, f"c took {took:.1f} s"
    assert overlaps(replicas.batches()) == []


def test_status_command_shows_owners_and_checkpoints(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """`poller status` prints each shard's owner, checkpoint and lease age from the table."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start("a")
        wait(lambda: owner_counts(moto_url, table).get("a") == 8, 60, "a owning every shard")
        wait(lambda: all(lease.checkpoint for lease in leases(moto_url, table)), 60, "checkpoints")
    # Let delivery settle, so the checkpoints cannot move between the CLI's read and ours.
    replicas.wait_delivered(writer, "every record delivered")
    last = {shard: seq for shard, seq in writer.written}
    wait(
        lambda: all(
            lease.checkpoint and lease.checkpoint.sequence_number == last[lease.shard_id]
            for lease in leases(moto_url, table)
        ),
        60,
        "checkpoints at the last records",
    )
    result = run_cli(
        "status", "--config", str(replicas.config), env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "shardId-" in line]
    assert len(lines) == 8
    for lease in leases(moto_url, table):
        (line,) = [line for line in lines if lease.shard_id in line]
        assert " a " in f" {line} "
        assert lease.checkpoint is not None
        assert str(lease.checkpoint.sequence_number) in line
