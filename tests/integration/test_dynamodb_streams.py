"""DynamoDB Streams end to end, on moto and on DynamoDB Local: change types and images, the
event shape, failure records with DDBStreamBatchInfo, and LATEST across a restart.

Each test runs on both backends (``[moto]``, ``[dynamodb_local]``). DynamoDB Local is AWS's own
implementation, run in a private network namespace (tests/support/dynamodb_local.py; skipped,
with the reason, where Java or the namespace is missing). Its stream ARNs name the region
``ddblocal``: poller reads them with clients in ``aws.region`` and passes the ARN through
verbatim. SQS (the on-failure destination) and Lambda stay on moto.

Where moto deviates from AWS the tests follow AWS and account for moto here, never in the
product: moto reports ``eventVersion`` "1.0" (AWS: "1.1"), overestimates ``SizeBytes`` and
emits a MODIFY for a put that changes nothing; poller passes the stream through unchanged.
DynamoDB Local behaves as AWS in all three, and the tests say so; its own quirks are 21-digit
sequence numbers and ``ApproximateCreationDateTime`` rounded down to the minute.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from poller.config import Settings, parse_settings
from tests.integration.stream_errors_harness import make_queue, wait_for_messages
from tests.support import recorder
from tests.support.aws import aws_client, unique
from tests.support.conformance import assert_matches, recorded, recorded_message
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.dynamodb_tables import DYNAMODB_LOCAL_REGION, Backend, make_table
from tests.support.invoke_api import InvokeApiServer
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["moto", "dynamodb_local"])
def backend(request: pytest.FixtureRequest, moto_url: str) -> Backend:
    if request.param == "dynamodb_local":
        return Backend(request.param, require_dynamodb_local(), moto_url)
    return Backend(request.param, moto_url, moto_url)


def ddb_settings(
    backend: Backend,
    stream_arn: str,
    db: Path,
    endpoints: dict[str, str] | None = None,
    target: str | dict[str, Any] = "tests.support.recorder:record",
    **mapping: Any,
) -> Settings:
    return parse_settings(
        service_config(
            backend.moto_url,
            stream_mapping("m", stream_arn, target, **mapping),
            checkpoints={"path": str(db)},
            endpoints=backend.endpoints(endpoints),
            observability={"enabled": False},
        )
    )


def records(stream_arn: str) -> list[dict[str, Any]]:
    return [r for batch in recorder.BATCHES[stream_arn] for r in batch]


async def change_items(backend: Backend, table: str) -> None:
    """INSERT a, MODIFY a, INSERT b, REMOVE a: one change of each kind, in a known order."""
    async with aws_client("dynamodb", backend.tables_url) as ddb:
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
    view: str, backend: Backend, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Every change is delivered once, in order, with exactly the images its view allows;
    the ARN and the region are what the stream sent."""
    table, arn = await make_table(backend, view)
    recorded_streams.append(arn)
    await change_items(backend, table)
    async with running(ddb_settings(backend, arn, tmp_path / "c.db")):
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
    assert {r["eventSourceARN"] for r in got} == {arn}  # verbatim, ddblocal included
    if backend.is_local:
        assert {r["awsRegion"] for r in got} == {DYNAMODB_LOCAL_REGION}  # as the stream sent
        assert {r["eventVersion"] for r in got} == {"1.1"}  # AWS's; moto says "1.0"
        numbers = [r["dynamodb"]["SequenceNumber"] for r in got]
        assert all(len(n) == 21 and n.isdigit() for n in numbers), numbers
        assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)


async def test_a_put_that_changes_nothing_makes_no_record(
    tmp_path: Path, moto_url: str, recorded_streams: list[str]
) -> None:
    """AWS (and DynamoDB Local) write no stream record for a put that leaves the item as it
    was; moto writes a MODIFY, so this runs on DynamoDB Local only."""
    backend = Backend("dynamodb_local", require_dynamodb_local(), moto_url)
    table, arn = await make_table(backend, "NEW_AND_OLD_IMAGES")
    recorded_streams.append(arn)
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        for value in ("1", "1", "2"):  # the second put changes nothing
            await ddb.put_item(TableName=table, Item={"id": {"S": "a"}, "v": {"N": value}})
    async with running(ddb_settings(backend, arn, tmp_path / "c.db")):
        # One key, so one shard and one order: once the MODIFY to 2 is here, all is.
        await wait_until(lambda: len(records(arn)) >= 2, 30, "the insert and the change to 2")
    got = records(arn)
    assert [r["eventName"] for r in got] == ["INSERT", "MODIFY"]
    assert got[1]["dynamodb"]["OldImage"]["v"] == {"N": "1"}
    assert got[1]["dynamodb"]["NewImage"]["v"] == {"N": "2"}


