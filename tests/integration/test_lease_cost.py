"""The lease table's cost at rest does not grow with the shards (issue 13, lease protocol v2):
two replicas share a 4-shard stream, then a 32-shard one; every DynamoDB call of theirs goes
through the fault proxy (no fault injected, it only counts), and over the same window at rest
they make about as many calls for 32 shards as for 4. Protocol v1 renewed every lease every
lease_duration/3 and scanned the table every balance interval: 8x the shards, ~8x the calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import anyio
import pytest

from tests.integration.test_lease_faults import (
    kinesis_mapping,
    lease_items,
    new_stream,
    service_running,
    settings,
)
from tests.support.aws import stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.waiting import wait_until

# serial (scripts/test runs it after the parallel workers, alone): it counts the lease-table
# calls of replicas at rest in a time window, after waiting for them to settle within a
# deadline that parallel workers' load on 2 cores can outlast.
pytestmark = [pytest.mark.anyio, pytest.mark.serial]

#: The counting window at rest; long enough to hold several heartbeats and watches.
WINDOW = 8.0


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """The lease table's endpoint: moto behind the (counting) proxy."""
    with FaultProxy(moto_url) as counting:
        yield counting


@pytest.fixture
def streams() -> list[str]:
    return []


async def balanced(moto_url: str, table: str, shards: int) -> bool:
    owners = Counter(lease.owner for lease in await lease_items(moto_url, table))
    return set(owners) == {"a", "b"} and sum(owners.values()) == shards


async def calls_at_rest(moto_url: str, proxy: FaultProxy, shards: int, streams: list[str]) -> int:
    """DynamoDB calls of two replicas over WINDOW seconds at rest on a ``shards`` stream."""
    stream, _ = await new_stream(moto_url, shards, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    config_a = settings(moto_url, proxy, table, [kinesis_mapping(arn, "a")], replica="a")
    config_b = settings(moto_url, proxy, table, [kinesis_mapping(arn, "b")], replica="b")
    async with service_running(config_a), service_running(config_b):
        await wait_until(lambda: balanced(moto_url, table, shards), 30, "a and b sharing")
        await anyio.sleep(3.0)  # the balances' rechecks pass
        before = len(proxy.requests)
        await anyio.sleep(WINDOW)
        window = proxy.requests[before:]
    return sum(1 for operation, _ in window if operation.startswith("DynamoDB_"))


async def test_calls_at_rest_do_not_grow_with_the_shards(
    moto_url: str, proxy: FaultProxy, streams: list[str]
) -> None:
    few = await calls_at_rest(moto_url, proxy, 4, streams)
    many = await calls_at_rest(moto_url, proxy, 32, streams)
    assert few > 0
    assert many <= few * 1.25, f"{few} calls for 4 shards, {many} for 32"
