"""Event filtering: the pattern language, validation, per-source data rules and AWS recordings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from poller.core.filtering import (
    AWS_MESSAGE,
    MAX_NESTING,
    MAX_PATTERN_CHARS,
    FilterError,
    Source,
    compile_filters,
)

RECORDINGS = Path(__file__).parents[2] / "fixtures" / "aws-recorded"


def pattern_text(pattern: Any) -> str:
    return pattern if isinstance(pattern, str) else json.dumps(pattern)


def matches(pattern: Any, record: dict[str, Any], source: Source = "dynamodb") -> bool:
    """Whether one pattern (a dict, or its text) passes ``record``."""
    return compile_filters([pattern_text(pattern)], source=source).matches(record)


def kinesis(data: Any, *, partition_key: str = "pk-1") -> dict[str, Any]:
    """A Kinesis event record; ``data`` is raw bytes, or an object to serialize as JSON."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": base64.b64encode(raw).decode(),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
    }


def sqs(body: Any, **message_attributes: str) -> dict[str, Any]:
    """An SQS event record; ``body`` is the raw string, or an object to serialize as JSON."""
    return {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": body if isinstance(body, str) else json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        "messageAttributes": {
            name: {"stringValue": value, "stringListValues": [], "dataType": "String"}
            for name, value in message_attributes.items()
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
        "awsRegion": "us-east-2",
    }


