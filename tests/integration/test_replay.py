"""``poller replay`` end to end: a time range of a stream re-delivered to the mapping's target,
the live checkpoints untouched, an interrupted replay resumed, and lineage order across a
reshard (kinesis-local).

``poller replay`` runs as the operator runs it, ``python -m poller``; the target is the
file-sink handler (``tests/support/file_sink``), which appends every batch to a file.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.types import Checkpoint
from tests.support import file_sink
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.kinesis_local import kinesis_local
from tests.support.process import REPO, run_cli, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Path]:
    """The file sink's output, named in this process's environment (inherited by the command)."""
    path = tmp_path / "sink.jsonl"
    saved = os.environ.get("POLLER_TEST_SINK")
    os.environ["POLLER_TEST_SINK"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("POLLER_TEST_SINK", None)
    else:
        os.environ["POLLER_TEST_SINK"] = saved


def write(tmp: Path, endpoint: str, stream: str, **mapping: Any) -> Path:
    raw = service_config(
        endpoint,
        stream_mapping("m", stream_arn(stream), "tests.support.file_sink:handler", **mapping),
        checkpoints={"path": str(tmp / "live.db")},
    )
    return write_config(tmp / "poller.yaml", raw)


async def phases(
    kinesis: Any, stream: str, shards: list[dict[str, Any]], n: int
) -> list[list[tuple[str, str]]]:
    """Three phases of ``n`` records per shard, a clear gap between them; returns what each
    phase wrote, (shard, sequence), and the instants between phases as the second element."""
    written = []
    for phase in range(3):
        batch: list[tuple[str, str]] = []
        for shard in shards:
            records = [
                (f"p{phase}-{i}", f"{phase}-{i}".encode(), hash_key_for(shard)) for i in range(n)
            ]
            batch += await put_records(kinesis, stream, records)
        written.append(batch)
        await anyio.sleep(1.2)
    return written


def by_shard(records: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for shard, seq in records:
        out.setdefault(shard, []).append(seq)
    return out


def live_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT * FROM checkpoints ORDER BY mapping, shard_id"))


async def test_replay_of_a_time_range_leaves_live_checkpoints_alone(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    stream = unique("replay")
    async with aws_client("kinesis", moto_url) as kinesis:
        shards = await create_stream(kinesis, stream, 2)
        before = time.time()
        written = await phases(kinesis, stream, shards, 5)
    # The range: from the gap before phase 1 to the gap after it.
    first = await arrival_of(moto_url, stream, written[1][0])
    start, end = first - 0.5, first + 0.7
    # Live checkpoints, as the running service keeps them: the replay must not touch them.
    live = await SqliteCheckpointStore(tmp_path / "live.db").open()
    await live.put("m", shards[0]["ShardId"], Checkpoint(sequence_number=written[2][0][1]))
    await live.aclose()
    rows = live_rows(tmp_path / "live.db")
    config = write(tmp_path, moto_url, stream, batch_size=3)

    done = await run(config, "--from", f"{start:.3f}", "--to", f"{end:.3f}")

    assert done.returncode == 0, done.stdout + done.stderr
    assert by_shard(file_sink.delivered(sink)) == by_shard(written[1])
    assert "delivered: 10, failed: 0" in done.stdout
    assert live_rows(tmp_path / "live.db") == rows
    assert before < start
    # The same command again: the replay is done, nothing more is delivered.
    again = await run(config, "--from", f"{start:.3f}", "--to", f"{end:.3f}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "delivered: 0" in again.stdout
    assert "this replay finished in an earlier run" in again.stdout
    assert len(file_sink.delivered(sink)) == 10
    # --restart replays the range again.
    restarted = await run(config, "--from", f"{start:.3f}", "--to", f"{end:.3f}", "--restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert by_shard(file_sink.delivered(sink)[10:]) == by_shard(written[1])


async def arrival_of(moto_url: str, stream: str, record: tuple[str, str]) -> float:
    shard, sequence = record
    async with aws_client("kinesis", moto_url) as kinesis:
        iterator = (
            await kinesis.get_shard_iterator(
                StreamName=stream,
                ShardId=shard,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=sequence,
            )
        )["ShardIterator"]
        response = await kinesis.get_records(ShardIterator=iterator, Limit=1)
    return float(response["Records"][0]["ApproximateArrivalTimestamp"].timestamp())


async def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: run_cli("replay", "--config", str(config), "--mapping", "m", *args)
    )


async def test_interrupted_replay_resumes_after_its_checkpoint(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    stream = unique("resume")
    async with aws_client("kinesis", moto_url) as kinesis:
        [shard] = await create_stream(kinesis, stream, 1)
        start = time.time() - 1
        written = await put_records(
            kinesis, stream, [(f"k{i}", b"x", hash_key_for(shard)) for i in range(40)]
        )
    config = write(tmp_path, moto_url, stream, batch_size=4)
    code, err = await anyio.to_thread.run_sync(interrupted, config, start, sink)
    assert code == 130, err
    assert "run the same command again to resume" in err
    first_run = [seq for _, seq in file_sink.delivered(sink)]
    assert 0 < len(first_run) < 40

    done = await run(config, "--from", f"{start:.3f}")

    assert done.returncode == 0, done.stdout + done.stderr
    everything = [seq for _, seq in file_sink.delivered(sink)]
    second_run = everything[len(first_run) :]
    # Nothing lost, in order; the second run starts after the first one's checkpoint (at most
    # the batch in flight when it was interrupted is delivered twice).
    assert sorted(set(everything), key=int) == [seq for _, seq in written]
    assert second_run == [seq for _, seq in written][-len(second_run) :]
    assert len(second_run) <= 40 - len(first_run) + 4


def interrupted(config: Path, start: float, sink: Path) -> tuple[int, str]:
    """Run the replay with slow batches, and Ctrl-C it after three batches."""
    command = [sys.executable, "-m", "poller", "replay", "--config", str(config), "--mapping", "m"]
    command += ["--from", f"{start:.3f}"]
    slow = {**os.environ, "POLLER_TEST_SLEEP": "0.2"}
    with subprocess.Popen(
        command, cwd=REPO, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            wait_for(lambda: len(file_sink.read(str(sink))) >= 3, 30, "three batches replayed")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    return proc.returncode, err


@pytest.fixture(scope="module")
def kl_url() -> Iterator[str]:
    with kinesis_local() as url:
        yield url


async def test_replay_across_a_reshard_delivers_parents_before_children(
    kl_url: str, tmp_path: Path, sink: Path
) -> None:
    """kinesis-local closes the parent and routes new writes to the children; the replay
    reads the parent to its end before either child."""
    stream = unique("lineage")
    async with aws_client("kinesis", kl_url) as kinesis:
        await kinesis.create_stream(StreamName=stream, ShardCount=1)
        await wait_active(kinesis, stream)
        start = time.time() - 1
        before = await put_records(kinesis, stream, [(f"k{i % 8}", b"a", None) for i in range(24)])
        [parent] = (await kinesis.list_shards(StreamName=stream))["Shards"]
        await kinesis.split_shard(
            StreamName=stream,
            ShardToSplit=parent["ShardId"],
            NewStartingHashKey=split_point(parent),
        )
        await wait_active(kinesis, stream)
        after = await put_records(kinesis, stream, [(f"k{i % 8}", b"b", None) for i in range(24)])
    children = {shard for shard, _ in after}
    assert parent["ShardId"] not in children
    config = write(tmp_path, kl_url, stream, batch_size=5)

    done = await run(config, "--from", f"{start:.3f}")

    assert done.returncode == 0, done.stdout + done.stderr
    got = file_sink.delivered(sink)
    assert sorted(got) == sorted(before + after)
    shards = [shard for shard, _ in got]
    last_parent = max(i for i, s in enumerate(shards) if s == parent["ShardId"])
    first_child = min(i for i, s in enumerate(shards) if s in children)
    assert last_parent < first_child
    for shard, seqs in by_shard(got).items():
        assert seqs == sorted(seqs, key=int), f"{shard} out of order"


async def wait_active(kinesis: Any, stream: str) -> None:
    async def active() -> bool:
        summary = await kinesis.describe_stream_summary(StreamName=stream)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    await wait_until(active, 15, f"{stream} to become ACTIVE")


def split_point(shard: dict[str, Any]) -> str:
    low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    return str((low + high) // 2)


async def test_records_that_still_fail_are_reported_and_bad_input_refused(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    stream = unique("failing")
    async with aws_client("kinesis", moto_url) as kinesis:
        [shard] = await create_stream(kinesis, stream, 1)
        start = time.time() - 1
        keys = ["a", "poison", "b", "c"]
        written = await put_records(kinesis, stream, [(k, b"x", hash_key_for(shard)) for k in keys])
    config = write(tmp_path, moto_url, stream, batch_size=2)
    (tmp_path / "broken").touch()
    os.environ["POLLER_TEST_FAIL_FLAG"] = str(tmp_path / "broken")
    try:
        done = await run(config, "--from", f"{start:.3f}", "--max-retries", "0")
    finally:
        os.environ.pop("POLLER_TEST_FAIL_FLAG")

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"given up: {written[0][1]}..{written[1][1]} (2 record(s))" in done.stdout
    assert "delivered: 2, failed: 2" in done.stdout
    assert [seq for _, seq in file_sink.delivered(sink)] == [seq for _, seq in written[2:]]

    for args, error in [
        (["--from", "2099-01-01T00:00:00Z"], "--from '2099-01-01T00:00:00Z' is in the future"),
        (["--from", f"{start:.0f}", "--to", f"{start - 60:.0f}"], "is before --from"),
        (["--from", f"{start:.0f}", "--shard", "shardId-9"], "--shard 'shardId-9': no such shard"),
        (["--from", "yesterday"], "--from 'yesterday': not a time"),
    ]:
        refused = await run(config, *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith("poller replay: ")
        assert error in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
