"""What the in-memory lease table adds to the contract it shares with DynamoDBLeaseTable
(``tests/integration/test_lease_table_contract.py``): call accounting, outages, a lagging view
and a table without the view index. The simulation and the coordinator's unit tests rely on
these."""

from __future__ import annotations

import pytest

from poller.checkpoints.dynamodb import Members
from poller.errors import CheckpointError, ConfigError
from poller.types import Checkpoint
from tests.support.memory_lease_table import MemoryLeaseTable
from tests.support.memory_table_store import item_size

pytestmark = pytest.mark.anyio

MAPPING = "m"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_calls_are_counted_by_operation_as_the_real_table_sends_them() -> None:
    table = MemoryLeaseTable()
    await table.heartbeat(MAPPING, "a", 1)  # update refused (no item), then the put
    await table.heartbeat(MAPPING, "a", 2)
    await table.members(MAPPING)
    assert await table.create(MAPPING, "s1")
    lease = await table.get(MAPPING, "s1")
    assert lease is not None
    await table.take(lease, "a")
    await table.lease_view(MAPPING)
    await table.list_leases(MAPPING)
    await table.delete(MAPPING, "s1")

    assert table.calls == {
        "UpdateItem": 3,
        "PutItem": 2,
        "GetItem": 2,
        "Query": 1,
        "Scan": 1,
        "DeleteItem": 1,
    }
    assert (table.reads, table.writes) == (4, 6)
    assert table.by_call["UpdateItem (heartbeat)"] == 2
    assert table.by_call["PutItem (heartbeat)"] == 1
    assert table.read_units == 1 + 1 + 0.5 + 1  # two reads, a Query page (eventual), a Scan page
    assert table.write_units == 6  # each item under 1 KB; the refused update is billed too


