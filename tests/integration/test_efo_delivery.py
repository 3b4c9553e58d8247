"""Enhanced fan-out end to end, one service in the test's loop, on ministack (the emulator
whose SubscribeToShard works from aiobotocore), directly or through the fault proxy.

Checked: the events are the polling mode's, event for event, and AWS's recorded shape; a named
consumer is registered and read through; subscriptions that end (AWS: after 5 minutes), break
mid-frame or fail with an exception event resume after the last event handed on, losing and
repeating nothing; a split ends the parent with ``ChildShards`` and the children follow it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.sqlite import SqliteCheckpointStore
from tests.integration.kinesis_harness import batches, delivered, kinesis_settings
from tests.support import recorder
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.conformance import assert_matches, recorded
from tests.support.fault_proxy import FaultProxy
from tests.support.ministack import active_consumer, ministack, ministack_available
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(ministack_available() is not None, reason=str(ministack_available())),
]


@pytest.fixture(scope="module")
def ms_url() -> Iterator[str]:
    with ministack() as url:
        yield url


@pytest.fixture
async def kinesis(ms_url: str) -> AsyncIterator[Any]:
    async with aws_client("kinesis", ms_url) as client:
        yield client


@pytest.fixture
def stream() -> Iterator[str]:
    name = unique("efo")
    yield name
    recorder.clear(stream_arn(name))


async def consumer_for(kinesis: Any, stream: str) -> str:
    return await active_consumer(kinesis, stream_arn(stream), unique("c"))


async def put_per_shard(
    kinesis: Any, stream: str, shards: list[dict[str, Any]], count: int, tag: str = "r"
) -> list[tuple[str, str]]:
    """``count`` records into every shard, keys ``<tag>-<shard>-<i>``; (shard, sequence)."""
    written: list[tuple[str, str]] = []
    for s, shard in enumerate(shards):
        records = (
            (f"{tag}-{s}-{i}", f"{tag}{s}.{i}".encode(), hash_key_for(shard)) for i in range(count)
        )
        written += await put_records(kinesis, stream, records)
    return written


def assert_exactly_once_in_order(stream: str, written: list[tuple[str, str]]) -> None:
    """Every written record delivered once, each shard's records in sequence order."""
    got = delivered(stream)
    assert sorted(got) == sorted(written), "lost or repeated records"
    by_shard: dict[str, list[int]] = {}
    for shard, sequence in got:
        by_shard.setdefault(shard, []).append(int(sequence))
    for shard, sequences in by_shard.items():
        assert sequences == sorted(sequences), f"{shard} delivered out of order"


# -- the same events as polling, and AWS's shape --------------------------------------------------


