"""Failure records compared with every failure record AWS produced in the recordings."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

import pytest

from poller.core.failure_record import (
    Condition,
    SourceKind,
    failure_record,
    iso_millis,
    iso_seconds,
    with_payload,
)
from poller.sources.kinesis import make_record_factory
from poller.types import InvokeResult, Outcome, StreamRecord
from tests.support.conformance import assert_matches, recorded

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:my-function"
KINESIS_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/my-stream"
DDB_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/my-table/stream/2025-11-25T10:00:00.000"
SHARD = "shardId-000000000000"
DDB_SHARD = "shardId-00000001764064800000-8a3b5c7d"
REQUEST_ID = "0b5b3c1e-7d4f-4b8a-9c6e-2f1a3d5e7b9c"
NOW = 1764064981.021  # 2025-11-25T10:03:01.021Z
ARRIVAL = 1764064980.835
#: The data and partition key of the record in the S3 recording; literals there.
S3_DATA = "eyJpbnB1dCI6ICJoZWxsbyIsICJ2YWx1ZSI6ICJ3b3JsZCIsICJyYWlzZV9lcnJvciI6IDF9"
S3_KEY = "custom"

ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
TOP_KEYS = ["requestContext", "responseContext", "version", "timestamp"]
BATCH_KEYS = [
    "shardId",
    "startSequenceNumber",
    "endSequenceNumber",
    "approximateArrivalOfFirstRecord",
    "approximateArrivalOfLastRecord",
    "batchSize",
    "streamArn",
]

convert = make_record_factory(
    shard_id=SHARD,
    stream_arn=KINESIS_ARN,
    region=REGION,
    identity_arn=f"arn:aws:iam::{ACCOUNT}:role/my-role",
)


def kinesis_record(
    seq: str = "49668123456789012345678901234567890123456789012345678901",
    *,
    arrival: float = ARRIVAL,
    data: str = S3_DATA,
    key: str = S3_KEY,
) -> StreamRecord:
    """A Kinesis record as the source builds it from a GetRecords entry."""
    return convert(
        {
            "SequenceNumber": seq,
            "PartitionKey": key,
            "Data": data,
            "ApproximateArrivalTimestamp": arrival,
        }
    )


def ddb_record(
    seq: str = "4421584500000000017450439091", arrival: float = 1764064980.0
) -> StreamRecord:
    """A DynamoDB Streams record shaped as in the S3 recording's payload."""
    image = {"my_partition_key": {"S": "hello world"}}
    event_record = {
        "eventID": "f07f8ca4b0b26cb9c4e5e77e69f274ee",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": REGION,
        "dynamodb": {
            "ApproximateCreationDateTime": arrival,
            "Keys": image,
            "NewImage": image,
            "SequenceNumber": seq,
            "SizeBytes": 54,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": DDB_ARN,
    }
    return StreamRecord(seq, "hello world", arrival, event_record, 300)


def build(
    *,
    kind: SourceKind = "kinesis",
    condition: Condition = "RetryAttemptsExhausted",
    count: int = 2,
    function_error: str | None = "Unhandled",
    records: Sequence[StreamRecord] | None = None,
    last_result: InvokeResult | Literal["default"] | None = "default",
    now: float = NOW,
) -> dict[str, Any]:
    """The failure record for the fixtures' function and stream.

    ``last_result`` defaults to what ``condition`` implies: after RetryAttemptsExhausted, an
    invocation that returned ``function_error`` (a success when it is None: a partial batch
    response); after RecordAgeExceeded, none.
    """
    if records is None:
        records = [kinesis_record()] if kind == "kinesis" else [ddb_record()]
    if last_result == "default":
        last_result = None
        if condition == "RetryAttemptsExhausted":
            outcome = Outcome.FUNCTION_ERROR if function_error else Outcome.SUCCESS
            last_result = InvokeResult(
                outcome=outcome,
                status_code=200,
                function_error=function_error,
                executed_version="$LATEST",
                request_id=REQUEST_ID,
            )
    return failure_record(
        kind=kind,
        condition=condition,
        approximate_invoke_count=count,
        request_id=REQUEST_ID,
        function_arn=FUNCTION_ARN,
        last_result=last_result,
        shard_id=SHARD if kind == "kinesis" else DDB_SHARD,
        stream_arn=KINESIS_ARN if kind == "kinesis" else DDB_ARN,
        records=records,
        now=now,
    )


def wire(payload: dict[str, Any]) -> Any:
    """The payload as a destination receives it: through JSON."""
    return json.loads(json.dumps(payload))


def assert_shape(record: dict[str, Any], kind: SourceKind) -> None:
    """Key order and timestamp formats, which the recording matcher does not check."""
    info_key = "KinesisBatchInfo" if kind == "kinesis" else "DDBStreamBatchInfo"
    expected_top = [*TOP_KEYS, info_key]
    if "responseContext" not in record:
        expected_top.remove("responseContext")
    assert [k for k in record if k != "payload"] == expected_top
    assert list(record["requestContext"]) == [
        "requestId",
        "functionArn",
        "condition",
        "approximateInvokeCount",
    ]
    if "responseContext" in record:
        assert list(record["responseContext"]) == ["statusCode", "executedVersion", "functionError"]
    assert list(record[info_key]) == BATCH_KEYS
    assert ISO_MILLIS.match(record["timestamp"])
    arrival_format = ISO_MILLIS if kind == "kinesis" else ISO_SECONDS
    assert arrival_format.match(record[info_key]["approximateArrivalOfFirstRecord"])
    assert arrival_format.match(record[info_key]["approximateArrivalOfLastRecord"])


#: The report_batch_item_failure_scenarios cases that ended in a failure record, recorded for
#: Kinesis and DynamoDB alike, with the record's function error (None: the function returned
#: a malformed partial batch response rather than raising).
FAILURE_SCENARIOS = {
    "empty_string_item_identifier_failure": None,
    "null_item_identifier_failure": None,
    "invalid_key_foo_failure": None,
    "invalid_key_foo_null_value_failure": None,
    "unhandled_exception_in_function": "Unhandled",
    "item_identifier_not_present_failure": None,
}

# (scenario, recorded key, condition, count, function error)
KINESIS_SQS_SCENARIOS = [
    ("test_kinesis_event_source_mapping_with_on_failure_destination_config", "sqs_payload",
     "RetryAttemptsExhausted", 2, "Unhandled"),
    ("test_kinesis_report_batch_item_failures", "sqs_payload",
     "RetryAttemptsExhausted", 4, None),
    *[(f"test_kinesis_report_batch_item_failure_scenarios[{case}]",
       "sqs_payload", "RetryAttemptsExhausted", 3, function_error)
      for case, function_error in FAILURE_SCENARIOS.items()],
    ("test_kinesis_maximum_record_age_exceeded[expire-while-retrying]",
     "record_age_exceeded_payload", "RecordAgeExceeded", 8, None),
    ("test_kinesis_maximum_record_age_exceeded[expire-before-ingestion]",
     "record_age_exceeded_payload", "RecordAgeExceeded", 1, None),
    ("test_kinesis_maximum_record_age_exceeded_discard_records",
     "record_age_exceeded_payload", "RecordAgeExceeded", 1, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scenario", "key", "condition", "count", "function_error"),
    KINESIS_SQS_SCENARIOS,
    ids=[s[0].removeprefix("test_kinesis_") for s in KINESIS_SQS_SCENARIOS],
)
def test_kinesis_record_sent_to_sqs_matches_aws(
    scenario: str, key: str, condition: Condition, count: int, function_error: str | None
) -> None:
    expected = recorded("esm-kinesis.json", scenario, key)["Messages"][0]["Body"]
    record = build(condition=condition, count=count, function_error=function_error)
    assert_matches(wire(record), expected)
    assert_shape(record, "kinesis")


def test_kinesis_record_published_to_sns_matches_aws() -> None:
    scenario = "test_kinesis_event_source_mapping_with_sns_on_failure_destination_config"
    expected = recorded("esm-kinesis.json", scenario, "failure_sns_message")["Message"]
    assert_matches(wire(build()), expected)


def test_kinesis_record_written_to_s3_carries_the_payload() -> None:
    scenario = "test_kinesis_event_source_mapping_with_s3_on_failure_destination"
    expected = recorded("esm-kinesis.json", scenario, "record_body")
    records = [kinesis_record()]
    record = with_payload(build(records=records), records)
    assert_matches(wire(record), expected)
    assert_shape(record, "kinesis")
    assert record["payload"] == {"Records": [records[0].event_record]}


# (scenario, count, function error)
DDB_SCENARIOS = [
    ("test_dynamodb_event_source_mapping_with_on_failure_destination_config", 2, "Unhandled"),
    ("test_dynamodb_report_batch_item_failures", 4, None),
    ("test_dynamodb_report_batch_item_failures_with_on_failure_destination_config", 4, None),
    *[
        (f"test_dynamodb_report_batch_item_failure_scenarios[{case}]", 4, function_error)
        for case, function_error in FAILURE_SCENARIOS.items()
    ],
]


@pytest.mark.parametrize(
    ("scenario", "count", "function_error"),
    DDB_SCENARIOS,
    ids=[s[0].removeprefix("test_dynamodb_") for s in DDB_SCENARIOS],
)
def test_dynamodb_record_sent_to_sqs_matches_aws(
    scenario: str, count: int, function_error: str | None
) -> None:
    expected = recorded("esm-dynamodbstreams.json", scenario, "destination_queue_messages")
    record = build(kind="dynamodb", count=count, function_error=function_error)
    assert_matches(wire(record), expected["Messages"][0]["Body"])
    assert_shape(record, "dynamodb")


def test_dynamodb_record_published_to_sns_matches_aws() -> None:
    scenario = "test_dynamodb_event_source_mapping_with_sns_on_failure_destination_config"
    expected = recorded("esm-dynamodbstreams.json", scenario, "failure_sns_message")["Message"]
    assert_matches(wire(build(kind="dynamodb")), expected)


def test_dynamodb_record_written_to_s3_carries_the_payload() -> None:
    scenario = "test_dynamodb_event_source_mapping_with_s3_on_failure_destination"
    expected = recorded("esm-dynamodbstreams.json", scenario, "record_body")
    records = [ddb_record()]
    record = with_payload(build(kind="dynamodb", records=records), records)
    assert_matches(wire(record), expected)
    assert_shape(record, "dynamodb")


def test_dynamodb_arrival_times_have_second_precision() -> None:
    records = [ddb_record("100", 1657720081.0), ddb_record("200", 1657720082.999)]
    info = build(kind="dynamodb", records=records)["DDBStreamBatchInfo"]
    assert "KinesisBatchInfo" not in build(kind="dynamodb", records=records)
    assert info["approximateArrivalOfFirstRecord"] == "2022-07-13T13:48:01Z"
    assert info["approximateArrivalOfLastRecord"] == "2022-07-13T13:48:02Z"
    assert info["streamArn"] == DDB_ARN
    assert info["shardId"] == DDB_SHARD


def test_batch_info_spans_first_to_last_record() -> None:
    records = [
        kinesis_record("1000", arrival=1657720081.0),
        kinesis_record("2000", arrival=1657720081.5),
        kinesis_record("3000", arrival=1657720082.123),
    ]
    info = build(records=records)["KinesisBatchInfo"]
    assert info == {
        "shardId": SHARD,
        "startSequenceNumber": "1000",
        "endSequenceNumber": "3000",
        "approximateArrivalOfFirstRecord": "2022-07-13T13:48:01.000Z",
        "approximateArrivalOfLastRecord": "2022-07-13T13:48:02.123Z",
        "batchSize": 3,
        "streamArn": KINESIS_ARN,
    }


def test_timestamp_is_the_failure_time_in_utc_with_milliseconds() -> None:
    assert build(now=1573691886.021)["timestamp"] == "2019-11-14T00:38:06.021Z"
    assert build(now=1573691886.9996)["timestamp"] == "2019-11-14T00:38:07.000Z"


def test_record_age_exceeded_has_no_response_context() -> None:
    record = build(condition="RecordAgeExceeded", count=1)
    assert "responseContext" not in record
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    # Even when an invocation happened before the records expired.
    failed = InvokeResult(outcome=Outcome.FUNCTION_ERROR, function_error="Unhandled")
    record = build(condition="RecordAgeExceeded", count=8, last_result=failed)
    assert "responseContext" not in record


def test_response_context_comes_from_the_last_invocation() -> None:
    result = InvokeResult(
        outcome=Outcome.FUNCTION_ERROR,
        status_code=200,
        function_error="Handled",
        executed_version="7",
    )
    context = build(last_result=result)["responseContext"]
    assert context == {"statusCode": 200, "executedVersion": "7", "functionError": "Handled"}


def test_response_context_defaults_when_the_target_reports_nothing() -> None:
    # A partial batch response from an HTTP or Python target: no status, version or error.
    bare = InvokeResult(outcome=Outcome.SUCCESS, payload={"batchItemFailures": []})
    context = build(last_result=bare)["responseContext"]
    assert context == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None}
    assert json.dumps(context).endswith('"functionError": null}')
    context = build(count=1, last_result=None)["responseContext"]
    assert context == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None}


