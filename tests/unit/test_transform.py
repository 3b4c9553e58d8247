"""Input templates (poller.core.transform) against EventBridge Pipes' documented examples,
and the edges Pipes leaves open: variables, decoding, missing paths, escaping, hostile input.

The examples are those of the Pipes user guide, "Amazon EventBridge Pipes input
transformation" (sample InputTemplates on an SQS event, the EC2 transform example, implicit
body data parsing, common issues). Where poller differs from Pipes on purpose, the test says so.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from poller.core.transform import (
    MAX_DECODED_DEPTH,
    MAX_PLACEHOLDERS,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_DEPTH,
    VARIABLES,
    PipeVariables,
    TemplateError,
    compile_template,
    decode_record,
    ingestion_time,
    parse_json,
)

#: Pipes' sample variables (the doc's outputs use this pipe ARN and name).
PIPE = PipeVariables(
    pipe_arn="arn:aws:pipe:us-east-1:123456789012:pipe/example",
    pipe_name="example",
    source_arn="arn:aws:sqs:us-east-2:123456789012:my-queue",
    enrichment_arn="",
    target_arn="http://orders.example/ingest",
    ingestion_time="2026-12-05T12:00:00.123Z",
)

BODY = {"key": "value", "Records": [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3, "deep": [1, 2]}]}


def sqs_record(body: str = json.dumps(BODY)) -> dict[str, Any]:
    """The SQS record of Lambda's sample event, with a JSON body by default."""
    return {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
        "awsRegion": "us-east-2",
    }


def kinesis_record(data: str) -> dict[str, Any]:
    """A Lambda Kinesis record whose ``data`` is the given base64 text."""
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "1",
            "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": data,
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
    }


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


#: Pipes' EC2 sample event (the "Input transform example").
EC2_EVENT = {
    "version": "0",
    "id": "7bf73129-1428-4cd3-a780-95db273d1602",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2015-11-11T21:29:54Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
    "detail": {"instance-id": "i-0123456789", "state": "RUNNING"},
}


def render(template: str, record: Any, variables: PipeVariables = PIPE) -> Any:
    return compile_template(template).render(record, variables)


def refusal(template: str) -> str:
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    return str(caught.value)


# --- Pipes' documented examples -----------------------------------------------------------


def test_static_string() -> None:
    assert render('"Hello, sender"', sqs_record()) == "Hello, sender"


def test_json_path_to_a_string_is_that_string() -> None:
    assert render("<$.attributes.SenderId>", sqs_record()) == "AIDAIENQZJOLO23YVJ4VO"


def test_dynamic_string() -> None:
    assert render('"Hello, <$.attributes.SenderId>"', sqs_record()) == (
        "Hello, AIDAIENQZJOLO23YVJ4VO"
    )


def test_static_json_as_printed_is_refused_for_its_trailing_comma() -> None:
    # The guide prints this with a trailing comma, which no JSON parser accepts: poller says
    # where, at load, instead of sending invalid JSON.
    printed = '{\n  "key1": "value1",\n  "key2": "value2",\n  "key3": "value3",\n}'
    assert refusal(printed).startswith("line 5, column 1: the template is not valid JSON")
    fixed = printed.replace('"value3",', '"value3"')
    assert render(fixed, sqs_record()) == {"key1": "value1", "key2": "value2", "key3": "value3"}


def test_dynamic_json_as_printed_is_refused_for_its_missing_comma() -> None:
    printed = (
        '{\n  "key1": "value1"\n  "key2": <$.body.key>,\n  "d": <aws.pipes.event.ingestion-time>\n}'
    )
    message = refusal(printed)
    assert message.startswith("line 3, column 3: the template is not valid JSON")
    assert "Expecting ',' delimiter" in message
    fixed = printed.replace('"value1"\n', '"value1",\n')
    assert render(fixed, sqs_record()) == {
        "key1": "value1",
        "key2": "value",
        "d": "2026-12-05T12:00:00.123Z",
    }


