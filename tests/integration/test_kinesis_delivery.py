"""End to end on moto: delivery, order, restart, starting positions, batching and iterators."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from poller.config import Settings
from poller.core.batching import MAX_PAYLOAD_BYTES
from tests.integration.kinesis_harness import batches, delivered, kinesis_settings
from tests.support import recorder
from tests.support.aws import create_stream, hash_key_for, put_records, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service import run_until, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def stream() -> Any:
    name = unique("s")
    yield name
    recorder.clear(stream_arn(name))


@pytest.fixture
def settings(kinesis: Any, stream: str, tmp_path: Path) -> Callable[..., Settings]:
    """Builds the settings of a service on the test's stream: read from moto, or through
    ``endpoint_url`` (a fault proxy) if given."""

    def make(endpoint_url: str | None = None, **mapping: Any) -> Settings:
        return kinesis_settings(
            endpoint_url=endpoint_url or kinesis.meta.endpoint_url,
            stream=stream,
            db=tmp_path / "c.db",
            **mapping,
        )

    return make


def by_shard(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = defaultdict(list)
    for shard, seq in pairs:
        shards[shard].append(seq)
    return dict(shards)


async def put_spread(
    kinesis: Any, stream: str, shards: list[dict[str, Any]], count: int, start: int = 0
) -> list[tuple[str, str]]:
    """Put ``count`` records round-robin over ``shards``, one shard's records at a time."""
    per_shard = []
    for i, shard in enumerate(shards):
        keys = range(start + i, start + count, len(shards))
        per_shard += await put_records(
            kinesis,
            stream,
            ((f"pk-{n}", json.dumps({"n": n}).encode(), hash_key_for(shard)) for n in keys),
        )
    return per_shard


