"""The DynamoDB lease table against moto: real aiobotocore clients over HTTP, nothing patched.

Each test makes its own table and checks the item DynamoDB stored (read back raw with a
consistent GetItem), not only what the call returned: a fenced write that is refused must leave
the item exactly as it was.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.errors import CheckpointError, ConfigError, LeaseLost
from poller.status import lease_status, render_status
from poller.types import SHARD_END, Checkpoint
from tests.support.aws import CREDENTIALS, REGION, aws_client, unique
from tests.support.dynamodb_local import require_dynamodb_local

pytestmark = pytest.mark.anyio

MAPPING = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
SHARD = "shardId-000000000001"
NOW = 1764064981.021  # 2025-11-25T10:03:01.021Z


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one client (bound to its event loop) serves every test."""
    return "asyncio"


@pytest.fixture(scope="module")
async def ddb() -> AsyncIterator[Any]:
    """A client of DynamoDB Local (atomic conditional writes, as DynamoDB's)."""
    async with aws_client("dynamodb", require_dynamodb_local()) as client:
        yield client


@pytest.fixture
async def table(ddb: Any) -> DynamoDBLeaseTable:
    leases = DynamoDBLeaseTable(ddb, unique("leases"))
    await leases.ensure_table()
    return leases


async def raw(table: DynamoDBLeaseTable, shard_id: str = SHARD) -> dict[str, Any] | None:
    """The stored item, in DynamoDB's wire format."""
    response = await table._client.get_item(
        TableName=table.table, Key={"leaseKey": {"S": f"{MAPPING}#{shard_id}"}}, ConsistentRead=True
    )
    item: dict[str, Any] | None = response.get("Item")
    return item


async def owned(table: DynamoDBLeaseTable, owner: str = "replica-a") -> Lease:
    """A fresh lease of SHARD, taken by ``owner`` (counter 1)."""
    assert await table.create(MAPPING, SHARD)
    lease = await table.get(MAPPING, SHARD)
    assert lease is not None
    taken = await table.take(lease, owner)
    assert taken is not None
    return taken


# -- the table --------------------------------------------------------------------------------


async def test_ensure_table_creates_once_and_can_refuse_to_create(ddb: Any) -> None:
    name = unique("leases")
    leases = DynamoDBLeaseTable(ddb, name)

    with pytest.raises(ConfigError, match=name):
        await leases.ensure_table(create=False)
    assert name not in (await ddb.list_tables())["TableNames"]

    await leases.ensure_table()
    await leases.ensure_table()  # idempotent
    await leases.ensure_table(create=False)

    described = (await ddb.describe_table(TableName=name))["Table"]
    assert described["TableStatus"] == "ACTIVE"
    assert described["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


async def test_ensure_table_rejects_a_table_with_another_key(ddb: Any) -> None:
    name = unique("leases")
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ConfigError, match="key schema"):
        await DynamoDBLeaseTable(ddb, name).ensure_table()


# -- create, get, delete ----------------------------------------------------------------------


async def test_create_is_idempotent_and_stores_parents(table: DynamoDBLeaseTable) -> None:
    assert await table.create(MAPPING, SHARD, parent_ids=["shardId-b", "shardId-a", "shardId-a"])
    stored = await raw(table)
    assert stored == {
        "leaseKey": {"S": f"{MAPPING}#{SHARD}"},
        "mapping": {"S": MAPPING},
        "shardId": {"S": SHARD},
        "leaseCounter": {"N": "0"},
        "ownerSwitchesSinceCheckpoint": {"N": "0"},
        "parentShardId": {"SS": ["shardId-a", "shardId-b"]},
    }

    # A second discovery of the shard changes nothing.
    assert not await table.create(
        MAPPING, SHARD, parent_ids=["shardId-x"], checkpoint=Checkpoint("7")
    )
    assert await raw(table) == stored

    assert await table.get(MAPPING, SHARD) == Lease(
        mapping=MAPPING,
        shard_id=SHARD,
        owner=None,
        counter=0,
        checkpoint=None,
        parent_ids=("shardId-a", "shardId-b"),
        pending_owner=None,
        owner_switches=0,
        renewed_at=None,
    )