def ddb(
    event_name: str,
    keys: dict[str, Any],
    new_image: dict[str, Any] | None = None,
    old_image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A DynamoDB Streams event record with DynamoDB-JSON images."""
    images = {"NewImage": new_image, "OldImage": old_image}
    return {
        "eventID": "c4ca4238a0b923820dcc509a6f75849b",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1764086782.0,
            "Keys": keys,
            **{name: image for name, image in images.items() if image is not None},
            "SequenceNumber": "111",
            "SizeBytes": 70,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2015-05-11",
    }


# --- The pattern language, on plain records -----------------------------------------------

OPERATOR_CASES = [
    # Exact strings: character by character, no case folding; any element of an event array.
    ({"a": ["x"]}, {"a": "x"}, True),
    ({"a": ["x"]}, {"a": "y"}, False),
    ({"a": ["x"]}, {"a": "X"}, False),
    ({"a": ["x"]}, {"a": "x "}, False),
    ({"a": ["x"]}, {}, False),
    ({"a": ["x", "y"]}, {"a": "y"}, True),
    ({"a": ["x"]}, {"a": ["w", "x"]}, True),
    ({"a": ["x"]}, {"a": ["w", ["v", ["x"]]]}, True),
    ({"a": ["x"]}, {"a": ["w", "z"]}, False),
    ({"a": ["x"]}, {"a": []}, False),
    ({"a": ["x"]}, {"a": {"x": "x"}}, False),
    ({"a": ["ünï"]}, {"a": "ünï"}, True),
    # Numbers compare by their text: 300 is not 300.0 nor "300".
    ({"a": [300]}, {"a": 300}, True),
    ({"a": [300]}, {"a": 300.0}, False),
    ({"a": [300]}, {"a": "300"}, False),
    ({"a": [300.0]}, {"a": 300.0}, True),
    ({"a": [-1.5]}, {"a": -1.5}, True),
    ({"a": [1]}, {"a": True}, False),
    ({"a": [0]}, {"a": False}, False),
    ({"a": [5]}, {"a": [4, 5]}, True),
    # Booleans and null are their own types.
    ({"a": [True]}, {"a": True}, True),
    ({"a": [True]}, {"a": "true"}, False),
    ({"a": [True]}, {"a": 1}, False),
    ({"a": [False]}, {"a": False}, True),
    ({"a": [False]}, {"a": 0}, False),
    ({"a": [None]}, {"a": None}, True),
    ({"a": [None]}, {}, False),
    ({"a": [None]}, {"a": ""}, False),
    ({"a": [None]}, {"a": "null"}, False),
    # Empty string.
    ({"a": [""]}, {"a": ""}, True),
    ({"a": [""]}, {"a": None}, False),
    ({"a": [""]}, {}, False),
    ({"a": [""]}, {"a": " "}, False),
    # prefix / suffix: strings only.
    ({"a": [{"prefix": "us-"}]}, {"a": "us-east-1"}, True),
    ({"a": [{"prefix": "us-"}]}, {"a": "eu-west-1"}, False),
    ({"a": [{"prefix": "us-"}]}, {"a": "US-east-1"}, False),
    ({"a": [{"prefix": "us-"}]}, {"a": ["eu-west-1", "us-west-2"]}, True),
    ({"a": [{"prefix": "1"}]}, {"a": 100}, False),
    ({"a": [{"prefix": ""}]}, {"a": "anything"}, True),
    ({"a": [{"prefix": ""}]}, {}, False),
    ({"a": [{"suffix": ".png"}]}, {"a": "cat.png"}, True),
    ({"a": [{"suffix": ".png"}]}, {"a": "cat.png.jpg"}, False),
    ({"a": [{"suffix": ".png"}]}, {"a": None}, False),
    # equals-ignore-case.
    ({"a": [{"equals-ignore-case": "alice"}]}, {"a": "ALICE"}, True),
    ({"a": [{"equals-ignore-case": "alice"}]}, {"a": "aLiCe"}, True),
    ({"a": [{"equals-ignore-case": "alice"}]}, {"a": "alicia"}, False),
    ({"a": [{"equals-ignore-case": "1"}]}, {"a": 1}, False),
    # anything-but: a value not listed; values of another type pass; a missing field fails.
    ({"a": [{"anything-but": "x"}]}, {"a": "y"}, True),
    ({"a": [{"anything-but": "x"}]}, {"a": "x"}, False),
    ({"a": [{"anything-but": "x"}]}, {}, False),
    ({"a": [{"anything-but": "x"}]}, {"a": 5}, True),
    ({"a": [{"anything-but": "x"}]}, {"a": None}, True),
    ({"a": [{"anything-but": "x"}]}, {"a": ["x", "y"]}, True),
    ({"a": [{"anything-but": "x"}]}, {"a": ["x"]}, False),
    ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "z"}, True),
    ({"a": [{"anything-but": ["x", "y"]}]}, {"a": "y"}, False),
    ({"a": [{"anything-but": 100}]}, {"a": 101}, True),
    ({"a": [{"anything-but": 100}]}, {"a": 100}, False),
    ({"a": [{"anything-but": [100, 200]}]}, {"a": 200.0}, False),
    ({"a": [{"anything-but": [100, 200]}]}, {"a": 150}, True),
    ({"a": [{"anything-but": [100, 200]}]}, {"a": "100"}, True),
    ({"a": [{"anything-but": [1]}]}, {"a": True}, True),
    ({"a": [{"anything-but": {"prefix": "init"}}]}, {"a": "initial"}, False),
    ({"a": [{"anything-but": {"prefix": "init"}}]}, {"a": "done"}, True),
    ({"a": [{"anything-but": {"prefix": "init"}}]}, {"a": 7}, True),
    ({"a": [{"anything-but": {"suffix": ".tmp"}}]}, {"a": "x.tmp"}, False),
    ({"a": [{"anything-but": {"suffix": ".tmp"}}]}, {"a": "x.txt"}, True),
    ({"a": [{"anything-but": {"equals-ignore-case": ["A", "b"]}}]}, {"a": "a"}, False),
    ({"a": [{"anything-but": {"equals-ignore-case": ["A", "b"]}}]}, {"a": "B"}, False),
    ({"a": [{"anything-but": {"equals-ignore-case": "A"}}]}, {"a": "c"}, True),
    # numeric: numbers only, compared numerically.
    ({"a": [{"numeric": ["=", 100]}]}, {"a": 100}, True),
    ({"a": [{"numeric": ["=", 100]}]}, {"a": 100.0}, True),
    ({"a": [{"numeric": ["=", 100]}]}, {"a": 101}, False),
    ({"a": [{"numeric": ["=", 100]}]}, {"a": "100"}, False),
    ({"a": [{"numeric": ["=", 1]}]}, {"a": True}, False),
    ({"a": [{"numeric": [">", 10]}]}, {"a": 10}, False),
    ({"a": [{"numeric": [">", 10]}]}, {"a": 10.000001}, True),
    ({"a": [{"numeric": [">=", 10]}]}, {"a": 10}, True),
    ({"a": [{"numeric": ["<", 0]}]}, {"a": -0.5}, True),
    ({"a": [{"numeric": ["<", 0]}]}, {"a": 0}, False),
    ({"a": [{"numeric": ["<=", 0]}]}, {"a": 0}, True),
    ({"a": [{"numeric": [">", 10, "<=", 20]}]}, {"a": 10}, False),
    ({"a": [{"numeric": [">", 10, "<=", 20]}]}, {"a": 15}, True),
    ({"a": [{"numeric": [">", 10, "<=", 20]}]}, {"a": 20}, True),
    ({"a": [{"numeric": [">", 10, "<=", 20]}]}, {"a": 20.5}, False),
    ({"a": [{"numeric": [">=", 10, "<", 20]}]}, {"a": 10}, True),
    ({"a": [{"numeric": [">=", 10, "<", 20]}]}, {"a": 20}, False),
    ({"a": [{"numeric": [">", 10]}]}, {"a": [1, 2, 30]}, True),
    ({"a": [{"numeric": [">", 1e300]}]}, {"a": 10**400}, True),
    ({"a": [{"numeric": [">", 10]}]}, {}, False),
    # exists: leaf values only (null is one; objects and empty arrays are not).
    ({"a": [{"exists": True}]}, {"a": "x"}, True),
    ({"a": [{"exists": True}]}, {"a": None}, True),
    ({"a": [{"exists": True}]}, {"a": ""}, True),
    ({"a": [{"exists": True}]}, {"a": ["x"]}, True),
    ({"a": [{"exists": True}]}, {}, False),
    ({"a": [{"exists": True}]}, {"a": {"b": 1}}, False),
    ({"a": [{"exists": True}]}, {"a": []}, False),
    ({"a": [{"exists": True}]}, {"a": [{"b": 1}]}, False),
    ({"a": [{"exists": False}]}, {}, True),
    ({"a": [{"exists": False}]}, {"a": "x"}, False),
    ({"a": [{"exists": False}]}, {"a": None}, False),
    ({"a": [{"exists": False}]}, {"a": {"b": 1}}, True),
    ({"a": [{"exists": False}]}, {"a": []}, True),
    ({"a": [{"exists": False}, "x"]}, {}, True),
    ({"a": [{"exists": False}, "x"]}, {"a": "x"}, True),
    ({"a": [{"exists": False}, "x"]}, {"a": "y"}, False),
    # Nested exists.
    ({"a": {"b": [{"exists": True}]}}, {"a": {"b": 1}}, True),
    ({"a": {"b": [{"exists": True}]}}, {"a": {"c": 1}}, False),
    ({"a": {"b": [{"exists": True}]}}, {"a": [{"c": 1}, {"b": 1}]}, True),
    ({"a": {"b": [{"exists": False}]}}, {}, True),
    ({"a": {"b": [{"exists": False}]}}, {"a": {}}, True),
    ({"a": {"b": [{"exists": False}]}}, {"a": "scalar"}, True),
    ({"a": {"b": [{"exists": False}]}}, {"a": {"b": 1}}, False),
    ({"a": {"b": [{"exists": False}]}}, {"a": [{"c": 2}]}, True),
    # ... absent means absent from every element of an array of objects (event-ruler).
    ({"a": {"b": [{"exists": False}]}}, {"a": [{"b": 1}, {"c": 2}]}, False),
    ({"a": {"b": {"c": [{"exists": False}]}}}, {"a": [{"b": {"c": 1}}, {"b": {}}]}, False),
    ({"a": {"b": {"c": [{"exists": False}]}}}, {"a": [{"b": {"d": 1}}, {"b": {}}]}, True),
    # Mixed match values are OR-ed.
    ({"a": ["x", {"prefix": "y"}, {"numeric": [">", 5]}, None]}, {"a": "yes"}, True),
    ({"a": ["x", {"prefix": "y"}, {"numeric": [">", 5]}, None]}, {"a": 6}, True),
    ({"a": ["x", {"prefix": "y"}, {"numeric": [">", 5]}, None]}, {"a": None}, True),
    ({"a": ["x", {"prefix": "y"}, {"numeric": [">", 5]}, None]}, {"a": 5}, False),
    ({"a": ["x", {"prefix": "y"}, {"numeric": [">", 5]}, None]}, {"a": "z"}, False),
    # Fields are AND-ed.
    ({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "y"}, True),
    ({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "z"}, False),
    ({"a": ["x"], "b": ["y"]}, {"a": "x"}, False),
    # Nested objects descend; arrays of objects match element by element.
    ({"a": {"b": {"c": ["1"]}}}, {"a": {"b": {"c": "1"}}}, True),
    ({"a": {"b": {"c": ["1"]}}}, {"a": {"b": {"c": "2"}}}, False),
    ({"a": {"b": {"c": ["1"]}}}, {"a": {"b": "c"}}, False),
    ({"a": {"b": ["1"]}}, {"a": [{"b": "2"}, {"b": "1"}]}, True),
    ({"a": {"b": ["1"]}}, {"a": [[{"b": "1"}]]}, True),
    ({"a": {"b": ["1"], "c": ["2"]}}, {"a": [{"b": "1", "c": "2"}]}, True),
    ({"a": {"b": ["1"], "c": ["2"]}}, {"a": [{"b": "1"}, {"c": "2"}]}, False),
    # $or at any level, nested, and AND-ed with its siblings.
    ({"$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"a": "x"}, True),
    ({"$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"b": "y"}, True),
    ({"$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"a": "y", "b": "x"}, False),
    ({"c": ["1"], "$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"c": "1", "b": "y"}, True),
    ({"c": ["1"], "$or": [{"a": ["x"]}, {"b": ["y"]}]}, {"c": "2", "b": "y"}, False),
    ({"d": {"$or": [{"a": ["x"]}, {"b": ["y"]}]}}, {"d": {"b": "y"}}, True),
    ({"d": {"$or": [{"a": ["x"]}, {"b": ["y"]}]}}, {"b": "y"}, False),
    (
        {"$or": [{"a": ["x"]}, {"$or": [{"b": ["y"]}, {"c": {"d": [{"numeric": ["<", 0]}]}}]}]},
        {"c": {"d": -1}},
        True,
    ),
    (
        {"$or": [{"a": ["x"]}, {"$or": [{"b": ["y"]}, {"c": {"d": [{"numeric": ["<", 0]}]}}]}]},
        {"c": {"d": 1}},
        False,
    ),
    ({"$or": [{"a": [{"exists": False}]}, {"a": ["x"]}]}, {"a": "y"}, False),
    ({"$or": [{"a": [{"exists": False}]}, {"a": ["x"]}]}, {}, True),
    # A field literally named like an operator is just a field.
    ({"prefix": ["x"]}, {"prefix": "x"}, True),
    # Duplicate keys: the last one wins (json.loads).
    ('{"a": ["x"], "a": ["y"]}', {"a": "y"}, True),
    ('{"a": ["x"], "a": ["y"]}', {"a": "x"}, False),
]


@pytest.mark.parametrize(("pattern", "event", "expected"), OPERATOR_CASES)
def test_operator(pattern: Any, event: dict[str, Any], expected: bool) -> None:
    """Each operator matches the values it should and no others."""
    assert matches(pattern, event) is expected


def test_deep_event_arrays_do_not_break_matching() -> None:
    """Arrays nested past the recursion limit are walked iteratively."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    assert matches({"a": ["x"]}, {"a": deep})
    assert matches({"a": {"b": ["x"]}}, {"a": [deep, {"b": "x"}]})


def test_filters_are_ored() -> None:
    """A record passes when any filter matches."""
    filters = compile_filters(['{"a": ["x"]}', '{"b": ["y"]}'], source="dynamodb")
    assert len(filters) == 2
    assert filters.matches({"a": "x"})
    assert filters.matches({"b": "y"})
    assert not filters.matches({"a": "y", "b": "x"})


def test_no_filters_pass_everything() -> None:
    """An empty filter list filters nothing."""
    for source in ("kinesis", "dynamodb", "sqs"):
        filters = compile_filters([], source=source)
        assert len(filters) == 0
        assert not filters.references_data
        assert filters.matches({})


# --- Number text: exact numbers compare as written in the JSON ----------------------------


@pytest.mark.parametrize(
    ("pattern_number", "body_number", "expected"),
    [
        ("300", "300", True),
        ("300", "300.0", False),
        ("300", "3.0e2", False),
        ("300.0", "300.0", True),
        ("300.0", "300", False),
        ("3.0e2", "3.0e2", True),
        ("3.0e2", "300.0", False),
        ("3.0e2", "3.0E2", False),
        ("0.1", "0.10", False),
        ('"300"', "300", False),
        ("300", '"300"', False),
        ("1" * 4000, "1" * 4000, True),
        ("1" * 4000, "1" * 5000, False),
    ],
)
def test_exact_numbers_compare_by_text(
    pattern_number: str, body_number: str, expected: bool
) -> None:
    """AWS: 300, 300.0 and 3.0e2 are different values for exact matching."""
    pattern = f'{{"body": {{"n": [{pattern_number}]}}}}'
    record = sqs(f'{{"n": {body_number}}}')
    assert matches(pattern, record, "sqs") is expected


def test_huge_integers_are_still_json() -> None:
    """Integers past Python's int-text digit limit still parse (and compare numerically)."""
    record = sqs('{"n": ' + "9" * 5000 + "}")
    assert matches({"body": {"n": [{"exists": True}]}}, record, "sqs")
    assert matches({"body": {"n": [{"numeric": [">", 1e300]}]}}, record, "sqs")
    assert not matches({"body": {"n": [{"numeric": ["<", 0]}]}}, record, "sqs")


@pytest.mark.parametrize("body_number", ["300", "300.0", "3.0e2", "3E2"])
def test_numeric_compares_by_value(body_number: str) -> None:
    """The numeric operator compares numerically, whatever the text."""
    pattern = {"body": {"n": [{"numeric": ["=", 300]}]}}
    assert matches(pattern, sqs(f'{{"n": {body_number}}}'), "sqs")


# --- Validation -----------------------------------------------------------------------------

INVALID_PATTERNS = [
    # The recorded AWS cases (test_sqs_invalid_event_filter, test_dynamodb_invalid_event_filter).
    pytest.param("null", "must be a JSON object", id="null"),
    pytest.param("simple string", "not valid JSON", id="simple-string"),
    pytest.param('{"eventSource": "aws:sqs"}', "must be an array", id="non-array-leaf"),
    pytest.param('{"eventSource": []}', "empty", id="empty-array"),
    pytest.param("single-string", "not valid JSON", id="single-string"),
    pytest.param('[{"eventName": ["INSERT"=123}]', "not valid JSON", id="broken-json"),
    # Not an object.
    pytest.param("", "not valid JSON", id="empty-text"),
    pytest.param("[]", "must be a JSON object, not list", id="array"),
    pytest.param('[{"a": ["x"]}]', "must be a JSON object", id="array-of-patterns"),
    pytest.param('"x"', "must be a JSON object, not str", id="json-string"),
    pytest.param("123", "must be a JSON object", id="json-number"),
    pytest.param("true", "must be a JSON object", id="json-bool"),
    # Structure.
    pytest.param("{}", "empty objects", id="empty-object"),
    pytest.param('{"a": {}}', "empty objects", id="empty-nested-object"),
    pytest.param('{"a": "x"}', "must be an array", id="string-leaf"),
    pytest.param('{"a": 5}', "must be an array", id="number-leaf"),
    pytest.param('{"a": null}', "must be an array", id="null-leaf"),
    pytest.param('{"a": true}', "must be an array", id="bool-leaf"),
    pytest.param(
        '{"a": {"b": []}}', '"a.b": the array of match values is empty', id="nested-empty"
    ),
    pytest.param('{"a": [["x"]]}', "match values must be", id="nested-array-value"),
    pytest.param('{"a": [NaN]}', "not valid JSON", id="nan"),
    pytest.param('{"a": [Infinity]}', "not valid JSON", id="infinity"),
    pytest.param('{"a": ["x"]} trailing', "not valid JSON", id="trailing-text"),
    # Operators.
    pytest.param('{"a": [{}]}', "exactly one key", id="empty-operator"),
    pytest.param('{"a": [{"prefix": "x", "suffix": "y"}]}', "exactly one key", id="two-operators"),
    pytest.param('{"a": [{"prefix": 5}]}', '"prefix" takes a string', id="prefix-number"),
    pytest.param('{"a": [{"prefix": ["x"]}]}', '"prefix" takes a string', id="prefix-list"),
    pytest.param('{"a": [{"suffix": null}]}', '"suffix" takes a string', id="suffix-null"),
    pytest.param(
        '{"a": [{"equals-ignore-case": 1}]}', '"equals-ignore-case" takes a string', id="eic-number"
    ),
    pytest.param('{"a": [{"exists": "yes"}]}', "true or false", id="exists-string"),
    pytest.param('{"a": [{"exists": 1}]}', "true or false", id="exists-number"),
    pytest.param('{"a": [{"unknown-op": 1}]}', 'unknown operator "unknown-op"', id="unknown-op"),
    pytest.param('{"a": [{"wildcard": "x*"}]}', "not supported", id="wildcard"),
    pytest.param('{"a": [{"cidr": "10.0.0.0/8"}]}', "not supported", id="cidr"),
    # numeric.
    pytest.param('{"a": [{"numeric": 10}]}', '"numeric" takes', id="numeric-scalar"),
    pytest.param('{"a": [{"numeric": []}]}', '"numeric" takes', id="numeric-empty"),
    pytest.param('{"a": [{"numeric": [">"]}]}', '"numeric" takes', id="numeric-no-operand"),
    pytest.param('{"a": [{"numeric": [">", 1, "<"]}]}', '"numeric" takes', id="numeric-three"),
    pytest.param(
        '{"a": [{"numeric": [">", 1, "<", 5, "x"]}]}', '"numeric" takes', id="numeric-five"
    ),
    pytest.param('{"a": [{"numeric": [">", "10"]}]}', "is not a number", id="numeric-string"),
    pytest.param('{"a": [{"numeric": ["=", true]}]}', "is not a number", id="numeric-bool"),
    pytest.param('{"a": [{"numeric": ["=", null]}]}', "is not a number", id="numeric-null"),
    pytest.param('{"a": [{"numeric": [">", 1e999]}]}', "out of range", id="numeric-overflow"),
    pytest.param('{"a": [{"numeric": ["!=", 10]}]}', "unknown numeric operator", id="numeric-ne"),
    pytest.param('{"a": [{"numeric": [10, ">"]}]}', "unknown numeric operator", id="numeric-swap"),
    pytest.param(
        '{"a": [{"numeric": [[">"], 1]}]}', "unknown numeric operator", id="numeric-list-op"
    ),
    pytest.param(
        '{"a": [{"numeric": [">", 1, {"<": 1}, 5]}]}',
        "unknown numeric operator",
        id="numeric-obj-op",
    ),
    pytest.param('{"a": [{"numeric": ["=", 10, "<", 20]}]}', "lower bound", id="numeric-eq-range"),
    pytest.param('{"a": [{"numeric": [">", 10, ">", 20]}]}', "lower bound", id="two-lower-bounds"),
    pytest.param('{"a": [{"numeric": ["<", 20, "<=", 30]}]}', "lower bound", id="two-upper-bounds"),
    pytest.param('{"a": [{"numeric": ["<", 20, ">", 10]}]}', "lower bound", id="upper-then-lower"),
    pytest.param('{"a": [{"numeric": [">", 20, "<", 10]}]}', "below its upper", id="inverted"),
    pytest.param('{"a": [{"numeric": [">=", 10, "<=", 10]}]}', "below its upper", id="point"),
    # anything-but.
    pytest.param('{"a": [{"anything-but": []}]}', '"anything-but" takes', id="ab-empty"),
    pytest.param('{"a": [{"anything-but": null}]}', '"anything-but" takes', id="ab-null"),
    pytest.param('{"a": [{"anything-but": true}]}', '"anything-but" takes', id="ab-bool"),
    pytest.param('{"a": [{"anything-but": ["a", 1]}]}', '"anything-but" takes', id="ab-mixed"),
    pytest.param('{"a": [{"anything-but": [null]}]}', '"anything-but" takes', id="ab-list-null"),
    pytest.param('{"a": [{"anything-but": [["a"]]}]}', '"anything-but" takes', id="ab-nested"),
    pytest.param(
        '{"a": [{"anything-but": {"prefix": ""}}]}', "must not be empty", id="ab-prefix-0"
    ),
    pytest.param(
        '{"a": [{"anything-but": {"suffix": ""}}]}', "must not be empty", id="ab-suffix-0"
    ),
    pytest.param('{"a": [{"anything-but": {"prefix": 5}}]}', "takes a string", id="ab-prefix-num"),
    pytest.param('{"a": [{"anything-but": {"wildcard": "x"}}]}', "does not take", id="ab-wildcard"),
    pytest.param('{"a": [{"anything-but": {"numeric": [">", 1]}}]}', "does not take", id="ab-num"),
    pytest.param(
        '{"a": [{"anything-but": {"prefix": "a", "suffix": "b"}}]}', "exactly one", id="ab-two"
    ),
    pytest.param(
        '{"a": [{"anything-but": {"equals-ignore-case": []}}]}', "list of strings", id="ab-eic-[]"
    ),
    pytest.param(
        '{"a": [{"anything-but": {"equals-ignore-case": 5}}]}', "list of strings", id="ab-eic-num"
    ),
    # $or.
    pytest.param('{"$or": [{"a": ["x"]}]}', "at least two", id="or-one-branch"),
    pytest.param('{"$or": []}', "at least two", id="or-empty"),
    pytest.param('{"$or": {"a": ["x"]}}', "at least two", id="or-object"),
    pytest.param('{"$or": [{"a": ["x"]}, "b"]}', "only objects", id="or-string-branch"),
    pytest.param('{"$or": [{"a": ["x"]}, {}]}', "empty objects", id="or-empty-branch"),
    pytest.param('{"$or": [{"a": ["x"]}, {"b": []}]}', '"b": the array', id="or-bad-branch"),
    pytest.param('{"a": {"$or": [{"b": ["x"]}, {"c": "y"}]}}', '"a.c" must be', id="or-nested-bad"),
]


@pytest.mark.parametrize(("pattern", "detail"), INVALID_PATTERNS)
def test_invalid_pattern(pattern: str, detail: str) -> None:
    """Invalid patterns are refused at compile time with AWS's message and a detail."""
    with pytest.raises(FilterError) as caught:
        compile_filters([pattern], source="sqs")
    message = str(caught.value)
    assert message.startswith("Invalid filter pattern definition. ")
    assert message.startswith(AWS_MESSAGE)
    assert detail in message
    assert detail in caught.value.detail
    assert caught.value.index == 0


def test_error_names_the_failing_filter() -> None:
    """The message and ``index`` point at the filter that is wrong."""
    with pytest.raises(FilterError) as caught:
        compile_filters(['{"a": ["x"]}', '{"b": ["y"]}', '{"c": "z"}'], source="dynamodb")
    assert caught.value.index == 2
    assert str(caught.value) == (
        'Invalid filter pattern definition. FilterCriteria.Filters[2].Pattern: "c" must be an '
        "array of match values or an object"
    )


def test_nesting_limit() -> None:
    """Patterns nest at most MAX_NESTING objects deep; deeper (or unparseable) is refused."""
    deepest = "{" + '"a":{' * MAX_NESTING + '"b":["x"]' + "}" * (MAX_NESTING + 1)
    event: dict[str, Any] = {"b": "x"}
    for _ in range(MAX_NESTING):
        event = {"a": event}
    assert matches(deepest, event)
    too_deep = "{" + '"a":{' * (MAX_NESTING + 1) + '"b":["x"]' + "}" * (MAX_NESTING + 2)
    with pytest.raises(FilterError, match="nest at most"):
        compile_filters([too_deep], source="dynamodb")
    unparseable = "[" * 2040 + "]" * 2040
    with pytest.raises(FilterError, match="not valid JSON"):
        compile_filters([unparseable], source="dynamodb")


def test_filter_count_limit() -> None:
    """At most 5 filters by default (the AWS quota), or the raised quota when given."""
    pattern = '{"a": ["x"]}'
    assert len(compile_filters([pattern] * 5, source="sqs")) == 5
    with pytest.raises(FilterError) as caught:
        compile_filters([pattern] * 6, source="sqs")
    assert str(caught.value).startswith(AWS_MESSAGE)
    assert "6 filters given" in caught.value.detail
    assert "at most 5" in caught.value.detail
    assert caught.value.index is None
    assert len(compile_filters([pattern] * 10, source="sqs", max_filters=10)) == 10
    with pytest.raises(FilterError, match="at most 10"):
        compile_filters([pattern] * 11, source="sqs", max_filters=10)


def test_pattern_length_limit() -> None:
    """A pattern is at most 4096 characters."""

    def padded(size: int) -> str:
        head = '{"a": ["'
        return head + "x" * (size - len(head) - 3) + '"]}'

    assert len(padded(MAX_PATTERN_CHARS)) == MAX_PATTERN_CHARS
    assert matches(padded(MAX_PATTERN_CHARS), {"a": "x" * (MAX_PATTERN_CHARS - 11)})
    with pytest.raises(FilterError) as caught:
        compile_filters([padded(MAX_PATTERN_CHARS + 1)], source="sqs")
    assert str(caught.value).startswith(AWS_MESSAGE)
    assert "4097 characters long; the limit is 4096" in caught.value.detail


@pytest.mark.parametrize("bad", [None, {"a": ["x"]}, b'{"a": ["x"]}', 5])
def test_pattern_must_be_a_string(bad: Any) -> None:
    """Patterns are JSON text, as in the API."""
    with pytest.raises(FilterError, match="must be a JSON string"):
        compile_filters([bad], source="sqs")


def test_a_single_string_is_not_a_pattern_list() -> None:
    """A bare string (itself a sequence of strings) is refused, not split into characters."""
    with pytest.raises(FilterError, match="not one string"):
        compile_filters('{"a": ["x"]}', source="sqs")


def test_unknown_source() -> None:
    """A source name outside the three is a programming error."""
    with pytest.raises(ValueError, match="unknown event source"):
        compile_filters([], source="kafka")  # type: ignore[arg-type]


# --- Kinesis: data is base64 JSON ---------------------------------------------------------


def kinesis_matches(pattern: Any, record: dict[str, Any]) -> bool:
    return matches(pattern, record, "kinesis")


def test_kinesis_data_is_decoded_json() -> None:
    """``data`` patterns see the decoded, parsed payload."""
    pattern = {"data": {"order": {"type": ["buy"], "quantity": [{"numeric": [">", 100]}]}}}
    assert kinesis_matches(pattern, kinesis({"order": {"type": "buy", "quantity": 1000}}))
    assert not kinesis_matches(pattern, kinesis({"order": {"type": "sell", "quantity": 1000}}))
    assert not kinesis_matches(pattern, kinesis({"order": {"type": "buy", "quantity": 10}}))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"Hello, this is a test.", id="plain-text"),
        pytest.param(b'{"order": {"type": "buy"', id="truncated-json"),
        pytest.param(b'{"order": NaN}', id="nan"),
        pytest.param(b"\xff\xfe\x00", id="binary"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deep"),
    ],
)
def test_kinesis_non_json_data_never_matches_a_data_pattern(raw: bytes) -> None:
    """Non-JSON data with a data pattern: the record is dropped, even for exists: false."""
    for pattern in (
        {"data": {"order": {"type": ["buy"]}}},
        {"data": {"order": [{"exists": False}]}},
        {"data": {"order": [{"anything-but": "sell"}]}},
    ):
        assert not kinesis_matches(pattern, kinesis(raw))


