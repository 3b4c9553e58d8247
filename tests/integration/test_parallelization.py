"""ParallelizationFactor: up to ten batches of a shard in flight, order kept per partition key."""

from __future__ import annotations

import threading
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import batches, delivered, kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of
from tests.support import recorder
from tests.support.aws import stream_arn, stream_holding, unique
from tests.support.service import run_until, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_parallelization_factor_10_keeps_order_per_partition_key(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """50,000 records with 500 keys over 4 shards at PF 10: every record delivered once, each
    key's records in the order they were written, and several batches of a shard in flight."""
    stream = unique("pf")
    arn = stream_arn(stream)
    recorded_streams.append(arn)
    per_shard = [[(f"key-{s}-{i % 125}", b"{}") for i in range(12_500)] for s in range(4)]
    results = await stream_holding(moto_url, stream, per_shard)
    # (partition key, sequence number) of every record, per shard
    written = [
        [(key, seq) for (key, _), (_, seq) in zip(entries, shard, strict=True)]
        for entries, shard in zip(per_shard, results, strict=True)
    ]

    lock = threading.Lock()
    in_flight: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)

    def hook(records: list[dict[str, Any]]) -> None:
        shard = records[0]["eventID"].split(":")[0]
        with lock:
            in_flight[shard] += 1
            peak[shard] = max(peak[shard], in_flight[shard])
        time.sleep(0.005)  # long enough for lanes of one shard to overlap
        with lock:
            in_flight[shard] -= 1

    recorder.BEHAVIOUR[arn] = hook
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=tmp_path / "c.db",
        batch_size=100,
        parallelization_factor=10,
    )
    await run_until(settings, lambda: len(delivered(stream)) >= 50_000, 240, "50,000 deliveries")

    got_by_key: dict[str, list[str]] = defaultdict(list)
    for batch in batches(stream):
        for r in batch:
            got_by_key[r["kinesis"]["partitionKey"]].append(r["kinesis"]["sequenceNumber"])
    expected_by_key: dict[str, list[str]] = defaultdict(list)
    for pairs in written:
        for key, seq in pairs:
            expected_by_key[key].append(seq)
    assert len(got_by_key) == 500
    assert got_by_key == expected_by_key  # complete, no duplicates, per-key order
    assert min(peak.values()) > 1, f"lanes never overlapped: {dict(peak)}"
    assert max(peak.values()) <= 10


def lane_of(key: str, lanes: int) -> int:
    """The documented lane rule: a stable CRC-32 of the partition key, modulo the factor."""
    return zlib.crc32(key.encode()) % lanes


async def test_failing_lane_blocks_only_its_keys(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """At PF 4, a record that keeps failing holds back its own lane (nothing after it in that
    lane is delivered) and the checkpoint (the watermark stops at it), while every record of
    the other lanes is delivered."""
    stream = unique("lane")
    arn = stream_arn(stream)
    recorded_streams.append(arn)
    entries = [("poison" if i == 10 else f"k{i % 20}", b"{}") for i in range(200)]
    [results] = await stream_holding(moto_url, stream, [entries])
    poison_index = 10
    poison_seq = results[poison_index][1]
    poison_lane = lane_of("poison", 4)
    free = [
        seq
        for (key, _), (_, seq) in zip(entries, results, strict=True)
        if lane_of(key, 4) != poison_lane
    ]
    blocked_after = [
        seq
        for i, ((key, _), (_, seq)) in enumerate(zip(entries, results, strict=True))
        if lane_of(key, 4) == poison_lane and i > poison_index
    ]
    assert free
    assert blocked_after, "the test needs records queued behind the poison record in its lane"
    attempts = recorder.fail_poison(arn)
    db = tmp_path / "c.db"
    settings = kinesis_settings(
        endpoint_url=moto_url, stream=stream, db=db, batch_size=5, parallelization_factor=4
    )

    def got() -> set[str]:
        return {seq for _, seq in delivered(stream)}

    async with running(settings):
        await wait_until(lambda: set(free) <= got(), 30, "every record of the other lanes")
        await wait_until(lambda: len(attempts) >= 3, 30, "the poison record retried")
        checkpoint = checkpoint_of(db)
        delivered_now = got()
    assert checkpoint is not None
    assert int(checkpoint) < int(poison_seq), "the checkpoint passed an unsettled record"
    assert poison_seq not in delivered_now
    assert not delivered_now & set(blocked_after), "a record overtook the failing one in its lane"
