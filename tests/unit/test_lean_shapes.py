"""Compiled output shapes parse a body exactly as botocore's own JSON parser does, with the
source clients' timestamp and blob parsers: unknown members and nulls dropped, timestamps as
epoch floats, blobs kept as base64 text, nested and recursive shapes included."""

from __future__ import annotations

import copy
import json
from typing import Any

import botocore.session
import pytest
from botocore.parsers import JSONParser

from poller.aws.clients import epoch_seconds, keep_base64
from poller.aws.lean import compile_output
from poller.aws.shapes import Malformed, compile_shape

KINESIS_PAGE: dict[str, Any] = {
    "Records": [
        {
            "SequenceNumber": "1",
            "ApproximateArrivalTimestamp": 1_780_000_000.123,
            "Data": "AAEC/w==",
            "PartitionKey": "ключ",
        },
        {
            "SequenceNumber": "2",
            "ApproximateArrivalTimestamp": 1780000001,
            "Data": "",
            "PartitionKey": "k",
            "EncryptionType": "KMS",
            "SomethingNew": {"x": 1},
        },
        {
            "SequenceNumber": "3",
            "ApproximateArrivalTimestamp": 1.5,
            "Data": "eA==",
            "PartitionKey": None,
        },
    ],
    "NextShardIterator": None,
    "MillisBehindLatest": 0,
    "ChildShards": [
        {
            "ShardId": "shardId-1",
            "ParentShards": ["shardId-0"],
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "9"},
        }
    ],
    "Unknown": True,
}

DDB_PAGE: dict[str, Any] = {
    "Records": [
        {
            "eventID": "e1",
            "eventName": "MODIFY",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1780000000,
                "Keys": {"id": {"S": "a"}},
                "NewImage": {
                    "b": {"B": "AAE="},
                    "bs": {"BS": ["AA==", "/w=="]},
                    "m": {
                        "M": {
                            "l": {
                                "L": [{"N": "1"}, {"NULL": True}, {"M": {"deep": {"BOOL": False}}}]
                            }
                        }
                    },
                    "ss": {"SS": ["x", "y"]},
                },
                "OldImage": None,
                "SequenceNumber": "100",
                "SizeBytes": 42,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
                "Extra": "dropped",
            },
            "userIdentity": {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"},
        }
    ],
    "NextShardIterator": "it",
}


def botocore_parse(service: str, body: dict[str, Any]) -> Any:
    shape = (
        botocore.session.get_session()
        .get_service_model(service)
        .operation_model("GetRecords")
        .output_shape
    )
    parser = JSONParser(timestamp_parser=epoch_seconds, blob_parser=keep_base64)
    response = {"body": json.dumps(body).encode(), "headers": {}, "status_code": 200}
    parsed = parser.parse(response, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


def compiled(service: str) -> Any:
    shape = (
        botocore.session.get_session()
        .get_service_model(service)
        .operation_model("GetRecords")
        .output_shape
    )
    return compile_shape(shape, epoch_seconds, keep_base64)


@pytest.mark.parametrize(
    ("service", "page"), [("kinesis", KINESIS_PAGE), ("dynamodbstreams", DDB_PAGE)]
)
def test_compiled_shape_equals_botocores_parser(service: str, page: dict[str, Any]) -> None:
    ours = compiled(service)(copy.deepcopy(page))
    assert ours == botocore_parse(service, page)


@pytest.mark.parametrize(
    ("service", "page"), [("kinesis", KINESIS_PAGE), ("dynamodbstreams", DDB_PAGE)]
)
def test_the_lean_paths_parsers_give_botocores_answer(service: str, page: dict[str, Any]) -> None:
    """compile_output skips the identity blob parser and float timestamps: same result."""
    shape = (
        botocore.session.get_session()
        .get_service_model(service)
        .operation_model("GetRecords")
        .output_shape
    )
    ours = compile_output(shape)(copy.deepcopy(page))
    assert ours == botocore_parse(service, page)
    if service == "kinesis":
        stamps = [r["ApproximateArrivalTimestamp"] for r in ours["Records"]]
        assert all(type(t) is float for t in stamps)


def test_plain_records_are_kept_in_place_with_float_timestamps() -> None:
    record = {
        "SequenceNumber": "1",
        "ApproximateArrivalTimestamp": 7,
        "Data": "",
        "PartitionKey": "k",
    }
    page = compiled("kinesis")({"Records": [record]})
    assert page["Records"][0] is record
    assert record["ApproximateArrivalTimestamp"] == 7.0
    assert isinstance(record["ApproximateArrivalTimestamp"], float)


@pytest.mark.parametrize(
    "body",
    [
        {"Records": {"a": 1}},
        {"Records": ["not an object"]},
        [],
        {"ChildShards": [{"ParentShards": "x"}]},
    ],
)
def test_a_value_of_the_wrong_type_is_malformed(body: Any) -> None:
    with pytest.raises(Malformed):
        compiled("kinesis")(body)