def test_kinesis_bad_base64_counts_as_non_json() -> None:
    """Data that is not base64 at all is not JSON either."""
    record = kinesis({"a": 1})
    record["kinesis"]["data"] = "not base64!"
    assert not kinesis_matches({"data": {"a": [1]}}, record)
    assert kinesis_matches({"eventSource": ["aws:kinesis"]}, record)


def test_kinesis_missing_data_counts_as_non_json() -> None:
    """A record without ``kinesis.data`` matches no data pattern (and does not raise)."""
    assert not kinesis_matches({"data": {"a": [{"exists": False}]}}, {"eventSource": "x"})
    assert not kinesis_matches({"data": {"a": [{"exists": False}]}}, {"kinesis": "x"})


def test_kinesis_json_scalar_data_is_json() -> None:
    """Data that is a JSON scalar is valid JSON with no fields: only absence matches it."""
    assert kinesis_matches({"data": {"a": [{"exists": False}]}}, kinesis(b"123"))
    assert not kinesis_matches({"data": {"a": [{"exists": True}]}}, kinesis(b"123"))


def test_kinesis_json_array_data_matches_any_element() -> None:
    """A JSON array payload is an array of objects: any element may match."""
    data = [{"type": "sell"}, {"type": "buy"}]
    assert kinesis_matches({"data": {"type": ["buy"]}}, kinesis(data))