async def test_create_without_parents_and_with_a_pinned_start(table: DynamoDBLeaseTable) -> None:
    assert await table.create(MAPPING, SHARD, checkpoint=Checkpoint(start_timestamp=NOW))
    stored = await raw(table)
    assert stored is not None
    assert "parentShardId" not in stored  # string sets cannot be empty
    assert "checkpoint" not in stored
    assert stored["startTimestamp"] == {"N": "1764064981.021"}
    lease = await table.get(MAPPING, SHARD)
    assert lease is not None
    assert lease.parent_ids == ()
    assert lease.checkpoint == Checkpoint(start_timestamp=NOW)


async def test_get_and_delete(table: DynamoDBLeaseTable) -> None:
    assert await table.get(MAPPING, SHARD) is None
    await table.create(MAPPING, SHARD)
    await table.delete(MAPPING, SHARD)
    assert await raw(table) is None
    assert await table.get(MAPPING, SHARD) is None
    await table.delete(MAPPING, SHARD)  # deleting a missing lease is fine


# -- take -------------------------------------------------------------------------------------


async def test_take_succeeds_on_the_observed_counter_only(table: DynamoDBLeaseTable) -> None:
    await table.create(MAPPING, SHARD)
    observed = await table.get(MAPPING, SHARD)
    assert observed is not None

    before = time.time()
    taken = await table.take(observed, "replica-a")
    assert taken is not None
    assert (taken.owner, taken.counter, taken.owner_switches) == ("replica-a", 1, 0)
    assert taken.renewed_at is not None
    assert before <= taken.renewed_at <= time.time()
    stored = await raw(table)
    assert stored is not None
    assert stored["leaseOwner"] == {"S": "replica-a"}
    assert stored["leaseCounter"] == {"N": "1"}
    assert "pendingOwner" not in stored

    # The same observation is stale now: a second taker loses and changes nothing.
    assert await table.take(observed, "replica-b") is None
    assert await raw(table) == stored


async def test_take_counts_owner_switches_and_clears_a_pending_handoff(
    table: DynamoDBLeaseTable,
) -> None:
    lease = await owned(table, "replica-a")
    assert lease.owner_switches == 0  # taking an unowned lease is not a switch

    again = await table.take(lease, "replica-a")
    assert again is not None
    assert again.owner_switches == 0  # re-taking one's own lease is not a switch either

    assert await table.request_handoff(again, "replica-b")
    observed = await table.get(MAPPING, SHARD)
    assert observed is not None
    assert observed.pending_owner == "replica-b"
    stolen = await table.take(observed, "replica-b")
    assert stolen is not None
    assert (stolen.owner, stolen.counter, stolen.owner_switches) == ("replica-b", 3, 1)
    assert stolen.pending_owner is None
    stored = await raw(table)
    assert stored is not None
    assert stored["ownerSwitchesSinceCheckpoint"] == {"N": "1"}
    assert stored["leaseCounter"] == {"N": "3"}
    assert "pendingOwner" not in stored


async def test_concurrent_takers_exactly_one_wins(table: DynamoDBLeaseTable) -> None:
    await table.create(MAPPING, SHARD)
    observed = await table.get(MAPPING, SHARD)
    assert observed is not None
    results: dict[str, Lease | None] = {}

    async def take(owner: str) -> None:
        results[owner] = await table.take(observed, owner)

    owners = [f"replica-{i}" for i in range(5)]
    async with anyio.create_task_group() as tg:
        for owner in owners:
            tg.start_soon(take, owner)

    winners = [owner for owner, lease in results.items() if lease is not None]
    assert len(results) == len(owners)
    assert len(winners) == 1
    stored = await raw(table)
    assert stored is not None
    assert stored["leaseOwner"] == {"S": winners[0]}
    assert stored["leaseCounter"] == {"N": "1"}


# -- renew, checkpoint and fencing ------------------------------------------------------------


