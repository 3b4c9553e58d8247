"""Hostile review 15r: the owner's rewind write applied, its answer lost.

The replica (in this loop, lease table behind the fault proxy) owns the one shard. A rewind to
the trim horizon is asked on the lease and the member item (as ``poller rewind`` does, past
the proxy); every UpdateItem the replica sends is applied by the table but its answer is
dropped until the owner's fenced apply write has gone through (and botocore's retries of it,
refused by the counter the lost write moved). The write is not undone, nor made twice: the
rewind is marked applied by the owner, every record is delivered again from the trim horizon
in order, and the shard keeps delivering new records afterwards (nothing stalls for good).
"""

from __future__ import annotations

import time

import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.rewinds import RewindTarget
from tests.integration.test_lease_faults import (
    RUNS,
    kinesis_mapping,
    lease_items,
    new_stream,
    put,
    service_running,
    settings,
)
from tests.integration.test_lease_faults import proxy as proxy
from tests.integration.test_lease_faults import streams as streams
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.serial]


def _sequences_since(arn: str, since: float) -> list[str]:
    runs = sorted((r for r in RUNS[arn] if r.started >= since), key=lambda r: r.started)
    return [seq for run in runs for seq in run.sequence_numbers]


async def test_a_lost_answer_to_the_owners_apply_neither_undoes_nor_stalls_the_rewind(
    moto_url: str,
    proxy: FaultProxy,
    streams: list[str],
) -> None:
    stream, _ = await new_stream(moto_url, 1, streams)
    arn = stream_arn(stream)
    table_name = unique("leases")
    config = settings(moto_url, proxy, table_name, [kinesis_mapping(arn, "a")], replica="a")
    written = await put(moto_url, stream, 6, "k")
    async with service_running(config):
        await wait_until(lambda: set(_sequences_since(arn, 0)) >= set(written), 20, "delivery")
        (lease,) = await lease_items(moto_url, table_name)
        async with aws_client("dynamodb", moto_url) as client:
            table = DynamoDBLeaseTable(client, table_name)
            before = len(proxy.calls("DynamoDB_20120810.UpdateItem"))
            losing = proxy.lose_responses("DynamoDB_20120810.UpdateItem", seconds=20)
            asked_at = time.monotonic()
            assert await table.request_rewind(
                "leased", lease.shard_id, "r1", RewindTarget("trim_horizon")
            )
            assert await table.notify_rewind("leased", "r1")

        def apply_answer_lost() -> bool:
            updates = proxy.calls("DynamoDB_20120810.UpdateItem")[before:]
            sent = [
                i for i, body in enumerate(updates) if "rewindApplied" in body["UpdateExpression"]
            ]
            return bool(sent) and proxy.injected["lost_response"] >= sent[0] + 1

        # Answers are lost until the answer to the owner's apply write was (not for a fixed
        # time: on a loaded machine the apply may come later than any fixed window).
        await wait_until(apply_answer_lost, 20, "the answer to the owner's apply lost")
        proxy.remove(losing)

        async def applied() -> bool:
            (now,) = await lease_items(moto_url, table_name)
            return now.rewind is not None and now.rewind.applied

        await wait_until(applied, 15, "the rewind applied", interval=0.2)
        updates = proxy.calls("DynamoDB_20120810.UpdateItem")
        first_apply = next(
            i for i, body in enumerate(updates) if "rewindApplied" in body["UpdateExpression"]
        )
        lost = proxy.injected["lost_response"]  # only UpdateItem answers are lost
        assert lost >= first_apply - before + 1, "the lost answers did not cover the apply"
        await wait_until(
            lambda: set(_sequences_since(arn, asked_at)) >= set(written), 15, "re-delivery"
        )
        again = _sequences_since(arn, asked_at)
        assert again[0] == written[0]
        first_pass = again[: again.index(written[-1]) + 1]
        assert sorted(set(first_pass), key=first_pass.index) == written  # in order
        more = await put(moto_url, stream, 2, "m")
        await wait_until(
            lambda: set(_sequences_since(arn, asked_at)) >= set(more), 15, "new records"
        )
        (after,) = await lease_items(moto_url, table_name)
        assert after.rewind is not None
        assert (after.rewind.applied_by, after.owner) == ("a", "a")
        assert after.rewind.applied_to == "TRIM_HORIZON"
        assert after.rewind.applied_from == f"AFTER_SEQUENCE_NUMBER {written[-1]}"
