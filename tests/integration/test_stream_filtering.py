"""Event filtering on streams: non-matching records are never invoked, and the checkpoint
moves past them (Kinesis JSON and non-JSON data; DynamoDB eventName and keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import delivered, kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of, stream_with
from tests.integration.test_dynamodb_streams import ddb_settings, records
from tests.support import recorder
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.conformance import recorded
from tests.support.dynamodb_tables import Backend, make_table
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_kinesis_data_patterns_with_json_and_non_json_records(
    moto_url: str, tmp_path: Path
) -> None:
    """A data pattern passes matching JSON records only; non-JSON data is dropped; the
    checkpoint reaches the last (filtered) record."""
    stream, db = unique("flt"), tmp_path / "c.db"
    data = [
        json.dumps({"event_type": "function_1", "message": "foo"}),
        json.dumps({"event_type": "function_2", "message": "bar"}),
        "not json at all",
        json.dumps({"event_type": "function_1", "n": 2}),
        json.dumps({"event_type": "other"}),
    ]
    written = await stream_with(moto_url, stream, [("custom", d.encode()) for d in data])
    pattern = json.dumps({"data": {"event_type": ["function_1"]}})  # the pattern AWS recorded
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=db,
        name="flt",
        filter_criteria={"filters": [{"pattern": pattern}]},
    )
    try:
        async with running(settings):
            await wait_until(
                lambda: checkpoint_of(db, "flt") == written[-1], 30, "the last record passed"
            )
        got = [seq for _, seq in delivered(stream)]
    finally:
        recorder.clear(stream_arn(stream))
    assert got == [written[0], written[3]]


def test_recorded_kinesis_filter_pattern_is_the_one_used() -> None:
    """The pattern above is the one in AWS's recorded mapping (test_kinesis_event_filtering)."""
    response = recorded(
        "esm-kinesis.json",
        "test_kinesis_event_filtering_json_pattern",
        "create_event_source_mapping_response",
    )
    (entry,) = response["FilterCriteria"]["Filters"]
    pattern = (
        entry["Pattern"] if isinstance(entry["Pattern"], dict) else json.loads(entry["Pattern"])
    )
    assert pattern == {"data": {"event_type": ["function_1"]}}


async def test_dynamodb_filter_on_event_name_and_keys(moto_url: str, tmp_path: Path) -> None:
    """Only INSERTs of keys starting with "a" pass; MODIFY/REMOVE and other keys are skipped."""
    table, arn = await make_table(Backend.moto(moto_url), "NEW_AND_OLD_IMAGES")
    async with aws_client("dynamodb", moto_url) as ddb:
        for key in ("a1", "b1", "a2"):
            await ddb.put_item(TableName=table, Item={"id": {"S": key}, "v": {"N": "1"}})
        await ddb.put_item(TableName=table, Item={"id": {"S": "a1"}, "v": {"N": "2"}})
        await ddb.delete_item(TableName=table, Key={"id": {"S": "a2"}})
    pattern: dict[str, Any] = {
        "eventName": ["INSERT"],
        "dynamodb": {"Keys": {"id": {"S": [{"prefix": "a"}]}}},
    }
    settings = ddb_settings(
        Backend.moto(moto_url),
        arn,
        tmp_path / "c.db",
        filter_criteria={"filters": [{"pattern": json.dumps(pattern)}]},
    )
    try:
        async with running(settings):
            await wait_until(lambda: len(records(arn)) >= 2, 30, "two matching changes")
            await wait_until(
                lambda: checkpoint_of(tmp_path / "c.db") is not None, 30, "a checkpoint"
            )
        got = [(r["eventName"], r["dynamodb"]["Keys"]["id"]["S"]) for r in records(arn)]
    finally:
        recorder.clear(arn)
    assert got == [("INSERT", "a1"), ("INSERT", "a2")]