async def test_event_matches_aws_recording(
    backend: Backend, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """test_dynamodb_event_source_mapping: an item with a binary attribute, NEW_IMAGE."""
    table, arn = await make_table(backend, "NEW_IMAGE", key="my_partition_key")
    recorded_streams.append(arn)
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        await ddb.put_item(
            TableName=table,
            Item={"my_partition_key": {"S": "hello world"}, "binary_key": {"B": b"foobar"}},
        )
    async with running(ddb_settings(backend, arn, tmp_path / "c.db")):
        await wait_until(lambda: records(arn), 30, "the change")
    (record,) = records(arn)
    expected = copy.deepcopy(
        recorded("esm-dynamodbstreams.json", "::test_dynamodb_event_source_mapping", "event_logs")
    )
    if not backend.is_local:  # DynamoDB Local matches the recording as it is
        expected[0]["Records"][0]["eventVersion"] = record["eventVersion"]  # moto: "1.0"
        expected[0]["Records"][0]["dynamodb"]["SizeBytes"] = record["dynamodb"][
            "SizeBytes"
        ]  # moto's estimate
    assert_matches([{"Records": [record]}], expected)
    assert record["dynamodb"]["NewImage"]["binary_key"] == {
        "B": "Zm9vYmFy"
    }  # base64, as Lambda delivers


async def test_failure_record_has_ddb_stream_batch_info(
    backend: Backend, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """A failing function, one retry, an SQS destination: AWS's DDBStreamBatchInfo record."""
    table, arn = await make_table(backend, "NEW_AND_OLD_IMAGES")
    queue_url, queue_arn = await make_queue(backend.moto_url, unique("dlq"))
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "x"}})

    def fail(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    db = tmp_path / "c.db"
    with InvokeApiServer() as server:
        server.register("fn", fail, timeout=5)
        settings = ddb_settings(
            backend,
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
            messages = await wait_for_messages(backend.moto_url, queue_url)
    (message,) = messages
    expected = recorded_message(
        "esm-dynamodbstreams.json",
        "test_dynamodb_event_source_mapping_with_on_failure_destination_config",
        "destination_queue_messages",
    )
    assert_matches(message, expected)
    info = message["DDBStreamBatchInfo"]
    assert info["streamArn"] == arn
    if backend.is_local:
        # DynamoDB Local rounds ApproximateCreationDateTime down to the minute, and the
        # arrival times are taken from it: whole minutes, at second precision.
        for key in ("approximateArrivalOfFirstRecord", "approximateArrivalOfLastRecord"):
            assert info[key].endswith(":00Z"), info[key]


async def test_latest_skips_older_changes_and_survives_restart(
    backend: Backend, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """LATEST: changes before the first start are never delivered; changes made while the
    service was down (before it delivered anything) are delivered after the restart.

    On DynamoDB Local, creation times are whole minutes: a change made in the minute of the
    first start, before it, is delivered too (at least once; none made after it is skipped).
    """
    table, arn = await make_table(backend, "KEYS_ONLY")
    recorded_streams.append(arn)
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "before"}})
    # Creation times have second precision: start in the next second, as a real deployment would.
    next_second = math.floor(time.time()) + 1
    await wait_until(lambda: time.time() >= next_second, 2, "the next second")
    db = tmp_path / "c.db"
    settings = ddb_settings(backend, arn, db, starting_position="LATEST")
    async with running(settings):
        pass
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "while-down"}})
    expected = ["while-down", "after"]
    if backend.is_local and await _created_in_the_minute_of(backend, arn, pinned_start(db)):
        expected.insert(0, "before")
    async with running(settings):
        async with aws_client("dynamodb", backend.tables_url) as ddb:
            await ddb.put_item(TableName=table, Item={"id": {"S": "after"}})
        await wait_until(lambda: len(records(arn)) >= len(expected), 30, "the changes")
    assert [r["dynamodb"]["Keys"]["id"]["S"] for r in records(arn)] == expected


def pinned_start(db: Path) -> float:
    """The start instant LATEST pinned in the SQLite checkpoints on the first start."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        (row,) = connection.execute("SELECT start_timestamp FROM mapping_starts").fetchall()
    return float(row[0])


async def _created_in_the_minute_of(backend: Backend, arn: str, instant: float) -> bool:
    """Whether the stream's first record was created in ``instant``'s minute, by the stream's
    own (minute-rounded) ApproximateCreationDateTime."""
    async with aws_client("dynamodbstreams", backend.tables_url) as streams:
        description = await streams.describe_stream(StreamArn=arn)
        (shard,) = description["StreamDescription"]["Shards"]
        iterator = await streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )
        page = await streams.get_records(ShardIterator=iterator["ShardIterator"])
    created = page["Records"][0]["dynamodb"]["ApproximateCreationDateTime"].timestamp()
    return bool(created >= math.floor(instant / 60) * 60)
