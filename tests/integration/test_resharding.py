"""Resharding on kinesis-local: split, merge and UpdateShardCount under continuous writes.

kinesis-local is faithful where moto is not: parents close, new writes go to the children, and
reading a closed parent to its end returns ``ChildShards``. Every test checks the three things
that go wrong in peers: nothing is lost, each partition key's records arrive in the order they
were written (across parent and child), and no child is invoked before its parents finished.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.integration.kinesis_harness import kinesis_settings
from tests.support import recorder
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.kinesis_local import kinesis_local
from tests.support.service import run_until, running
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def kl_url() -> Iterator[str]:
    with kinesis_local() as url:
        yield url


@pytest.fixture
async def kinesis(kl_url: str) -> AsyncIterator[Any]:
    async with aws_client("kinesis", kl_url) as client:
        yield client


class Writer:
    """Puts records with per-key counters, 200 keys, in small sequential batches."""

    def __init__(self, kinesis: Any, stream: str, keys: int = 200) -> None:
        self.kinesis, self.stream, self.keys = kinesis, stream, keys
        self.counters: dict[str, int] = defaultdict(int)
        self.written = 0

    async def put_batch(self, size: int = 25) -> None:
        entries = []
        for i in range(size):
            key = f"key-{(self.written + i) % self.keys}"
            self.counters[key] += 1
            entries.append(
                {
                    "PartitionKey": key,
                    "Data": json.dumps({"k": key, "n": self.counters[key]}).encode(),
                }
            )
        response = await self.kinesis.put_records(StreamName=self.stream, Records=entries)
        assert response["FailedRecordCount"] == 0
        self.written += size

    async def run(self, stop: anyio.Event, pause: float = 0.05) -> None:
        while not stop.is_set():
            await self.put_batch()
            await anyio.sleep(pause)


async def shards_of(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = (await kinesis.list_shards(StreamName=stream))["Shards"]
    return shards


async def wait_active(kinesis: Any, stream: str) -> None:
    async def active() -> bool:
        summary = await kinesis.describe_stream_summary(StreamName=stream)
        return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

    await wait_until(active, 15, f"{stream} to become ACTIVE")


async def wait_shards(
    kinesis: Any,
    stream: str,
    which: Callable[[dict[str, Any]], Any],
    count: int,
    what: str,
    *,
    exactly: bool = False,
) -> set[str]:
    """Wait until at least (or ``exactly``) ``count`` of the stream's shards are ``which``
    ones; return their ids."""

    async def found() -> set[str] | None:
        ids = {s["ShardId"] for s in await shards_of(kinesis, stream) if which(s)}
        return ids if len(ids) == count or (len(ids) > count and not exactly) else None

    result: set[str] = await wait_until(found, 15, what)
    return result


def split_point(shard: dict[str, Any]) -> str:
    """The middle of a shard's hash key range: where a split halves it."""
    low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    return str((low + high) // 2)


def delivered(arn: str) -> list[tuple[str, str, int]]:
    """(shard, key, per-key counter) of every delivered record, in delivery order."""
    out = []
    for batch in recorder.BATCHES[arn]:
        for r in batch:
            body = json.loads(base64.b64decode(r["kinesis"]["data"]))
            out.append((r["eventID"].split(":")[0], body["k"], body["n"]))
    return out


async def assert_resharded_cleanly(kinesis: Any, stream: str, arn: str, writer: Writer) -> None:
    """Nothing lost or repeated, per-key order kept, and no child before its parents."""
    assert_order_and_completeness(arn, writer)
    await assert_parents_before_children(kinesis, stream, arn)


def assert_order_and_completeness(arn: str, writer: Writer) -> None:
    by_key: dict[str, list[int]] = defaultdict(list)
    for _, key, n in delivered(arn):
        by_key[key].append(n)
    assert {k: len(v) for k, v in by_key.items()} == dict(writer.counters), (
        "lost or duplicated records"
    )
    broken = {k: v for k, v in by_key.items() if v != sorted(v)}
    assert not broken, f"per-key order broken for {len(broken)} keys"


async def assert_parents_before_children(kinesis: Any, stream: str, arn: str) -> None:
    """The last batch of every parent completed before the first batch of its children."""
    shards = await shards_of(kinesis, stream)
    order = [r["eventID"].split(":")[0] for batch in recorder.BATCHES[arn] for r in batch[:1]]
    first = {s: order.index(s) for s in set(order)}
    last = {s: len(order) - 1 - order[::-1].index(s) for s in set(order)}
    compared = 0
    for shard in shards:
        for parent in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")):
            child = shard["ShardId"]
            if parent and parent in last and child in first:
                assert last[parent] < first[child], (
                    f"{child} invoked before its parent {parent} finished"
                )
                compared += 1
    assert compared >= 1, "no parent and child both delivered: the check compared nothing"


async def active_stream(
    kinesis: Any, prefix: str, shards: int, recorded_streams: list[str]
) -> tuple[str, str]:
    """A new stream of ``shards`` shards, once ACTIVE; returns its name and ARN (registered
    for the recorder's cleanup)."""
    stream = unique(prefix)
    arn = stream_arn(stream)
    recorded_streams.append(arn)
    await kinesis.create_stream(StreamName=stream, ShardCount=shards)
    await wait_active(kinesis, stream)
    return stream, arn


@contextlib.asynccontextmanager
async def under_writes(
    kinesis: Any, kl_url: str, db: Path, stream: str, warm_up: int, what: str
) -> AsyncIterator[Writer]:
    """The service (batches of 50, shards listed every second) while a writer puts records
    continuously; yields the writer once ``warm_up`` records were delivered. When the block
    ends the writer stops, and the service runs on until every written record arrived."""
    arn = stream_arn(stream)
    writer = Writer(kinesis, stream)
    settings = kinesis_settings(
        endpoint_url=kl_url, stream=stream, db=db, batch_size=50, shard_discovery_interval_seconds=1
    )
    stop = anyio.Event()
    async with running(settings):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, stop)
            await wait_until(lambda: len(delivered(arn)) >= warm_up, 30, what)
            yield writer
            stop.set()
        # The writer has returned, so `written` counts its last put too (a put in flight when
        # `stop` was set used to land after the count was read, and the service was stopped
        # before those records arrived).
        await wait_until(lambda: len(delivered(arn)) >= writer.written, 60, "every written record")