def test_kinesis_data_numbers_compare_by_text() -> None:
    """The number-as-text rule applies inside decoded data too."""
    record = kinesis(b'{"n": 3.0e2}')
    assert kinesis_matches('{"data": {"n": [3.0e2]}}', record)
    assert not kinesis_matches('{"data": {"n": [300]}}', record)
    assert kinesis_matches('{"data": {"n": [{"numeric": ["=", 300]}]}}', record)


@pytest.mark.parametrize(
    ("pattern", "other_key_matches"),
    [
        pytest.param({"partitionKey": ["pk-1"]}, False, id="flattened"),
        pytest.param({"kinesis": {"partitionKey": ["pk-1"]}}, False, id="as-delivered"),
        pytest.param({"eventSource": ["aws:kinesis"]}, True, id="top-level"),
        pytest.param({"approximateArrivalTimestamp": [{"numeric": [">", 0]}]}, True, id="number"),
        pytest.param({"data": {"a": [1]}, "partitionKey": ["pk-1"]}, False, id="with-data"),
    ],
)
def test_kinesis_metadata(pattern: dict[str, Any], other_key_matches: bool) -> None:
    """Other keys match the record's metadata, as delivered and in the flattened 2022 shape."""
    assert kinesis_matches(pattern, kinesis({"a": 1}))
    assert kinesis_matches(pattern, kinesis({"a": 1}, partition_key="pk-2")) is other_key_matches