async def test_10000_records_over_4_shards_delivered_once_in_order(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """Every record is delivered exactly once, in sequence order within its shard."""
    shards = await create_stream(kinesis, stream, 4)
    written = await put_spread(kinesis, stream, shards, 10_000)
    await run_until(
        settings(batch_size=500), lambda: len(delivered(stream)) >= 10_000, 120, "10,000 deliveries"
    )
    got = delivered(stream)
    assert len(got) == 10_000
    assert by_shard(got) == by_shard(written)  # same records, same order per shard, no duplicates
    assert all(len(b) <= 500 for b in batches(stream))


async def test_restart_resumes_after_checkpoint(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """A clean stop and restart delivers the records put meanwhile, nothing skipped or repeated."""
    shards = await create_stream(kinesis, stream, 2)
    first = await put_spread(kinesis, stream, shards, 600)
    service = settings(batch_size=100)
    await run_until(service, lambda: len(delivered(stream)) >= 600, 60, "first 600")
    second = await put_spread(kinesis, stream, shards, 400, start=600)
    await run_until(service, lambda: len(delivered(stream)) >= 1000, 60, "all 1000")
    got = delivered(stream)
    assert len(got) == 1000
    assert by_shard(got) == by_shard(first + second)


async def test_latest_skips_older_records_and_survives_restart(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """LATEST delivers only records put after the mapping started, also across a restart.

    Records put while the service was down (before it had delivered anything) are delivered
    after the restart: the start instant is pinned in the checkpoints.
    """
    shards = await create_stream(kinesis, stream, 2)
    await put_spread(kinesis, stream, shards, 50)
    service = settings(starting_position="LATEST")
    async with running(service):
        pass
    while_down = await put_spread(kinesis, stream, shards, 20, start=50)
    async with running(service):
        after = await put_spread(kinesis, stream, shards, 20, start=70)
        await wait_until(lambda: len(delivered(stream)) >= 40, 30, "40 LATEST records")
    assert Counter(delivered(stream)) == Counter(while_down + after)


async def test_at_timestamp_starts_at_the_timestamp(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """AT_TIMESTAMP delivers the records that arrived at or after the timestamp only."""
    shards = await create_stream(kinesis, stream, 1)
    await put_spread(kinesis, stream, shards, 30)
    boundary = time.time() + 0.01
    await wait_until_time(boundary + 0.01)
    later = await put_spread(kinesis, stream, shards, 30, start=30)
    service = settings(starting_position="AT_TIMESTAMP", starting_position_timestamp=boundary)
    await run_until(
        service, lambda: len(delivered(stream)) >= 30, 30, "30 records after the timestamp"
    )
    assert delivered(stream) == later


async def wait_until_time(instant: float) -> None:
    await wait_until(lambda: time.time() >= instant, 5, "the clock to pass the boundary")


async def test_batch_size_cut(kinesis: Any, stream: str, settings: Callable[..., Settings]) -> None:
    """With a backlog, batches hold exactly batch_size records."""
    shards = await create_stream(kinesis, stream, 1)
    await put_spread(kinesis, stream, shards, 50)
    await run_until(settings(batch_size=7), lambda: len(delivered(stream)) >= 50, 30, "50 records")
    assert [len(b) for b in batches(stream)] == [7] * 7 + [1]


async def test_batching_window_collects_records_from_several_reads(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """Within the window, records of separate reads are gathered into one invocation."""
    shards = await create_stream(kinesis, stream, 1)
    async with running(settings(batch_size=1000, maximum_batching_window_in_seconds=4)):
        first = await put_spread(kinesis, stream, shards, 1)
        put_at = time.monotonic()
        await wait_until(lambda: time.monotonic() - put_at > 1.5, 5, "a later read")
        rest = await put_spread(kinesis, stream, shards, 3, start=1)
        await wait_until(lambda: len(delivered(stream)) >= 4, 30, "4 records")
    assert [len(b) for b in batches(stream)] == [4]
    assert delivered(stream) == first + rest


async def test_six_megabyte_cut_with_large_records(
    kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """Batches are cut before the serialized event passes 6 MB, whatever the batch size."""
    await create_stream(kinesis, stream, 1)
    payload = b"\x00" * (900 * 1024)  # 1.2 MB once base64-encoded in the event
    for i in range(10):  # one by one: PutRecords takes at most 5 MB per call
        await kinesis.put_record(StreamName=stream, PartitionKey=f"k{i}", Data=payload)
    await run_until(
        settings(batch_size=100), lambda: len(delivered(stream)) >= 10, 60, "10 large records"
    )
    sizes = [len(json.dumps({"Records": b}, separators=(",", ":"))) for b in batches(stream)]
    assert all(size <= MAX_PAYLOAD_BYTES for size in sizes)
    assert [len(b) for b in batches(stream)] == [5, 5]
    assert base64.b64decode(batches(stream)[0][0]["kinesis"]["data"]) == payload


async def test_expired_iterator_is_recreated_after_last_record(
    moto_url: str, kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """ExpiredIteratorException: the reader recreates its iterator after the last record read."""
    shards = await create_stream(kinesis, stream, 1)
    first = await put_spread(kinesis, stream, shards, 10)
    with FaultProxy(moto_url) as proxy:
        async with running(settings(endpoint_url=proxy.url)):
            await wait_until(lambda: len(delivered(stream)) >= 10, 30, "first 10")
            before = len(proxy.calls("Kinesis_20131202.GetShardIterator"))
            proxy.fail(
                "Kinesis_20131202.GetRecords",
                code="ExpiredIteratorException",
                message="Iterator expired",
            )
            second = await put_spread(kinesis, stream, shards, 10, start=10)
            await wait_until(lambda: len(delivered(stream)) >= 20, 30, "20 records")
        recreated = proxy.calls("Kinesis_20131202.GetShardIterator")[before:]
    assert delivered(stream) == first + second
    assert recreated[0]["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
    assert recreated[0]["StartingSequenceNumber"] == first[-1][1]


async def test_throttled_reads_back_off_and_recover(
    moto_url: str, kinesis: Any, stream: str, settings: Callable[..., Settings]
) -> None:
    """ProvisionedThroughputExceeded on reads is retried with backoff; nothing is lost."""
    shards = await create_stream(kinesis, stream, 1)
    written = await put_spread(kinesis, stream, shards, 20)
    with FaultProxy(moto_url) as proxy:
        proxy.fail(
            "Kinesis_20131202.GetRecords", code="ProvisionedThroughputExceededException", times=3
        )
        await run_until(
            settings(endpoint_url=proxy.url), lambda: len(delivered(stream)) >= 20, 30, "20 records"
        )
    assert delivered(stream) == written
