"""Review 13b: the read budget's "share below one batch" warning measures a batch in the
records a batch holds. With KPL de-aggregation a raw record (the unit of the budget's
average) is an aggregate of many user records, and ``batch_size`` counts user records: a share
holding many batches of user records must not be reported as holding less than one."""

from __future__ import annotations

import pytest
import structlog.testing

from poller.streams.budget import ReadBudget
from poller.types import StreamRecord

pytestmark = pytest.mark.anyio

KB = 1000


def user_records(count: int, size: int) -> list[StreamRecord]:
    return [StreamRecord(f"{i}", "k", 0.0, {}, size, sub_sequence_number=i) for i in range(count)]


async def test_a_share_holding_many_batches_of_kpl_user_records_is_not_warned() -> None:
    budget = ReadBudget(1000 * KB)
    accounts = [
        budget.account("m", f"s{i}", floor_records=10, max_records=10_000) for i in range(2)
    ]
    acc = accounts[0]  # a 500 KB share; a batch is 10 user records of 1 KB: 10 KB
    with structlog.testing.capture_logs() as logs:
        await acc.reserve()
        acc.unreserve()
        acc.charge(user_records(100, KB), 1)  # one aggregate of 100 user records: 100 KB
    assert budget.share >= 10 * 10 * KB  # room for ten batches
    assert not [e for e in logs if e["event"] == "read_budget.share_below_batch"]
    for each in accounts:
        each.close()
