"""One contract, three lease tables: the in-memory twin, moto and DynamoDB Local.

Every test here runs against :class:`~tests.support.memory_lease_table.MemoryLeaseTable` and
against :class:`~poller.checkpoints.dynamodb.DynamoDBLeaseTable` on moto's server and on
DynamoDB Local (real aiobotocore clients over HTTP, nothing patched). That the same assertions
hold on all three is what lets the coordinator's unit tests and the 10,000-shard simulation
trust the twin. The tests cover the calls of lease protocol v2 (the member item, the lease
view) and the fenced lease writes the protocol relies on; ``test_lease_table.py`` covers the v1
calls in more detail on DynamoDB Local.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease, Members, members_key
from poller.errors import LeaseLost
from poller.status import lease_status
from poller.types import Checkpoint
from tests.support.aws import aws_client, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.memory_lease_table import MemoryLeaseTable

pytestmark = pytest.mark.anyio

MAPPING = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
OTHER = "other-mapping"
SHARD = "shardId-000000000001"
#: Replica ids as ECS and hosts make them: dots, colons and slashes must stay one map key.
REPLICA_A = "ip-10-0-0-1.ec2.internal:1234/a.b"
REPLICA_B = "replica-b"
Table = DynamoDBLeaseTable | MemoryLeaseTable


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one client per emulator (bound to its event loop) serves all."""
    return "asyncio"


@pytest.fixture(scope="module")
async def moto_ddb(moto_url: str) -> AsyncIterator[Any]:
    async with aws_client("dynamodb", moto_url) as client:
        yield client


@pytest.fixture(scope="module")
async def local_ddb() -> AsyncIterator[Any]:
    async with aws_client("dynamodb", require_dynamodb_local()) as client:
        yield client


@pytest.fixture(params=["memory", "moto", "dynamodb_local"])
def client(request: pytest.FixtureRequest) -> Any:
    """The DynamoDB client of each kind of table (None: the in-memory twin). Synchronous, so
    that it may pick the emulator's (async, module-wide) fixture by name."""
    if request.param == "memory":
        return None
    return request.getfixturevalue("moto_ddb" if request.param == "moto" else "local_ddb")


@pytest.fixture
async def table(client: Any) -> Table:
    """A new, empty lease table of each kind."""
    leases: Table
    if client is None:
        leases = MemoryLeaseTable(unique("leases"), exists=False)
    else:
        leases = DynamoDBLeaseTable(client, unique("leases"))
    await leases.ensure_table()
    assert leases.has_view_index is True
    return leases


async def raw(table: Table, key: str) -> dict[str, Any] | None:
    """The stored item at ``key``, in DynamoDB's wire format."""
    if isinstance(table, MemoryLeaseTable):
        return table.items.get(key)
    response = await table._client.get_item(
        TableName=table.table, Key={"leaseKey": {"S": key}}, ConsistentRead=True
    )
    item: dict[str, Any] | None = response.get("Item")
    return item


async def owned(table: Table, shard: str = SHARD, owner: str = REPLICA_A) -> Lease:
    """A new lease of ``shard`` taken by ``owner`` (counter 1)."""
    assert await table.create(MAPPING, shard)
    lease = await table.get(MAPPING, shard)
    assert lease is not None
    taken = await table.take(lease, owner)
    assert taken is not None
    return taken


# -- the member item --------------------------------------------------------------------------


async def test_members_of_a_mapping_without_item_is_empty(table: Table) -> None:
    assert await table.members(MAPPING) == Members({}, 0)
    assert await raw(table, members_key(MAPPING)) is None


async def test_heartbeat_creates_the_item_then_moves_only_its_own_beat(table: Table) -> None:
    await table.heartbeat(MAPPING, REPLICA_A, 10)
    assert await table.members(MAPPING) == Members({REPLICA_A: 10}, 0)
    stored = await raw(table, members_key(MAPPING))
    assert stored is not None
    assert stored["membersOf"] == {"S": MAPPING}
    assert "mapping" not in stored  # stays out of the view index and of every mapping Scan

    await table.heartbeat(MAPPING, REPLICA_B, 7)
    await table.heartbeat(MAPPING, REPLICA_A, 11)
    await table.heartbeat(MAPPING, REPLICA_A, 11)  # a retried beat changes nothing
    assert await table.members(MAPPING) == Members({REPLICA_A: 11, REPLICA_B: 7}, 0)
    assert await table.members(OTHER) == Members({}, 0)