def test_square_brackets_index_an_array_in_the_decoded_body() -> None:
    template = (
        '{\n  "key1": "value1",\n  "key2": <$.body.Records[3]>,\n'
        '  "d": <aws.pipes.event.ingestion-time>\n}'
    )
    assert render(template, sqs_record())["key2"] == {"n": 3, "deep": [1, 2]}
    assert render("<$.body.Records[3].deep[1]>", sqs_record()) == 2


def test_the_ec2_transform_example() -> None:
    template = """{
  "instance" : <$.detail.instance-id>,
  "state": <$.detail.state>,
  "pipeArn" : <aws.pipes.pipe-arn>,
  "pipeName" : <aws.pipes.pipe-name>,
  "originalEvent" : <aws.pipes.event.json>
}"""
    assert render(template, EC2_EVENT) == {
        "instance": "i-0123456789",
        "state": "RUNNING",
        "pipeArn": "arn:aws:pipe:us-east-1:123456789012:pipe/example",
        "pipeName": "example",
        "originalEvent": EC2_EVENT,
    }


def test_string_variables_need_no_quotes_and_may_have_them() -> None:
    # "Quotes are not required for variables that represent strings. They are permitted."
    bare = render('{"pipeArn": <aws.pipes.pipe-arn>, "id": <$.messageId>}', sqs_record())
    quoted = render('{"pipeArn": "<aws.pipes.pipe-arn>", "id": "<$.messageId>"}', sqs_record())
    assert bare == quoted == {"pipeArn": PIPE.pipe_arn, "id": sqs_record()["messageId"]}


def test_implicit_body_parsing_reaches_into_kinesis_data() -> None:
    # Pipes' flat Kinesis event has <$.data.someKey>; poller's records are Lambda's, where the
    # payload is kinesis.data.
    record = kinesis_record(b64('{"someKey": "someValue", "n": [1, 2]}'))
    assert render("<$.kinesis.data.someKey>", record) == "someValue"
    assert render('{"data": <$.kinesis.data>}', record) == {
        "data": {"someKey": "someValue", "n": [1, 2]}
    }


def test_a_lone_body_placeholder_is_the_object_itself() -> None:
    # Differs from Pipes on purpose: Pipes turns {"key": "value"} into "{key: value}" here
    # (its guide warns that this breaks JSON targets); poller sends the object.
    assert render("<$.body>", sqs_record('{"key": "value"}')) == {"key": "value"}
    assert render("  <$.body>\n", sqs_record('{"key": "value"}')) == {"key": "value"}


def test_an_object_inside_text_is_written_as_json_text() -> None:
    # Differs from Pipes on purpose: Pipes removes the inner quotes ("Body is {key: value}");
    # poller writes the compact JSON, escaped where it sits.
    assert render("Body is <$.body>", sqs_record('{"key": "value"}')) == 'Body is {"key":"value"}'
    assert render('{"t": "Body is <$.body>"}', sqs_record('{"key": "value"}')) == {
        "t": 'Body is {"key":"value"}'
    }


# --- Reserved variables ----------------------------------------------------------------------


def test_every_reserved_variable() -> None:
    template = "{" + ", ".join(f'"{name}": <{name}>' for name in VARIABLES) + "}"
    record = sqs_record('{"a": 1}')
    out = render(template, record)
    assert out["aws.pipes.pipe-arn"] == PIPE.pipe_arn
    assert out["aws.pipes.pipe-name"] == "example"
    assert out["aws.pipes.source-arn"] == PIPE.source_arn
    assert out["aws.pipes.enrichment-arn"] == ""
    assert out["aws.pipes.target-arn"] == PIPE.target_arn
    assert out["aws.pipes.event.ingestion-time"] == PIPE.ingestion_time
    # aws.pipes.event is the event as received, escaped: its JSON text, body still a string.
    assert json.loads(out["aws.pipes.event"]) == record
    # aws.pipes.event.json is the event itself, with the body decoded.
    assert out["aws.pipes.event.json"] == {**record, "body": {"a": 1}}