async def test_renew_bumps_the_counter_and_reports_a_handoff_request(
    table: DynamoDBLeaseTable,
) -> None:
    lease = await owned(table)
    renewed = await table.renew(lease, "replica-a")
    assert (renewed.owner, renewed.counter, renewed.pending_owner) == ("replica-a", 2, None)

    assert await table.request_handoff(renewed, "replica-b")
    stored = await raw(table)
    assert stored is not None
    assert stored["leaseCounter"] == {"N": "2"}  # a request does not fence the owner out

    renewed = await table.renew(renewed, "replica-a")
    assert (renewed.counter, renewed.pending_owner) == (3, "replica-b")
    stored = await raw(table)
    assert stored is not None
    assert stored["leaseCounter"] == {"N": "3"}
    assert stored["pendingOwner"] == {"S": "replica-b"}
    assert float(stored["renewedAt"]["N"]) == renewed.renewed_at


@pytest.mark.parametrize("call", ["renew", "checkpoint"])
@pytest.mark.parametrize("how", ["non_owner", "stale_counter"])
async def test_a_fenced_write_that_lost_raises_and_changes_nothing(
    table: DynamoDBLeaseTable, call: str, how: str
) -> None:
    lease = await owned(table, "replica-a")
    if how == "non_owner":
        writer, stale = "replica-b", lease
    else:
        current = await table.take(lease, "replica-b")  # stolen: the counter moved on
        assert current is not None
        writer, stale = "replica-a", lease
    before = await raw(table)

    async def write() -> Lease:
        if call == "renew":
            return await table.renew(stale, writer)
        return await table.checkpoint(stale, writer, Checkpoint("42"))

    with pytest.raises(LeaseLost) as lost:
        await write()

    assert await raw(table) == before
    assert isinstance(lost.value, CheckpointError)
    assert not lost.value.retriable
    assert table.table in str(lost.value)
    assert lost.value.observed == await table.get(MAPPING, SHARD)


@pytest.mark.parametrize(
    "checkpoint",
    [
        Checkpoint(sequence_number="49654321098765432109876543210987654321098765432109876543"),
        Checkpoint(sequence_number=SHARD_END),
        Checkpoint(start_timestamp=NOW),
    ],
    ids=["sequence", "shard_end", "start"],
)
async def test_checkpoint_stores_each_form(
    table: DynamoDBLeaseTable, checkpoint: Checkpoint
) -> None:
    lease = await owned(table, "replica-a")
    stolen = await table.take(lease, "replica-b")
    assert stolen is not None
    assert stolen.owner_switches == 1

    written = await table.checkpoint(stolen, "replica-b", checkpoint)
    assert written.checkpoint == checkpoint
    assert (written.counter, written.owner_switches, written.owner) == (3, 0, "replica-b")
    assert await table.get(MAPPING, SHARD) == written

    stored = await raw(table)
    assert stored is not None
    assert stored["ownerSwitchesSinceCheckpoint"] == {"N": "0"}
    assert stored["leaseCounter"] == {"N": "3"}
    if checkpoint.sequence_number is not None:
        assert stored["checkpoint"] == {"S": checkpoint.sequence_number}
        assert "startTimestamp" not in stored
    else:
        assert stored["startTimestamp"] == {"N": "1764064981.021"}
        assert "checkpoint" not in stored


async def test_a_sequence_checkpoint_replaces_a_pinned_start(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table)
    lease = await table.checkpoint(lease, "replica-a", Checkpoint(start_timestamp=NOW))
    lease = await table.checkpoint(lease, "replica-a", Checkpoint("17"))
    assert lease.checkpoint == Checkpoint(sequence_number="17")
    stored = await raw(table)
    assert stored is not None
    assert stored["checkpoint"] == {"S": "17"}
    assert "startTimestamp" not in stored

    with pytest.raises(ValueError, match="checkpoint"):
        await table.checkpoint(lease, "replica-a", Checkpoint())
    assert await raw(table) == stored


# -- release and handoff ----------------------------------------------------------------------


