"""A hostile review of input templates (poller.core.transform, poller.targets.transform and
their config): what compiles but should not, what passes validation and fails later, what a
template can make of a small batch, and the edges the first tests left unstated.

Each test names the behaviour it asserts. Tests that failed on the reviewed commit (b6acbdc)
say so in their docstring; the others confirm edges no earlier test pinned down.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poller import cli
from poller.aws.clients import ClientFactory
from poller.config import AnyMapping, HttpTargetConfig, load_settings, parse_settings
from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.transform import (
    MAX_DECODED_DEPTH,
    MAX_TEMPLATE_DEPTH,
    PipeVariables,
    TemplateError,
    compile_template,
)
from poller.errors import ConfigError
from poller.targets import build_target
from poller.targets.lambda_ import encode_event
from poller.targets.python.runs import _private_copy
from poller.targets.transform import TransformingTarget
from poller.testing import RecordingTarget, success
from poller.types import InvokeResult, Outcome

QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:orders"
STREAM_ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/s"
PIPE = PipeVariables(pipe_name="orders")


def echo(event: Any, context: Any) -> Any:
    """A Python handler that returns what it was given (the build_target tests use it)."""
    return event


def render(template: str, record: Any) -> Any:
    return compile_template(template).render(record, PIPE)


def sqs(body: str, message_id: str = "m0", **fields: Any) -> dict[str, Any]:
    return {"messageId": message_id, "body": body, "eventSource": "aws:sqs", **fields}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def mapping(target: dict[str, Any], **fields: Any) -> AnyMapping:
    settings = parse_settings(
        {
            "mappings": [
                {"name": "orders", "event_source_arn": QUEUE_ARN, "target": target, **fields}
            ]
        }
    )
    return settings.mappings[0]


async def build(mapping_config: AnyMapping) -> Any:
    return await build_target(
        mapping_config.target,
        clients=ClientFactory(region="eu-west-1", credentials={}),
        partition="aws",
        region="eu-west-1",
        account_id="123456789012",
        mapping=mapping_config.name,
        mapping_config=mapping_config,
    )


# --- Compile: every refusal is a TemplateError naming its column ---------------------------


@pytest.mark.parametrize(
    ("template", "first", "last"),
    [
        ("[1<$.a>]", 2, 3),  # a digit then a value: the filler "10   " is valid, the template not
        ('{"n": -<$.a>}', 7, 8),  # a minus sign before a value
        ("[1e<$.a>]", 2, 4),  # an exponent waiting for its digits
        ("[1.<$.a>]", 2, 4),  # a fraction waiting for its digits
        ("[-<$.a>]", 2, 3),
    ],
    ids=["digit-before", "minus-before", "exponent-before", "fraction-before", "bare-minus"],
)
def test_a_number_glued_to_a_value_placeholder_is_a_template_error_naming_its_column(
    template: str, first: int, last: int
) -> None:
    """Failed on b6acbdc: compile_template raised json.JSONDecodeError (the filler "0   " made
    the number valid, the marks did not), so the config said "Value error, Expecting value:
    line 1 column 7 (char 6)" instead of a column of the template. The column named is the
    number's or the placeholder's."""
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    column = int(str(caught.value).split(":")[0].removeprefix("column "))
    assert first <= column <= last


def test_a_glued_number_is_refused_by_the_config_in_the_fields_own_words() -> None:
    """Failed on b6acbdc: pydantic's "Value error, Expecting value: line 1 column 7 (char 6)"."""
    with pytest.raises(ConfigError) as caught:
        mapping({"type": "http", "url": "http://h/x", "input_template": '{"n": -<$.a>}'})
    line = str(caught.value).splitlines()[1]
    assert line.startswith("  - mappings[0] (orders).target.input_template: column ")
    assert "Value error" not in line


def _compiled_or_refusal(template: str) -> Any:
    """The compiled template, or the TemplateError's message; anything else raised escapes."""
    try:
        return compile_template(template)
    except TemplateError as exc:
        return str(exc)


def test_an_index_too_long_for_an_int_is_a_template_error() -> None:
    """Failed on b6acbdc: int() raised ValueError (Python's 4300-digit limit) out of
    compile_template; an index past any list is at best missing, never a crash of the loader."""
    outcome = _compiled_or_refusal("<$.a[" + "9" * 5000 + "]>")
    if isinstance(outcome, str):
        assert outcome.startswith("column 1: ")
    else:
        assert outcome.render({"a": [1]}, PIPE) is None