async def test_replicas_beating_a_new_mapping_together_all_land(table: Table) -> None:
    """Ten replicas' first beats race to create the item: one put wins, the others update."""
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(table.heartbeat, MAPPING, f"replica-{i}", 100 + i)
    members = await table.members(MAPPING)
    assert members.beats == {f"replica-{i}": 100 + i for i in range(10)}


async def test_leave_removes_only_the_leaver_and_never_creates_the_item(table: Table) -> None:
    await table.leave(MAPPING, REPLICA_A)  # no item: nothing happens
    assert await raw(table, members_key(MAPPING)) is None

    await table.heartbeat(MAPPING, REPLICA_A, 1)
    await table.heartbeat(MAPPING, REPLICA_B, 2)
    await table.leave(MAPPING, REPLICA_A)
    await table.leave(MAPPING, REPLICA_A)  # already gone: fine
    assert await table.members(MAPPING) == Members({REPLICA_B: 2}, 0)


async def test_prune_member_only_on_the_beat_it_saw(table: Table) -> None:
    assert not await table.prune_member(MAPPING, REPLICA_A, 1)  # no item
    await table.heartbeat(MAPPING, REPLICA_A, 1)
    await table.heartbeat(MAPPING, REPLICA_B, 5)

    await table.heartbeat(MAPPING, REPLICA_A, 2)  # came back after the pruner looked
    assert not await table.prune_member(MAPPING, REPLICA_A, 1)
    assert await table.members(MAPPING) == Members({REPLICA_A: 2, REPLICA_B: 5}, 0)

    assert await table.prune_member(MAPPING, REPLICA_A, 2)
    assert not await table.prune_member(MAPPING, REPLICA_A, 2)  # gone already
    assert await table.members(MAPPING) == Members({REPLICA_B: 5}, 0)


async def test_bump_generation_counts_and_leaves_beats_alone(table: Table) -> None:
    await table.bump_generation(MAPPING)  # no item yet: created at generation 1
    assert await table.members(MAPPING) == Members({}, 1)
    await table.heartbeat(MAPPING, REPLICA_A, 3)  # the map is there to beat into
    await table.bump_generation(MAPPING)
    await table.leave(MAPPING, REPLICA_B)
    assert await table.members(MAPPING) == Members({REPLICA_A: 3}, 2)
    stored = await raw(table, members_key(MAPPING))
    assert stored is not None
    assert stored["membersOf"] == {"S": MAPPING}


# -- the lease view ---------------------------------------------------------------------------


async def test_lease_view_matches_the_scan_without_window_state(table: Table) -> None:
    shards = [f"shardId-{i:012d}" for i in (4, 2, 3)]
    for shard in shards:
        assert await table.create(MAPPING, shard, parent_ids=["shardId-p"])
    assert await table.create(OTHER, SHARD)
    lease = await owned(table, SHARD)
    window = Checkpoint("77", sub_sequence_number=4, window_state='{"open": 1}')
    lease = await table.checkpoint(lease, REPLICA_A, window)
    assert await table.request_handoff(lease, REPLICA_B)
    await table.heartbeat(MAPPING, REPLICA_A, 1)
    await table.pin_mapping_start(MAPPING, 1764064981.021)

    listed = await table.list_leases(MAPPING)
    view = await table.lease_view(MAPPING)

    assert [lease.shard_id for lease in view] == sorted([SHARD, *shards])
    assert view[0].checkpoint == Checkpoint("77", sub_sequence_number=4)  # no window state
    assert listed[0].checkpoint == window
    without_windows = [
        lease
        if lease.checkpoint is None or lease.checkpoint.window_state is None
        # the view leaves window state out; everything else agrees with the Scan
        else Lease(
            lease.mapping,
            lease.shard_id,
            lease.owner,
            lease.counter,
            Checkpoint("77", sub_sequence_number=4),
            lease.parent_ids,
            lease.pending_owner,
            lease.owner_switches,
            lease.renewed_at,
        )
        for lease in listed
    ]
    assert view == without_windows
    assert (view[0].owner, view[0].pending_owner, view[0].counter) == (REPLICA_A, REPLICA_B, 2)
    assert [lease.shard_id for lease in await table.lease_view(OTHER)] == [SHARD]
    assert await table.lease_view("missing") == []


