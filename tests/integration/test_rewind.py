"""``poller rewind`` end to end: the command against running replicas (lease table) and against
the SQLite backend with the service stopped and running, its dry run, and bad input.

The replicas are ``poller run`` subprocesses on moto's server (tests/support/replicas.py); the
command is ``python -m poller rewind`` (tests/support/process.py ``run_cli``). Deliveries are
read back from the shared JSON-lines sink (tests/support/file_sink.py), which records per batch
the process, the shard, the records and when the handler ran.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.rewinds import RewindTarget
from poller.types import Checkpoint
from tests.support import file_sink
from tests.support.aws import aws_client, moto_server_process, put_records, stream_arn, unique
from tests.support.process import REPO, ServiceProcess, run_cli, write_config
from tests.support.replicas import (
    Fleet,
    Writer,
    leases,
    make_stream,
    new_fleet,
    overlaps,
    owner_counts,
    wait,
)
from tests.support.service_config import service_config, stream_mapping

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server of this module's own: several replica processes share it."""
    with moto_server_process() as url:
        yield url


@pytest.fixture
def fleet(tmp_path: Path, moto_url: str) -> Iterator[tuple[Fleet, str, str, list[dict[str, Any]]]]:
    replicas, stream, table, shards = new_fleet(tmp_path, moto_url, "rewind")
    try:
        yield replicas, stream, table, shards
    finally:
        replicas.stop_all()


def graceful_stop(proc: ServiceProcess) -> None:
    """SIGTERM and wait for a clean exit (leases released, the SQLite service row removed)."""
    proc.signal(signal.SIGTERM)
    assert proc.wait(40) == 0