def test_event_json_is_null_when_the_payload_is_not_json() -> None:
    assert render('{"e": <aws.pipes.event.json>}', sqs_record("plain text")) == {"e": None}
    assert render("<aws.pipes.event.json>", kinesis_record(b64("plain"))) is None
    # A record with no payload field (DynamoDB) is JSON as it is.
    dynamodb = {"eventName": "INSERT", "dynamodb": {"Keys": {"id": {"S": "1"}}}}
    assert render("<aws.pipes.event.json>", dynamodb) == dynamodb


def test_ingestion_time_is_iso_8601_utc_to_the_millisecond() -> None:
    assert ingestion_time(1545084650.987) == "2018-12-17T22:10:50.987Z"
    assert ingestion_time(0) == "1970-01-01T00:00:00.000Z"


def test_variables_default_to_empty_strings() -> None:
    assert render('["<aws.pipes.pipe-arn>", <aws.pipes.source-arn>]', {}, PipeVariables()) == [
        "",
        "",
    ]


# --- Decoding --------------------------------------------------------------------------------


def test_a_body_that_is_not_json_stays_text_and_paths_into_it_are_missing() -> None:
    record = sqs_record("not json {")
    assert render("<$.body>", record) == "not json {"
    assert render('{"k": <$.body.key>, "t": "<$.body.key>"}', record) == {"k": None, "t": ""}


def test_kinesis_data_that_is_not_json_stays_base64() -> None:
    for data in (b64("hello"), b64(b"\xff\xfe\x00"), "%%% not base64 %%%", b64("[1,")):
        record = kinesis_record(data)
        assert render("<$.kinesis.data>", record) == data
        assert render("<$.kinesis.data[0]>", record) is None


def test_json_scalars_decode_too() -> None:
    assert render("<$.body>", sqs_record("42")) == 42
    assert render("<$.body>", sqs_record("[2.5, -1e-3]")) == [2.5, -0.001]
    assert render("<$.body>", sqs_record('"quoted"')) == "quoted"
    assert render("<$.kinesis.data>", kinesis_record(b64("true"))) is True


@pytest.mark.parametrize(
    "text",
    ["NaN", "[Infinity]", '{"x": -Infinity}', "1e999", "[-1e999]", "9" * 5000],
    ids=["nan", "infinity", "minus-infinity", "overflow", "minus-overflow", "huge-integer"],
)
def test_what_json_lacks_is_not_json(text: str) -> None:
    assert parse_json(text) is not None  # MISSING, a sentinel, not null
    assert render("<$.body>", sqs_record(text)) == text
    assert render("<aws.pipes.event.json>", sqs_record(text)) is None


def test_nesting_past_the_parser_is_not_json() -> None:
    deep = "[" * 100_000 + "]" * 100_000  # RecursionError inside json.loads
    assert render("<aws.pipes.event.json>", sqs_record(deep)) is None
    assert render("<$.body[0]>", sqs_record(deep)) is None


def test_nesting_past_the_decoded_limit_is_not_json() -> None:
    too_deep = "[" * (MAX_DECODED_DEPTH + 1) + "]" * (MAX_DECODED_DEPTH + 1)
    at_limit = "[" * MAX_DECODED_DEPTH + "]" * MAX_DECODED_DEPTH
    assert render("<$.body>", sqs_record(too_deep)) == too_deep
    assert render("<$.body>", sqs_record(at_limit)) == json.loads(at_limit)
    deep_objects = '{"a":' * (MAX_DECODED_DEPTH + 1) + "1" + "}" * (MAX_DECODED_DEPTH + 1)
    assert render("<$.body.a>", sqs_record(deep_objects)) is None


def test_many_brackets_without_depth_are_json() -> None:
    wide = json.dumps([[] for _ in range(MAX_DECODED_DEPTH * 2)] + [{"k": [1]}])
    assert render("<$.body[512].k[0]>", sqs_record(wide)) == 1


