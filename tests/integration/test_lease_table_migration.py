"""The lease table's view index on real protocols: created with a new table, added in place to
a table made by an older version (v1), and the Scan fallback when it cannot be added; the
member item under lost answers.

Each test runs on moto's server and on DynamoDB Local, reached through the fault-injecting
proxy (``tests/support/fault_proxy.py``) where a test needs a refusal, a lost answer, an outage
or a rewritten answer. Nothing is patched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from aiobotocore.config import AioConfig

from poller.checkpoints.dynamodb import VIEW_INDEX, DynamoDBLeaseTable, Lease, Members
from poller.errors import CheckpointError
from poller.types import Checkpoint
from tests.support.aws import aws_client, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.anyio

MAPPING = "mapping-1"
VIEW_ATTRIBUTES = [
    "leaseOwner",
    "leaseCounter",
    "pendingOwner",
    "parentShardId",
    "checkpoint",
    "checkpointSubSequenceNumber",
    "startTimestamp",
    "ownerSwitchesSinceCheckpoint",
    "renewedAt",
]


@pytest.fixture(params=["moto", "dynamodb_local"])
def upstream(request: pytest.FixtureRequest) -> str:
    """The URL of each emulator."""
    if request.param == "moto":
        url: str = request.getfixturevalue("moto_url")
        return url
    return require_dynamodb_local()


@pytest.fixture
def faults(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as proxy:
        yield proxy


@pytest.fixture
async def ddb(faults: FaultProxy) -> AsyncIterator[Any]:
    """A client of the emulator through the proxy, with botocore's default retries."""
    async with aws_client("dynamodb", faults.url) as client:
        yield client


async def create_v1_table(ddb: Any, *, provisioned: bool = False) -> str:
    """A lease table as poller made it before protocol v2: ``leaseKey`` only, no index."""
    name = unique("v1-leases")
    billing: dict[str, Any] = (
        {"ProvisionedThroughput": {"ReadCapacityUnits": 3, "WriteCapacityUnits": 4}}
        if provisioned
        else {"BillingMode": "PAY_PER_REQUEST"}
    )
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        **billing,
    )
    await ddb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
    )
    return name


async def v1_leases(table: DynamoDBLeaseTable) -> list[Lease]:
    """Leases written as a v1 replica writes them (create, take, renew, checkpoint)."""
    for i in range(3):
        assert await table.create(MAPPING, f"shardId-{i}", parent_ids=["shardId-p"] * (i == 2))
    assert await table.create("other", "shardId-0")
    lease = await table.get(MAPPING, "shardId-1")
    assert lease is not None
    lease = await table.take(lease, "v1-replica")
    assert lease is not None
    lease = await table.renew(lease, "v1-replica")
    await table.checkpoint(lease, "v1-replica", Checkpoint("42", window_state='{"w": 1}'))
    await table.pin_mapping_start(MAPPING, 1764064981.0)
    return await table.list_leases(MAPPING)


def without_windows(leases: list[Lease]) -> list[Lease]:
    """``leases`` as the view shows them: window state is not projected."""
    shown = []
    for lease in leases:
        checkpoint = lease.checkpoint
        if checkpoint is not None and checkpoint.window_state is not None:
            checkpoint = Checkpoint(
                checkpoint.sequence_number,
                checkpoint.start_timestamp,
                checkpoint.sub_sequence_number,
            )
        shown.append(
            Lease(
                lease.mapping,
                lease.shard_id,
                lease.owner,
                lease.counter,
                checkpoint,
                lease.parent_ids,
                lease.pending_owner,
                lease.owner_switches,
                lease.renewed_at,
            )
        )
    return shown


async def described_index(ddb: Any, name: str) -> dict[str, Any] | None:
    table = (await ddb.describe_table(TableName=name))["Table"]
    for index in table.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] == VIEW_INDEX:
            found: dict[str, Any] = index
            return found
    return None


def warnings_of(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "lease_table.no_view_index"]


# -- creation and migration -------------------------------------------------------------------


