"""The hot path's whole-page shortcuts give what the record-by-record work gives.

The lean path's output parser checks a list of records in bulk and keeps it as it is when
every record already is its own parse, and skips the null checks for an answer without a
``null``; the Kinesis converter measures partition keys once per page; the checkpointer and
the read budget gather positions and sizes in C. Each must agree with botocore's parser, the
JSON length, ``StreamRecord.position`` and the sum of sizes, whatever the page holds.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import botocore.session
from botocore.parsers import JSONParser
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.aws.clients import epoch_seconds, keep_base64
from poller.aws.lean import compile_output
from poller.sources.kinesis import make_page_converter
from poller.streams.budget import ReadBudget
from poller.streams.checkpointer import positions
from poller.types import StreamRecord

NAMES = {
    "shard_id": "shardId-000000000001",
    "stream_arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/s",
    "region": "eu-west-1",
    "identity_arn": "arn:aws:iam::123456789012:role/r",
}
OUTPUT = (
    botocore.session.get_session()
    .get_service_model("kinesis")
    .operation_model("GetRecords")
    .output_shape
)

_stamps = st.floats(min_value=0, max_value=4e9) | st.integers(min_value=0, max_value=4_000_000_000)
#: A wire record: the usual members, sometimes an unknown one, a null or a missing key.
_record = st.fixed_dictionaries(
    {
        "SequenceNumber": st.text(alphabet="0123456789", min_size=1, max_size=60),
        "ApproximateArrivalTimestamp": _stamps,
        "Data": st.text(alphabet="AB+/=", max_size=8),
    },
    optional={
        "PartitionKey": st.text(max_size=6) | st.none(),
        "EncryptionType": st.sampled_from(["NONE", "KMS"]) | st.none(),
        "SomethingNew": st.integers() | st.none(),
    },
)


def botocore_parse(body: dict[str, Any]) -> Any:
    parser = JSONParser(timestamp_parser=epoch_seconds, blob_parser=keep_base64)
    response = {"body": json.dumps(body).encode(), "headers": {}, "status_code": 200}
    parsed = parser.parse(response, OUTPUT)
    parsed.pop("ResponseMetadata", None)
    return parsed


@settings(deadline=None)  # botocore's parser is slow on a busy machine
@given(st.lists(_record, max_size=6))
def test_a_page_parses_as_botocore_parses_it(records: list[dict[str, Any]]) -> None:
    page = {"Records": records, "NextShardIterator": "it", "MillisBehindLatest": 0}
    expected = botocore_parse(page)
    assert compile_output(OUTPUT)(copy.deepcopy(page)) == expected
    if "null" not in json.dumps(page):  # what the lean path checks before choosing
        assert compile_output(OUTPUT, null_free=True)(copy.deepcopy(page)) == expected


def test_a_page_of_plain_records_is_kept_as_it_came() -> None:
    records = [
        {"SequenceNumber": "1", "ApproximateArrivalTimestamp": 1.5, "Data": "", "PartitionKey": "k"}
    ]
    page = compile_output(OUTPUT, null_free=True)({"Records": records})
    assert page["Records"] is records


_key = st.text(max_size=5) | st.sampled_from(['"', "\\", "\x7f", "é", "\n", "null"])


@settings(deadline=None)
@given(st.lists(_key, min_size=1, max_size=6))
def test_each_record_size_is_its_compact_json_length(keys: list[str]) -> None:
    page = [
        {
            "SequenceNumber": str(n),
            "PartitionKey": key,
            "Data": base64.b64encode(key.encode()).decode(),
            "ApproximateArrivalTimestamp": 1_700_000_000.25,
        }
        for n, key in enumerate(keys)
    ]
    convert = make_page_converter(**NAMES)
    records = convert(page)
    sizes = [len(json.dumps(r.event_record, separators=(",", ":"))) for r in records]
    assert [r.size for r in records] == sizes
    assert convert(iter(page)) == records  # any iterable of records, not only a list


def stream_record(seq: str, sub: int | None, size: int) -> StreamRecord:
    return StreamRecord(seq, "k", 0.0, {}, size, sub_sequence_number=sub)


@settings(deadline=None)
@given(st.lists(st.none() | st.integers(min_value=0, max_value=3), max_size=5))
def test_positions_are_the_records_positions(subs: list[int | None]) -> None:
    records = [stream_record(str(n), sub, 1) for n, sub in enumerate(subs)]
    assert positions(records) == [r.position for r in records]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=6))
def test_the_budget_frees_the_sum_of_the_sizes_settled(sizes: list[int]) -> None:
    budget = ReadBudget(1_000_000)
    account = budget.account("m", "s", floor_records=1, max_records=100)
    records = [stream_record(str(n), None, size) for n, size in enumerate(sizes)]
    account.charge(records, len(records))
    assert (account.held, budget.used) == (sum(sizes), sum(sizes))
    account.release(r for r in records[1:])  # any iterable of records
    assert (account.held, account.records) == (sizes[0], 1)
    account.release(records[:1])
    assert (account.held, account.records, budget.used) == (0, 0, 0)