async def test_pushed_events_equal_polled_events_event_for_event(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    shards = await create_stream(kinesis, stream, 2)
    written = await put_per_shard(kinesis, stream, shards, 40)
    consumer = await consumer_for(kinesis, stream)
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for mode, source in (("polled", stream_arn(stream)), ("pushed", consumer)):
        settings = kinesis_settings(
            endpoint_url=ms_url,
            stream=stream,
            db=tmp_path / f"{mode}.db",
            batch_size=10,
            event_source_arn=source,
        )
        async with running(settings):
            await wait_until(lambda: len(delivered(stream)) >= len(written), 30, f"{mode} records")
        assert_exactly_once_in_order(stream, written)
        runs[mode] = batches(stream)
        recorder.clear(stream_arn(stream))
    pushed = {r["eventID"]: r for batch in runs["pushed"] for r in batch}
    polled = {r["eventID"]: r for batch in runs["polled"] for r in batch}
    assert pushed == polled
    assert {r["eventSourceARN"] for r in pushed.values()} == {stream_arn(stream)}


async def test_pushed_event_matches_aws_recording(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    """As tests/integration/test_conformance_kinesis.py, read through a consumer ARN."""
    expected = recorded(
        "esm-kinesis.json", "::test_create_kinesis_event_source_mapping", "kinesis_records"
    )
    count = len(expected["Records"])
    await create_stream(kinesis, stream, 1)
    consumer = await consumer_for(kinesis, stream)
    settings = kinesis_settings(
        endpoint_url=ms_url,
        stream=stream,
        db=tmp_path / "c.db",
        batch_size=count,
        maximum_batching_window_in_seconds=2,
        invoke_identity_arn="arn:aws:iam::123456789012:role/poller-conformance",
        event_source_arn=consumer,
    )
    async with running(settings):
        await put_records(kinesis, stream, ((f"test_{i}", b"hello", None) for i in range(count)))
        await wait_until(lambda: len(delivered(stream)) >= count, 30, f"{count} records")
    (batch,) = batches(stream)
    assert_matches({"Records": batch}, expected)


# -- a consumer that poller registers ------------------------------------------------------------


async def test_a_named_consumer_is_registered_once_and_read_through(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    shards = await create_stream(kinesis, stream, 3)
    written = await put_per_shard(kinesis, stream, shards, 5)
    settings = kinesis_settings(
        endpoint_url=ms_url,
        stream=stream,
        db=tmp_path / "n.db",
        enhanced_fan_out={"consumer_name": "poller-efo"},
    )
    async with running(settings):
        await wait_until(lambda: len(delivered(stream)) >= len(written), 30, "records")
    assert_exactly_once_in_order(stream, written)
    listed = await kinesis.list_stream_consumers(StreamARN=stream_arn(stream))
    consumers = [(c["ConsumerName"], c["ConsumerStatus"]) for c in listed["Consumers"]]
    assert consumers == [("poller-efo", "ACTIVE")]  # once for three shards, and not removed


# -- subscriptions that end, break or fail -------------------------------------------------------


async def feed(
    kinesis: Any, stream: str, shards: list[dict[str, Any]], rounds: int
) -> list[tuple[str, str]]:
    """A record into every shard every 0.1 s for ``rounds`` rounds, while the service runs."""
    written: list[tuple[str, str]] = []
    for n in range(rounds):
        written += await put_per_shard(kinesis, stream, shards, 1, tag=f"t{n}")
        await anyio.sleep(0.1)  # the pace of a producer, not a wait for a condition
    return written


async def test_subscriptions_that_end_resume_after_the_last_event_handed_on(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    shards = await create_stream(kinesis, stream, 2)
    consumer = await consumer_for(kinesis, stream)
    with FaultProxy(ms_url) as proxy:
        proxy.end_subscriptions(after_seconds=1.0, times=math.inf)  # AWS: after 5 minutes
        settings = kinesis_settings(
            endpoint_url=proxy.url, stream=stream, db=tmp_path / "e.db", event_source_arn=consumer
        )
        async with running(settings):
            written = await feed(kinesis, stream, shards, 40)
            await wait_until(lambda: len(delivered(stream)) >= len(written), 30, "records")
        subscriptions = proxy.subscriptions(shards[0]["ShardId"])
    assert_exactly_once_in_order(stream, written)
    assert len(subscriptions) >= 3, "the subscriptions were not ended and renewed"
    later = [s.starting_position for s in subscriptions[1:]]
    assert all(p["Type"] == "AFTER_SEQUENCE_NUMBER" for p in later), later
    numbers = [int(p["SequenceNumber"]) for p in later]
    assert numbers == sorted(numbers), "a renewal went back"


async def test_broken_and_failed_subscriptions_lose_and_repeat_nothing(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    shards = await create_stream(kinesis, stream, 2)
    consumer = await consumer_for(kinesis, stream)
    with FaultProxy(ms_url) as proxy:
        proxy.break_subscriptions(after_events=3, mid_frame=True, times=2)
        proxy.subscription_error(after_events=2, code="InternalFailureException", times=2)
        settings = kinesis_settings(
            endpoint_url=proxy.url, stream=stream, db=tmp_path / "b.db", event_source_arn=consumer
        )
        async with running(settings):
            written = await feed(kinesis, stream, shards, 30)
            await wait_until(lambda: len(delivered(stream)) >= len(written), 60, "records")
        endings = [s.ending for s in proxy.subscriptions()]
    assert_exactly_once_in_order(stream, written)
    assert endings.count("abort") == 2, endings
    assert endings.count("error") == 2, endings


async def test_subscribe_refusals_are_retried_until_the_shard_is_free(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    """ResourceInUse (the previous owner's subscription) and LimitExceeded are waited out."""
    shards = await create_stream(kinesis, stream, 1)
    written = await put_per_shard(kinesis, stream, shards, 10)
    consumer = await consumer_for(kinesis, stream)
    with FaultProxy(ms_url) as proxy:
        proxy.fail("SubscribeToShard", code="ResourceInUseException", status=400, times=2)
        proxy.fail("SubscribeToShard", code="LimitExceededException", status=400, times=1)
        settings = kinesis_settings(
            endpoint_url=proxy.url, stream=stream, db=tmp_path / "r.db", event_source_arn=consumer
        )
        async with running(settings):
            await wait_until(lambda: len(delivered(stream)) >= len(written), 30, "records")
        assert proxy.faulted("Kinesis_20131202.SubscribeToShard") == 3
    assert_exactly_once_in_order(stream, written)


# -- resharding ----------------------------------------------------------------------------------


async def test_a_split_parent_ends_with_its_children_and_they_follow_it(
    ms_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    """ministack ends the parent's subscription with ``ChildShards`` at a split (and drops
    the parent from ListShards, with any record not yet pushed: so the split comes after the
    parent's records were delivered). The parent's checkpoint becomes SHARD_END, and the
    children's records are delivered after all of the parent's."""
    (parent,) = await create_stream(kinesis, stream, 1)
    before = await put_per_shard(kinesis, stream, [parent], 20, tag="before")
    consumer = await consumer_for(kinesis, stream)
    db = tmp_path / "s.db"
    settings = kinesis_settings(
        endpoint_url=ms_url, stream=stream, db=db, event_source_arn=consumer, batch_size=5
    )
    async with running(settings):
        await wait_until(lambda: len(delivered(stream)) >= len(before), 30, "parent records")
        middle = (int(parent["HashKeyRange"]["EndingHashKey"]) + 1) // 2
        await kinesis.split_shard(
            StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle)
        )
        listing = await kinesis.list_shards(StreamName=stream)
        children = [s for s in listing["Shards"] if s.get("ParentShardId") == parent["ShardId"]]
        assert len(children) == 2
        after = await put_per_shard(kinesis, stream, children, 10, tag="after")
        await wait_until(
            lambda: len(delivered(stream)) >= len(before) + len(after), 30, "children records"
        )
    assert_exactly_once_in_order(stream, before + after)
    got = delivered(stream)
    last_parent = max(i for i, (shard, _) in enumerate(got) if shard == parent["ShardId"])
    first_child = min(i for i, (shard, _) in enumerate(got) if shard != parent["ShardId"])
    assert last_parent < first_child
    store = await SqliteCheckpointStore(db).open()
    try:
        checkpoint = await store.get("m", parent["ShardId"])
    finally:
        await store.aclose()
    assert checkpoint is not None
    assert checkpoint.is_shard_end
