"""Review 17b: the lease table's mapping store at DynamoDB's limits and across versions, over
real HTTP to moto and DynamoDB Local (nothing patched).

- A record as large as AWS's own limits allow (50 tags and 5 filters of Unicode letters
  outside the Basic Multilingual Plane, which AWS accepts) must fit one 400 KB item.
- A record or an ack written by a newer version (a field this one does not know) must not
  stop this version's replicas from reading the store (a rolling upgrade).
- The acks of replicas that never stopped cleanly must not grow the acks item until every
  ack is refused.
- The writes that are no transaction (acks, processing results) survive a lost reply.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from poller.aws.clients import CONTROL_CLIENT_CONFIG
from poller.checkpoints import SharedCheckpoints
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.config import CheckpointSettings
from poller.control.backends import open_mapping_store
from poller.control.store import ACK_RETENTION_SECONDS, MappingRecord, pair_key
from poller.control.store_dynamodb import (
    REPLICAS_KEY,
    DynamoDBMappingStore,
    ack_value,
    record_key,
)
from tests.support.aws import aws_client, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.anyio

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
#: A Unicode letter outside the BMP (CJK Extension B): AWS's tag pattern (\p{L}) accepts it;
#: JSON's ASCII escapes spell it in 12 bytes, UTF-8 in 4.
LETTER = "\U00020000"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["moto", "dynamodb_local"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    url = (
        request.getfixturevalue("moto_url") if request.param == "moto" else require_dynamodb_local()
    )
    async with aws_client("dynamodb", url) as ddb:
        yield ddb


@pytest.fixture
async def store(client: Any) -> DynamoDBMappingStore:
    table = DynamoDBLeaseTable(client, unique("leases"))
    await table.ensure_table()
    settings = CheckpointSettings(backend="dynamodb", table=table.table)
    opened = await open_mapping_store(SharedCheckpoints(table, "replica-a", settings))
    assert isinstance(opened, DynamoDBMappingStore)
    return opened


def largest_record(uuid: str) -> MappingRecord:
    """A record at AWS's limits: 50 tags of 128/256 letters, 5 filter patterns of 4096."""
    assert unicodedata.category(LETTER) == "Lo"
    tags = {f"{i:02}{LETTER * 126}": LETTER * 256 for i in range(50)}
    frame = '{"data": {"k": ["%s"]}}'
    pattern = frame % (LETTER * (4096 - len(frame) + 2))
    assert len(pattern) == 4096
    filters = [{"Pattern": pattern} for _ in range(5)]
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": SOURCE, "FilterCriteria": {"Filters": filters}},
        tags=tags,
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, SOURCE),
        last_modified=1_700_000_000.0,
    )


def small_record(uuid: str) -> MappingRecord:
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": SOURCE, "BatchSize": 10},
        tags={"team": "payments"},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, SOURCE),
        last_modified=1_700_000_000.0,
    )


async def test_a_record_at_aws_limits_fits_one_item(store: DynamoDBMappingStore) -> None:
    created = await store.create(largest_record("u-1"), limit=10)
    assert await store.get("u-1") == created
    assert await store.records() == {"u-1": created}


async def test_a_field_of_a_newer_version_does_not_stop_reads(
    store: DynamoDBMappingStore, client: Any
) -> None:
    """A record item rewritten as a newer version would (one more field in its JSON)."""
    created = await store.create(small_record("u-1"), limit=10)
    key = {"leaseKey": {"S": record_key("u-1")}}
    item = (await client.get_item(TableName=store.table, Key=key))["Item"]
    newer = {**json.loads(item["esmRecord"]["S"]), "a_future_field": {"x": 1}}
    item["esmRecord"] = {"S": json.dumps(newer)}
    await client.put_item(TableName=store.table, Item=item)
    assert await store.get("u-1") == created
    assert await store.records() == {"u-1": created}


