"""End to end on moto: the read budget sizes each GetRecords ``Limit`` (poller.streams.budget).

The service reads through the fault proxy, which records every request, so the test sees the
``Limit`` each GetRecords really sent.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from poller.config import parse_settings
from tests.integration.kinesis_harness import delivered
from tests.support import recorder
from tests.support.aws import create_stream, hash_key_for, put_records, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service import run_until
from tests.support.service_config import service_config, stream_mapping

pytestmark = pytest.mark.anyio

PER_SHARD = 150
#: 50 KiB: a share of 25 KiB per shard, about 31 records of this test's size.
BUDGET_MIB = 50 / 1024


@pytest.fixture
def stream() -> Any:
    name = unique("budget")
    yield name
    recorder.clear(stream_arn(name))


async def test_a_tiny_budget_keeps_every_read_small_and_delivers_everything_in_order(
    moto_url: str, kinesis: Any, stream: str, tmp_path: Path
) -> None:
    shards = await create_stream(kinesis, stream, 2)
    written: list[tuple[str, str]] = []
    for shard in shards:
        entries = ((f"pk-{n}", b"v" * 300, hash_key_for(shard)) for n in range(PER_SHARD))
        written += await put_records(kinesis, stream, entries)
    with FaultProxy(moto_url) as proxy:
        settings = parse_settings(
            service_config(
                proxy.url,
                stream_mapping(
                    "m", stream_arn(stream), "tests.support.recorder:record", batch_size=10
                ),
                checkpoints={"path": str(tmp_path / "c.db")},
                memory={"read_budget_mib": BUDGET_MIB},
            )
        )
        await run_until(
            settings,
            lambda: len(delivered(stream)) >= len(written),
            60,
            "every record delivered",
        )
        limits = [body["Limit"] for body in proxy.calls("Kinesis_20131202.GetRecords")]
    assert _by_shard(delivered(stream)) == _by_shard(written)  # all, once, in order per shard
    assert limits, "no GetRecords sent"
    # A share of 25 KiB holds about 31 records of ~820 event bytes: never the 10,000 default.
    assert max(limits) <= 32
    assert min(limits) >= 1


def _by_shard(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    shards: dict[str, list[str]] = defaultdict(list)
    for shard, sequence in pairs:
        shards[shard].append(sequence)
    return dict(shards)