async def test_release_makes_the_lease_unowned(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table, "replica-a")
    lease = await table.checkpoint(lease, "replica-a", Checkpoint("5"))
    assert await table.request_handoff(lease, "replica-b")

    assert await table.release(lease, "replica-a")
    stored = await raw(table)
    assert stored is not None
    assert "leaseOwner" not in stored
    assert "pendingOwner" not in stored
    assert stored["leaseCounter"] == {"N": "3"}
    assert stored["checkpoint"] == {"S": "5"}  # the checkpoint stays for the next owner

    # The released lease is free for anyone, and counts no owner switch.
    observed = await table.get(MAPPING, SHARD)
    assert observed is not None
    assert observed.owner is None
    taken = await table.take(observed, "replica-b")
    assert taken is not None
    assert taken.owner_switches == 0


async def test_a_release_after_losing_the_lease_returns_false(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table, "replica-a")
    assert await table.take(lease, "replica-b") is not None
    before = await raw(table)

    assert not await table.release(lease, "replica-a")
    assert await raw(table) == before
    assert before is not None
    assert before["leaseOwner"] == {"S": "replica-b"}


async def test_request_handoff_only_once(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table, "replica-a")
    before = await raw(table)

    assert await table.request_handoff(lease, "replica-b")
    assert not await table.request_handoff(lease, "replica-c")
    stored = await raw(table)
    assert stored is not None
    assert stored["pendingOwner"] == {"S": "replica-b"}
    assert before is not None
    assert stored["leaseCounter"] == before["leaseCounter"]
    assert stored["leaseOwner"] == {"S": "replica-a"}

    # An observation of a previous owner, or of no owner, asks nobody.
    unowned = Lease(MAPPING, SHARD, None, 0, None, (), None, 0, None)
    assert not await table.request_handoff(unowned, "replica-c")
    assert await raw(table) == stored


async def test_writes_never_recreate_a_deleted_lease(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table, "replica-a")
    await table.delete(MAPPING, SHARD)

    assert await table.take(lease, "replica-b") is None
    assert not await table.request_handoff(lease, "replica-b")
    assert not await table.release(lease, "replica-a")
    with pytest.raises(LeaseLost, match="no longer exists") as lost:
        await table.renew(lease, "replica-a")
    assert lost.value.observed is None
    with pytest.raises(LeaseLost):
        await table.checkpoint(lease, "replica-a", Checkpoint("9"))
    assert await raw(table) is None


# -- listing ----------------------------------------------------------------------------------


async def test_list_leases_filters_by_mapping_and_paginates(ddb: Any) -> None:
    leases = DynamoDBLeaseTable(ddb, unique("leases"), scan_page_size=3)
    await leases.ensure_table()
    shards = [f"shardId-{i:012d}" for i in range(7)]
    for shard in shards:
        assert await leases.create(MAPPING, shard)
    for shard in shards[:4]:
        assert await leases.create("other-mapping", shard, parent_ids=["p"])
    scans: list[dict[str, Any]] = []

    def seen(params: dict[str, Any], **_: Any) -> None:
        scans.append(dict(params))

    event = "provide-client-params.dynamodb.Scan"
    ddb.meta.events.register(event, seen)
    try:
        listed = await leases.list_leases(MAPPING)
    finally:
        ddb.meta.events.unregister(event, seen)

    assert [lease.shard_id for lease in listed] == shards
    assert {lease.mapping for lease in listed} == {MAPPING}
    assert all(lease.parent_ids == () for lease in listed)
    assert len(scans) >= 4  # 11 items, 3 per page
    assert all(scan["ConsistentRead"] and scan["Limit"] == 3 for scan in scans)
    assert [lease.shard_id for lease in await leases.list_leases("other-mapping")] == shards[:4]
    assert await leases.list_leases("missing") == []


# -- errors -----------------------------------------------------------------------------------


async def test_service_errors_are_retriable_and_name_the_table_and_call(ddb: Any) -> None:
    name = unique("missing")
    leases = DynamoDBLeaseTable(ddb, name)
    with pytest.raises(CheckpointError, match=f"{name}: GetItem failed with Resource") as got:
        await leases.get(MAPPING, SHARD)
    assert got.value.retriable
    assert not isinstance(got.value, LeaseLost)
    with pytest.raises(CheckpointError, match=r"UpdateItem \(take\)"):
        await leases.take(Lease(MAPPING, SHARD, None, 0, None, (), None, 0, None), "replica-a")