def test_kinesis_metadata_filters_do_not_need_json_data() -> None:
    """A filter without ``data`` matches records whose data is not JSON."""
    filters = compile_filters(
        ['{"data": {"a": [1]}}', '{"partitionKey": ["pk-1"]}'], source="kinesis"
    )
    assert filters.references_data
    assert filters.matches(kinesis(b"not json"))
    assert not filters.matches(kinesis(b"not json", partition_key="other"))
    assert filters.matches(kinesis({"a": 1}, partition_key="other"))


def test_kinesis_raw_data_is_not_visible_as_data() -> None:
    """``data`` is always the decoded payload: the base64 text is never matched."""
    record = kinesis(b"hi")
    text = record["kinesis"]["data"]
    assert not kinesis_matches({"data": {"x": [text]}}, record)
    assert kinesis_matches({"kinesis": {"data": [text]}}, record)


@pytest.mark.parametrize(
    "pattern",
    [
        '{"data": ["x"]}',
        '{"data": [{"exists": true}]}',
        '{"data": [{"prefix": "{"}]}',
        '{"$or": [{"data": ["x"]}, {"eventID": ["y"]}]}',
    ],
)
def test_kinesis_data_pattern_must_be_an_object(pattern: str) -> None:
    """A non-JSON pattern for data is an error at create/update time."""
    with pytest.raises(FilterError, match='"data" must be an object'):
        compile_filters([pattern], source="kinesis")
    compile_filters([pattern], source="sqs")  # elsewhere ``data`` is just a field


