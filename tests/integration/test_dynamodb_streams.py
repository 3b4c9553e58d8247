"""DynamoDB Streams end to end on moto: change types and images, the event shape, failure
records with DDBStreamBatchInfo, and LATEST across a restart.

Where moto deviates from AWS the tests follow AWS and account for moto here, never in the
product: moto reports ``eventVersion`` "1.0" (AWS: "1.1") and overestimates ``SizeBytes``;
poller passes both through from the stream unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import pytest

from poller.config import Settings, parse_settings
from tests.integration.stream_errors_harness import make_queue, wait_for_messages
from tests.support import recorder
from tests.support.aws import aws_client, unique
from tests.support.conformance import assert_matches, recorded, recorded_message
from tests.support.invoke_api import InvokeApiServer
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def make_table(moto_url: str, view: str, key: str = "id") -> tuple[str, str]:
    """A table with a stream of ``view``; returns (table name, stream ARN)."""
    name = unique("tbl")
    async with aws_client("dynamodb", moto_url) as ddb:
        response = await ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )
    return name, response["TableDescription"]["LatestStreamArn"]


def ddb_settings(
    moto_url: str,
    stream_arn: str,
    db: Path,
    endpoints: dict[str, str] | None = None,
    target: str | dict[str, Any] = "tests.support.recorder:record",
    **mapping: Any,
) -> Settings:
    return parse_settings(
        service_config(
            moto_url,
            stream_mapping("m", stream_arn, target, **mapping),
            checkpoints={"path": str(db)},
            endpoints=endpoints,
            observability={"enabled": False},
        )
    )


def records(stream_arn: str) -> list[dict[str, Any]]:
    return [r for batch in recorder.BATCHES[stream_arn] for r in batch]


async def change_items(moto_url: str, table: str) -> None:
    """INSERT a, MODIFY a, INSERT b, REMOVE a: one change of each kind, in a known order."""
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "v": {"N": "1"}})
        await ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "v": {"N": "2"}})
        await ddb.put_item(TableName=table, Item={"id": {"S": "b"}, "v": {"N": "3"}})
        await ddb.delete_item(TableName=table, Key={"id": {"S": "a"}})


EXPECTED_IMAGES = {
    # view: per change (INSERT a, MODIFY a, INSERT b, REMOVE a): which images are present
    "KEYS_ONLY": [set(), set(), set(), set()],
    "NEW_IMAGE": [{"NewImage"}, {"NewImage"}, {"NewImage"}, set()],
    "OLD_IMAGE": [set(), {"OldImage"}, set(), {"OldImage"}],
    "NEW_AND_OLD_IMAGES": [{"NewImage"}, {"NewImage", "OldImage"}, {"NewImage"}, {"OldImage"}],
}


@pytest.mark.parametrize("view", list(EXPECTED_IMAGES))
async def test_change_types_and_images(
    view: str, moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Every change is delivered once, in order, with exactly the images its view allows."""
    table, arn = await make_table(moto_url, view)
    recorded_streams.append(arn)
    await change_items(moto_url, table)
    async with running(ddb_settings(moto_url, arn, tmp_path / "c.db")):
        await wait_until(lambda: len(records(arn)) >= 4, 30, "four changes")
    got = records(arn)
    assert [r["eventName"] for r in got] == ["INSERT", "MODIFY", "INSERT", "REMOVE"]
    assert [r["dynamodb"]["Keys"]["id"]["S"] for r in got] == ["a", "a", "b", "a"]
    images = [{k for k in ("NewImage", "OldImage") if k in r["dynamodb"]} for r in got]
    assert images == EXPECTED_IMAGES[view]
    if "NewImage" in got[1]["dynamodb"]:
        assert got[1]["dynamodb"]["NewImage"]["v"] == {"N": "2"}
    if "OldImage" in got[1]["dynamodb"]:
        assert got[1]["dynamodb"]["OldImage"]["v"] == {"N": "1"}
    assert all(r["dynamodb"]["StreamViewType"] == view for r in got)
    assert all("userIdentity" not in r for r in got)
    assert len({r["dynamodb"]["SequenceNumber"] for r in got}) == 4


async def test_event_matches_aws_recording(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """test_dynamodb_event_source_mapping: an item with a binary attribute, NEW_IMAGE."""
    table, arn = await make_table(moto_url, "NEW_IMAGE", key="my_partition_key")
    recorded_streams.append(arn)
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(
            TableName=table,
            Item={"my_partition_key": {"S": "hello world"}, "binary_key": {"B": b"foobar"}},
        )
    async with running(ddb_settings(moto_url, arn, tmp_path / "c.db")):
        await wait_until(lambda: records(arn), 30, "the change")
    (record,) = records(arn)
    expected = copy.deepcopy(
        recorded("esm-dynamodbstreams.json", "::test_dynamodb_event_source_mapping", "event_logs")
    )
    expected[0]["Records"][0]["eventVersion"] = record["eventVersion"]  # moto: "1.0"; AWS: "1.1"
    expected[0]["Records"][0]["dynamodb"]["SizeBytes"] = record["dynamodb"][
        "SizeBytes"
    ]  # moto's estimate
    assert_matches([{"Records": [record]}], expected)
    assert record["dynamodb"]["NewImage"]["binary_key"] == {
        "B": "Zm9vYmFy"
    }  # base64, as Lambda delivers


async def test_failure_record_has_ddb_stream_batch_info(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """A failing function, one retry, an SQS destination: AWS's DDBStreamBatchInfo record."""
    table, arn = await make_table(moto_url, "NEW_AND_OLD_IMAGES")
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "x"}})

    def fail(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    db = tmp_path / "c.db"
    with InvokeApiServer() as server:
        server.register("fn", fail, timeout=5)
        settings = ddb_settings(
            moto_url,
            arn,
            db,
            endpoints={"lambda": server.url},
            target={"type": "lambda", "function_name": "fn"},
            batch_size=1,
            maximum_batching_window_in_seconds=1,
            maximum_retry_attempts=1,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(lambda: len(server.invocations("fn")) >= 2, 30, "two invocations")
            messages = await wait_for_messages(moto_url, queue_url)
    (message,) = messages
    expected = recorded_message(
        "esm-dynamodbstreams.json",
        "test_dynamodb_event_source_mapping_with_on_failure_destination_config",
        "destination_queue_messages",
    )
    assert_matches(message, expected)
    assert message["DDBStreamBatchInfo"]["streamArn"] == arn


async def test_latest_skips_older_changes_and_survives_restart(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """LATEST: changes before the first start are never delivered; changes made while the
    service was down (before it delivered anything) are delivered after the restart."""
    table, arn = await make_table(moto_url, "KEYS_ONLY")
    recorded_streams.append(arn)
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "before"}})
    # Creation times have second precision: start in the next second, as a real deployment would.
    next_second = math.floor(time.time()) + 1
    await wait_until(lambda: time.time() >= next_second, 2, "the next second")
    settings = ddb_settings(moto_url, arn, tmp_path / "c.db", starting_position="LATEST")
    async with running(settings):
        pass
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "while-down"}})
    async with running(settings):
        async with aws_client("dynamodb", moto_url) as ddb:
            await ddb.put_item(TableName=table, Item={"id": {"S": "after"}})
        await wait_until(lambda: len(records(arn)) >= 2, 30, "two changes")
    assert [r["dynamodb"]["Keys"]["id"]["S"] for r in records(arn)] == ["while-down", "after"]
