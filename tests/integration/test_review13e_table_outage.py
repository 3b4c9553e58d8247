"""Review 13e: the outage rule for peers' beats (``watched_gap``, bb662fd) over real HTTP.

Two replicas share a 4-shard stream, balanced 2/2, with their lease table (moto) behind the
fault-injecting proxy. Every lease-table call then fails for 15 s (five lease durations):
nobody can heartbeat, every replica fences its shards. Once the table answers again, each
replica's retries come back at their own time; the first one back must not take its live
peer's stood-still beat for a dead peer and take every lease. Each replica re-takes its own
two leases, no lease changes owner, and no shard is invoked by both replicas at once.

The unit test of the rule (tests/unit/test_h3_outage_resettle.py) runs on the in-memory
table with a fake clock, where both replicas come back in the same instant; here botocore's
own retries and the service's backoffs decide who comes back first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial

import anyio
import pytest

from poller.app import Service
from tests.integration.test_lease_faults import (
    RUNS,
    SLOW,
    delivered,
    kinesis_mapping,
    lease_items,
    new_stream,
    overlapping,
    put,
    settings,
)
from tests.support.aws import stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.waiting import wait_until

# serial: bounds how long the fleet takes to resettle in lease durations of a few seconds.
pytestmark = [pytest.mark.anyio, pytest.mark.serial]

OUTAGE = 15.0


@pytest.fixture
def table_proxy(moto_url: str) -> Iterator[FaultProxy]:
    """The lease table's endpoint: moto behind the fault proxy."""
    with FaultProxy(moto_url) as faults:
        yield faults


@pytest.fixture
def arns() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for arn in made:
        RUNS.pop(arn, None)
        SLOW.pop(arn, None)


async def test_after_a_whole_table_outage_each_replica_retakes_its_own_leases(
    moto_url: str, table_proxy: FaultProxy, arns: list[str]
) -> None:
    stream, _ = await new_stream(moto_url, 4, arns)
    arn = stream_arn(stream)
    table = unique("leases")
    history: dict[str, list[str]] = defaultdict(list)

    async def watch() -> None:
        while True:
            for lease in await lease_items(moto_url, table):
                owners = history[lease.shard_id]
                if lease.owner is not None and (not owners or owners[-1] != lease.owner):
                    owners.append(lease.owner)
            await anyio.sleep(0.1)

    async def owners_now() -> dict[str, str | None]:
        return {lease.shard_id: lease.owner for lease in await lease_items(moto_url, table)}

    async def even() -> bool:
        owners = list((await owners_now()).values())
        return len(owners) == 4 and sorted(owners.count(r) for r in "ab") == [2, 2]

    services = [
        Service(settings(moto_url, table_proxy, table, [kinesis_mapping(arn, r)], replica=r))
        for r in "ab"
    ]
    async with anyio.create_task_group() as tg:
        for service in services:
            tg.start_soon(partial(service.run, handle_signals=False))
        await wait_until(even, 40, "an even 2/2 balance")
        first = await put(moto_url, stream, 40, "before")
        await wait_until(lambda: delivered(arn) >= set(first), 20, "records before the outage")
        await anyio.sleep(3)  # settled: a balance interval or two with nothing to move
        before = await owners_now()
        assert await even(), before
        tg.start_soon(watch)
        await wait_until(lambda: all(history[s][-1:] == [o] for s, o in before.items()), 5, "watch")

        table_proxy.outage(OUTAGE, "DynamoDB_20120810.*", code="InternalServerError", status=500)
        outage_at = time.monotonic()
        await anyio.sleep(max(outage_at + OUTAGE - time.monotonic(), 0))
        after = await put(moto_url, stream, 40, "after")
        await wait_until(
            lambda: delivered(arn) >= set(after), 30, "every shard delivering after the outage"
        )
        await anyio.sleep(5)  # and nothing moves for a while (five balance intervals)
        final = await owners_now()
        for service in services:
            service.request_stop()
        await wait_until(lambda: all(s.stopping.is_set() for s in services), 1, "stop requests")
        tg.cancel_scope.cancel()
    moved = {shard: owners for shard, owners in history.items() if len(owners) > 1}
    assert moved == {}, f"leases changed owner across the outage: {dict(history)}"
    assert final == before
    assert overlapping(RUNS[arn]) == []