def test_references_data() -> None:
    """references_data tells whether any pattern looks at kinesis data / sqs body."""
    assert compile_filters(['{"data": {"a": ["x"]}}'], source="kinesis").references_data
    assert not compile_filters(['{"partitionKey": ["x"]}'], source="kinesis").references_data
    assert compile_filters(['{"body": ["x"]}'], source="sqs").references_data
    assert compile_filters(
        ['{"$or": [{"body": {"a": ["x"]}}, {"messageId": ["1"]}]}'], source="sqs"
    ).references_data
    assert not compile_filters(['{"attributes": {"a": ["x"]}}'], source="sqs").references_data
    assert not compile_filters(['{"body": ["x"]}'], source="dynamodb").references_data
    kinds = compile_filters(
        [
            '{"body": {"a": ["x"]}}',
            '{"body": ["x"]}',
            '{"$or": [{"body": {"a": ["x"]}}, {"body": ["y"]}]}',
            '{"messageId": ["x"]}',
        ],
        source="sqs",
    )
    assert [f.data_kind for f in kinds.filters] == ["object", "value", "both", "none"]
    assert kinds.filters[2].fields == frozenset({"body"})


# --- DynamoDB: the record as delivered ----------------------------------------------------


def test_dynamodb_event_name_and_metadata() -> None:
    """eventName and other top-level metadata are filterable."""
    insert = ddb("INSERT", {"id": {"S": "a"}}, {"id": {"S": "a"}})
    modify = ddb("MODIFY", {"id": {"S": "a"}}, {"id": {"S": "a"}}, {"id": {"S": "a"}})
    assert matches({"eventName": ["INSERT"]}, insert)
    assert not matches({"eventName": ["INSERT"]}, modify)
    assert matches({"eventName": ["INSERT"], "eventSource": ["aws:dynamodb"]}, insert)
    assert matches({"eventName": [{"anything-but": "REMOVE"}]}, modify)