def test_request_context_names_the_invocation() -> None:
    context = build(count=5)["requestContext"]
    assert context == {
        "requestId": REQUEST_ID,
        "functionArn": FUNCTION_ARN,
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 5,
    }


def test_empty_records_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        build(records=[])


def test_with_payload_copies_and_keeps_the_original() -> None:
    records = [kinesis_record("1"), kinesis_record("2", data=base64.b64encode(b"x").decode())]
    record = build(records=records)
    stored = with_payload(record, records)
    assert "payload" not in record
    assert stored["payload"]["Records"] == [r.event_record for r in records]
    assert {k: v for k, v in stored.items() if k != "payload"} == record


def test_iso_helpers() -> None:
    assert iso_millis(0) == "1970-01-01T00:00:00.000Z"
    assert iso_millis(1657720081.5) == "2022-07-13T13:48:01.500Z"
    assert iso_seconds(1657720081.999) == "2022-07-13T13:48:01Z"


def test_recording_comparison_catches_a_wrong_shape() -> None:
    # Guards the guard: the matcher must notice a responseContext AWS does not send.
    scenario = "test_kinesis_maximum_record_age_exceeded_discard_records"
    expected = recorded("esm-kinesis.json", scenario, "record_age_exceeded_payload")
    wrong = build(condition="RetryAttemptsExhausted", count=1)
    with pytest.raises(AssertionError, match="keys"):
        assert_matches(wire(wrong), expected["Messages"][0]["Body"])