def test_a_literal_less_than_in_json_is_written_as_an_escape() -> None:
    # Every "<" opens a placeholder, so a literal one is refused with its column...
    with pytest.raises(TemplateError, match=r"^column 11: unbalanced '<'"):
        compile_template('{"op": "a < b", "v": <$.v>}')
    # ...and JSON's escape writes it.
    assert render('{"op": "a \\u003c b", "v": <$.v>}', {"v": 1}) == {"op": "a < b", "v": 1}


def test_negative_and_wildcard_indexes_are_refused_at_load() -> None:
    for template in ("<$.a[-1]>", "<$.a[*]>", "<$.a[1:2]>"):
        with pytest.raises(TemplateError, match=r"^column 1: "):
            compile_template(template)


# --- Render: values, text, quoting -----------------------------------------------------------


def test_a_quoted_placeholder_of_a_bare_number_payload_keeps_the_text_as_sent() -> None:
    """Failed on b6acbdc: the body "1.10" was parsed as the float 1.1 and written back as
    "1.1" ("1E2" as "100.0", "-0" as "0"). In text the payload is text: decoding only lets a
    path look inside it, and a bare number has no inside."""
    for body in ("1.10", "1E2", "-0", "12345678901234567.89"):
        assert render('"version <$.body>"', sqs(f" {body}\n")) == f"version {body}"
        assert render('{"v": "<$.body>"}', sqs(body)) == {"v": body}
        kinesis = {"kinesis": {"data": b64(body.encode()), "sequenceNumber": "49"}}
        assert render('"version <$.kinesis.data>"', kinesis) == f"version {body}"
    # A number inside the payload is a JSON number like any other.
    assert render('"<$.body.v>"', sqs('{"v": 1.10}')) == "1.1"


def test_pipes_quoting_rules_for_every_json_type() -> None:
    # Pipes: quotes around variables that are strings (permitted, not required), none around
    # objects and arrays. In quotes every type is text; outside, every type is itself.
    record = sqs(json.dumps({"s": 'a"b\\c', "n": 2.5, "t": True, "z": None, "l": [1], "o": {}}))
    values = render(
        '{"s": <$.body.s>, "n": <$.body.n>, "t": <$.body.t>, "z": <$.body.z>,'
        ' "l": <$.body.l>, "o": <$.body.o>}',
        record,
    )
    assert values == {"s": 'a"b\\c', "n": 2.5, "t": True, "z": None, "l": [1], "o": {}}
    text = render(
        '{"s": "<$.body.s>", "n": "<$.body.n>", "t": "<$.body.t>", "z": "<$.body.z>",'
        ' "l": "<$.body.l>", "o": "<$.body.o>"}',
        record,
    )
    assert text == {"s": 'a"b\\c', "n": "2.5", "t": "true", "z": "null", "l": "[1]", "o": "{}"}


def test_record_text_with_template_syntax_is_never_read_as_template() -> None:
    nasty = '<$.secret> "</x>" \\u0000 \x00 \u2028 <aws.pipes.event.json> 😀'
    record = {"s": nasty, "secret": "leak"}
    out = render('{"t": "[<$.s>]", "v": <$.s>, "a": ["<$.s>", <$.s>]}', record)
    assert out == {"t": f"[{nasty}]", "v": nasty, "a": [nasty, nasty]}
    assert json.loads(encode_event(out)) == out


def test_placeholders_side_by_side_in_text_and_arrays() -> None:
    record = {"a": "x", "b": 2, "c": None}
    assert render("<$.a><$.b><$.c><$.nope>", record) == "x2null"
    assert render('["<$.a><$.b>", <$.a>, <$.b>, <$.c>, <$.nope>]', record) == [
        "x2",
        "x",
        2,
        None,
        None,
    ]


def test_paths_into_values_that_are_not_containers_are_missing() -> None:
    record = sqs(json.dumps({"s": "text", "n": 5, "t": True, "l": [0]}))
    template = (
        '["<$.body.s.x>", <$.body.s[0]>, <$.body.n.x>, <$.body.t[0]>, <$.body.l.x>,'
        " <$.body.l[1]>, <$.messageId[0]>]"
    )
    assert render(template, record) == ["", None, None, None, None, None, None]


def test_kinesis_data_decoded_from_base64_of_invalid_utf8_stays_base64_everywhere() -> None:
    data = b64(b'{"a": "\xff"}')  # valid base64, valid-looking JSON, invalid UTF-8
    record = {"kinesis": {"data": data, "sequenceNumber": "49"}}
    out = render(
        '{"d": <$.kinesis.data>, "t": "<$.kinesis.data>", "a": <$.kinesis.data.a>}', record
    )
    assert out == {"d": data, "t": data, "a": None}
    assert render("<aws.pipes.event.json>", record) is None


