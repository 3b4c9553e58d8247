"""Adversarial end-to-end checks of the lease runtime (issue 11 review): a lease table that
hangs while a replica exits must not hang the exit; two replicas on a lease table that loses
answers of applied writes and answers slower than the lease never invoke a shard at once and
lose nothing.

Services run in-process on the ``dynamodb`` backend (moto), the lease table reached through
the fault-injecting proxy, with the helpers of ``test_lease_faults``. The handlers here record
an invocation from its start to its end *or its cancellation*, so a batch cut short by the
fence still counts for the overlap check.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import anyio
import pytest

from tests.integration.test_lease_faults import (
    LEASE,
    Run,
    _owned_by,
    kinesis_mapping,
    lease_items,
    metric,
    new_stream,
    overlapping,
    proxy,  # noqa: F401  # a fixture
    put,
    service_running,
    settings,
    streams,  # noqa: F401  # a fixture
)
from tests.support.aws import stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service_config import stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Every invocation by stream ARN, cancelled ones included (until their cancellation).
CALLS: dict[str, list[Run]] = defaultdict(list)
BATCH_SECONDS = 0.4


async def _invoke(replica: str, event: dict[str, Any]) -> None:
    records = event["Records"]
    arn = records[0]["eventSourceARN"]
    shard = records[0]["eventID"].split(":", 1)[0]
    sequences = tuple(r["kinesis"]["sequenceNumber"] for r in records)
    started = time.monotonic()
    try:
        await anyio.sleep(BATCH_SECONDS)
    finally:
        CALLS[arn].append(Run(replica, shard, started, time.monotonic(), sequences))


async def replica_a(event: dict[str, Any], context: Any) -> None:
    await _invoke("a", event)


async def replica_b(event: dict[str, Any], context: Any) -> None:
    await _invoke("b", event)


def slow_mapping(arn: str, replica: str) -> dict[str, Any]:
    return stream_mapping(
        "leased",
        arn,
        f"tests.integration.test_review_leases:replica_{replica}",
        batch_size=5,
        shard_discovery_interval_seconds=2,
    )


async def test_a_lease_table_hanging_at_shutdown_does_not_hang_the_exit(
    moto_url: str,
    proxy: FaultProxy,  # noqa: F811
    streams: list[str],  # noqa: F811
) -> None:
    """Replica a holds a shard, idle; then every lease-table write hangs (held 120 s by the
    proxy) and a is stopped with the default 30 s drain. The shard settles at once; renewal
    and release are abandoned within a lease duration, so a exits in a few seconds (before:
    the shielded release, and a renewal stuck behind the table, held the exit for the
    client's read timeouts, 30 s and more), and the abandoned release is counted."""
    stream, _ = await new_stream(moto_url, 1, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    config = settings(moto_url, proxy, table, [kinesis_mapping(arn, "a")], replica="a")
    async with service_running(config) as (service, exited):
        await wait_until(lambda: lease_items(moto_url, table), 10, "a lease")
        await wait_until(lambda: _owned_by(moto_url, table, "a"), 10, "replica a holding it")
        proxy.latency(120, "UpdateItem")
        stopped_at = time.monotonic()
        service.request_stop()
        with anyio.move_on_after(3 * LEASE + 3):
            await exited.wait()
        took = time.monotonic() - stopped_at
        assert exited.is_set(), f"still draining after {took:.1f} s"
        assert took < 2 * LEASE + 2, took
        assert (
            metric(service, "poller_dependency_errors_total", mapping="leased", operation="release")
            >= 1
        )


async def test_two_replicas_on_a_lossy_slow_lease_table_never_overlap_and_lose_nothing(
    moto_url: str,
    proxy: FaultProxy,  # noqa: F811
    streams: list[str],  # noqa: F811
) -> None:
    """Replicas a and b share 3 shards (3 s lease). For 15 s the lease table loses the answer
    of 30 % of the writes it applies (take, renew, checkpoint, release, handoff grant alike)
    and holds 30 % of all calls for 1 to 5 s (past the lease). Records keep coming. No shard
    is ever invoked by both replicas at once (a batch cut short by the fence counts until its
    cancellation), and once the table heals every record is delivered and the two replicas
    share the shards again."""
    stream, _ = await new_stream(moto_url, 3, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    config_a = settings(moto_url, proxy, table, [slow_mapping(arn, "a")], replica="a")
    config_b = settings(moto_url, proxy, table, [slow_mapping(arn, "b")], replica="b")
    written: list[str] = []
    try:
        async with (
            service_running(config_a) as (_, exited_a),
            service_running(config_b) as (
                _,
                exited_b,
            ),
        ):
            proxy.lose_responses("DynamoDB_20120810.UpdateItem", rate=0.3, seconds=15)
            proxy.latency(1.0, "DynamoDB_20120810.*", jitter=4.0, rate=0.3, duration=15)
            for burst in range(8):
                written += await put(moto_url, stream, 6, f"b{burst}-")
                await anyio.sleep(2)

            def all_delivered() -> bool:
                return {s for r in CALLS[arn] for s in r.sequence_numbers} >= set(written)

            await wait_until(all_delivered, 60, "every record delivered after the faults")

            async def both_hold_leases() -> bool:
                owners = {lease.owner for lease in await lease_items(moto_url, table)}
                return owners == {"a", "b"}

            await wait_until(both_hold_leases, 20, "a and b sharing the shards after the faults")
            assert not exited_a.is_set()
            assert not exited_b.is_set()
        assert overlapping(CALLS[arn]) == []
        assert proxy.injected["lost_response"] >= 1, proxy.injected
        assert proxy.injected["latency"] >= 1, proxy.injected
    finally:
        CALLS.pop(arn, None)