def test_dynamodb_keys_and_images_use_type_descriptors() -> None:
    """Keys and images are DynamoDB JSON: the type descriptor is part of the path."""
    record = ddb(
        "INSERT",
        {"id": {"S": "a"}},
        {"id": {"S": "a"}, "n": {"N": "42"}, "tags": {"SS": ["x", "y"]}, "on": {"BOOL": True}},
    )
    assert matches({"dynamodb": {"Keys": {"id": {"S": ["a"]}}}}, record)
    assert not matches({"dynamodb": {"Keys": {"id": {"S": ["b"]}}}}, record)
    assert not matches({"dynamodb": {"Keys": {"id": ["a"]}}}, record)
    assert matches({"dynamodb": {"NewImage": {"tags": {"SS": ["y"]}}}}, record)
    assert matches({"dynamodb": {"NewImage": {"on": {"BOOL": [True]}}}}, record)
    # N values are strings: they match as strings, never numerically.
    assert matches({"dynamodb": {"NewImage": {"n": {"N": ["42"]}}}}, record)
    assert not matches({"dynamodb": {"NewImage": {"n": {"N": [42]}}}}, record)
    assert not matches({"dynamodb": {"NewImage": {"n": {"N": [{"numeric": [">", 1]}]}}}}, record)
    # Without the descriptor the attribute is an object, which is not a leaf value.
    assert not matches({"dynamodb": {"NewImage": {"id": [{"exists": True}]}}}, record)
    assert matches({"dynamodb": {"NewImage": {"id": [{"exists": False}]}}}, record)
    assert matches({"dynamodb": {"OldImage": {"id": {"S": [{"exists": False}]}}}}, record)
    assert matches({"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}}, record)


# --- SQS: the body-format table -----------------------------------------------------------

SQS_BODY_CASES = [
    # plain-string body + plain-string pattern: filter normally.
    pytest.param({"body": ["hello"]}, "hello", True, id="plain-plain-match"),
    pytest.param({"body": ["hello"]}, "goodbye", False, id="plain-plain-nomatch"),
    pytest.param({"body": [{"prefix": "hel"}]}, "hello", True, id="plain-prefix"),
    pytest.param({"body": [{"exists": True}]}, "hello", True, id="plain-exists"),
    pytest.param({"body": [""]}, "", True, id="plain-empty-body"),
    # plain-string body + JSON pattern: no match.
    pytest.param({"body": {"a": ["x"]}}, "hello", False, id="plain-json"),
    pytest.param({"body": {"a": [{"exists": False}]}}, "hello", False, id="plain-json-absent"),
    pytest.param({"body": {"a": ["x"]}}, '{"a": "x"', False, id="broken-json-body"),
    # JSON body + plain-string pattern: no match.
    pytest.param({"body": ['{"a": "x"}']}, {"a": "x"}, False, id="json-plain"),
    pytest.param({"body": [{"exists": True}]}, {"a": "x"}, False, id="json-plain-exists"),
    pytest.param({"body": [{"prefix": "{"}]}, {"a": "x"}, False, id="json-plain-prefix"),
    pytest.param({"body": ["123"]}, "123", False, id="json-scalar-plain"),
    # JSON body + JSON pattern: filter normally on the parsed body.
    pytest.param({"body": {"a": ["x"]}}, {"a": "x"}, True, id="json-json-match"),
    pytest.param({"body": {"a": ["x"]}}, {"a": "y"}, False, id="json-json-nomatch"),
    pytest.param({"body": {"a": {"b": [{"numeric": [">", 1]}]}}}, {"a": {"b": 2}}, True, id="deep"),
    pytest.param({"body": {"a": [{"exists": False}]}}, {"b": 1}, True, id="json-json-absent"),
    pytest.param({"body": {"a": ["x"]}}, [{"a": "y"}, {"a": "x"}], True, id="json-array-body"),
    # A pattern with both kinds (in $or branches) uses whichever fits the body.
    pytest.param({"$or": [{"body": {"a": ["x"]}}, {"body": ["hi"]}]}, "hi", True, id="both-plain"),
    pytest.param(
        {"$or": [{"body": {"a": ["x"]}}, {"body": ["hi"]}]}, {"a": "x"}, True, id="both-j"
    ),
    pytest.param({"$or": [{"body": {"a": ["x"]}}, {"body": ["hi"]}]}, "ho", False, id="both-none"),
]


@pytest.mark.parametrize(("pattern", "body", "expected"), SQS_BODY_CASES)
def test_sqs_body_format(pattern: dict[str, Any], body: Any, expected: bool) -> None:
    """Lambda's body-format table: a plain/JSON mismatch between body and pattern drops."""
    assert matches(pattern, sqs(body), "sqs") is expected


@pytest.mark.parametrize("body", ["hello", {"a": "x"}, "", "123"])
def test_sqs_metadata_only_patterns_ignore_the_body(body: Any) -> None:
    """No ``body`` in the pattern: filter on metadata only, whatever the body."""
    record = sqs(body, Author="John Grisham")
    assert matches({"attributes": {"ApproximateReceiveCount": ["1"]}}, record, "sqs")
    assert not matches({"attributes": {"ApproximateReceiveCount": ["2"]}}, record, "sqs")
    author = {"messageAttributes": {"Author": {"stringValue": [{"prefix": "John"}]}}}
    assert matches(author, record, "sqs")
    assert matches({"eventSource": ["aws:sqs"], "awsRegion": ["us-east-2"]}, record, "sqs")


def test_sqs_body_and_metadata_together() -> None:
    """A body pattern and a metadata pattern in one filter are AND-ed."""
    pattern = {"body": {"a": ["x"]}, "attributes": {"ApproximateReceiveCount": ["1"]}}
    assert matches(pattern, sqs({"a": "x"}), "sqs")
    record = sqs({"a": "x"})
    record["attributes"]["ApproximateReceiveCount"] = "2"
    assert not matches(pattern, record, "sqs")


def test_sqs_record_is_not_modified() -> None:
    """Matching parses the body into a private view; the record keeps its string body."""
    record = sqs({"a": "x"})
    before = json.dumps(record)
    assert matches({"body": {"a": ["x"]}}, record, "sqs")
    assert json.dumps(record) == before


def test_data_is_parsed_once_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many filters reference data, a record's data is parsed once."""
    import poller.core.filtering.json_text as filtering

    calls: list[str] = []
    real = filtering._loads

    def counting(text: str) -> Any:
        calls.append(text)
        return real(text)

    patterns = [json.dumps({"data": {"k": [f"v{i}"]}}) for i in range(5)]
    kinesis_filters = compile_filters(patterns, source="kinesis")
    sqs_filters = compile_filters(['{"body": {"k": ["a"]}}', '{"body": ["b"]}'], source="sqs")
    metadata_filters = compile_filters(['{"messageId": ["x"]}'], source="sqs")
    monkeypatch.setattr(filtering, "_loads", counting)
    assert not kinesis_filters.matches(kinesis({"k": "none"}))
    assert calls == ['{"k": "none"}']
    calls.clear()
    assert not sqs_filters.matches(sqs({"k": "z"}))
    assert calls == ['{"k": "z"}']
    calls.clear()
    assert not metadata_filters.matches(sqs({"k": "z"}))
    assert calls == []


# --- Conformance: the AWS-recorded filtering scenarios ------------------------------------


def load(name: str) -> dict[str, Any]:
    scenarios: dict[str, Any] = json.loads((RECORDINGS / name).read_text())
    return scenarios


def scenario(scenarios: dict[str, Any], test: str, case: str) -> dict[str, Any]:
    content: dict[str, Any] = scenarios[f"{test}[{case}]"]["recorded-content"]
    return content


def recorded_cases(file: str, test: str) -> set[str]:
    """The parameter ids of ``test``'s recorded runs."""
    return {key.split("[", 1)[1][:-1] for key in load(file) if key.startswith(test + "[")}


def recorded_patterns(response: dict[str, Any]) -> list[str]:
    """The patterns as created (the recording stores each Pattern parsed)."""
    return [json.dumps(f["Pattern"]) for f in response["FilterCriteria"]["Filters"]]


SQS_FILE = "esm-sqs.json"
SQS_TEST = (
    "tests/aws/services/lambda_/event_source_mapping/test_lambda_integration_sqs.py::"
    "TestSQSEventSourceMapping::test_sqs_event_filter"
)
# Each scenario sent one matching and one non-matching message; only the matching one was
# recorded (it is the single invocation). The non-matching items are those of LocalStack's
# test parameters (tests/aws/.../test_lambda_integration_sqs.py, both the 2024 and the 2025
# parameter sets), found by the ids; a str is sent as a raw body, anything else as JSON.
SQS_NOT_MATCHING: dict[str, Any] = {
    "filter0-item_matching0-item_not_matching0": {"testItem": "tesWER"},
    "filter1-item_matching1-item_not_matching1": {"testItem": "WERTD"},
    "filter2-item_matching2-item_not_matching2": {"testItem": "test67", "test2": "go"},
    "filter3-item_matching3-item_not_matching3": {"test5": "74545"},
    "filter4-item_matching4-this is a test string": "this is a test string",
    "filter5-item_matching5-item_not_matching5": {"test2": 105},
    "filter6-item_matching6-item_not_matching6": {"test2": 200},
    "filter7-item_matching7-item_not_matching7": {"test2": "eu-wert"},
    "single-filter": {"testItem": "tesWER"},
    "or-filter": {"testItem": "WERTD"},
    "and-filter": {"testItem": "test67", "test2": "go"},
    "exists-filter": {"test5": "74545"},
    "numeric-prefix": {"test2": "eu-wert"},
    "single": {"my-key": "other-value"},
    "or": {"my-key": "other-value"},
    "and": {"my-key-one": "other-value-", "my-key-two": "my-value-two"},
    "exists": {"other-key": "any-value-two"},
    "numeric-bigger": {"my-number": 100},
    "numeric-smaller": {"my-number": 100},
    "numeric-range": {"my-number": 200},
    "prefix": {"my-key": "no-value"},
    "valid-json-filter": "plain-string",
}
# Skipped by LocalStack (no recorded content): "plain-string-matching", "plain-string-filter".
SQS_UNRECORDED = {"plain-string-matching", "plain-string-filter"}


@pytest.mark.parametrize("case", sorted(SQS_NOT_MATCHING))
def test_recorded_sqs_event_filter(case: str) -> None:
    """Exactly the recorded invocation's message passes; the other message is filtered out."""
    content = scenario(load(SQS_FILE), SQS_TEST, case)
    filters = compile_filters(
        recorded_patterns(content["create_event_source_mapping_response"]), source="sqs"
    )
    [invocation] = content["invocation_events"]
    [delivered] = invocation["Records"]
    sent = {**delivered, "body": json.dumps(delivered["body"])}
    assert filters.matches(sent)
    assert not filters.matches(sqs(SQS_NOT_MATCHING[case]))


def test_recorded_sqs_scenarios_are_all_covered() -> None:
    """Every recorded SQS filtering scenario is exercised above."""
    assert recorded_cases(SQS_FILE, SQS_TEST) == set(SQS_NOT_MATCHING) | SQS_UNRECORDED
    for case in SQS_UNRECORDED:
        assert scenario(load(SQS_FILE), SQS_TEST, case) == {}


SQS_INVALID_TEST = SQS_TEST.replace("test_sqs_event_filter", "test_sqs_invalid_event_filter")
# LocalStack's parameters: None and dicts are sent through json.dumps, strings as they are.
SQS_INVALID = {
    "None": "null",
    "simple string": "simple string",
    "invalid_filter2": '{"eventSource": "aws:sqs"}',
    "invalid_filter3": '{"eventSource": []}',
}
DDB_FILE = "esm-dynamodbstreams.json"
DDB_TEST = (
    "tests/aws/services/lambda_/event_source_mapping/test_lambda_integration_dynamodbstreams.py"
    "::TestDynamoDBEventSourceMapping::test_dynamodb_event_filter"
)
DDB_INVALID_TEST = DDB_TEST.replace(
    "test_dynamodb_event_filter", "test_dynamodb_invalid_event_filter"
)
DDB_INVALID = {
    "single-string": "single-string",
    '[{"eventName": ["INSERT"=123}]': '[{"eventName": ["INSERT"=123}]',
}


@pytest.mark.parametrize(
    ("file", "test", "case", "pattern", "source", "key"),
    [
        *[
            (SQS_FILE, SQS_INVALID_TEST, c, p, "sqs", "create_event_source_mapping_exception")
            for c, p in SQS_INVALID.items()
        ],
        *[
            (DDB_FILE, DDB_INVALID_TEST, c, p, "dynamodb", "exception_event_source_creation")
            for c, p in DDB_INVALID.items()
        ],
    ],
)
def test_recorded_invalid_event_filter(
    file: str, test: str, case: str, pattern: str, source: Source, key: str
) -> None:
    """The patterns AWS refused are refused, with AWS's recorded message first."""
    recorded = scenario(load(file), test, case)[key]
    assert recorded["Error"]["Code"] == "InvalidParameterValueException"
    with pytest.raises(FilterError) as caught:
        compile_filters([pattern], source=source)
    assert str(caught.value).startswith(recorded["Error"]["Message"] + " ")


def test_recorded_invalid_scenarios_are_all_covered() -> None:
    """Every recorded invalid-filter scenario is exercised above."""
    for file, test, cases in (
        (SQS_FILE, SQS_INVALID_TEST, SQS_INVALID),
        (DDB_FILE, DDB_INVALID_TEST, DDB_INVALID),
    ):
        assert recorded_cases(file, test) == set(cases)


def ddb_put(event_name: str, item: dict[str, Any], old: dict[str, Any] | None = None) -> Any:
    """The stream record a put_item of ``item`` makes (table key ``id``)."""
    return ddb(event_name, {"id": item["id"]}, item, old)


# Each scenario put item 1 (which must match) and then item 2; the recorded invocations are
# the records that passed. The records that should not pass are rebuilt from LocalStack's test
# parameters (tests/aws/.../test_lambda_integration_dynamodbstreams.py).
DDB_NOT_MATCHING: dict[str, list[Any]] = {
    # An identical second put makes no stream record on AWS; a MODIFY would not match anyway.
    "insert_same_entry_twice": [
        ddb_put(
            "MODIFY",
            {"id": {"S": "id_value"}, "id2": {"S": "id2_value"}},
            {"id": {"S": "id_value"}, "id2": {"S": "id2_value"}},
        )
    ],
    "content_or_filter": [ddb("REMOVE", {"id": {"S": "id_value"}}, None, {"id": {"S": "x"}})],
    "content_multiple_filters": [
        ddb_put(
            "MODIFY",
            {"id": {"S": "id_value"}, "id2": {"S": "id2_new_value"}},
            {"id": {"S": "id_value"}},
        )
    ],
    "content_filter_type": [ddb_put("INSERT", {"id": {"S": "id_value_2"}})],
    "exists_filter_type": [ddb_put("INSERT", {"id": {"S": "id_value_2"}})],
    "exists_false_filter": [],  # both items passed on AWS
    "numeric_filter": [
        ddb_put("INSERT", {"id": {"S": "id_value_2"}, "numericFilter": {"N": "101"}})
    ],
    "prefix_filter": [
        ddb_put(
            "MODIFY",
            {"id": {"S": "id_value_1"}, "prefix": {"S": "other-suffix"}},
            {"id": {"S": "id_value_1"}, "prefix": {"S": "us-1-other-suffix"}},
        )
    ],
    "date_time_conversion": [],  # both items passed on AWS
}
# The recording's transformer replaced this pattern's value by a placeholder; LocalStack's test
# parameter for the scenario is this (ApproximateCreationDateTime is a number on delivery).
DDB_PATTERN_OVERRIDE = {
    "date_time_conversion": '{"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}}'
}


def realize(record: dict[str, Any]) -> dict[str, Any]:
    """A recorded record with its timestamp placeholder replaced by a real epoch number."""
    stream = dict(record["dynamodb"])
    stream["ApproximateCreationDateTime"] = 1764086782.0
    return {**record, "dynamodb": stream}


@pytest.mark.parametrize("case", sorted(DDB_NOT_MATCHING))
def test_recorded_dynamodb_event_filter(case: str) -> None:
    """Exactly the recorded records pass the recorded pattern."""
    content = scenario(load(DDB_FILE), DDB_TEST, case)
    patterns = recorded_patterns(content["create_event_source_mapping_response"])
    if case in DDB_PATTERN_OVERRIDE:
        assert "<approximate-creation-datetime>" in patterns[0]
        patterns = [DDB_PATTERN_OVERRIDE[case]]
    filters = compile_filters(patterns, source="dynamodb")
    delivered = [
        realize(r) for event in content["lambda-multiple-log-events"] for r in event["Records"]
    ]
    assert delivered
    for record in delivered:
        assert filters.matches(record), record["dynamodb"]
    for record in DDB_NOT_MATCHING[case]:
        assert not filters.matches(record), record["dynamodb"]


def test_recorded_dynamodb_scenarios_are_all_covered() -> None:
    """Every recorded DynamoDB filtering scenario is exercised above."""
    assert recorded_cases(DDB_FILE, DDB_TEST) == set(DDB_NOT_MATCHING)


def test_recorded_dynamodb_numeric_filter_semantics() -> None:
    """The recorded numeric_filter case: N is a string, so only anything-but "101" decides."""
    content = scenario(load(DDB_FILE), DDB_TEST, "numeric_filter")
    [pattern] = recorded_patterns(content["create_event_source_mapping_response"])
    assert json.loads(pattern)["dynamodb"]["NewImage"]["numericFilter"]["N"] == [
        {"numeric": [">", 100]},
        {"anything-but": "101"},
    ]
    filters = compile_filters([pattern], source="dynamodb")
    for number, expected in (("42", True), ("500", True), ("101", False)):
        image = {"id": {"S": "x"}, "numericFilter": {"N": number}}
        assert filters.matches(ddb_put("INSERT", image)) is expected
    numeric_only = '{"dynamodb": {"NewImage": {"numericFilter": {"N": [{"numeric": [">", 100]}]}}}}'
    image = {"id": {"S": "x"}, "numericFilter": {"N": "500"}}
    assert not compile_filters([numeric_only], source="dynamodb").matches(ddb_put("INSERT", image))


KINESIS_TEST = (
    "tests/aws/services/lambda_/event_source_mapping/test_lambda_integration_kinesis.py::"
    "TestKinesisEventFiltering::test_kinesis_event_filtering_json_pattern"
)


def test_recorded_kinesis_event_filtering_json_pattern() -> None:
    """Two mappings on one stream, each passing only the message its pattern names."""
    content = load("esm-kinesis.json")[KINESIS_TEST]["recorded-content"]
    first = compile_filters(
        recorded_patterns(content["create_event_source_mapping_response"]), source="kinesis"
    )
    second = compile_filters(
        recorded_patterns(content["create_event_source_mapping_2_response"]), source="kinesis"
    )
    # The messages LocalStack's test put; function 1 logged the first one's decoded data.
    msg1 = {"event_type": "function_1", "message": "foo"}
    msg2 = {"event_type": "function_2", "message": "bar"}
    assert json.loads(content["kinesis-record-lambda-payload"]) == [msg1]
    record1 = kinesis(json.dumps(msg1).encode(), partition_key="custom")
    record2 = kinesis(json.dumps(msg2).encode(), partition_key="custom")
    assert first.matches(record1)
    assert not first.matches(record2)
    assert second.matches(record2)
    assert not second.matches(record1)