async def test_scans_and_queries_count_one_call_per_page() -> None:
    table = MemoryLeaseTable(scan_page_size=10)
    for i in range(25):
        assert await table.create(MAPPING, f"shardId-{i:012d}")
    await table.heartbeat("other", "a", 1)
    await table.list_leases(MAPPING)
    assert table.calls["Scan"] == 3  # 26 items evaluated, 10 a page

    big = MemoryLeaseTable()
    for i in range(8000):  # ~170 bytes projected each: 1 MB pages
        await big.create(MAPPING, f"shardId-{i:012d}", checkpoint=Checkpoint("4" * 56))
    size = item_size(big.items[f"{MAPPING}#shardId-000000000000"])
    await big.lease_view(MAPPING)
    assert big.calls["Query"] == -(-8000 * size // (1024 * 1024))


async def test_a_down_table_raises_and_changes_nothing() -> None:
    table = MemoryLeaseTable()
    await table.heartbeat(MAPPING, "a", 1)
    before = dict(table.items)
    table.down = True
    for call in (
        table.heartbeat(MAPPING, "a", 2),
        table.members(MAPPING),
        table.lease_view(MAPPING),
        table.create(MAPPING, "s"),
        table.bump_generation(MAPPING),
        table.ensure_table(),
    ):
        with pytest.raises(CheckpointError, match="could not reach DynamoDB") as got:
            await call
        assert got.value.retriable
    assert table.items == before
    assert table.writes == 2  # only the calls made before the outage
    table.down = False
    assert await table.members(MAPPING) == Members({"a": 1}, 0)


async def test_the_view_lags_by_calls() -> None:
    table = MemoryLeaseTable(view_lag_calls=3)
    assert await table.create(MAPPING, "s1")  # call 1
    assert await table.lease_view(MAPPING) == []  # call 2: the create is 1 call old
    lease = await table.get(MAPPING, "s1")  # 3
    assert lease is not None
    taken = await table.take(lease, "a")  # 4
    assert taken is not None
    view = await table.lease_view(MAPPING)  # 5: sees the state after call 2
    assert [(v.shard_id, v.owner) for v in view] == [("s1", None)]
    await table.members(MAPPING)  # 6
    await table.members(MAPPING)  # 7
    view = await table.lease_view(MAPPING)  # 8: sees the take (call 4, exactly 4 calls old)
    assert [(v.owner, v.counter) for v in view] == [("a", 1)]
    assert await table.get(MAPPING, "s1") == taken  # consistent reads never lag


async def test_the_view_lags_by_seconds_and_forgets_deleted_leases_late() -> None:
    clock = FakeClock()
    table = MemoryLeaseTable(view_lag_seconds=2.0, clock=clock)
    assert await table.create(MAPPING, "s1")
    assert await table.lease_view(MAPPING) == []
    clock.now += 2.0
    assert [v.shard_id for v in await table.lease_view(MAPPING)] == ["s1"]
    await table.delete(MAPPING, "s1")
    clock.now += 1.0
    assert [v.shard_id for v in await table.lease_view(MAPPING)] == ["s1"]  # still seen
    assert await table.list_leases(MAPPING) == []  # the consistent Scan knows
    clock.now += 1.0
    assert await table.lease_view(MAPPING) == []


async def test_without_the_index_the_view_is_the_consistent_scan() -> None:
    table = MemoryLeaseTable(view_index=False, view_lag_calls=5)
    assert table.has_view_index is None
    assert await table.create(MAPPING, "s1")
    view = await table.lease_view(MAPPING)
    assert [v.shard_id for v in view] == ["s1"]  # no lag: it is the Scan
    assert table.has_view_index is False
    assert (table.calls["Query"], table.calls["Scan"]) == (0, 1)
    await table.lease_view(MAPPING)
    assert table.warnings == ["lease_table.no_view_index"]  # said once


async def test_ensure_table_creates_or_migrates_when_allowed() -> None:
    missing = MemoryLeaseTable("t", exists=False)
    with pytest.raises(ConfigError, match="'t' does not exist"):
        await missing.ensure_table(create=False)
    await missing.ensure_table()
    assert missing.has_view_index is True

    old = MemoryLeaseTable(view_index=False)
    await old.ensure_table(create=False)
    assert old.has_view_index is False
    await old.ensure_table()
    assert old.has_view_index is True
    assert old.calls["UpdateTable"] == 1


async def test_renewed_at_comes_from_the_wall_clock_given() -> None:
    table = MemoryLeaseTable(wall_clock=lambda: 1234.5)
    assert await table.create(MAPPING, "s1")
    lease = await table.get(MAPPING, "s1")
    assert lease is not None
    taken = await table.take(lease, "a")
    assert taken is not None
    assert taken.renewed_at == 1234.5


async def test_repeated_views_see_every_lease_write_and_cost_a_query_each() -> None:
    """Views are memoised between lease writes (for the simulation's speed), never stale."""
    table = MemoryLeaseTable()
    assert await table.create(MAPPING, "s1")
    first = await table.lease_view(MAPPING)
    await table.heartbeat(MAPPING, "a", 1)  # not a lease: the memo holds
    assert await table.lease_view(MAPPING) == first
    taken = await table.take(first[0], "a")
    assert taken is not None
    assert await table.lease_view(MAPPING) == [taken]
    assert await table.release(taken, "a")
    [released] = await table.lease_view(MAPPING)
    assert (released.owner, released.counter) == (None, 2)
    await table.delete(MAPPING, "s1")
    assert await table.lease_view(MAPPING) == []
    assert table.calls["Query"] == 5


async def test_a_lost_answer_lands_the_write_and_raises() -> None:
    table = MemoryLeaseTable()
    table.lose_next.add("UpdateItem (heartbeat)")
    with pytest.raises(CheckpointError, match="answer was lost"):
        await table.heartbeat(MAPPING, "a", 1)  # the refused update's answer is lost
    assert await table.members(MAPPING) == Members({}, 0)
    await table.heartbeat(MAPPING, "a", 1)
    table.lose_next.add("UpdateItem")
    with pytest.raises(CheckpointError, match=r"UpdateItem \(heartbeat\): the answer was lost"):
        await table.heartbeat(MAPPING, "a", 2)
    assert await table.members(MAPPING) == Members({"a": 2}, 0)  # it landed
    assert not table.lose_next
