"""The lean path's compiled shapes on odd data (review R2): every DynamoDB attribute type,
huge and tiny numbers, unicode everywhere, empty containers and nulls in unusual places; the
answer must equal botocore's parser's, or be refused (Malformed: the full client reads it)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from poller.aws.shapes import Malformed
from tests.unit.test_lean_shapes import botocore_parse, compiled


def ddb_record(image: dict[str, Any], **dynamodb: Any) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventID": "é1",
                "eventName": "INSERT",
                "dynamodb": {
                    "Keys": {"id": {"S": "ключ 🔑"}},
                    "NewImage": image,
                    "SequenceNumber": "1" * 40,
                    **dynamodb,
                },
            }
        ],
        "NextShardIterator": "it",
    }


ODD_PAGES = {
    "every-type": ddb_record(
        {
            "n": {"N": "-1.0E-130"},
            "big": {"N": "99999999999999999999999999999999999999"},
            "null": {"NULL": True},
            "t": {"BOOL": True},
            "ns": {"NS": ["1e125", "-0", "3.14"]},
            "bs": {"BS": []},
            "ss": {"SS": ["ü", "\u0000", "𝄞"]},
            "empty-l": {"L": []},
            "empty-m": {"M": {}},
            "nested": {"L": [{"L": [{"M": {"x": {"SS": ["y"]}}}]}]},
        },
        ApproximateCreationDateTime=1.7800000001234567e9,
        SizeBytes=2**62,
    ),
    "numbers-as-json-numbers": {
        "Records": [],
        "NextShardIterator": None,
    },
    "nulls-in-lists": ddb_record({"l": {"L": [None]}}),
    "unknown-member-and-null-member": ddb_record(
        {"s": {"S": "x", "Z": None}}, OldImage=None, Brand_new={"a": 1}
    ),
}


@pytest.mark.parametrize("page", list(ODD_PAGES.values()), ids=list(ODD_PAGES))
def test_odd_dynamodb_pages_equal_botocores_or_are_refused(page: dict[str, Any]) -> None:
    expected = botocore_parse("dynamodbstreams", page)
    try:
        ours = compiled("dynamodbstreams")(copy.deepcopy(page))
    except Malformed:
        return  # the full client reads it: the same answer by construction
    assert ours == expected


def test_odd_kinesis_page_equals_botocores() -> None:
    page = {
        "Records": [
            {
                "SequenceNumber": "4" * 56,
                "SubSequenceNumber": 2**63 - 1,
                "ApproximateArrivalTimestamp": 0,
                "Data": "",
                "PartitionKey": "\u2028𝄞\"'\\",
                "ExplicitHashKey": str(2**128 - 1),
            }
        ],
        "NextShardIterator": "x" * 512,
        "MillisBehindLatest": 2**53,
        "ChildShards": [],
    }
    assert compiled("kinesis")(copy.deepcopy(page)) == botocore_parse("kinesis", page)
