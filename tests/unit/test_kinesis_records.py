"""Kinesis records become Lambda's event records per page: the exact shape, the arrival time
rounded to milliseconds as ``round`` does, and sizes that are the exact JSON length."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from aws_kinesis_agg.aggregator import RecordAggregator
from hypothesis import given
from hypothesis import strategies as st

from poller.core.kpl import MAGIC
from poller.sources.kinesis import (
    make_deaggregator,
    make_page_converter,
    make_record_factory,
    rounded_arrival,
)

NAMES = {
    "shard_id": "shardId-000000000003",
    "stream_arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/s",
    "region": "eu-west-1",
    "identity_arn": "arn:aws:iam::123456789012:role/r",
}


def raw(seq: str, arrival: float, key: str = "k", data: bytes = b"x") -> dict[str, Any]:
    return {
        "SequenceNumber": seq,
        "PartitionKey": key,
        "Data": base64.b64encode(data).decode(),
        "ApproximateArrivalTimestamp": arrival,
    }


def compact_size(record: dict[str, Any]) -> int:
    return len(json.dumps(record, separators=(",", ":")))


def test_a_page_becomes_lambdas_kinesis_event_records() -> None:
    records = make_page_converter(**NAMES)([raw("49", 1_700_000_000.1234, "pk", b"hi")])
    assert [r.event_record for r in records] == [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "pk",
                "sequenceNumber": "49",
                "data": "aGk=",
                "approximateArrivalTimestamp": 1_700_000_000.123,
            },
            "eventID": "shardId-000000000003:49",
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": NAMES["identity_arn"],
            "awsRegion": "eu-west-1",
            "eventSourceARN": NAMES["stream_arn"],
        }
    ]
    (record,) = records
    assert (record.sequence_number, record.partition_key) == ("49", "pk")
    assert record.arrival_timestamp == 1_700_000_000.123
    assert record.size == compact_size(record.event_record)


def test_records_sharing_an_arrival_time_keep_their_own_fields_and_sizes() -> None:
    page = [
        raw("1", 1_700_000_000.5),
        raw("22", 1_700_000_000.5, "k\u00e9y"),
        raw("333", 1_700_000_000.5),
        raw("4", 1_700_000_000.0),
        raw("5", 1_700_000_000),  # an int rounds to an int, although equal to the float
        raw("6", 1_700_000_000.0),
    ]
    records = make_page_converter(**NAMES)(page)
    assert [r.sequence_number for r in records] == ["1", "22", "333", "4", "5", "6"]
    arrivals = [r.event_record["kinesis"]["approximateArrivalTimestamp"] for r in records]
    assert [type(a) for a in arrivals] == [float] * 4 + [int, float]
    assert arrivals == [round(r["ApproximateArrivalTimestamp"], 3) for r in page]
    assert [r.size for r in records] == [compact_size(r.event_record) for r in records]


def test_the_per_record_factory_equals_the_page_converter() -> None:
    page = [raw(str(n), 1_700_000_000 + n / 7, f"k{n}", bytes([n])) for n in range(20)]
    convert = make_record_factory(**NAMES)
    assert [convert(r) for r in page] == make_page_converter(**NAMES)(page)


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**12), 10**12))
def test_rounded_arrival_is_round_and_the_length_of_its_json(wire: float) -> None:
    expected = round(wire, 3)
    arrival, size = rounded_arrival(wire)
    assert type(arrival) is type(expected)
    assert arrival == expected
    assert size == len(json.dumps(expected)) == len(repr(expected))


def test_rounded_arrival_of_values_json_has_no_number_for() -> None:
    for wire in (math.inf, -math.inf, math.nan):
        arrival, size = rounded_arrival(wire)
        assert repr(arrival) == repr(wire)
        assert size == len(repr(wire))


@given(
    st.integers(min_value=0, max_value=2**33 * 1000),
    st.sampled_from([0.0, 0.5, 0.4999, 0.5001, 1e-7, -1e-7, 0.49, 0.51]),
)
def test_rounded_arrival_near_halves_and_whole_milliseconds(millis: int, offset: float) -> None:
    wire = (millis + offset) / 1000
    arrival, size = rounded_arrival(wire)
    assert arrival == round(wire, 3)
    assert size == len(repr(round(wire, 3)))


def test_an_aggregate_is_still_split_and_other_data_is_not_decoded() -> None:
    aggregator = RecordAggregator()
    aggregator.add_user_record("a", b"one")
    aggregator.add_user_record("b", b"two")
    contents = aggregator.clear_and_get()
    assert contents is not None
    _, _, blob = contents.get_contents()
    expand = make_deaggregator(make_record_factory(**NAMES), None, None)
    users = expand(raw("9", 1_700_000_000.0, "agg", blob))
    assert [(u.partition_key, u.sub_sequence_number) for u in users] == [("a", 0), ("b", 1)]
    assert [base64.b64decode(u.event_record["kinesis"]["data"]) for u in users] == [b"one", b"two"]
    # Magic bytes without a valid aggregate, and data that is not base64 at all: plain records.
    for plain in (raw("10", 1.0, data=MAGIC + b"\0" * 20), {**raw("11", 1.0), "Data": "%%"}):
        (record,) = expand(plain)
        assert record.sub_sequence_number is None
        assert record.event_record["kinesis"]["data"] == plain["Data"]