def test_dynamodb_records_are_reached_as_they_are() -> None:
    record = {
        "eventID": "1",
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {"id": {"S": "k1"}},
            "NewImage": {"id": {"S": "k1"}, "n": {"N": "12.50"}, "body": {"S": "{}"}},
            "SequenceNumber": "111",
        },
    }
    template = (
        '{"id": <$.dynamodb.Keys.id.S>, "n": <$.dynamodb.NewImage.n.N>,'
        ' "seq": <$.dynamodb.SequenceNumber>, "b": <$.dynamodb.NewImage.body.S>}'
    )
    # The N value stays the string DynamoDB sent, and an attribute named body is not decoded.
    assert render(template, record) == {"id": "k1", "n": "12.50", "seq": "111", "b": "{}"}


def test_sqs_message_attributes_are_reached_by_name() -> None:
    record = sqs(
        "plain",
        messageAttributes={
            "tenant-id": {"stringValue": "t-1", "dataType": "String"},
            "blob_1": {"binaryValue": b64(b"\x00\x01"), "dataType": "Binary"},
        },
        attributes={"ApproximateReceiveCount": "3"},
    )
    template = (
        '{"tenant": <$.messageAttributes.tenant-id.stringValue>,'
        ' "blob": <$.messageAttributes.blob_1.binaryValue>,'
        ' "count": "<$.attributes.ApproximateReceiveCount>", "body": <$.body>}'
    )
    assert render(template, record) == {
        "tenant": "t-1",
        "blob": "AAE=",
        "count": "3",
        "body": "plain",
    }


def test_the_deepest_template_around_the_deepest_body_still_serializes_and_copies() -> None:
    deepest_body = "[" * MAX_DECODED_DEPTH + "]" * MAX_DECODED_DEPTH
    template = (
        "[" * (MAX_TEMPLATE_DEPTH - 1) + "<aws.pipes.event.json>" + "]" * (MAX_TEMPLATE_DEPTH - 1)
    )
    out = render(template, sqs(deepest_body))
    event = {"Records": [out]}
    assert json.loads(encode_event(event)) == event  # the HTTP target's encoding
    assert _private_copy(event) == event  # the Python target's copy


# --- The wrapper: what a template can make of a batch --------------------------------------


def _measuring(sizes: list[int]) -> RecordingTarget:
    def answer(event: Any) -> InvokeResult:
        sizes.append(len(encode_event(event)))
        return success()

    return RecordingTarget(default=answer)


async def _invoke(template: str, records: list[dict[str, Any]], inner: RecordingTarget) -> Any:
    target = TransformingTarget(inner, compile_template(template), shape="records", variables=PIPE)
    return await target.invoke({"Records": records})


@pytest.mark.anyio
async def test_a_template_cannot_hand_the_target_more_than_the_payload_limit() -> None:
    """Failed on b6acbdc: ten 64 KiB messages (a 640 KiB batch) through one hundred
    ``<$.body>`` reached the target as a 64 MiB payload (10 x 256 KiB messages: 262 MB, 0.8 GB
    of peak memory, enough to kill a small container). The engines cut batches at 6 MiB;
    a transformed batch past it must be refused (a function error, retried and routed like
    any other), never built and sent."""
    body = json.dumps({"blob": "x" * (64 * 1024)})
    records = [sqs(body, f"m{i}") for i in range(10)]
    sizes: list[int] = []
    result = await _invoke("[" + ", ".join(["<$.body>"] * 100) + "]", records, _measuring(sizes))
    assert all(size <= MAX_PAYLOAD_BYTES for size in sizes), sizes
    if not sizes:
        assert result.outcome is Outcome.FUNCTION_ERROR


@pytest.mark.anyio
async def test_rendering_text_placeholders_stays_within_a_few_payload_limits_of_memory() -> None:
    """Failed on b6acbdc: the same batch with the body written as text one hundred times
    allocated 130 MB (peak) before the target was even called."""
    body = json.dumps({"blob": "x" * (64 * 1024)})
    records = [sqs(body, f"m{i}") for i in range(10)]
    tracemalloc.start()
    try:
        await _invoke('"' + "<$.body.blob>" * 100 + '"', records, RecordingTarget())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 4 * MAX_PAYLOAD_BYTES, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.anyio
async def test_one_hundred_references_to_a_large_body_are_decoded_once() -> None:
    # The payload is decoded once per record, whatever the number of placeholders: the
    # hundred values are one object, not a hundred parses.
    body = json.dumps({"k": list(range(1000))})
    out = render("[" + ", ".join(["<$.body.k>"] * 100) + "]", sqs(body))
    assert len({id(value) for value in out}) == 1
    assert out[0] == list(range(1000))


# --- Config: what validation passes must start and run -------------------------------------