def shards_delivered(arn: str) -> set[str]:
    return {shard for shard, _, _ in delivered(arn)}


async def test_split_and_merge_under_continuous_writes(
    kinesis: Any, kl_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Split one shard and merge two others mid-run while 200 keys are written continuously."""
    stream, arn = await active_stream(kinesis, "reshard", 3, recorded_streams)
    shards = await shards_of(kinesis, stream)
    db = tmp_path / "c.db"
    async with under_writes(
        kinesis, kl_url, db, stream, 200, "traffic before the reshard"
    ) as writer:
        await kinesis.split_shard(
            StreamName=stream,
            ShardToSplit=shards[0]["ShardId"],
            NewStartingHashKey=split_point(shards[0]),
        )
        await wait_active(kinesis, stream)
        await kinesis.merge_shards(
            StreamName=stream,
            ShardToMerge=shards[1]["ShardId"],
            AdjacentShardToMerge=shards[2]["ShardId"],
        )
        await wait_active(kinesis, stream)
        children = await wait_shards(
            kinesis, stream, lambda s: s.get("ParentShardId"), 3, "the children to appear"
        )
        await wait_until(lambda: shards_delivered(arn) >= children, 60, "every child delivering")
    await assert_resharded_cleanly(kinesis, stream, arn, writer)


async def test_update_shard_count_2_to_4_under_writes(
    kinesis: Any, kl_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """UpdateShardCount from 2 to 4 while writes continue."""
    stream, arn = await active_stream(kinesis, "scale", 2, recorded_streams)
    db = tmp_path / "c.db"
    async with under_writes(kinesis, kl_url, db, stream, 100, "traffic before scaling") as writer:
        await kinesis.update_shard_count(
            StreamName=stream, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
        )
        await wait_active(kinesis, stream)
        open_shards = await wait_shards(
            kinesis,
            stream,
            lambda s: "EndingSequenceNumber" not in s["SequenceNumberRange"],
            4,
            "four open shards",
            exactly=True,
        )
        await wait_until(
            lambda: shards_delivered(arn) >= open_shards, 60, "all four new shards delivering"
        )
    await assert_resharded_cleanly(kinesis, stream, arn, writer)


async def test_restart_mid_reshard_resumes(
    kinesis: Any, kl_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Stop while a split parent is half-read and its children have not started; the restart
    finishes the parent first, then reads the children, losing and repeating nothing."""
    stream, arn = await active_stream(kinesis, "midway", 1, recorded_streams)
    writer = Writer(kinesis, stream, keys=20)
    for _ in range(8):
        await writer.put_batch()  # 200 records in the parent
    [parent] = await shards_of(kinesis, stream)
    await kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=split_point(parent)
    )
    await wait_active(kinesis, stream)
    for _ in range(4):
        await writer.put_batch()  # 100 records in the children

    gate = anyio.Event()

    def slow_parent(records: list[dict[str, Any]]) -> None:
        time.sleep(0.2)  # runs in a worker thread: keeps the parent half-read when the stop lands
        if len(recorder.BATCHES[arn]) >= 4:
            anyio.from_thread.run_sync(gate.set)

    recorder.BEHAVIOUR[arn] = slow_parent
    db = tmp_path / "c.db"
    settings = kinesis_settings(
        endpoint_url=kl_url, stream=stream, db=db, batch_size=20, shard_discovery_interval_seconds=1
    )
    async with running(settings):
        await gate.wait()
    half = len(delivered(arn))
    assert 0 < half < 200, "the parent must be half-read when the service stops"
    assert shards_delivered(arn) == {parent["ShardId"]}, "no child may start before the parent ends"
    recorder.BEHAVIOUR.pop(arn)
    await run_until(
        settings,
        lambda: len(delivered(arn)) >= writer.written,
        60,
        "every record after the restart",
    )
    await assert_resharded_cleanly(kinesis, stream, arn, writer)