def test_decoding_leaves_the_record_untouched() -> None:
    record = sqs_record('{"a": 1}')
    before = copy.deepcopy(record)
    decoded, is_json = decode_record(record)
    assert (decoded["body"], is_json) == ({"a": 1}, True)
    assert record == before
    kinesis = kinesis_record(b64('{"a": 1}'))
    decoded, _ = decode_record(kinesis)
    assert decoded["kinesis"]["data"] == {"a": 1}
    assert kinesis["kinesis"]["data"] == b64('{"a": 1}')


def test_records_of_other_shapes() -> None:
    assert decode_record(["a"]) == (["a"], True)
    assert render("<$[0]>", ["a"]) == "a"
    assert render("<$.x>", "text") is None
    assert render("<aws.pipes.event>", "text") == "text"
    # A body that is not a string, or a kinesis without string data, is not decoded.
    assert render("<$.body.a>", {"body": {"a": 1}}) == 1
    assert render("<$.kinesis.data>", {"kinesis": {"data": 5}}) == 5
    assert render("<$.kinesis.data>", {"kinesis": "x"}) is None


# --- Missing paths ---------------------------------------------------------------------------


def test_missing_paths_are_null_as_values_and_empty_in_text() -> None:
    record = sqs_record()
    template = (
        '{"v": <$.nope>, "t": "a<$.nope>b", "i": <$.body.Records[99]>,'
        ' "d": <$.body.key[0]>, "l": <$.body.Records.n>, "s": <$.messageId.x>}'
    )
    assert render(template, record) == {
        "v": None,
        "t": "ab",
        "i": None,
        "d": None,
        "l": None,
        "s": None,
    }
    assert render("<$.nope>", record) is None
    assert render("sender <$.nope>!", record) == "sender !"


def test_root_path_is_the_decoded_record() -> None:
    assert render("<$>", sqs_record('{"a": 1}'))["body"] == {"a": 1}


def test_names_with_dashes_underscores_slashes_and_digits() -> None:
    record = {"a-b": {"c_d": {"e/f": {"9": "found"}}}}
    assert render("<$.a-b.c_d.e/f.9>", record) == "found"


# --- Escaping --------------------------------------------------------------------------------


def test_text_with_quotes_and_control_characters_stays_valid_json() -> None:
    nasty = 'a "quoted" \\ back\nline\ttab\x00nul\u2028sep'
    record = {"s": nasty}
    out = render('{"t": "<$.s>!", "v": <$.s>}', record)
    assert out == {"t": nasty + "!", "v": nasty}
    assert json.loads(json.dumps(out)) == out


def test_template_escapes_are_kept_around_placeholders() -> None:
    out = render('{"t": "q\\"<$.s>\\"\\u003c"}', {"s": "x"})
    assert out == {"t": 'q"x"<'}


def test_values_written_as_text() -> None:
    record = {"n": 1.5, "i": 7, "b": False, "z": None, "o": {"k": ["é"]}}
    out = render('"<$.n>|<$.i>|<$.b>|<$.z>|<$.o>|<$.missing>"', record)
    assert out == '1.5|7|false|null|{"k":["é"]}|'


def test_values_json_cannot_write_are_empty_text() -> None:
    record: dict[str, Any] = {"nan": float("nan"), "set": {1, 2}}
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    record["deep"] = deep
    assert render('"<$.nan>|<$.set>|<$.deep>"', record) == "||"
    assert render("<aws.pipes.event>", record) == ""


def test_adjacent_placeholders_and_literals() -> None:
    out = render('["<$.a><$.b>", "<$.a>", 3, 2.5, true, false, null, {"k": []}]', {"a": 1, "b": 2})
    assert out == ["12", "1", 3, 2.5, True, False, None, {"k": []}]


def test_a_quoted_text_that_is_not_one_json_string_is_free_text() -> None:
    assert render('"a" and "<$.b>"', {"b": "c"}) == '"a" and "c"'


