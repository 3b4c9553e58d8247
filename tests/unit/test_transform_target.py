"""The input-template wrapper (poller.targets.transform) and how build_target applies it.

The wrapper is driven over ``RecordingTarget`` (a fake of our Target interface); the
build_target tests use real HTTP and Python target configs, and a Python handler of this
module that returns what it was given.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from poller.aws.clients import ClientFactory
from poller.config import AnyMapping, HttpTargetConfig, PythonTargetConfig, parse_settings
from poller.core.transform import PipeVariables, Template, compile_template
from poller.errors import ConfigError
from poller.targets import (
    GuardedTarget,
    HttpTarget,
    TransformingTarget,
    build_target,
    mapping_arn_of,
)
from poller.targets.python import PythonTarget
from poller.targets.transform import INPUT_TRANSFORM_ERROR
from poller.testing import RecordingTarget
from poller.types import Outcome

pytestmark = pytest.mark.anyio

QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:orders"
SECRET = "4111-1111-1111-1111"


def echo(event: Any, context: Any) -> Any:
    """A Python handler that returns the event it got (used by the build_target tests)."""
    return event


def records(*bodies: Any) -> dict[str, Any]:
    return {
        "Records": [{"messageId": f"m{i}", "body": json.dumps(b)} for i, b in enumerate(bodies)]
    }


def wrapper(template: str, shape: Any = "records", **variables: Any) -> TransformingTarget:
    return TransformingTarget(
        RecordingTarget(function_arn="python:h:f"),
        compile_template(template),
        shape=shape,
        variables=PipeVariables(**variables),
        clock=lambda: 1545084650.987,
    )


def inner_events(target: TransformingTarget) -> list[Any]:
    inner = target.inner
    assert isinstance(inner, RecordingTarget)
    return inner.events


# -- the wrapper ------------------------------------------------------------------------------


async def test_records_shape_keeps_the_events_other_keys() -> None:
    target = wrapper('{"id": <$.messageId>, "n": <$.body.n>}')
    event = {**records({"n": 1}, {"n": 2}), "window": {"start": "x"}, "state": {"k": 1}}
    result = await target.invoke(event)
    assert result.outcome is Outcome.SUCCESS
    assert inner_events(target) == [
        {
            "Records": [{"id": "m0", "n": 1}, {"id": "m1", "n": 2}],
            "window": {"start": "x"},
            "state": {"k": 1},
        }
    ]
    assert event["Records"][0]["body"] == '{"n": 1}'  # the engine's batch is untouched


async def test_array_shape_sends_the_bare_array() -> None:
    target = wrapper("<$.body.n>", shape="array")
    await target.invoke(records({"n": 1}, {"n": 2}))
    assert inner_events(target) == [[1, 2]]


async def test_an_event_without_records() -> None:
    target = wrapper("<$.body>")
    await target.invoke({"window": {"start": "x"}, "isFinalInvokeForWindow": True})
    assert inner_events(target) == [
        {"window": {"start": "x"}, "isFinalInvokeForWindow": True, "Records": []}
    ]


async def test_ingestion_time_is_the_invocations_and_the_variables_are_passed() -> None:
    target = wrapper(
        '{"t": <aws.pipes.event.ingestion-time>, "p": <aws.pipes.pipe-name>}', pipe_name="orders"
    )
    await target.invoke(records(1))
    assert inner_events(target)[0]["Records"] == [{"t": "2018-12-17T22:10:50.987Z", "p": "orders"}]


class Exploding(Template):
    """A template whose render fails on the second record (render never does by design)."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        super().__init__("<$>", None)
        self.calls = 0

    def render_sized(self, record: Any, variables: PipeVariables) -> tuple[Any, int]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError(f"cannot render {record}")
        return record, 0


async def test_a_render_error_is_a_function_error_naming_the_position_not_the_data() -> None:
    inner = RecordingTarget()
    target = TransformingTarget(inner, Exploding(), shape="records", variables=PipeVariables())
    with structlog.testing.capture_logs() as logs:
        result = await target.invoke(records({"card": SECRET}, {"card": SECRET}, {}))
    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.payload == {
        "errorType": INPUT_TRANSFORM_ERROR,
        "errorMessage": "the input template failed on record 2 of 3 (RuntimeError)",
    }
    assert inner.events == []  # nothing was sent
    assert SECRET not in repr(result)
    assert SECRET not in repr(logs)
    assert [entry["event"] for entry in logs] == ["input_template.failed"]
    assert logs[0]["position"] == 2


async def test_close_and_identity_pass_through() -> None:
    target = wrapper("<$>")
    assert target.function_arn == "python:h:f"
    await target.aclose()
    inner = target.inner
    assert isinstance(inner, RecordingTarget)
    assert inner.closed


# -- build_target -----------------------------------------------------------------------------


def sqs_mapping(target: dict[str, Any]) -> AnyMapping:
    settings = parse_settings(
        {"mappings": [{"name": "orders", "event_source_arn": QUEUE_ARN, "target": target}]}
    )
    return settings.mappings[0]