async def test_an_unreachable_dynamodb_is_a_retriable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=1)
    async with get_session().create_client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=config,
        **CREDENTIALS,
    ) as client:
        leases = DynamoDBLeaseTable(client, "leases")
        with pytest.raises(CheckpointError, match="could not reach DynamoDB") as got:
            await leases.ensure_table()
        assert got.value.retriable
        assert "leases: DescribeTable" in str(got.value)


# -- status -----------------------------------------------------------------------------------


async def test_status_shows_owner_checkpoint_pending_and_age(table: DynamoDBLeaseTable) -> None:
    lease = await owned(table, "replica-a")
    lease = await table.checkpoint(lease, "replica-a", Checkpoint("4965"))
    assert await table.request_handoff(lease, "replica-b")
    await table.create(MAPPING, "shardId-000000000002", checkpoint=Checkpoint(start_timestamp=NOW))
    await table.create("other-mapping", SHARD)
    assert lease.renewed_at is not None

    rows = await lease_status(table, [MAPPING], now=lease.renewed_at + 12.34)

    assert [(row["shard_id"], row["owner"]) for row in rows] == [
        (SHARD, "replica-a"),
        ("shardId-000000000002", None),
    ]
    assert rows[0]["checkpoint"] == "4965"
    assert rows[0]["pending_owner"] == "replica-b"
    assert rows[0]["age_seconds"] == pytest.approx(12.34)
    assert (rows[0]["counter"], rows[0]["owner_switches"]) == (2, 0)
    assert rows[1]["checkpoint"] == "start@2025-11-25T10:03:01.021Z"
    assert rows[1]["age_seconds"] is None

    lines = render_status(rows).splitlines()
    assert lines[0].split() == [
        "MAPPING",
        "SHARD",
        "OWNER",
        "CHECKPOINT",
        "PENDING",
        "AGE(s)",
        "COUNTER",
        "SWITCHES",
    ]
    assert lines[1].split() == [MAPPING, SHARD, "replica-a", "4965", "replica-b", "12.3", "2", "0"]
    assert lines[2].split() == [
        MAPPING,
        "shardId-000000000002",
        "-",
        "start@2025-11-25T10:03:01.021Z",
        "-",
        "-",
        "0",
        "0",
    ]
    assert render_status([]) == "no leases"


# -- the mapping item: a mapping's start instant --------------------------------------------


async def test_mapping_start_is_recorded_once_and_kept_apart_from_leases(
    table: DynamoDBLeaseTable,
) -> None:
    """The first pin wins; later pins get it back; leases, checkpoints and status never see
    the mapping item (defects 7 and 11)."""
    assert await table.mapping_start(MAPPING) is None
    assert await table.pin_mapping_start(MAPPING, NOW) == NOW
    assert await table.pin_mapping_start(MAPPING, NOW + 60) == NOW
    assert await table.mapping_start(MAPPING) == NOW
    stored = await raw(table, "__mapping__")
    assert stored is not None
    assert stored["startOf"] == {"S": MAPPING}
    assert stored["startTimestamp"] == {"N": repr(NOW)}
    assert "mapping" not in stored
    assert "shardId" not in stored

    assert await table.create(MAPPING, SHARD)
    assert [lease.shard_id for lease in await table.list_leases(MAPPING)] == [SHARD]
    rows = await lease_status(table, [MAPPING], now=NOW)
    assert [row["shard_id"] for row in rows] == [SHARD]
    assert await table.mapping_start("another-mapping") is None


async def test_replicas_pinning_together_all_get_one_instant(table: DynamoDBLeaseTable) -> None:
    """Ten concurrent conditional puts of different instants: one is recorded, all get it."""
    got: list[float] = []

    async def pin(instant: float) -> None:
        got.append(await table.pin_mapping_start(MAPPING, instant))

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(pin, NOW + i)
    recorded = await table.mapping_start(MAPPING)
    assert recorded is not None
    assert got == [recorded] * 10
