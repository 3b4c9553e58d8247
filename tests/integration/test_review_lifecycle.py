"""Adversarial review of the mapping start record over the real DynamoDB protocol (issue 11,
defect 7): aiobotocore talks HTTP to moto, faults come through the fault proxy.

The mapping item is written once with a conditional PutItem. When the write lands but its
response is lost, botocore retries it, the retry fails its condition, and the replica must read
the stored instant back (its own) instead of failing or recording a second one. The item must
also never show up as a lease in what scans the table (balancing, ``poller status``, the
checkpoints listing).
"""

from __future__ import annotations

import time
from typing import Literal

import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.status import lease_status
from poller.types import Checkpoint
from tests.support.aws import aws_client, unique
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.anyio

MAPPING = "orders"


@pytest.mark.parametrize("mode", ["drop", "error"])
async def test_a_pin_whose_response_was_lost_reads_back_its_own_instant(
    moto_url: str, mode: Literal["drop", "error"]
) -> None:
    """The first PutItem of the mapping item lands but its answer is lost (connection dropped,
    or a 500): the pin returns the instant that was stored, once, and later pins get it too."""
    with FaultProxy(moto_url) as proxy:
        async with aws_client("dynamodb", proxy.url) as ddb:
            table = DynamoDBLeaseTable(ddb, unique("leases"))
            await table.ensure_table()
            proxy.lose_responses("PutItem", times=1, mode=mode)
            assert await table.pin_mapping_start(MAPPING, 1000.5) == 1000.5
            assert proxy.injected["lost_response"] == 1
            assert await table.pin_mapping_start(MAPPING, 2000.0) == 1000.5
            assert await table.mapping_start(MAPPING) == 1000.5


async def test_the_mapping_item_is_never_listed_as_a_lease(moto_url: str) -> None:
    """Balancing, the checkpoints listing and ``poller status`` scan the table: they see the
    mapping's leases only, never its start record."""
    async with aws_client("dynamodb", moto_url) as ddb:
        table = DynamoDBLeaseTable(ddb, unique("leases"), scan_page_size=1)
        await table.ensure_table()
        await table.pin_mapping_start(MAPPING, 1000.0)
        await table.create(MAPPING, "shardId-1", checkpoint=Checkpoint(start_timestamp=1000.0))
        assert [lease.shard_id for lease in await table.list_leases(MAPPING)] == ["shardId-1"]
        assert await table.list_leases(f"{MAPPING}#__mapping__") == []
        rows = await lease_status(table, [MAPPING], now=time.time())
        assert [row["shard_id"] for row in rows] == ["shardId-1"]
