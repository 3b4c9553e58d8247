"""The pure parts of ``poller redrive``: reading failure records, S3 payloads, the target
override and operator times (tests/integration/test_redrive.py runs the command)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from poller.config import (
    HttpTargetConfig,
    KinesisMapping,
    LambdaTargetConfig,
    PythonTargetConfig,
    parse_settings,
)
from poller.core.failure_record import failure_record, with_payload
from poller.errors import OperationError
from poller.operations.common import (
    UNBOUNDED_RETRY_CAP,
    find_mapping,
    find_stream_mapping,
    operation_policy,
    override_config,
)
from poller.operations.failure_sources import (
    MalformedFailureRecord,
    parse_failure_record,
    unwrap_sns,
)
from poller.operations.redrive import Report, _covers, records_from_payload
from poller.operations.times import age_text, parse_time
from poller.sources.dynamodb_streams import make_ddb_record_factory
from poller.sources.kinesis import make_record_factory
from poller.types import StreamRecord

STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
TABLE_STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-01-01T00:00:00.000"
SHARD = "shardId-000000000000"
NOW = 1_764_064_981.021


def kinesis_records(count: int = 3) -> list[StreamRecord]:
    convert = make_record_factory(
        shard_id=SHARD, stream_arn=STREAM, region="us-east-1", identity_arn="arn:aws:iam::1:role/x"
    )
    return [
        convert(
            {
                "SequenceNumber": f"4966{i:040d}",
                "PartitionKey": f"k{i}",
                "Data": "eA==",
                "ApproximateArrivalTimestamp": NOW - 60 + i,
            }
        )
        for i in range(count)
    ]


def ddb_records() -> list[StreamRecord]:
    convert = make_ddb_record_factory(stream_arn=TABLE_STREAM, region="us-east-1")
    return [
        convert(
            {
                "eventID": f"e{i}",
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {"id": {"S": f"i{i}"}},
                    "SequenceNumber": f"{100 + i}",
                    "ApproximateCreationDateTime": NOW - 5,
                },
            }
        )
        for i in range(2)
    ]


def record_of(kind: Any, records: list[StreamRecord], stream: str = STREAM) -> dict[str, Any]:
    return failure_record(
        kind=kind,
        condition="RetryAttemptsExhausted",
        approximate_invoke_count=1,
        request_id="r",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:f",
        last_result=None,
        shard_id=SHARD,
        stream_arn=stream,
        records=records,
        now=NOW,
    )


def test_a_kinesis_failure_record_points_at_its_records() -> None:
    records = kinesis_records()
    pointer = parse_failure_record(json.dumps(record_of("kinesis", records)))
    assert pointer.kind == "kinesis"
    assert (pointer.shard_id, pointer.stream_arn, pointer.batch_size) == (SHARD, STREAM, 3)
    assert pointer.start_sequence == records[0].sequence_number
    assert pointer.end_sequence == records[-1].sequence_number
    assert pointer.first_arrival == pytest.approx(records[0].arrival_timestamp, abs=0.001)
    assert pointer.payload is None


def test_a_dynamodb_failure_record_and_its_s3_payload() -> None:
    records = ddb_records()
    body = json.dumps(with_payload(record_of("dynamodb", records, TABLE_STREAM), records))
    pointer = parse_failure_record(body.encode())
    assert pointer.kind == "dynamodb"
    assert (pointer.start_sequence, pointer.end_sequence) == ("100", "101")
    assert pointer.payload == [r.event_record for r in records]
    again = records_from_payload("dynamodb", pointer.payload)
    assert [(r.sequence_number, r.partition_key, r.event_record) for r in again] == [
        (r.sequence_number, r.partition_key, r.event_record) for r in records
    ]


def test_payload_records_are_the_records_the_function_got() -> None:
    records = kinesis_records()
    again = records_from_payload("kinesis", [r.event_record for r in records])
    assert [(r.sequence_number, r.partition_key, r.event_record) for r in again] == [
        (r.sequence_number, r.partition_key, r.event_record) for r in records
    ]
    assert all(r.sub_sequence_number is None for r in again)


def test_payload_records_of_one_aggregate_get_their_user_record_index() -> None:
    [one] = kinesis_records(1)
    again = records_from_payload("kinesis", [one.event_record] * 3)
    assert [r.position for r in again] == [f"{one.sequence_number}:{i}" for i in range(3)]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"Records": []}', "holds no KinesisBatchInfo or DDBStreamBatchInfo"),
        ('{"KinesisBatchInfo": 3}', "KinesisBatchInfo is not an object"),
    ],
)
def test_malformed_failure_records_say_why(body: str, why: str) -> None:
    with pytest.raises(MalformedFailureRecord, match=why):
        parse_failure_record(body)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("shardId", None, "shardId is missing"),
        ("startSequenceNumber", "12a", "is not a sequence number"),
        ("batchSize", 0, "batchSize is missing or not a positive integer"),
        ("batchSize", True, "batchSize"),
        ("streamArn", "", "streamArn is missing"),
    ],
)
def test_a_bad_batch_info_field_is_named(field: str, value: Any, why: str) -> None:
    record = record_of("kinesis", kinesis_records())
    record["KinesisBatchInfo"][field] = value
    with pytest.raises(MalformedFailureRecord, match=why):
        parse_failure_record(json.dumps(record))


def test_a_payload_that_is_not_records_is_malformed() -> None:
    record = {**record_of("kinesis", kinesis_records()), "payload": {"Records": [1]}}
    with pytest.raises(MalformedFailureRecord, match="payload"):
        parse_failure_record(json.dumps(record))
    with pytest.raises(MalformedFailureRecord, match="lacks"):
        records_from_payload("kinesis", [{"kinesis": {}}])


def test_an_unparsable_arrival_is_unknown() -> None:
    record = record_of("kinesis", kinesis_records())
    record["KinesisBatchInfo"]["approximateArrivalOfFirstRecord"] = "yesterday"
    assert parse_failure_record(json.dumps(record)).first_arrival is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("examples.handlers:log_batch", PythonTargetConfig),
        ("https://backfill.example.com/events", HttpTargetConfig),
        ("my-function", LambdaTargetConfig),
        ("arn:aws:lambda:us-east-1:123456789012:function:f:live", LambdaTargetConfig),
    ],
)
def test_target_override_kinds(value: str, kind: type) -> None:
    assert isinstance(override_config(value), kind)


def test_a_bad_target_override_is_one_line_naming_it() -> None:
    with pytest.raises(OperationError, match=r"^--target-override 'no good!': not a handler"):
        override_config("no good!")


def settings() -> Any:
    mapping = {
        "name": "orders",
        "event_source_arn": STREAM,
        "starting_position": "TRIM_HORIZON",
        "target": {"type": "python", "handler": "examples.handlers:log_batch"},
    }
    queue = {
        "name": "jobs",
        "event_source_arn": "arn:aws:sqs:us-east-1:123456789012:jobs",
        "target": {"type": "python", "handler": "examples.handlers:log_batch"},
    }
    return parse_settings({"checkpoints": {"path": "c.db"}, "mappings": [mapping, queue]})


def test_an_unknown_mapping_lists_the_names() -> None:
    with pytest.raises(OperationError) as caught:
        find_mapping(settings(), "nope")
    assert (
        str(caught.value) == "no mapping named 'nope' in the configuration (mappings: orders, jobs)"
    )


def test_an_sqs_mapping_is_sent_to_start_message_move_task() -> None:
    with pytest.raises(OperationError, match="StartMessageMoveTask"):
        find_stream_mapping(settings(), "jobs", "redrive")


def test_the_policy_keeps_the_mapping_rules_but_ends() -> None:
    mapping = find_stream_mapping(settings(), "orders", "redrive")
    assert isinstance(mapping, KinesisMapping)
    policy = operation_policy(mapping, None)
    assert policy.batch_size == mapping.batch_size
    assert policy.retry.maximum_retry_attempts == UNBOUNDED_RETRY_CAP
    assert policy.retry.maximum_record_age_seconds == -1
    assert operation_policy(mapping, 0).retry.maximum_retry_attempts == 0


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2026-12-05T09:00:00Z", 1_796_461_200.0),
        ("2026-12-05T09:00:00", 1_796_461_200.0),
        ("2026-12-05T10:00:00+01:00", 1_796_461_200.0),
        ("1796461200", 1_796_461_200.0),
        ("1796461200500", 1_796_461_200.5),
    ],
)
def test_times_are_iso_or_epoch(text: str, epoch: float) -> None:
    assert parse_time(text, "--from", now=1_796_500_000.0) == epoch


def test_future_and_garbled_times_are_refused() -> None:
    with pytest.raises(OperationError, match="--to '2030-01-01' is in the future"):
        parse_time("2030-01-01", "--to", now=1_796_500_000.0)
    with pytest.raises(OperationError, match="--from 'soon': not a time"):
        parse_time("soon", "--from", now=1_796_500_000.0)


def test_ages_read_as_durations() -> None:
    assert [age_text(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m 05s", "1h 01m", "1d 01h"]


def test_the_summary_counts_what_stays() -> None:
    report = Report("arn:q", "t", dry_run=False, read=5, redriven=2, expired=2, expired_discarded=1)
    assert report.left_in_place == 2
    text = report.render()
    assert "failure records read: 5 (redriven 2, left in place 2" in text
    assert "expired: 2 failure record(s)" in text


def test_a_range_ending_before_it_starts_is_malformed_not_expired() -> None:
    document = record_of("kinesis", kinesis_records(2))
    info = document["KinesisBatchInfo"]
    info["startSequenceNumber"], info["endSequenceNumber"] = (
        info["endSequenceNumber"],
        info["startSequenceNumber"],
    )
    with pytest.raises(MalformedFailureRecord, match="is before its startSequenceNumber"):
        parse_failure_record(json.dumps(document))


def test_an_sns_envelope_is_opened_and_other_bodies_kept() -> None:
    inner = json.dumps(record_of("kinesis", kinesis_records(1)))
    envelope = json.dumps({"Type": "Notification", "Message": inner, "TopicArn": "arn:t"})
    assert unwrap_sns(envelope) == inner
    assert unwrap_sns(inner) == inner
    assert unwrap_sns("not json") == "not json"


def test_records_cover_a_pointer_only_when_count_first_and_last_match() -> None:
    records = kinesis_records(3)
    pointer = parse_failure_record(json.dumps(record_of("kinesis", records)))
    assert _covers(pointer, records) is None
    assert "no record read" in str(_covers(pointer, []))
    assert "2 record(s)" in str(_covers(pointer, records[:2]))
    assert "not the ones named" in str(_covers(pointer, [records[0], records[0], records[2]][::-1]))


def test_what_others_hold_and_removal_errors_make_the_run_fail() -> None:
    assert Report("arn:q", "t", dry_run=False).problems == 0
    assert Report("arn:q", "t", dry_run=False, not_removed=1).problems == 1
    held = Report("arn:q", "t", dry_run=False, in_flight="2 failure record(s) are in flight")
    assert held.problems == 1
    assert "2 failure record(s) are in flight" in held.render()