async def test_a_new_table_has_the_view_index_on_demand(ddb: Any) -> None:
    table = DynamoDBLeaseTable(ddb, unique("leases"))
    await table.ensure_table()
    assert table.has_view_index is True

    described = (await ddb.describe_table(TableName=table.table))["Table"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    index = await described_index(ddb, table.table)
    assert index is not None
    assert index["KeySchema"] == [
        {"AttributeName": "mapping", "KeyType": "HASH"},
        {"AttributeName": "shardId", "KeyType": "RANGE"},
    ]
    assert index["Projection"]["ProjectionType"] == "INCLUDE"
    assert sorted(index["Projection"]["NonKeyAttributes"]) == sorted(VIEW_ATTRIBUTES)
    assert "windowState" not in index["Projection"]["NonKeyAttributes"]


@pytest.mark.parametrize("provisioned", [False, True], ids=["on_demand", "provisioned"])
async def test_a_v1_table_gets_the_index_in_place(ddb: Any, provisioned: bool) -> None:
    name = await create_v1_table(ddb, provisioned=provisioned)
    old = DynamoDBLeaseTable(ddb, name)
    leases = await v1_leases(old)
    assert leases[1].checkpoint is not None
    assert leases[1].checkpoint.window_state is not None

    upgraded = DynamoDBLeaseTable(ddb, name)
    with structlog.testing.capture_logs() as logs:
        await upgraded.ensure_table()

    assert upgraded.has_view_index is True
    events = [e["event"] for e in logs]
    assert events[0] == "lease_table.adding_view_index"
    assert set(events[1:]) <= {"lease_table.view_index_building"}  # while it backfills
    index = await described_index(ddb, name)
    assert index is not None
    assert index.get("IndexStatus", "ACTIVE") == "ACTIVE"
    if provisioned:
        throughput = index["ProvisionedThroughput"]
        assert (throughput["ReadCapacityUnits"], throughput["WriteCapacityUnits"]) == (3, 4)
    # The leases written before the index existed are in it, and nothing else is.
    await upgraded.heartbeat(MAPPING, "v2-replica", 1)
    assert await upgraded.lease_view(MAPPING) == without_windows(leases)
    assert await upgraded.list_leases(MAPPING) == leases  # window state kept in the table
    assert [lease.shard_id for lease in await upgraded.lease_view("other")] == ["shardId-0"]

    again = DynamoDBLeaseTable(ddb, name)
    await again.ensure_table(create=False)  # already migrated: nothing to add
    assert again.has_view_index is True


# -- the fallback -----------------------------------------------------------------------------


async def test_without_create_table_the_view_scans(ddb: Any, faults: FaultProxy) -> None:
    name = await create_v1_table(ddb)
    leases = await v1_leases(DynamoDBLeaseTable(ddb, name))
    table = DynamoDBLeaseTable(ddb, name)
    with structlog.testing.capture_logs() as logs:
        await table.ensure_table(create=False)
        first = await table.lease_view(MAPPING)
        second = await table.lease_view(MAPPING)

    assert table.has_view_index is False
    assert await described_index(ddb, name) is None
    assert first == second == leases  # the consistent Scan, window state and all
    assert len(warnings_of(logs)) == 1
    assert "create_table is disabled" in warnings_of(logs)[0]["reason"]
    assert faults.calls("DynamoDB_20120810.UpdateTable") == []
    assert faults.calls("DynamoDB_20120810.Query") == []
    assert all(scan["ConsistentRead"] for scan in faults.calls("DynamoDB_20120810.Scan"))


async def test_a_refused_update_table_falls_back_to_the_scan(ddb: Any, faults: FaultProxy) -> None:
    name = await create_v1_table(ddb)
    leases = await v1_leases(DynamoDBLeaseTable(ddb, name))
    faults.fail("UpdateTable", code="AccessDeniedException", message="not authorized")
    table = DynamoDBLeaseTable(ddb, name)
    with structlog.testing.capture_logs() as logs:
        await table.ensure_table()  # does not raise: the table works without the index

    assert table.has_view_index is False
    [warning] = warnings_of(logs)
    assert warning["reason"] == "UpdateTable failed with AccessDeniedException: not authorized"
    assert await table.lease_view(MAPPING) == leases


async def test_a_table_never_ensured_finds_out_from_its_first_view(ddb: Any) -> None:
    """``status`` and tools skip ensure_table: the first Query's refusal switches to the Scan."""
    name = await create_v1_table(ddb)
    leases = await v1_leases(DynamoDBLeaseTable(ddb, name))
    table = DynamoDBLeaseTable(ddb, name)
    assert table.has_view_index is None
    with structlog.testing.capture_logs() as logs:
        assert await table.lease_view(MAPPING) == leases
        assert await table.lease_view(MAPPING) == leases
    assert table.has_view_index is False
    assert len(warnings_of(logs)) == 1


async def test_an_index_of_that_name_without_the_attributes_is_not_used(ddb: Any) -> None:
    name = unique("leases")
    await ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "leaseKey", "AttributeType": "S"},
            {"AttributeName": "mapping", "AttributeType": "S"},
            {"AttributeName": "shardId", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": VIEW_INDEX,
                "KeySchema": [
                    {"AttributeName": "mapping", "KeyType": "HASH"},
                    {"AttributeName": "shardId", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    table = DynamoDBLeaseTable(ddb, name)
    with structlog.testing.capture_logs() as logs:
        await table.ensure_table()
    assert table.has_view_index is False
    assert "does not project" in warnings_of(logs)[0]["reason"]


async def test_an_index_still_building_after_the_wait_falls_back(
    ddb: Any, faults: FaultProxy
) -> None:
    """DynamoDB backfills an added index; past ``index_wait`` the replica starts on the Scan."""
    name = await create_v1_table(ddb)

    def building(answer: dict[str, Any]) -> dict[str, Any]:
        for index in answer["Table"].get("GlobalSecondaryIndexes", []):
            index["IndexStatus"] = "CREATING"
        return answer

    faults.rewrite("DynamoDB_20120810.DescribeTable", building)
    table = DynamoDBLeaseTable(ddb, name, index_wait=0.5)
    with structlog.testing.capture_logs() as logs:
        await table.ensure_table()
    assert table.has_view_index is False
    assert "still CREATING after 0 s" in warnings_of(logs)[0]["reason"]
    assert len(faults.calls("DynamoDB_20120810.DescribeTable")) >= 3  # it polled while waiting


# -- the view's reads -------------------------------------------------------------------------


async def test_lease_view_follows_pages(ddb: Any, faults: FaultProxy) -> None:
    table = DynamoDBLeaseTable(ddb, unique("leases"))
    await table.ensure_table()
    shards = [f"shardId-{i:03d}" for i in range(5)]
    for shard in shards:
        assert await table.create(MAPPING, shard)
    cut = {"done": False}

    def first_page_of_two(answer: dict[str, Any]) -> dict[str, Any]:
        """Cut the first answer after two items, as DynamoDB cuts 1 MB pages."""
        if cut["done"]:
            return answer
        cut["done"] = True
        items = answer["Items"][:2]
        last = items[-1]
        key = {name: last[name] for name in ("leaseKey", "mapping", "shardId")}
        return {**answer, "Items": items, "Count": 2, "LastEvaluatedKey": key}

    faults.rewrite("DynamoDB_20120810.Query", first_page_of_two)
    view = await table.lease_view(MAPPING)

    assert [lease.shard_id for lease in view] == shards
    queries = faults.calls("DynamoDB_20120810.Query")
    assert len(queries) == 2
    assert queries[0]["IndexName"] == VIEW_INDEX
    assert "ConsistentRead" not in queries[0]  # eventually consistent: half the price
    assert queries[1]["ExclusiveStartKey"]["shardId"] == {"S": "shardId-001"}


async def test_a_failed_view_query_is_an_error_not_a_fallback(ddb: Any, faults: FaultProxy) -> None:
    """Only "no such index" switches to the Scan; any other failure (here one botocore does
    not retry, to keep the test short) is the caller's retriable error."""
    table = DynamoDBLeaseTable(ddb, unique("leases"))
    await table.ensure_table()
    faults.fail("Query", code="AccessDeniedException", message="denied")
    with pytest.raises(CheckpointError, match=r"Query \(lease view\) failed with AccessDenied"):
        await table.lease_view(MAPPING)
    assert table.has_view_index is True  # still read from the index when it answers again
    assert await table.lease_view(MAPPING) == []
    assert faults.calls("DynamoDB_20120810.Scan") == []


# -- the member item under lost answers ------------------------------------------------------


@pytest.mark.parametrize("operation", ["PutItem", "UpdateItem"])
async def test_a_heartbeat_whose_answer_is_lost_is_retried_harmlessly(
    ddb: Any, faults: FaultProxy, operation: str
) -> None:
    """The first beat creates the item (PutItem), later ones update it: the write lands, its
    answer is lost, botocore sends it again; the retry must not fail or double anything."""
    table = DynamoDBLeaseTable(ddb, unique("leases"))
    await table.ensure_table()
    if operation == "UpdateItem":
        await table.heartbeat(MAPPING, "a", 1)
        await table.bump_generation(MAPPING)
    faults.lose_responses(operation, times=1)
    await table.heartbeat(MAPPING, "a", 2)
    assert faults.injected["lost_response"] == 1
    generation = 1 if operation == "UpdateItem" else 0
    assert await table.members(MAPPING) == Members({"a": 2}, generation)


async def test_a_failed_heartbeat_raises_and_the_next_one_lands(upstream: str) -> None:
    """Without client retries the lost answer reaches the caller as a retriable error; its
    next beat (the coordinator's next interval) applies cleanly over the landed one."""
    config = AioConfig(retries={"total_max_attempts": 1})
    with FaultProxy(upstream) as faults:
        async with aws_client("dynamodb", faults.url, config) as client:
            table = DynamoDBLeaseTable(client, unique("leases"))
            await table.ensure_table()
            await table.heartbeat(MAPPING, "a", 1)
            faults.lose_responses("UpdateItem", times=1, mode="error")
            with pytest.raises(CheckpointError, match=r"UpdateItem \(heartbeat\)") as got:
                await table.heartbeat(MAPPING, "a", 2)
            assert got.value.retriable
            assert await table.members(MAPPING) == Members({"a": 2}, 0)  # it had landed
            await table.heartbeat(MAPPING, "a", 3)
            assert await table.members(MAPPING) == Members({"a": 3}, 0)