def rewind(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("rewind", "--config", str(config), *args, env=ENV)


def deliveries_since(batches: list[dict[str, Any]], since: float) -> dict[str, list[str]]:
    """Sequence numbers delivered per shard by batches that started after ``since``."""
    out: dict[str, list[str]] = {}
    for batch in sorted(batches, key=lambda b: b["started"]):
        if batch["started"] > since:
            for shard, sequence, _key in batch["records"]:
                out.setdefault(shard, []).append(sequence)
    return out


def first_written(writer: Writer) -> dict[str, str]:
    firsts: dict[str, str] = {}
    for shard, sequence in writer.written:
        firsts.setdefault(shard, sequence)
    return firsts


# -- lease backend, two replicas ------------------------------------------------------------


def test_rewind_to_trim_horizon_with_two_replicas(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """Two running replicas, continuous writes: after ``--to-trim-horizon`` every shard
    delivers its first record again and then everything after it, the command reports every
    shard applied by a replica, and no shard is ever processed by two replicas at once."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("ab")
        wait(lambda: set(owner_counts(moto_url, table)) == {"a", "b"}, 60, "both replicas own")
        wait(lambda: len(replicas.delivered()) >= 200, 60, "traffic")
        asked_at = time.time()
        result = rewind(replicas.config, "--mapping", "fleet", "--to-trim-horizon")
        assert result.returncode == 0, result.stdout + result.stderr
        firsts = first_written(writer)

        def redelivered_from_start() -> bool:
            again = deliveries_since(replicas.batches(), asked_at)
            return all(seq in again.get(shard, []) for shard, seq in firsts.items())

        wait(redelivered_from_start, 60, "every shard re-delivering its first record")
    replicas.wait_delivered(writer, "every record delivered after the rewind")
    lines = [line for line in result.stdout.splitlines() if "shardId-" in line]
    assert len(lines) == len(shards)
    assert all("-> TRIM_HORIZON" in line and "applied by " in line for line in lines)
    assert {line.split("applied by ")[1] for line in lines} <= {"a", "b"}
    again = deliveries_since(replicas.batches(), asked_at)
    for shard, first in firsts.items():
        # From the first record on, every record written to the shard came again, in order.
        replay = list(dict.fromkeys(again[shard][again[shard].index(first) :]))
        written = [seq for sh, seq in writer.written if sh == shard]
        assert [seq for seq in replay if seq in set(written)][: len(written)] == written
    assert overlaps(replicas.batches()) == []
    assert all(lease.pending_rewind is None for lease in leases(moto_url, table))


def test_rewind_during_rebalancing_never_runs_a_shard_twice(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """A rewind asked while a second replica joins (leases handed off while the owners apply
    the rewind): every shard applies it once, by whichever replica owns it then, re-delivers
    from its first record, and no shard is processed by two replicas at once."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start("a")
        wait(lambda: owner_counts(moto_url, table).get("a") == 8, 60, "a owning every shard")
        wait(lambda: len(replicas.delivered()) >= 100, 60, "traffic")
        asked_at = time.time()
        replicas.start("b")
        result = rewind(replicas.config, "--mapping", "fleet", "--to-trim-horizon")
        assert result.returncode == 0, result.stdout + result.stderr
        firsts = first_written(writer)
        wait(
            lambda: all(
                seq in deliveries_since(replicas.batches(), asked_at).get(shard, [])
                for shard, seq in firsts.items()
            ),
            60,
            "every shard re-delivering its first record",
        )
        wait(lambda: set(owner_counts(moto_url, table)) == {"a", "b"}, 60, "b got its share")
    replicas.wait_delivered(writer, "every record delivered")
    lines = [line for line in result.stdout.splitlines() if "shardId-" in line]
    assert len(lines) == 8
    assert all("applied by " in line for line in lines)
    assert overlaps(replicas.batches()) == []


def test_rewind_to_sequence_moves_only_the_named_shard(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """``--to-sequence SHARD=SEQ`` delivers SEQ again on that shard; the other shards'
    checkpoints are not moved back."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start_all("ab")
        wait(lambda: set(owner_counts(moto_url, table)) == {"a", "b"}, 60, "both replicas own")
        wait(lambda: len(replicas.delivered()) >= 200, 60, "traffic")
        shard = shards[3]["ShardId"]
        ours = [seq for sh, seq in writer.written if sh == shard]
        middle = ours[len(ours) // 2]
        before = {lease.shard_id: lease.checkpoint for lease in leases(moto_url, table)}
        asked_at = time.time()
        result = rewind(replicas.config, "--mapping", "fleet", "--to-sequence", f"{shard}={middle}")
        assert result.returncode == 0, result.stdout + result.stderr
        wait(
            lambda: middle in deliveries_since(replicas.batches(), asked_at).get(shard, []),
            60,
            "the named shard re-delivering SEQ",
        )
    replicas.wait_delivered(writer, "every record delivered")
    again = deliveries_since(replicas.batches(), asked_at)
    for other, checkpoint in before.items():
        if other == shard or checkpoint is None or checkpoint.sequence_number is None:
            continue
        # No other shard went back: nothing at or before its old checkpoint came again.
        old = int(checkpoint.sequence_number)
        assert all(int(seq) > old for seq in again.get(other, [])), other
    replay = list(dict.fromkeys(again[shard][again[shard].index(middle) :]))
    rest = ours[ours.index(middle) :]
    assert [seq for seq in replay if seq in set(rest)][: len(rest)] == rest
    assert overlaps(replicas.batches()) == []


def test_dry_run_changes_nothing(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """``--dry-run`` prints each shard's current and new position and writes nothing."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start("a")
        wait(lambda: owner_counts(moto_url, table).get("a") == 8, 60, "a owning every shard")
    replicas.wait_delivered(writer, "every record delivered")
    wait(lambda: all(lease.checkpoint for lease in leases(moto_url, table)), 60, "checkpoints")
    graceful_stop(replicas.procs["a"])
    before = leases(moto_url, table)
    result = rewind(replicas.config, "--mapping", "fleet", "--to-trim-horizon", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "shardId-" in line]
    assert len(lines) == 8
    for lease in before:
        (line,) = [line for line in lines if lease.shard_id in line]
        assert lease.checkpoint is not None
        assert f"AFTER_SEQUENCE_NUMBER {lease.checkpoint.sequence_number} -> TRIM_HORIZON" in line
    assert leases(moto_url, table) == before


def test_rewind_with_no_replica_running_is_written_by_the_command(fleet, moto_url: str) -> None:  # type: ignore[no-untyped-def]
    """With every replica stopped (leases released), the command writes the new checkpoints
    itself, fenced on the counters it read; a replica started afterwards re-delivers from it."""
    replicas, stream, table, shards = fleet
    with Writer(moto_url, stream, shards) as writer:
        replicas.start("a")
        wait(lambda: owner_counts(moto_url, table).get("a") == 8, 60, "a owning every shard")
    replicas.wait_delivered(writer, "every record delivered")
    graceful_stop(replicas.procs["a"])
    wait(lambda: set(owner_counts(moto_url, table)) == {None}, 30, "leases released")
    result = rewind(replicas.config, "--mapping", "fleet", "--to-trim-horizon")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("applied by poller rewind") == 8
    for lease in leases(moto_url, table):
        assert lease.checkpoint is not None
        assert lease.checkpoint.start_timestamp == 0.0
    started = time.time()
    replicas.start("b")
    firsts = first_written(writer)
    wait(
        lambda: all(
            deliveries_since(replicas.batches(), started).get(s, [None])[0] == q
            for s, q in firsts.items()
        ),
        60,
        "b re-delivering every shard from its first record",
    )


# -- SQLite backend ---------------------------------------------------------------------------


def sqlite_setup(tmp_path: Path, moto_url: str) -> tuple[Path, str, list[dict[str, Any]]]:
    stream = unique("rewind-solo")
    shards = anyio.run(make_stream, moto_url, stream, 2)
    mapping = stream_mapping(
        "solo",
        stream_arn(stream),
        {"type": "python", "handler": "tests.support.file_sink:handler"},
        batch_size=10,
    )
    config = write_config(
        tmp_path / "solo.yaml",
        service_config(
            moto_url,
            mapping,
            checkpoints={"backend": "sqlite", "path": str(tmp_path / "solo.db")},
            logging={"format": "json"},
        ),
    )
    return config, stream, shards


def put(moto_url: str, stream: str, shards: list[dict[str, Any]], n: int) -> list[tuple[str, str]]:
    from tests.support.aws import hash_key_for

    async def write() -> list[tuple[str, str]]:
        async with aws_client("kinesis", moto_url) as kinesis:
            out: list[tuple[str, str]] = []
            for shard in shards:
                entries = [(f"k{i}", b"{}", hash_key_for(shard)) for i in range(n)]
                out += await put_records(kinesis, stream, entries)
            return out

    return anyio.run(write)


def solo_checkpoints(db: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT shard_id, sequence_number, start_timestamp, sub_sequence_number"
            " FROM checkpoints WHERE mapping = 'solo'"
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_sqlite_rewind_with_the_service_stopped_and_running(tmp_path: Path, moto_url: str) -> None:
    """SQLite: stopped, the command writes the checkpoints itself (applied by poller rewind);
    running, the service applies the request (applied by host:pid) and re-delivers."""
    config, stream, shards = sqlite_setup(tmp_path, moto_url)
    sink = tmp_path / "sink.jsonl"
    env = file_sink.env(sink)
    written = put(moto_url, stream, shards, 15)
    service = ServiceProcess(config, tmp_path / "solo-1.log", env).start()
    wait(lambda: set(file_sink.delivered(sink)) >= set(written), 60, "first delivery")
    graceful_stop(service)
    # Stopped: direct write.
    result = rewind(config, "--mapping", "solo", "--to-trim-horizon")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("applied by poller rewind") == 2
    assert all(row[:2] == (None, 0.0) for row in solo_checkpoints(tmp_path / "solo.db").values())
    started = time.time()
    service = ServiceProcess(config, tmp_path / "solo-2.log", env).start()
    try:
        firsts = dict(reversed(written))  # shard -> its first sequence number
        wait(
            lambda: all(
                deliveries_since(file_sink.read(str(sink)), started).get(s, [None])[0] == q
                for s, q in firsts.items()
            ),
            60,
            "re-delivery after the stopped rewind",
        )
        wait(lambda: file_sink.delivered(sink).count(written[-1]) >= 2, 60, "caught up")
        # Running: the service applies it.
        shard, middle = written[5]
        asked_at = time.time()
        result = rewind(config, "--mapping", "solo", "--to-sequence", f"{shard}={middle}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "applied by poller rewind" not in result.stdout
        assert f"{shard}  " in result.stdout
        assert "-> AT_SEQUENCE_NUMBER" in result.stdout
        wait(
            lambda: (
                deliveries_since(file_sink.read(str(sink)), asked_at).get(shard, [None])[0]
                == middle
            ),
            60,
            "re-delivery from SEQ by the running service",
        )
    finally:
        service.stop()


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path, moto_url: str) -> None:
    """Unknown mapping, SQS mapping, unknown shard, a time in the future, malformed SHARD=SEQ:
    one clear line each, exit 2, nothing written."""
    config, stream, shards = sqlite_setup(tmp_path, moto_url)
    sink = tmp_path / "sink.jsonl"
    written = put(moto_url, stream, shards, 3)
    service = ServiceProcess(config, tmp_path / "solo.log", file_sink.env(sink)).start()
    wait(lambda: set(file_sink.delivered(sink)) >= set(written), 60, "delivery")
    graceful_stop(service)
    before = solo_checkpoints(tmp_path / "solo.db")
    cases = {
        (
            "--mapping",
            "nope",
            "--to-latest",
        ): "no mapping named 'nope' in the configuration (mappings: solo)",
        ("--mapping", "solo", "--to-sequence", "shardId-9=1"): "unknown shard shardId-9",
        ("--mapping", "solo", "--to-timestamp", "2999-01-01T00:00:00Z"): "in the future",
        ("--mapping", "solo", "--to-timestamp", "yesterday"): "not a time",
        ("--mapping", "solo", "--to-sequence", "shardId-000000000000"): "expected SHARD=SEQ",
        ("--mapping", "solo", "--to-sequence", "shardId-000000000000=abc"): "expected SHARD=SEQ",
    }
    for args, message in cases.items():
        result = rewind(config, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert solo_checkpoints(tmp_path / "solo.db") == before
    with sqlite3.connect(tmp_path / "solo.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM rewinds").fetchone() == (0,)


# -- the lease table's rewind writes (fencing) ------------------------------------------------


@pytest.mark.anyio
async def test_the_commands_direct_write_and_a_take_fence_each_other(moto_url: str) -> None:
    """An unowned lease: the command's write is fenced on the counter it read, so a replica
    that takes the lease first makes it fail (nothing written; the new owner applies the
    request when it starts the shard), and a take on the counter seen before the command's
    write fails after it."""
    async with aws_client("dynamodb", moto_url) as client:
        table = DynamoDBLeaseTable(client, unique("leases"))
        await table.ensure_table()
        old = Checkpoint(sequence_number="100")
        target = RewindTarget("trim_horizon")
        for shard in ("s-race", "s-first"):
            await table.create("m", shard, checkpoint=old)
            asked = await table.request_rewind("m", shard, "r1", target)
            assert asked is not None
            assert asked.pending_rewind is not None

        # A replica takes s-race between the command's read and its write.
        seen = await table.get("m", "s-race")
        assert seen is not None
        taken = await table.take(seen, "replica-a")
        assert taken is not None
        ok, now = await table.apply_rewind(seen, None, "r1", target.checkpoint())
        assert not ok
        assert now is not None
        assert (now.owner, now.checkpoint) == ("replica-a", old)
        # Its owner applies it, fenced on its own counter; a stranger cannot.
        ok, _ = await table.apply_rewind(taken, "replica-b", "r1", target.checkpoint())
        assert not ok
        ok, applied = await table.apply_rewind(taken, "replica-a", "r1", target.checkpoint())
        assert ok
        assert applied is not None
        assert applied.checkpoint == Checkpoint(start_timestamp=0.0)
        assert applied.rewind is not None
        assert (applied.rewind.applied, applied.rewind.applied_by) == (True, "replica-a")

        # The command writes s-first first: a take on the counter read before fails.
        seen = await table.get("m", "s-first")
        assert seen is not None
        ok, written = await table.apply_rewind(seen, None, "r1", target.checkpoint())
        assert ok
        assert written is not None
        assert written.counter == seen.counter + 1
        assert await table.take(seen, "replica-a") is None
        again = await table.take(written, "replica-a")
        assert again is not None
        assert again.checkpoint == Checkpoint(start_timestamp=0.0)
        assert again.pending_rewind is None