def test_rendered_containers_are_fresh_per_record() -> None:
    template = compile_template('{"static": {"k": [1]}, "v": <$.a>}')
    first = template.render({"a": 1}, PIPE)
    first["static"]["k"].append(2)
    assert template.render({"a": 1}, PIPE) == {"static": {"k": [1]}, "v": 1}
    assert template.text == '{"static": {"k": [1]}, "v": <$.a>}'


# --- Compile errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("<$.a", "column 1: unbalanced '<'"),
        ('{"a": <$.a <$.b>}', "column 7: unbalanced '<'"),
        ("x <$.a\n>", "line 1, column 3: unbalanced '<'"),
        ("<>", "column 1: empty placeholder <>"),
        ("hi <aws.pipes.nope>", "column 4: unknown variable <aws.pipes.nope>"),
        ("<detail>", "column 1: unknown variable <detail>"),
        ("<" + "v" * 70 + ">", "column 1: unknown variable <" + "v" * 57 + "...>;"),
        ("<$.a.*>", "column 1: the * wildcard is not supported"),
        ("<$.a[*]>", "column 1: the * wildcard is not supported"),
        ("<$..a>", "column 1: bad path '$..a'"),
        ("<$.a[x]>", "column 1: bad path '$.a[x]'"),
        ("<$ .a>", "column 1: bad path '$ .a'"),
        ("<$.a b>", "column 1: bad path '$.a b'"),
        ("{<$.k>: 1}", "column 2: a placeholder cannot be an object key"),
        ('{"a": {"x<$.k>": 1}}', "column 10: a placeholder cannot be an object key"),
        ('["<aws.pipes.event.json>"]', "column 3: <aws.pipes.event.json> is a JSON value"),
        ("Event: <aws.pipes.event.json>", "column 8: <aws.pipes.event.json> is a JSON value"),
        ('{"a": 1,\n "b": <$.b>\n "c": 2}', "line 3, column 2: the template is not valid JSON"),
        ("[<$.a> <$.b>]", "column 8: the template is not valid JSON"),
        ('{"a": "\\u0000"}', "column 8: a template cannot hold a NUL character"),
        ("a\x00b", "column 2: a template cannot hold a NUL character"),
    ],
)
def test_refusals_name_the_column(template: str, expected: str) -> None:
    assert refusal(template).startswith(expected)


def test_a_template_over_the_length_limit() -> None:
    assert refusal("x" * (MAX_TEMPLATE_CHARS + 1)) == (
        f"the template is {MAX_TEMPLATE_CHARS + 1} characters long; at most {MAX_TEMPLATE_CHARS}"
    )
    compile_template("x" * MAX_TEMPLATE_CHARS)


def test_too_many_placeholders() -> None:
    allowed = "[" + ",".join(["<$.a>"] * MAX_PLACEHOLDERS) + "]"
    assert render(allowed, {"a": 1}) == [1] * MAX_PLACEHOLDERS
    over = "[" + ",".join(["<$.a>"] * (MAX_PLACEHOLDERS + 1)) + "]"
    column = 2 + MAX_PLACEHOLDERS * len("<$.a>,")
    assert refusal(over) == (
        f"column {column}: {MAX_PLACEHOLDERS + 1} placeholders; a template may hold at most "
        f"{MAX_PLACEHOLDERS}"
    )


def test_templates_nested_too_deep() -> None:
    limit = f"the template nests deeper than {MAX_TEMPLATE_DEPTH} levels"
    at_limit = "[" * MAX_TEMPLATE_DEPTH + "]" * MAX_TEMPLATE_DEPTH
    assert render(at_limit, {}) == json.loads(at_limit)
    assert refusal("[" * (MAX_TEMPLATE_DEPTH + 1) + "]" * (MAX_TEMPLATE_DEPTH + 1)) == limit
    objects = '{"a":' * (MAX_TEMPLATE_DEPTH + 1) + "1" + "}" * (MAX_TEMPLATE_DEPTH + 1)
    assert refusal(objects) == limit
    # Past the JSON parser's own recursion limit.
    assert refusal("[" * 4000 + "]" * 4000) == limit