async def build(config: Any, mapping: AnyMapping | None = None) -> Any:
    return await build_target(
        config,
        clients=ClientFactory(region="eu-west-1", credentials={}),
        partition="aws",
        region="eu-west-1",
        account_id="123456789012",
        mapping="orders",
        mapping_config=mapping,
    )


async def test_a_python_target_with_a_template_renders_the_mappings_variables() -> None:
    template = (
        '{"arn": <aws.pipes.pipe-arn>, "name": <aws.pipes.pipe-name>, '
        '"src": <aws.pipes.source-arn>, "tgt": <aws.pipes.target-arn>, '
        '"enr": <aws.pipes.enrichment-arn>, "n": <$.body.n>}'
    )
    mapping = sqs_mapping(
        {
            "type": "python",
            "handler": "tests.unit.test_transform_target:echo",
            "input_template": template,
            "batch_shape": "array",
        }
    )
    target = await build(mapping.target, mapping)
    try:
        assert isinstance(target, GuardedTarget)
        assert isinstance(target.inner, TransformingTarget)
        assert isinstance(target.inner.inner, PythonTarget)
        result = await target.invoke(records({"n": 7}))
    finally:
        await target.aclose()
    assert result.outcome is Outcome.SUCCESS
    [item] = result.payload
    assert item["arn"] == mapping_arn_of(mapping, "eu-west-1")
    assert item["arn"].startswith("arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:")
    assert item | {"arn": ""} == {
        "arn": "",
        "name": "orders",
        "src": QUEUE_ARN,
        "tgt": "python:tests.unit.test_transform_target:echo",
        "enr": "",
        "n": 7,
    }


async def test_without_the_mapping_the_variables_fall_back() -> None:
    config = PythonTargetConfig(
        type="python",
        handler="tests.unit.test_transform_target:echo",
        input_template="[<aws.pipes.pipe-arn>, <aws.pipes.pipe-name>, <aws.pipes.source-arn>]",
    )
    target = await build(config)
    try:
        result = await target.invoke(records(1))
    finally:
        await target.aclose()
    assert result.payload == {"Records": [["", "orders", ""]]}


async def test_an_http_target_with_a_template_is_wrapped_and_one_without_is_not() -> None:
    with_template = await build(
        HttpTargetConfig(type="http", url="http://127.0.0.1:9/x", input_template="<$.body>")
    )
    plain = await build(HttpTargetConfig(type="http", url="http://127.0.0.1:9/x"))
    try:
        assert isinstance(with_template.inner, TransformingTarget)
        assert isinstance(with_template.inner.inner, HttpTarget)
        assert with_template.function_arn == "http://127.0.0.1:9/x"
        assert isinstance(plain.inner, HttpTarget)
    finally:
        await with_template.aclose()
        await plain.aclose()


def test_the_mapping_arn_is_read_whatever_form_the_model_has() -> None:
    assert mapping_arn_of(SimpleNamespace(event_source_mapping_arn="arn:x"), "r") == "arn:x"
    assert mapping_arn_of(SimpleNamespace(event_source_mapping_arn=lambda r: f"arn:{r}"), "r") == (
        "arn:r"
    )
    assert mapping_arn_of(SimpleNamespace(), "r") == ""
    assert mapping_arn_of(SimpleNamespace(event_source_mapping_arn=None), "r") == ""


def test_config_refuses_a_bad_template_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        sqs_mapping({"type": "http", "url": "http://h/x", "input_template": '{"a": <$.a.*>}'})
    assert str(caught.value).splitlines()[1] == (
        "  - mappings[0] (orders).target.input_template: column 7: the * wildcard is not "
        "supported; name the field or index"
    )
    with pytest.raises(ConfigError) as caught:
        sqs_mapping({"type": "lambda", "function_name": "f", "batch_shape": "array"})
    assert "target.batch_shape: unknown field" in str(caught.value)


def windowed_settings(batch_shape: str) -> Any:
    target = {
        "type": "python",
        "handler": "tests.unit.test_transform_target:echo",
        "input_template": "<$.kinesis.data>",
        "batch_shape": batch_shape,
    }
    return parse_settings(
        {
            "mappings": [
                {
                    "name": "windows",
                    "event_source_arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/s",
                    "starting_position": "TRIM_HORIZON",
                    "tumbling_window_in_seconds": 60,
                    "target": target,
                }
            ]
        }
    )


async def test_a_bare_array_with_a_tumbling_window_is_refused_at_load() -> None:
    """Refused by the config itself, so ``poller validate`` says what ``poller run`` would."""
    with pytest.raises(ConfigError) as caught:
        windowed_settings("array")
    assert "batch_shape: array drops the tumbling window's state" in str(caught.value)
    # The records shape keeps the window's fields, so it is allowed.
    mapping = windowed_settings("records").mappings[0]
    built = await build(mapping.target, mapping)
    await built.aclose()