def _configured_or_refusal(target: dict[str, Any]) -> Any:
    """The mapping, or the ConfigError's message."""
    try:
        return mapping(target)
    except ConfigError as exc:
        return str(exc)


@pytest.mark.anyio
async def test_batch_shape_without_a_template_is_not_silently_ignored() -> None:
    """Failed on b6acbdc: ``batch_shape: array`` without ``input_template`` was accepted and
    the handler got ``{"Records": [...]}``. Either the config refuses it, or it is honoured."""
    target = {"type": "python", "handler": f"{__name__}:echo", "batch_shape": "array"}
    outcome = _configured_or_refusal(target)
    if isinstance(outcome, str):
        assert "batch_shape" in outcome
        return
    built = await build(outcome)
    try:
        result = await built.invoke({"Records": [sqs('{"a": 1}')]})
    finally:
        await built.aclose()
    assert isinstance(result.payload, list)


def _windowed_config(tmp_path: Path, shape: str) -> Path:
    path = tmp_path / "poller.yaml"
    target = {
        "type": "python",
        "handler": f"{__name__}:echo",
        "input_template": "<$.kinesis.data>",
        "batch_shape": shape,
    }
    config = {
        "mappings": [
            {
                "name": "windows",
                "event_source_arn": STREAM_ARN,
                "starting_position": "TRIM_HORIZON",
                "tumbling_window_in_seconds": 60,
                "target": target,
            }
        ]
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_validate_refuses_a_bare_array_with_a_tumbling_window_as_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Failed on b6acbdc: ``poller validate`` said "valid" (with and without --config-only),
    then ``poller run`` refused the same file at start-up. What run refuses for the config
    alone must be refused by the config's validation."""
    path = _windowed_config(tmp_path, "array")
    assert cli.main(["validate", "--config-only", "--config", str(path)]) == cli.EXIT_USAGE
    assert "batch_shape" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="batch_shape"):
        parse_settings(json.loads(path.read_text()))


def test_validate_accepts_the_records_shape_with_a_tumbling_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _windowed_config(tmp_path, "records")
    assert cli.main(["validate", "--config-only", "--config", str(path)]) == cli.EXIT_OK
    assert "valid" in capsys.readouterr().out


def test_pipes_folded_yaml_examples_load_and_render(tmp_path: Path) -> None:
    # The guide writes templates as YAML folded scalars (InputTemplate: >); the same in
    # poller's YAML loads, compiles and renders as JSON.
    path = tmp_path / "poller.yaml"
    path.write_text(
        "mappings:\n"
        "  - name: orders\n"
        f"    event_source_arn: {QUEUE_ARN}\n"
        "    target:\n"
        "      type: http\n"
        "      url: http://127.0.0.1:9/x\n"
        "      input_template: >\n"
        "        {\n"
        '          "key1": "Hello, <$.attributes.SenderId>",\n'
        '          "key2": <$.body.Records[1]>,\n'
        '          "d": <aws.pipes.event.ingestion-time>\n'
        "        }\n"
    )
    target = load_settings(path, environ={}).mappings[0].target
    assert isinstance(target, HttpTargetConfig)
    template = target.input_template
    assert template is not None
    record = sqs(json.dumps({"Records": [{"n": 0}, {"n": 1}]}), attributes={"SenderId": "AID"})
    out = compile_template(template).render(record, PipeVariables(ingestion_time="T"))
    assert out == {"key1": "Hello, AID", "key2": {"n": 1}, "d": "T"}


#: JSON's tokens and pieces of tokens, to splice around a placeholder.
_TOKENS = st.sampled_from(
    ["[", "]", "{", "}", ",", ":", '"k"', '"', " ", "-", "1", "0", ".", "e", "+", "true", "\\"]
)
_PLACEHOLDERS = st.sampled_from(["<$.a>", "<$.b[0]>", "<aws.pipes.pipe-name>"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKENS, max_size=3), _PLACEHOLDERS, st.lists(_TOKENS, max_size=3))
def test_json_led_templates_compile_or_are_refused_with_a_template_error(
    before: list[str], placeholder: str, after: list[str]
) -> None:
    """Failed on b6acbdc (for example "[-<$.a>]", which the fuzz tier's mostly valid
    templates never draw): whatever JSON pieces surround a placeholder, compiling gives a
    template whose renders are strict JSON, or a TemplateError."""
    outcome = _compiled_or_refusal("[" + "".join(before) + placeholder + "".join(after) + "]")
    if not isinstance(outcome, str):
        rendered = outcome.render({"a": 'x"', "b": [1]}, PIPE)
        assert json.loads(json.dumps(rendered, allow_nan=False)) == rendered
