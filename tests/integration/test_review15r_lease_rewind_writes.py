"""Hostile review 15r: ``poller rewind``'s writes on the lease table (moto's server).

* The command writes the rewind of a lease nobody owns itself. A shard planned open may have
  been read to its end (``SHARD_END``, its owner gone) by the time the command looks: writing
  the rewind then re-opens a finished shard, which the rewind plan promises never to do (a
  re-opened parent is read again, before or beside its running children).
* Guard: two rewinds back to back, the second before the first is applied: the second wins,
  and the first's apply (fenced on its id) can no longer write over it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.rewinds import RewindTarget
from poller.operations.rewind import _leased_progress
from poller.types import SHARD_END, Checkpoint
from tests.support.aws import aws_client, moto_server_process, unique

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


async def test_the_command_does_not_reopen_a_lease_that_reached_shard_end(moto_url: str) -> None:
    async with aws_client("dynamodb", moto_url) as client:
        table = DynamoDBLeaseTable(client, unique("leases"))
        await table.ensure_table()
        await table.create("m", "s0", checkpoint=Checkpoint(sequence_number="100"))
        assert await table.request_rewind("m", "s0", "r1", RewindTarget("trim_horizon"))
        # The owner reads the shard to its end and lets the lease go before the apply.
        lease = await table.get("m", "s0")
        assert lease is not None
        taken = await table.take(lease, "replica-a")
        assert taken is not None
        ended = await table.checkpoint(taken, "replica-a", Checkpoint(sequence_number=SHARD_END))
        assert await table.release(ended, "replica-a")

        await _leased_progress(table, "m", {"s0"}, "r1")
        after = await table.get("m", "s0")
        assert after is not None
        assert after.checkpoint is not None
        assert after.checkpoint.is_shard_end, f"a finished shard re-opened: {after.checkpoint}"


async def test_a_second_rewind_before_the_first_is_applied_wins(moto_url: str) -> None:
    async with aws_client("dynamodb", moto_url) as client:
        table = DynamoDBLeaseTable(client, unique("leases"))
        await table.ensure_table()
        await table.create("m", "s0", checkpoint=Checkpoint(sequence_number="100"))
        first = RewindTarget("sequence", sequence_number="10")
        second = RewindTarget("sequence", sequence_number="20")
        assert await table.request_rewind("m", "s0", "r1", first)
        seen_first = await table.get("m", "s0")  # an applier read r1 ...
        assert await table.request_rewind("m", "s0", "r2", second)
        assert seen_first is not None
        # ... and writes r1 after r2 was asked: refused, nothing moves.
        ok, now = await table.apply_rewind(seen_first, None, "r1", first.checkpoint())
        assert not ok
        assert now is not None
        assert now.checkpoint == Checkpoint(sequence_number="100")
        # The command waiting for r2 applies it; r1's waiter sees r2, never r1 applied.
        states = await _leased_progress(table, "m", {"s0"}, "r2")
        assert [(s.rewind_id, s.applied) for s in states] == [("r2", True)]
        after = await table.get("m", "s0")
        assert after is not None
        assert after.checkpoint == second.checkpoint()
        states = await _leased_progress(table, "m", {"s0"}, "r1")
        assert [(s.rewind_id, s.applied) for s in states] == [("r2", True)]
