"""Retention end to end (issue 11, defects 4 and 5): a checkpoint older than the stream's
retention, and a failing record that outlives it.

moto never trims a stream, so the fault proxy plays the trim: it answers GetShardIterator with
DynamoDB Streams' ``TrimmedDataAccessException``, or makes records look older than the
stream's retention by rewriting their arrival times.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import structlog

from poller.config import Settings, parse_settings
from poller.observability.metrics import PrometheusMetrics
from tests.integration.kinesis_harness import lambda_settings
from tests.integration.stream_errors_harness import (
    checkpoint_of,
    make_queue,
    stream_with,
    wait_for_messages,
)
from tests.support import recorder
from tests.support.aws import aws_client, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.invoke_api import InvokeApiServer
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

DDB_GET_SHARD_ITERATOR = "DynamoDBStreams_20120810.GetShardIterator"
KINESIS_GET_RECORDS = "Kinesis_20131202.GetRecords"
DAY = 24 * 3600


async def table_with_stream(moto_url: str) -> tuple[str, str]:
    """A table with a NEW_IMAGE stream; returns (table name, stream ARN)."""
    name = unique("trim")
    async with aws_client("dynamodb", moto_url) as ddb:
        response = await ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )
    return name, response["TableDescription"]["LatestStreamArn"]


async def put_items(moto_url: str, table: str, *ids: str) -> None:
    async with aws_client("dynamodb", moto_url) as ddb:
        for item_id in ids:
            await ddb.put_item(TableName=table, Item={"id": {"S": item_id}})


def ddb_settings(moto_url: str, arn: str, db: Path, streams_url: str | None = None) -> Settings:
    endpoints = {"dynamodbstreams": streams_url} if streams_url else None
    return parse_settings(
        service_config(
            moto_url,
            stream_mapping("m", arn, "tests.support.recorder:record"),
            checkpoints={"path": str(db)},
            endpoints=endpoints,
        )
    )


def delivered_ids(arn: str) -> list[str]:
    return [r["dynamodb"]["Keys"]["id"]["S"] for batch in recorder.BATCHES[arn] for r in batch]


def sample(metrics: Any, name: str, **labels: str) -> float | None:
    assert isinstance(metrics, PrometheusMetrics)
    value: float | None = metrics.registry.get_sample_value(name, labels)
    return value


async def test_dynamodb_checkpoint_past_the_trim_horizon_continues_from_trim_horizon(
    moto_url: str, tmp_path: Path
) -> None:
    """GetShardIterator(AFTER_SEQUENCE_NUMBER) from the checkpoint answers
    TrimmedDataAccessException: the reader goes on from TRIM_HORIZON of that shard (never
    asking for the trimmed position again), warns with the gap, and counts it; the records
    still in the shard are delivered."""
    table, arn = await table_with_stream(moto_url)
    db = tmp_path / "c.db"
    await put_items(moto_url, table, "a")
    try:
        async with running(ddb_settings(moto_url, arn, db)):
            await wait_until(lambda: checkpoint_of(db) is not None, 30, "a first checkpoint")
        await put_items(moto_url, table, "b", "c")
        recorder.clear(arn)
        with FaultProxy(moto_url) as proxy:
            proxy.fail(DDB_GET_SHARD_ITERATOR, code="TrimmedDataAccessException", times=1)
            settings = ddb_settings(moto_url, arn, db, streams_url=proxy.url)
            with structlog.testing.capture_logs() as logs:
                async with running(settings) as service:
                    await wait_until(
                        lambda: {"b", "c"} <= set(delivered_ids(arn)), 30, "b and c delivered"
                    )
                    shard = proxy.calls(DDB_GET_SHARD_ITERATOR)[0]["ShardId"]
                    gaps = sample(
                        service.metrics, "poller_retention_gaps_total", mapping="m", shard=shard
                    )
            iterators = proxy.calls(DDB_GET_SHARD_ITERATOR)
        got = delivered_ids(arn)
    finally:
        recorder.clear(arn)
    assert proxy.faulted(DDB_GET_SHARD_ITERATOR) == 1
    # The refused AFTER_SEQUENCE_NUMBER is not asked again: the next iterator is TRIM_HORIZON.
    assert iterators[0]["ShardIteratorType"] == "TRIM_HORIZON"
    assert gaps == 1
    # moto did not really trim "a", so it comes again (at least once); b and c in order.
    assert got[-2:] == ["b", "c"]
    [warning] = [e for e in logs if e["event"] == "shard.retention_gap"]
    assert warning["log_level"] == "warning"
    assert warning["shard"] == shard
    assert warning["after_sequence"]
    assert "TrimmedDataAccessException" in warning["error"]
    [gap_end] = [e for e in logs if e["event"] == "shard.retention_gap_end"]
    assert gap_end["after_sequence"] == warning["after_sequence"]
    assert gap_end["first_sequence"]


async def test_infinite_age_gives_a_failing_record_up_once_the_stream_no_longer_holds_it(
    moto_url: str, tmp_path: Path
) -> None:
    """maximum_record_age_in_seconds -1 (the default) and infinite retries: a record older
    than the stream's retention (24 h, DescribeStreamSummary) that fails is given up as
    RecordAgeExceeded to the destination, and the shard moves on."""
    with InvokeApiServer() as server:
        stream = unique("ret")
        written = await stream_with(moto_url, stream, [("k", b"poison"), ("k", b"fine")])
        queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
        invoked: list[bytes] = []

        def fn(event: dict[str, Any], context: Any) -> None:
            data = [base64.b64decode(r["kinesis"]["data"]) for r in event["Records"]]
            invoked.extend(data)
            if b"poison" in data:
                raise RuntimeError("poison")

        def older_than_retention(body: dict[str, Any]) -> dict[str, Any]:
            for record in body.get("Records", [])[:1]:  # only the first record of a read
                if base64.b64decode(record["Data"]) == b"poison":
                    record["ApproximateArrivalTimestamp"] -= DAY + 3600
            return body

        server.register("fn", fn, timeout=5)
        db = tmp_path / "c.db"
        with FaultProxy(moto_url) as proxy:
            proxy.rewrite(KINESIS_GET_RECORDS, older_than_retention)
            settings = lambda_settings(
                moto_url,
                server,
                stream,
                db,
                kinesis_url=proxy.url,
                destination=queue_arn,
                batch_size=1,
            )
            async with running(settings):
                messages = await wait_for_messages(moto_url, queue_url)
                await wait_until(lambda: checkpoint_of(db) == written[1], 30, "the shard moved on")
    (message,) = messages
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[0]
    assert invoked.count(b"poison") >= 1, "the record was invoked before it was given up"
    assert invoked[-1] == b"fine"