async def _fill_acks(client: Any, table: str, live: dict[str, Any]) -> int:
    """Put the acks item as full as DynamoDB takes it: ``live`` plus as many acks of replicas
    gone for two days as fit (a binary search on their count), so that the room left is
    less than one such ack (a 200-character replica name). Returns that count."""
    gone_at = time.time() - 2 * ACK_RETENTION_SECONDS

    async def put(count: int) -> bool:
        acks = {f"{i:06}-{'x' * 194}": ack_value(3, gone_at) for i in range(count)}
        item = {"leaseKey": {"S": REPLICAS_KEY}, "esmReplicas": {"M": {**acks, **live}}}
        try:
            await client.put_item(TableName=table, Item=item)
        except ClientError as exc:
            if "size" not in str(exc):
                raise
            return False
        return True

    fits, too_many = 0, 2500
    assert not await put(too_many)
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if await put(middle):
            fits = middle
        else:
            too_many = middle
    assert await put(fits)
    return fits


async def test_acks_of_crashed_replicas_never_fill_the_item(
    store: DynamoDBMappingStore, client: Any
) -> None:
    """Every start is a new replica identity, and a crash never forgets its ack: the item
    filled with such acks must still take a new replica's, and keep the live one's."""
    live = {"live-replica": ack_value(7, time.time())}
    assert await _fill_acks(client, store.table, live) > 1000
    new = f"new-{'y' * 246}"  # a longer name than the gone ones': it cannot fit in what is left
    await store.ack(new, 9)
    acks = await store.acks()
    assert {replica: ack.applied for replica, ack in acks.items()} == {
        "live-replica": 7,
        new: 9,
    }
    key = {"leaseKey": {"S": REPLICAS_KEY}}
    item = (await client.get_item(TableName=store.table, Key=key, ConsistentRead=True))["Item"]
    assert set(item["esmReplicas"]["M"]) == {"live-replica", new}


# -- lost replies of the writes that are no transaction -------------------------------------------


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as faults:
        yield faults


@pytest.fixture
async def proxied(proxy: FaultProxy) -> AsyncIterator[DynamoDBMappingStore]:
    """A lease table store on moto whose client (the service's control settings) goes
    through the fault proxy."""
    async with aws_client("dynamodb", proxy.url, CONTROL_CLIENT_CONFIG) as ddb:
        table = DynamoDBLeaseTable(ddb, unique("leases"))
        await table.ensure_table()
        settings = CheckpointSettings(backend="dynamodb", table=table.table)
        opened = await open_mapping_store(SharedCheckpoints(table, "replica-a", settings))
        assert isinstance(opened, DynamoDBMappingStore)
        yield opened


async def test_lost_replies_of_acks_and_results_are_harmless(
    proxy: FaultProxy, proxied: DynamoDBMappingStore
) -> None:
    """The first ack (a PutItem), later acks, a processing result and a forget, each with
    its first answer lost (applied, then the connection dropped: the SDK sends it again)."""
    store = proxied
    created = await store.create(small_record("u-1"), limit=5)
    writes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("PutItem", lambda: store.ack("replica-a", 1)),
        ("UpdateItem", lambda: store.ack("replica-a", 2)),
        ("UpdateItem", lambda: store.ack("replica-b", 2)),
        ("UpdateItem", lambda: store.set_processing_result("u-1", "OK")),
        ("UpdateItem", lambda: store.forget_replica("replica-b")),
    ]
    for operation, call in writes:
        before = proxy.injected["lost_response"]
        rule = proxy.lose_responses(f"DynamoDB_20120810.{operation}", times=1)
        try:
            await call()
        finally:
            proxy.remove(rule)
        assert proxy.injected["lost_response"] == before + 1, operation
    assert {r: a.applied for r, a in (await store.acks()).items()} == {"replica-a": 2}
    assert await store.get("u-1") == replace(created, last_processing_result="OK")
    assert await store.head() == 1