async def test_status_lists_leases_only(table: Table) -> None:
    """The member item and the mapping item are not leases to ``poller status``."""
    await owned(table)
    await table.heartbeat(MAPPING, REPLICA_A, 1)
    await table.bump_generation(MAPPING)
    await table.pin_mapping_start(MAPPING, 1764064981.021)
    rows = await lease_status(table, [MAPPING], now=1764064981.021)  # type: ignore[arg-type]
    assert [(row["shard_id"], row["owner"]) for row in rows] == [(SHARD, REPLICA_A)]


# -- fenced writes, as v2 uses them (the epoch moves on take, checkpoint, release only) --------


async def test_take_is_conditional_on_the_observed_epoch(table: Table) -> None:
    lease = await owned(table)
    assert await table.take(lease, REPLICA_B) is not None  # observed counter 1: wins
    assert await table.take(lease, REPLICA_B) is None  # counter 1 is stale now
    stale_checkpoint = table.checkpoint(lease, REPLICA_A, Checkpoint("9"))
    with pytest.raises(LeaseLost, match="owned by replica-b at counter 2") as lost:
        await stale_checkpoint
    assert lost.value.observed == await table.get(MAPPING, SHARD)
    assert not await table.release(lease, REPLICA_A)


async def test_concurrent_takers_exactly_one_wins(table: Table) -> None:
    assert await table.create(MAPPING, SHARD)
    observed = await table.get(MAPPING, SHARD)
    assert observed is not None
    won: list[Lease] = []

    async def take(owner: str) -> None:
        if (lease := await table.take(observed, owner)) is not None:
            won.append(lease)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(take, f"replica-{i}")
    assert len(won) == 1
    assert await table.get(MAPPING, SHARD) == won[0]


async def test_checkpoint_release_and_handoff_move_the_epoch_as_documented(table: Table) -> None:
    lease = await owned(table)
    assert await table.request_handoff(lease, REPLICA_B)
    assert not await table.request_handoff(lease, "replica-c")  # one request at a time
    pending = await table.get(MAPPING, SHARD)
    assert pending is not None
    assert (pending.counter, pending.pending_owner) == (1, REPLICA_B)  # owner not fenced out

    lease = await table.checkpoint(lease, REPLICA_A, Checkpoint("5"))
    assert (lease.counter, lease.pending_owner) == (2, REPLICA_B)
    assert await table.release(lease, REPLICA_A)
    released = await table.get(MAPPING, SHARD)
    assert released is not None
    assert (released.owner, released.pending_owner, released.counter) == (None, None, 3)
    assert released.checkpoint == Checkpoint("5")

    taken = await table.take(released, REPLICA_B)
    assert taken is not None
    assert (taken.owner, taken.counter, taken.owner_switches) == (REPLICA_B, 4, 0)
    stolen = await table.take(taken, REPLICA_A)
    assert stolen is not None
    assert (stolen.counter, stolen.owner_switches) == (5, 1)


async def test_deleted_leases_stay_deleted(table: Table) -> None:
    lease = await owned(table)
    await table.delete(MAPPING, SHARD)
    await table.delete(MAPPING, SHARD)
    assert await table.get(MAPPING, SHARD) is None
    assert await table.take(lease, REPLICA_B) is None
    assert not await table.release(lease, REPLICA_A)
    with pytest.raises(LeaseLost, match="no longer exists"):
        await table.checkpoint(lease, REPLICA_A, Checkpoint("9"))
    assert await table.lease_view(MAPPING) == []
    assert await raw(table, f"{MAPPING}#{SHARD}") is None


async def test_mapping_start_is_pinned_once(table: Table) -> None:
    assert await table.mapping_start(MAPPING) is None
    assert await table.pin_mapping_start(MAPPING, 100.5) == 100.5
    assert await table.pin_mapping_start(MAPPING, 200.0) == 100.5
    assert await table.mapping_start(MAPPING) == 100.5
