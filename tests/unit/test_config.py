"""Tests of poller.config: defaults, ranges, messages, ${VAR} expansion and POLLER_* overrides."""

from __future__ import annotations

import copy
import json
import os
import socket
import textwrap
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller import cli
from poller.config import (
    SQS_DEFAULT_MAXIMUM_CONCURRENCY,
    AwsSettings,
    DestinationConfig,
    DynamoDBStreamMapping,
    HttpTargetConfig,
    KinesisMapping,
    LambdaTargetConfig,
    OnFailureDestination,
    PythonTargetConfig,
    ScalingConfig,
    Settings,
    SqsMapping,
    VisibilityBackoff,
    load_settings,
    parse_settings,
)
from poller.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def kinesis(settings: Settings) -> KinesisMapping:
    """The first mapping, which these tests write as a Kinesis one (narrowed for the type)."""
    mapping = settings.mappings[0]
    assert isinstance(mapping, KinesisMapping)
    return mapping


ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
DDB_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
SQS_ARN = "arn:aws:sqs:us-east-1:123456789012:orders-queue"
PYTHON_TARGET = {"type": "python", "handler": "examples.handlers:log_batch"}
AWS_NULL = (
    "1 validation error detected: Value null at 'startingPosition' failed to satisfy "
    "constraint: Member must not be null"
)
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders-failures"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:orders-failures"
BUCKET_ARN = "arn:aws:s3:::orders-failures"
DESTINATION = ("mappings", 0, "destination_config", "on_failure", "destination_arn")
DESTINATION_WHERE = "mappings[0] (orders).destination_config.on_failure.destination_arn"
DESTINATION_FORMS = (
    "expected an SQS queue ARN arn:<partition>:sqs:<region>:<12-digit account>:<queue>, "
    "an SNS topic ARN arn:<partition>:sns:<region>:<12-digit account>:<topic> "
    "or an S3 bucket ARN arn:<partition>:s3:::<bucket>, with partition aws, aws-cn or aws-us-gov"
)
RECORD_AGE_WHERE = "mappings[0] (orders).maximum_record_age_in_seconds"
RECORD_AGE_ALLOWED = "allowed -1 or 60 to 604800 (AWS MaximumRecordAgeInSeconds"
AWS_ENUM = (
    "1 validation error detected: Value 'invalid' at 'startingPosition' failed to satisfy "
    "constraint: Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]"
)

MAPPING_YAML = f"""\
mappings:
  - name: orders
    event_source_arn: {ARN}
    starting_position: TRIM_HORIZON
    target: {{type: python, handler: "examples.handlers:log_batch"}}
"""


def mapping(**fields: Any) -> dict[str, Any]:
    """A valid Kinesis mapping dict, with ``fields`` replacing or adding keys."""
    base: dict[str, Any] = {
        "name": "orders",
        "event_source_arn": ARN,
        "starting_position": "TRIM_HORIZON",
        "target": dict(PYTHON_TARGET),
    }
    base.update(fields)
    return base


def config(**sections: Any) -> dict[str, Any]:
    """A valid configuration dict with one mapping, with ``sections`` replacing or adding."""
    data: dict[str, Any] = {"mappings": [mapping()]}
    data.update(sections)
    return data


def write(tmp_path: Path, text: str, name: str = "poller.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ConfigError problems of loading ``path``; fails the test if it loads."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={} if environ is None else environ)
    assert caught.value.source == str(path)
    return caught.value.problems


def yaml_problems(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    return problems_of(write(tmp_path, text), environ)


def dict_problems(tmp_path: Path, data: Mapping[str, Any]) -> list[str]:
    return problems_of(write(tmp_path, yaml.safe_dump(dict(data))))


def load_dict(tmp_path: Path, data: Mapping[str, Any]) -> Settings:
    return load_settings(write(tmp_path, yaml.safe_dump(dict(data))), environ={})


def set_path(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``value`` at ``path``, creating sections on the way."""
    result = copy.deepcopy(data)
    node: Any = result
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    return result


# --------------------------------------------------------------------------- defaults


def test_defaults_follow_aws_kinesis_and_the_spec(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MAPPING_YAML), environ={})
    m = kinesis(settings)
    assert (m.batch_size, m.maximum_batching_window_in_seconds, m.enabled) == (100, 0, True)
    assert m.starting_position_timestamp is None
    assert m.shard_discovery_interval_seconds == 30.0
    assert m.invoke_identity_arn is None
    assert (m.maximum_retry_attempts, m.maximum_record_age_in_seconds) == (-1, -1)
    assert m.bisect_batch_on_function_error is False
    assert m.function_response_types == []
    assert m.report_batch_item_failures is False
    assert (m.destination_config, m.on_failure_arn) == (None, None)
    assert m.parallelization_factor == 1
    assert m.uuid is None
    assert m.target == PythonTargetConfig(
        type="python", handler="examples.handlers:log_batch", timeout_seconds=60.0
    )
    assert settings.aws == AwsSettings(region="us-east-1", endpoint_url=None, endpoints={})
    assert not settings.embedded.enabled
    assert (settings.embedded.host, settings.embedded.port) == ("127.0.0.1", 0)
    assert settings.embedded.shard_count == 2
    traffic = settings.embedded.traffic
    assert (traffic.enabled, traffic.records_per_second, traffic.partition_keys) == (True, 5.0, 8)
    assert settings.checkpoints.backend == "sqlite"
    assert settings.checkpoints.path == Path("poller-checkpoints.db")
    assert settings.checkpoints.synchronous == "full"
    assert settings.shutdown.drain_timeout_seconds == 30.0
    assert (settings.logging.level, settings.logging.format) == ("INFO", "auto")


def test_target_defaults() -> None:
    http = parse_settings(config(mappings=[mapping(target={"type": "http", "url": "http://h"})]))
    assert http.mappings[0].target == HttpTargetConfig(
        type="http", url="http://h", headers={}, timeout_seconds=30.0
    )
    lam = parse_settings(
        config(mappings=[mapping(target={"type": "lambda", "function_name": "f"})])
    )
    assert lam.mappings[0].target == LambdaTargetConfig(
        type="lambda", function_name="f", qualifier=None
    )


def test_stream_batch_size_above_10_with_window_0_is_allowed(tmp_path: Path) -> None:
    settings = load_dict(
        tmp_path,
        config(mappings=[mapping(batch_size=10000, maximum_batching_window_in_seconds=0)]),
    )
    assert settings.mappings[0].batch_size == 10000
    assert settings.mappings[0].maximum_batching_window_in_seconds == 0


def test_arn_helpers_and_identity() -> None:
    m = kinesis(
        parse_settings(
            config(
                mappings=[
                    mapping(
                        event_source_arn="arn:aws-cn:kinesis:cn-north-1:210987654321:stream/s.1"
                    )
                ]
            )
        )
    )
    assert (m.partition, m.region, m.account_id, m.stream_name) == (
        "aws-cn",
        "cn-north-1",
        "210987654321",
        "s.1",
    )
    assert m.identity_arn == "arn:aws-cn:iam::210987654321:role/poller"
    role = "arn:aws:iam::123456789012:role/esm"
    custom = kinesis(parse_settings(config(mappings=[mapping(invoke_identity_arn=role)])))
    assert custom.identity_arn == role


def test_settings_are_frozen() -> None:
    settings = parse_settings(config())
    for model, field, value in [
        (settings.mappings[0], "batch_size", 5),
        (settings.aws, "region", "x"),
    ]:
        with pytest.raises(ValueError, match="frozen"):
            setattr(model, field, value)


def test_endpoint_for_prefers_the_service_override() -> None:
    aws = parse_settings(
        config(aws={"endpoint_url": "http://all:4566", "endpoints": {"kinesis": "https://k:1"}})
    ).aws
    assert aws.endpoint_for("kinesis") == "https://k:1"
    assert aws.endpoint_for("sqs") == "http://all:4566"
    assert AwsSettings().endpoint_for("kinesis") is None


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-2", "us-gov-west-1", "cn-north-1"])
def test_region_forms_accepted(region: str) -> None:
    assert parse_settings(config(aws={"region": region})).aws.region == region


@pytest.mark.parametrize(("written", "stored"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_log_level_accepts_any_case(written: str, stored: str) -> None:
    assert parse_settings(config(logging={"level": written})).logging.level == stored


def test_parse_settings_validates_a_loaded_dict_and_names_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(config(mappings=[mapping(batch_size=0)]), source="inline")
    assert caught.value.source == "inline"
    assert "in inline" in str(caught.value)
    assert caught.value.problems == [
        "mappings[0] (orders).batch_size: 0 is out of range; allowed 1 to 10000 (AWS BatchSize)"
    ]


# --------------------------------------------------------------------------- range boundaries

M0 = ("mappings", 0)
BOUNDARIES = [
    # path, min, max, below min, above max, path in the message, allowed range in the message
    ((*M0, "batch_size"), 1, 10000, 0, 10001, "mappings[0] (orders).batch_size",
     "allowed 1 to 10000 (AWS BatchSize)"),
    ((*M0, "maximum_batching_window_in_seconds"), 0, 300, -1, 301,
     "mappings[0] (orders).maximum_batching_window_in_seconds",
     "allowed 0 to 300 (AWS MaximumBatchingWindowInSeconds)"),
    ((*M0, "maximum_retry_attempts"), -1, 10000, -2, 10001,
     "mappings[0] (orders).maximum_retry_attempts",
     "allowed -1 to 10000 (AWS MaximumRetryAttempts)"),
    ((*M0, "parallelization_factor"), 1, 10, 0, 11,
     "mappings[0] (orders).parallelization_factor", "allowed 1 to 10 (AWS ParallelizationFactor)"),
    ((*M0, "shard_discovery_interval_seconds"), 1, 3600, 0, 3601,
     "mappings[0] (orders).shard_discovery_interval_seconds", "allowed 1 to 3600"),
    (("embedded", "port"), 0, 65535, -1, 65536, "embedded.port", "allowed 0 to 65535"),
    (("embedded", "shard_count"), 1, 50, 0, 51, "embedded.shard_count", "allowed 1 to 50"),
    (("embedded", "traffic", "records_per_second"), 0.001, 1000, 0, 1001,
     "embedded.traffic.records_per_second", "allowed more than 0 up to 1000"),
    (("embedded", "traffic", "partition_keys"), 1, 10000, 0, 10001,
     "embedded.traffic.partition_keys", "allowed 1 to 10000"),
    (("shutdown", "drain_timeout_seconds"), 0.1, 3600, 0, 3601,
     "shutdown.drain_timeout_seconds", "allowed more than 0 up to 3600"),
    ((*M0, "target", "timeout_seconds"), 0.5, 900, 0, 901,
     "mappings[0] (orders).target.timeout_seconds", "allowed more than 0 up to 900"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "low", "high", "below", "above", "where", "allowed"), BOUNDARIES)
def test_range_boundaries(
    tmp_path: Path,
    path: tuple[str | int, ...],
    low: float,
    high: float,
    below: float,
    above: float,
    where: str,
    allowed: str,
) -> None:
    base = config()
    for good in (low, high):
        settings = load_dict(tmp_path, set_path(base, path, good))
        node: Any = settings
        for part in path:
            node = node[part] if isinstance(part, int) else getattr(node, part)
        assert node == good
    for bad in (below, above):
        assert dict_problems(tmp_path, set_path(base, path, bad)) == [
            f"{where}: {bad} is out of range; {allowed}"
        ]


@pytest.mark.parametrize(
    ("path", "max_length", "where"),
    [
        ((*M0, "name"), 64, "mappings[0]"),
        ((*M0, "target", "function_name"), 256, "mappings[0] (orders).target.function_name"),
    ],
)
def test_string_length_boundaries(
    tmp_path: Path, path: tuple[str | int, ...], max_length: int, where: str
) -> None:
    base = config(mappings=[mapping(target={"type": "lambda", "function_name": "f"})])
    assert load_dict(tmp_path, set_path(base, path, "a"))
    assert load_dict(tmp_path, set_path(base, path, "a" * max_length))
    [empty] = dict_problems(tmp_path, set_path(base, path, ""))
    assert empty.endswith(f"'' has 0 characters; allowed 1 to {max_length} characters")
    [long] = dict_problems(tmp_path, set_path(base, path, "a" * (max_length + 1)))
    assert f"has {max_length + 1} characters; allowed 1 to {max_length} characters" in long
    assert long.startswith(where)


# --------------------------------------------------------------------------- AT_TIMESTAMP


def test_at_timestamp_requires_a_timestamp(tmp_path: Path) -> None:
    problems = dict_problems(tmp_path, config(mappings=[mapping(starting_position="AT_TIMESTAMP")]))
    assert problems == [
        "mappings[0] (orders).starting_position_timestamp: required field is missing when "
        "starting_position is AT_TIMESTAMP; give epoch seconds or an ISO-8601 datetime"
    ]


def test_timestamp_in_the_future_is_rejected(tmp_path: Path) -> None:
    data = config(
        mappings=[mapping(starting_position="AT_TIMESTAMP", starting_position_timestamp=4102444800)]
    )
    [problem] = dict_problems(tmp_path, data)
    assert problem.startswith("mappings[0] (orders).starting_position_timestamp: 4102444800")
    assert "(2100-01-01T00:00:00+00:00) is in the future; allowed up to now" in problem
    assert "cannot be in the future" in problem


def test_timestamp_with_trim_horizon_is_rejected(tmp_path: Path) -> None:
    data = config(mappings=[mapping(starting_position_timestamp=1700000000)])
    assert dict_problems(tmp_path, data) == [
        "mappings[0] (orders).starting_position_timestamp: 1700000000.0 is set but "
        "starting_position is TRIM_HORIZON; allowed only with starting_position AT_TIMESTAMP"
    ]


@pytest.mark.parametrize(
    ("written", "epoch"),
    [
        ("'2024-01-01T00:00:00Z'", 1704067200.0),
        ("'2024-01-01T02:00:00+02:00'", 1704067200.0),
        ("'2024-01-01T00:00:00'", 1704067200.0),  # naive means UTC
        ("2024-01-01T00:00:00Z", 1704067200.0),  # unquoted: YAML gives a datetime
        ("2024-01-01", 1704067200.0),  # a YAML date is midnight UTC
        ("1704067200.5", 1704067200.5),
    ],
)
def test_timestamp_accepts_iso_and_epoch(tmp_path: Path, written: str, epoch: float) -> None:
    text = MAPPING_YAML.replace("TRIM_HORIZON", "AT_TIMESTAMP")
    text += f"    starting_position_timestamp: {written}\n"
    settings = load_settings(write(tmp_path, text), environ={})
    assert kinesis(settings).starting_position_timestamp == epoch


# --------------------------------------------------------------------------- error handling


@pytest.mark.parametrize("seconds", [-1, 60, 3600, 604800])
def test_record_age_accepts_minus_one_and_60_to_604800(tmp_path: Path, seconds: int) -> None:
    settings = load_dict(
        tmp_path, set_path(config(), (*M0, "maximum_record_age_in_seconds"), seconds)
    )
    assert kinesis(settings).maximum_record_age_in_seconds == seconds


@pytest.mark.parametrize("seconds", [0, 1, 59])
def test_record_age_below_60_is_rejected_like_aws(tmp_path: Path, seconds: int) -> None:
    data = set_path(config(), (*M0, "maximum_record_age_in_seconds"), seconds)
    assert dict_problems(tmp_path, data) == [
        f"{RECORD_AGE_WHERE}: {seconds} is out of range; {RECORD_AGE_ALLOWED}: the minimum "
        "valid value is 60 seconds; values less than 60 and greater than -1 fall within the "
        "parameter's absolute range but are not allowed)"
    ]


@pytest.mark.parametrize("seconds", [-2, -60, 604801])
def test_record_age_outside_the_absolute_range_is_rejected(tmp_path: Path, seconds: int) -> None:
    data = set_path(config(), (*M0, "maximum_record_age_in_seconds"), seconds)
    assert dict_problems(tmp_path, data) == [
        f"{RECORD_AGE_WHERE}: {seconds} is out of range; {RECORD_AGE_ALLOWED})"
    ]


def test_error_handling_fields_load_from_yaml(tmp_path: Path) -> None:
    text = MAPPING_YAML + textwrap.indent(
        textwrap.dedent(f"""\
            maximum_retry_attempts: 3
            maximum_record_age_in_seconds: 3600
            bisect_batch_on_function_error: true
            function_response_types: [ReportBatchItemFailures]
            destination_config:
              on_failure:
                destination_arn: {QUEUE_ARN}
            parallelization_factor: 2
        """),
        "    ",
    )
    m = kinesis(load_settings(write(tmp_path, text), environ={}))
    assert (m.maximum_retry_attempts, m.maximum_record_age_in_seconds) == (3, 3600)
    assert m.bisect_batch_on_function_error is True
    assert m.function_response_types == ["ReportBatchItemFailures"]
    assert m.report_batch_item_failures is True
    assert m.destination_config == DestinationConfig(
        on_failure=OnFailureDestination(destination_arn=QUEUE_ARN)
    )
    assert m.on_failure_arn == QUEUE_ARN
    assert m.parallelization_factor == 2


@pytest.mark.parametrize("types", [[], ["ReportBatchItemFailures"]])
def test_function_response_types_accepted(tmp_path: Path, types: list[str]) -> None:
    m = kinesis(load_dict(tmp_path, config(mappings=[mapping(function_response_types=types)])))
    assert m.function_response_types == types
    assert m.report_batch_item_failures is bool(types)


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (
            ["ReportBatchItemFailure"],
            "mappings[0] (orders).function_response_types[0]: 'ReportBatchItemFailure' is not "
            "allowed; allowed items [ReportBatchItemFailures] (AWS FunctionResponseTypes)",
        ),
        (
            ["ReportBatchItemFailures", "Other"],
            "mappings[0] (orders).function_response_types: ['ReportBatchItemFailures', 'Other'] "
            "has 2 items; allowed at most 1 (AWS FunctionResponseTypes)",
        ),
        (
            ["ReportBatchItemFailures", "ReportBatchItemFailures"],
            "mappings[0] (orders).function_response_types: ['ReportBatchItemFailures', "
            "'ReportBatchItemFailures'] has 2 items; allowed at most 1 (AWS FunctionResponseTypes)",
        ),
        (
            "ReportBatchItemFailures",
            "mappings[0] (orders).function_response_types: 'ReportBatchItemFailures' is not a list",
        ),
    ],
)
def test_function_response_types_rejected(tmp_path: Path, types: Any, expected: str) -> None:
    data = config(mappings=[mapping(function_response_types=types)])
    assert dict_problems(tmp_path, data) == [expected]


@pytest.mark.parametrize(
    "arn",
    [
        QUEUE_ARN,
        TOPIC_ARN,
        BUCKET_ARN,
        "arn:aws-us-gov:sqs:us-gov-west-1:123456789012:q_1",
        "arn:aws-cn:sns:cn-north-1:123456789012:t-1",
        "arn:aws:s3:::my.bucket-1",
        "arn:aws:sqs:us-east-1:123456789012:" + "q" * 80,
    ],
)
def test_on_failure_destination_forms_accepted(tmp_path: Path, arn: str) -> None:
    m = kinesis(load_dict(tmp_path, set_path(config(), DESTINATION, arn)))
    assert m.on_failure_arn == arn
    assert m.destination_config == DestinationConfig(
        on_failure=OnFailureDestination(destination_arn=arn)
    )


@pytest.mark.parametrize(
    ("arn", "head"),
    [
        (
            "arn:aws:sqs:us-east-1:123456789012:orders-failures.fifo",
            "is a FIFO queue; AWS on-failure destinations must be standard queues or topics, "
            "not FIFO",
        ),
        (
            "arn:aws:sns:us-east-1:123456789012:orders-failures.fifo",
            "is a FIFO topic; AWS on-failure destinations must be standard queues or topics, "
            "not FIFO",
        ),
        (ARN, "is an ARN of service 'kinesis', which cannot be an on-failure destination"),
        ("arn:aws:lambda:us-east-1:123456789012:function:f", "is an ARN of service 'lambda'"),
        ("orders-failures", "is not an ARN"),
        ("", "is not an ARN"),
        ("arn:aws:sqs:us-east-1:1234:q", "is not a valid SQS queue ARN"),
        ("arn:aws:sqs:us-east-1:123456789012:" + "q" * 81, "is not a valid SQS queue ARN"),
        ("arn:aws:sns:us-east-1:123456789012:my topic", "is not a valid SNS topic ARN"),
        ("arn:aws:s3:::Orders", "is not a valid S3 bucket ARN"),
        ("arn:aws:s3:::orders/key", "is not a valid S3 bucket ARN"),
        ("arn:aws-eu:sqs:us-east-1:123456789012:q", "is not a valid SQS queue ARN"),
    ],
)
def test_on_failure_destination_rejected(tmp_path: Path, arn: str, head: str) -> None:
    [problem] = dict_problems(tmp_path, set_path(config(), DESTINATION, arn))
    assert problem.startswith(f"{DESTINATION_WHERE}: {arn!r} {head}")
    assert problem.endswith(f"; {DESTINATION_FORMS}")


def test_on_failure_destination_shape_errors(tmp_path: Path) -> None:
    missing = set_path(config(), (*M0, "destination_config", "on_failure"), {})
    assert dict_problems(tmp_path, missing) == [
        f"{DESTINATION_WHERE}: required field is missing; {DESTINATION_FORMS}"
    ]
    typo = set_path(config(), (*M0, "destination_config", "onfailure"), {})
    assert dict_problems(tmp_path, typo) == [
        "mappings[0] (orders).destination_config.onfailure: unknown field; "
        "did you mean 'on_failure'?"
    ]
    too_long = QUEUE_ARN + "x" * (351 - len(QUEUE_ARN))
    [long] = dict_problems(tmp_path, set_path(config(), DESTINATION, too_long))
    assert long.startswith(DESTINATION_WHERE)
    assert long.endswith("has 351 characters; allowed at most 350 characters")


def test_destination_config_without_on_failure_reports_nothing(tmp_path: Path) -> None:
    m = kinesis(load_dict(tmp_path, config(mappings=[mapping(destination_config={})])))
    assert m.destination_config == DestinationConfig(on_failure=None)
    assert m.on_failure_arn is None


# --------------------------------------------------------------------------- mapping UUID


def test_explicit_uuid_is_used_and_stored_in_lower_case(tmp_path: Path) -> None:
    given = "14E0DB71-5D35-4EB5-B481-8945CF9D10C2"
    m = kinesis(load_dict(tmp_path, config(mappings=[mapping(uuid=given)])))
    assert m.uuid == m.mapping_uuid == given.lower()


def test_derived_uuid_is_stable_and_differs_by_name_and_stream() -> None:
    first = kinesis(parse_settings(config()))
    again = kinesis(parse_settings(config()))
    assert first.mapping_uuid == first.mapping_uuid == again.mapping_uuid
    assert str(uuid.UUID(first.mapping_uuid)) == first.mapping_uuid
    assert first.mapping_uuid == str(uuid.uuid5(uuid.NAMESPACE_URL, f"poller:orders:{ARN}"))
    renamed = kinesis(parse_settings(config(mappings=[mapping(name="payments")])))
    other_stream = parse_settings(config(mappings=[mapping(event_source_arn=ARN + "2")]))
    assert len({first.mapping_uuid, renamed.mapping_uuid, kinesis(other_stream).mapping_uuid}) == 3


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("not-a-uuid", "'not-a-uuid' is not valid; expected a UUID: 32 hex digits in groups of "
         "8-4-4-4-12 (for example 14e0db71-5d35-4eb5-b481-8945cf9d10c2)"),
        ("14e0db715d354eb5b4818945cf9d10c2", "'14e0db715d354eb5b4818945cf9d10c2' is not valid"),
        ("{14e0db71-5d35-4eb5-b481-8945cf9d10c2}", "'{14e0db71-5d35-4eb5-b481-8945cf9d10c2}' is "
         "not valid"),
        ("14e0db71-5d35-4eb5-b481-8945cf9d10cg", "'14e0db71-5d35-4eb5-b481-8945cf9d10cg' is "
         "not valid"),
        (5, "5 is not a string (quote it in YAML)"),
    ],
)  # fmt: skip
def test_invalid_uuid_is_rejected(tmp_path: Path, value: Any, detail: str) -> None:
    [problem] = dict_problems(tmp_path, config(mappings=[mapping(uuid=value)]))
    assert problem.startswith(f"mappings[0] (orders).uuid: {detail}")


# --------------------------------------------------------------------------- names, kinds, targets


def test_duplicate_mapping_names_name_the_duplicate(tmp_path: Path) -> None:
    other = mapping(event_source_arn=ARN.replace("orders", "other"))
    data = config(mappings=[mapping(), mapping(name="b", event_source_arn=ARN + "2"), other])
    assert dict_problems(tmp_path, data) == [
        "mappings: name 'orders' is used by mappings[0] and mappings[2]; "
        "mapping names must be unique"
    ]


def test_at_least_one_mapping(tmp_path: Path) -> None:
    assert dict_problems(tmp_path, {"mappings": []}) == [
        "mappings: no mapping is configured; give at least one, or turn on control_api "
        "(enabled: true) to create mappings through the API"
    ]
    assert dict_problems(tmp_path, {"aws": {"region": "us-east-1"}}) == [
        "mappings: no mapping is configured; give at least one, or turn on control_api "
        "(enabled: true) to create mappings through the API"
    ]
    assert load_dict(tmp_path, {"control_api": {"enabled": True}}).mappings == []


def test_unknown_field_suggests_the_close_name(tmp_path: Path) -> None:
    assert dict_problems(tmp_path, config(mappings=[mapping(batch_sise=5)])) == [
        "mappings[0] (orders).batch_sise: unknown field; did you mean 'batch_size'?"
    ]


def test_unknown_field_without_a_close_name_lists_the_fields(tmp_path: Path) -> None:
    assert dict_problems(tmp_path, config(shutdown={"zzz": 1})) == [
        "shutdown.zzz: unknown field; allowed fields: drain_timeout_seconds"
    ]


SUPPORTED = (
    "Supported source types: kinesis (arn:<partition>:kinesis:<region>:<12-digit account>:"
    "stream/<name>, or a consumer's arn:<partition>:kinesis:<region>:<12-digit account>:"
    "stream/<name>/consumer/<consumer>:<creation epoch>, with partition aws, aws-cn or "
    "aws-us-gov), dynamodb (arn:<partition>:"
    "dynamodb:<region>:<12-digit account>:table/<table>/stream/<label> with partition aws, "
    "aws-cn or aws-us-gov; <region> may be ddblocal, DynamoDB Local's), sqs (arn:<partition>:"
    "sqs:<region>:<12-digit account>:<queue> with "
    "partition aws, aws-cn or aws-us-gov (a FIFO queue's name ends in .fifo))"
)
SNS_SOURCE = "arn:aws:sns:us-east-1:123456789012:orders"


@pytest.mark.parametrize(
    ("arn", "head"),
    [
        (SNS_SOURCE, f"'{SNS_SOURCE}' is an ARN of service 'sns', a source poller does not"),
        ("arn:aws:s3:::bucket", "'arn:aws:s3:::bucket' is an ARN of service 's3'"),
        ("not-an-arn", "'not-an-arn' is not an ARN"),
    ],
)
def test_unsupported_event_source(tmp_path: Path, arn: str, head: str) -> None:
    [problem] = dict_problems(tmp_path, config(mappings=[mapping(event_source_arn=arn)]))
    assert problem.startswith(f"mappings[0] (orders).event_source_arn: {head}")
    assert "Unrecognized event source." in problem
    assert problem.endswith(SUPPORTED)


def test_missing_event_source_arn(tmp_path: Path) -> None:
    data = mapping()
    del data["event_source_arn"]
    [problem] = dict_problems(tmp_path, config(mappings=[data]))
    assert problem.startswith("mappings[0] (orders).event_source_arn: required field is missing.")
    assert "Unrecognized event source." in problem


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            {"type": "pithon", "handler": "a:b"},
            "target.type: 'pithon' is not allowed; allowed lambda, http, python",
        ),
        (
            {"handler": "a:b"},
            "target.type: required field is missing; allowed lambda, http, python",
        ),
        (
            {"type": "python"},
            "target.handler: required field is missing; expected package.module:function",
        ),
        (
            {"type": "python", "handler": "examples.handlers.log_batch"},
            "target.handler: 'examples.handlers.log_batch' is not valid; expected "
            "package.module:function, dotted identifiers and exactly one colon",
        ),
        (
            {"type": "python", "handler": "a:b:c"},
            "target.handler: 'a:b:c' is not valid; expected package.module:function",
        ),
        (
            {"type": "http", "url": "ftp://files.example.com"},
            "target.url: 'ftp://files.example.com' is not an http:// or https:// URL",
        ),
        ({"type": "http", "url": "http://"}, "target.url: 'http://' is not an http:// or https://"),
        (
            {"type": "lambda", "function_name": "my function"},
            "target.function_name: 'my function' is not valid; expected a function name, "
            "or a full or partial Lambda ARN",
        ),
        ("lambda", "target: 'lambda' is not a mapping of key: value pairs"),
    ],
)
def test_target_errors(tmp_path: Path, target: Any, expected: str) -> None:
    [problem] = dict_problems(tmp_path, config(mappings=[mapping(target=target)]))
    assert problem.startswith(f"mappings[0] (orders).{expected}")


@pytest.mark.parametrize(
    "function_name",
    [
        "my-function",
        "my-function:live",
        "123456789012:function:my-function",
        "arn:aws:lambda:us-east-1:123456789012:function:my-function:7",
    ],
)
def test_lambda_function_name_forms(function_name: str) -> None:
    target = {"type": "lambda", "function_name": function_name}
    settings = parse_settings(config(mappings=[mapping(target=target)]))
    assert isinstance(settings.mappings[0].target, LambdaTargetConfig)
    assert settings.mappings[0].target.function_name == function_name


def test_mappings_accept_model_instances() -> None:
    built = KinesisMapping.model_validate(mapping())
    assert parse_settings({"mappings": [built]}).mappings[0] == built


# --------------------------------------------------------------------------- invalid files
# Each names the field (with the mapping's name), the bad value and what is allowed.

INVALID_FILES = [
    pytest.param(
        MAPPING_YAML + "    batch_size: 20000\n",
        "mappings[0] (orders).batch_size: 20000 is out of range; "
        "allowed 1 to 10000 (AWS BatchSize)",
        id="batch-size-too-large",
    ),
    pytest.param(
        MAPPING_YAML + "    batch_size: abc\n",
        "mappings[0] (orders).batch_size: 'abc' is not a whole number",
        id="batch-size-not-a-number",
    ),
    pytest.param(
        MAPPING_YAML + "    maximum_batching_window_in_seconds: 1.5\n",
        "mappings[0] (orders).maximum_batching_window_in_seconds: 1.5 is not a whole number",
        id="window-fraction",
    ),
    pytest.param(
        MAPPING_YAML.replace("    starting_position: TRIM_HORIZON\n", ""),
        "mappings[0] (orders).starting_position: required field is missing; allowed LATEST, "
        f"AT_TIMESTAMP, TRIM_HORIZON. AWS says: {AWS_NULL}.",
        id="starting-position-missing",
    ),
    pytest.param(
        MAPPING_YAML.replace("TRIM_HORIZON", "invalid"),
        "mappings[0] (orders).starting_position: 'invalid' is not allowed; allowed LATEST, "
        f"AT_TIMESTAMP, TRIM_HORIZON. AWS says: {AWS_ENUM}",
        id="starting-position-enum",
    ),
    pytest.param(
        MAPPING_YAML.replace("TRIM_HORIZON", "AT_TIMESTAMP")
        + "    starting_position_timestamp: last tuesday\n",
        "mappings[0] (orders).starting_position_timestamp: 'last tuesday' is neither epoch "
        "seconds nor an ISO-8601 datetime (for example 2024-05-01T12:00:00Z)",
        id="timestamp-unparseable",
    ),
    pytest.param(
        MAPPING_YAML.replace("TRIM_HORIZON", "AT_TIMESTAMP")
        + "    starting_position_timestamp: yes\n",
        "mappings[0] (orders).starting_position_timestamp: true is not a time; give epoch "
        "seconds or an ISO-8601 datetime",
        id="timestamp-bool",
    ),
    pytest.param(
        MAPPING_YAML + "    enabled: maybe\n",
        "mappings[0] (orders).enabled: 'maybe' is not true or false",
        id="enabled-not-bool",
    ),
    pytest.param(
        MAPPING_YAML.replace("name: orders", "name: 'orders!'"),
        "mappings[0] (orders!).name: 'orders!' is not valid; expected letters, digits, '_', "
        "'.' and '-', starting with a letter or digit",
        id="name-pattern",
    ),
    pytest.param(
        MAPPING_YAML.replace("123456789012", "1234"),
        "mappings[0] (orders).event_source_arn: 'arn:aws:kinesis:us-east-1:1234:stream/orders' "
        "is not valid; expected arn:<partition>:kinesis:<region>:<12-digit account>:"
        "stream/<name>, or a consumer's arn:<partition>:kinesis:<region>:<12-digit account>:"
        "stream/<name>/consumer/<consumer>:<creation epoch>, with partition aws, aws-cn or "
        "aws-us-gov",
        id="kinesis-arn-short-account",
    ),
    pytest.param(
        MAPPING_YAML.replace("arn:aws:kinesis", "arn:aws-eu:kinesis"),
        "mappings[0] (orders).event_source_arn: 'arn:aws-eu:kinesis:us-east-1:123456789012:"
        "stream/orders' is not valid; expected arn:<partition>:kinesis:",
        id="kinesis-arn-partition",
    ),
    pytest.param(
        "aws:\n  region: useast1\n" + MAPPING_YAML,
        "aws.region: 'useast1' is not valid; expected a region name such as us-east-1",
        id="region",
    ),
    pytest.param(
        "aws:\n  endpoint_url: localhost:4566\n" + MAPPING_YAML,
        "aws.endpoint_url: 'localhost:4566' is not an http:// or https:// URL",
        id="endpoint-url-scheme",
    ),
    pytest.param(
        "aws:\n  endpoints:\n    kinesiss: http://localhost:4566\n" + MAPPING_YAML,
        "aws.endpoints.kinesiss: 'kinesiss' is not a service name poller uses; allowed kinesis, "
        "dynamodb, dynamodbstreams, sqs, sns, s3, lambda, sts, secretsmanager; "
        "did you mean 'kinesis'?",
        id="endpoint-service-name",
    ),
    pytest.param(
        "logging:\n  level: verbose\n" + MAPPING_YAML,
        "logging.level: 'VERBOSE' is not allowed; allowed DEBUG, INFO, WARNING, ERROR",
        id="log-level",
    ),
    pytest.param(
        "logging:\n  format: xml\n" + MAPPING_YAML,
        "logging.format: 'xml' is not allowed; allowed auto, json, console",
        id="log-format",
    ),
    pytest.param(
        "checkpoints:\n  synchronous: off\n" + MAPPING_YAML,
        "checkpoints.synchronous: false is not allowed; allowed full, normal",
        id="sqlite-synchronous",
    ),
    pytest.param(
        "checkpoints:\n  backend: redis\n" + MAPPING_YAML,
        "checkpoints.backend: 'redis' is not allowed; allowed sqlite, dynamodb",
        id="checkpoint-backend",
    ),
    pytest.param(
        "checkpoints:\n  backend: dynamodb\n" + MAPPING_YAML,
        "checkpoints: the dynamodb backend needs checkpoints.table, the lease table's name",
        id="lease-table-missing",
    ),
    pytest.param(
        "checkpoints:\n  backend: dynamodb\n  table: leases\n  lease_duration_seconds: 0.5\n"
        + MAPPING_YAML,
        "checkpoints.lease_duration_seconds: 0.5 is out of range; allowed 1 to 600",
        id="lease-duration-range",
    ),
    pytest.param(
        "embedded:\n  traffic:\n    records_per_second: .nan\n" + MAPPING_YAML,
        "embedded.traffic.records_per_second: nan is not a finite number",
        id="rate-nan",
    ),
    pytest.param(
        MAPPING_YAML.replace("name: orders", "name: 2024"),
        "mappings[0].name: 2024 is not a string (quote it in YAML)",
        id="name-number",
    ),
    pytest.param(
        MAPPING_YAML + "    invoke_identity_arn: my-role\n",
        "mappings[0] (orders).invoke_identity_arn: 'my-role' is not valid; expected an IAM ARN",
        id="identity-arn",
    ),
    pytest.param(
        MAPPING_YAML.replace(
            '{type: python, handler: "examples.handlers:log_batch"}',
            "{type: lambda, function_name: f, qualifier: 'v 1'}",
        ),
        "mappings[0] (orders).target.qualifier: 'v 1' is not valid; expected a version number, "
        "$LATEST or an alias name",
        id="qualifier",
    ),
    pytest.param(
        MAPPING_YAML.replace(
            '{type: python, handler: "examples.handlers:log_batch"}',
            "{type: http, url: 'http://h', headers: {X-Retry: 3}}",
        ),
        "mappings[0] (orders).target.headers.X-Retry: 3 is not a string (quote it in YAML)",
        id="header-value",
    ),
    pytest.param(
        MAPPING_YAML + "    maximum_retry_attempts: 10001\n",
        "mappings[0] (orders).maximum_retry_attempts: 10001 is out of range; "
        "allowed -1 to 10000 (AWS MaximumRetryAttempts)",
        id="retries-too-many",
    ),
    pytest.param(
        MAPPING_YAML + "    maximum_record_age_in_seconds: 30\n",
        "mappings[0] (orders).maximum_record_age_in_seconds: 30 is out of range; allowed -1 or "
        "60 to 604800 (AWS MaximumRecordAgeInSeconds: the minimum valid value is 60 seconds",
        id="record-age-below-60",
    ),
    pytest.param(
        MAPPING_YAML + "    bisect_batch_on_function_error: sometimes\n",
        "mappings[0] (orders).bisect_batch_on_function_error: 'sometimes' is not true or false",
        id="bisect-not-bool",
    ),
    pytest.param(
        MAPPING_YAML + "    function_response_types: [ReportBatchItemFailures, Retry]\n",
        "mappings[0] (orders).function_response_types: ['ReportBatchItemFailures', 'Retry'] has "
        "2 items; allowed at most 1 (AWS FunctionResponseTypes)",
        id="response-types-two",
    ),
    pytest.param(
        MAPPING_YAML + "    function_response_types: [reportbatchitemfailures]\n",
        "mappings[0] (orders).function_response_types[0]: 'reportbatchitemfailures' is not "
        "allowed; allowed items [ReportBatchItemFailures] (AWS FunctionResponseTypes)",
        id="response-types-case",
    ),
    pytest.param(
        MAPPING_YAML
        + "    destination_config:\n      on_failure:\n"
        + "        destination_arn: arn:aws:sqs:us-east-1:123456789012:failures.fifo\n",
        f"{DESTINATION_WHERE}: 'arn:aws:sqs:us-east-1:123456789012:failures.fifo' is a FIFO "
        f"queue; AWS on-failure destinations must be standard queues or topics, not FIFO; "
        f"{DESTINATION_FORMS}",
        id="destination-fifo-queue",
    ),
    pytest.param(
        MAPPING_YAML
        + "    destination_config:\n      on_failure:\n"
        + f"        destination_arn: {ARN}\n",
        f"{DESTINATION_WHERE}: '{ARN}' is an ARN of service 'kinesis', which cannot be an "
        f"on-failure destination; {DESTINATION_FORMS}",
        id="destination-kinesis",
    ),
    pytest.param(
        MAPPING_YAML + "    destination_config:\n      on_failure: arn:aws:sqs:us-east-1:1:q\n",
        "mappings[0] (orders).destination_config.on_failure: 'arn:aws:sqs:us-east-1:1:q' is not "
        "a mapping of key: value pairs",
        id="destination-flat",
    ),
    pytest.param(
        MAPPING_YAML + "    parallelization_factor: 0\n",
        "mappings[0] (orders).parallelization_factor: 0 is out of range; "
        "allowed 1 to 10 (AWS ParallelizationFactor)",
        id="parallelization-factor-zero",
    ),
    pytest.param(
        MAPPING_YAML + "    uuid: orders-esm\n",
        "mappings[0] (orders).uuid: 'orders-esm' is not valid; expected a UUID",
        id="uuid-pattern",
    ),
    pytest.param(
        "mapping:\n  - name: orders\n",
        "mapping: unknown field; did you mean 'mappings'?",
        id="top-level-typo",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_FILES)
def test_invalid_file_messages(tmp_path: Path, text: str, expected: str) -> None:
    problems = yaml_problems(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_at_once_without_pydantic_noise(tmp_path: Path) -> None:
    text = "shutdown:\n  drain_timeout_seconds: 0\n" + MAPPING_YAML + "    batch_size: 0\n"
    problems = yaml_problems(tmp_path, text)
    assert problems == [
        "shutdown.drain_timeout_seconds: 0 is out of range; allowed more than 0 up to 3600",
        "mappings[0] (orders).batch_size: 0 is out of range; allowed 1 to 10000 (AWS BatchSize)",
    ]
    rendered = str(ConfigError(problems, source="x"))
    for noise in ("pydantic", "errors.pydantic.dev", "Traceback", "Input should"):
        assert noise not in rendered


def test_path_shows_the_index_when_the_mapping_has_no_name(tmp_path: Path) -> None:
    data = mapping(batch_size=0)
    del data["name"]
    assert sorted(dict_problems(tmp_path, config(mappings=[data]))) == [
        "mappings[0].batch_size: 0 is out of range; allowed 1 to 10000 (AWS BatchSize)",
        "mappings[0].name: required field is missing; expected letters, digits, '_', '.' "
        "and '-', starting with a letter or digit",
    ]


def test_second_mapping_is_named_in_the_path(tmp_path: Path) -> None:
    second = mapping(name="payments", event_source_arn=ARN + "-2", batch_size=-5)
    assert dict_problems(tmp_path, config(mappings=[mapping(), second])) == [
        "mappings[1] (payments).batch_size: -5 is out of range; allowed 1 to 10000 (AWS BatchSize)"
    ]


# --------------------------------------------------------------------------- environment


def test_env_override_region_and_sections(tmp_path: Path) -> None:
    environ = {
        "POLLER_AWS__REGION": "eu-west-1",
        "POLLER_AWS__ENDPOINT_URL": "http://localhost:4566",
        "POLLER_CHECKPOINTS__PATH": "/data/c.db",
        "poller_logging__level": "debug",
        "POLLER_SHUTDOWN__DRAIN_TIMEOUT_SECONDS": "20",
        "POLLER_EMBEDDED__TRAFFIC__ENABLED": "false",
    }
    settings = load_settings(write(tmp_path, MAPPING_YAML), environ=environ)
    assert settings.aws.region == "eu-west-1"
    assert settings.aws.endpoint_url == "http://localhost:4566"
    assert settings.checkpoints.path == Path("/data/c.db")
    assert settings.logging.level == "DEBUG"
    assert settings.shutdown.drain_timeout_seconds == 20.0
    assert settings.embedded.traffic.enabled is False


def test_env_override_mapping_field_by_name(tmp_path: Path) -> None:
    environ = {
        "POLLER_MAPPINGS__orders__BATCH_SIZE": "500",
        "POLLER_MAPPINGS__orders__enabled": "false",
        "POLLER_MAPPINGS__orders__TARGET__TIMEOUT_SECONDS": "1.5",
    }
    m = kinesis(load_settings(write(tmp_path, MAPPING_YAML), environ=environ))
    assert (m.batch_size, m.enabled) == (500, False)
    assert isinstance(m.target, PythonTargetConfig)
    assert m.target.timeout_seconds == 1.5


def test_env_override_error_handling_fields(tmp_path: Path) -> None:
    environ = {
        "POLLER_MAPPINGS__orders__MAXIMUM_RETRY_ATTEMPTS": "3",
        "POLLER_MAPPINGS__orders__maximum_record_age_in_seconds": "3600",
        "POLLER_MAPPINGS__orders__BISECT_BATCH_ON_FUNCTION_ERROR": "true",
        "POLLER_MAPPINGS__orders__PARALLELIZATION_FACTOR": "4",
        "POLLER_MAPPINGS__orders__DESTINATION_CONFIG__ON_FAILURE__DESTINATION_ARN": TOPIC_ARN,
        "POLLER_MAPPINGS__orders__UUID": "14e0db71-5d35-4eb5-b481-8945cf9d10c2",
    }
    m = kinesis(load_settings(write(tmp_path, MAPPING_YAML), environ=environ))
    assert (m.maximum_retry_attempts, m.maximum_record_age_in_seconds) == (3, 3600)
    assert m.bisect_batch_on_function_error is True
    assert m.parallelization_factor == 4
    assert m.on_failure_arn == TOPIC_ARN
    assert m.mapping_uuid == "14e0db71-5d35-4eb5-b481-8945cf9d10c2"


def test_invalid_error_handling_override_names_the_variable(tmp_path: Path) -> None:
    environ = {
        "POLLER_MAPPINGS__orders__MAXIMUM_RECORD_AGE_IN_SECONDS": "59",
        "POLLER_MAPPINGS__orders__DESTINATION_CONFIG__ON_FAILURE__DESTINATION_ARN": "x.fifo",
    }
    age, destination = yaml_problems(tmp_path, MAPPING_YAML, environ)
    assert age.startswith(f"{RECORD_AGE_WHERE}: 59 is out of range; {RECORD_AGE_ALLOWED}")
    assert age.endswith("(set by POLLER_MAPPINGS__orders__MAXIMUM_RECORD_AGE_IN_SECONDS)")
    assert destination.startswith(f"{DESTINATION_WHERE}: 'x.fifo' is not an ARN; ")
    assert destination.endswith(
        "(set by POLLER_MAPPINGS__orders__DESTINATION_CONFIG__ON_FAILURE__DESTINATION_ARN)"
    )


def test_env_override_of_a_name_with_double_underscore(tmp_path: Path) -> None:
    text = MAPPING_YAML.replace("name: orders", "name: a__b")
    environ = {"POLLER_MAPPINGS__a__b__BATCH_SIZE": "7"}
    assert load_settings(write(tmp_path, text), environ=environ).mappings[0].batch_size == 7


def test_env_override_unknown_mapping_names_the_variable(tmp_path: Path) -> None:
    problems = yaml_problems(tmp_path, MAPPING_YAML, {"POLLER_MAPPINGS__Orders__BATCH_SIZE": "5"})
    assert problems == [
        "POLLER_MAPPINGS__Orders__BATCH_SIZE: no mapping is named 'Orders' (names match "
        "exactly); mappings: 'orders'; did you mean 'orders'?"
    ]


def test_env_override_without_a_field_is_an_error(tmp_path: Path) -> None:
    problems = yaml_problems(tmp_path, MAPPING_YAML, {"POLLER_MAPPINGS__orders": "5"})
    assert problems == ["POLLER_MAPPINGS__orders: expected POLLER_MAPPINGS__<name>__<FIELD>"]


def test_invalid_override_value_names_the_variable(tmp_path: Path) -> None:
    environ = {"POLLER_MAPPINGS__orders__BATCH_SIZE": "0", "POLLER_AWS__REGOIN": "eu-west-1"}
    assert yaml_problems(tmp_path, MAPPING_YAML, environ) == [
        "aws.regoin: unknown field; did you mean 'region'? (set by POLLER_AWS__REGOIN)",
        "mappings[0] (orders).batch_size: 0 is out of range; allowed 1 to 10000 (AWS BatchSize) "
        "(set by POLLER_MAPPINGS__orders__BATCH_SIZE)",
    ]


def test_poller_variables_without_a_path_are_not_overrides(tmp_path: Path) -> None:
    environ = {"POLLER_CONFIG": "/etc/poller.yaml", "OTHER__REGION": "x"}
    assert load_settings(write(tmp_path, MAPPING_YAML), environ=environ).aws.region == "us-east-1"


def test_variable_expansion(tmp_path: Path) -> None:
    text = (
        "aws:\n  region: ${REGION:-eu-west-1}\n  endpoint_url: http://${HOST}:4566\n"
        + MAPPING_YAML
        + "    batch_size: ${BATCH:-25}\n"
    )
    settings = load_settings(write(tmp_path, text), environ={"HOST": "ls", "BATCH": ""})
    assert settings.aws.region == "eu-west-1"  # unset: default
    assert settings.aws.endpoint_url == "http://ls:4566"
    assert settings.mappings[0].batch_size == 25  # empty: default, as in the shell
    settings = load_settings(write(tmp_path, text), environ={"HOST": "h", "REGION": "sa-east-1"})
    assert settings.aws.region == "sa-east-1"


def test_unset_variable_is_an_error(tmp_path: Path) -> None:
    text = "aws:\n  endpoint_url: ${ENDPOINT}\n  region: ${1BAD}\n" + MAPPING_YAML
    assert yaml_problems(tmp_path, text) == [
        "aws.endpoint_url: environment variable ENDPOINT is not set (used as ${ENDPOINT}); "
        "set it or give a default: ${ENDPOINT:-default}",
        "aws.region: '${1BAD}' is not a valid reference; use ${NAME} or ${NAME:-default}, "
        "or $${ for a literal ${",
    ]


def test_expansion_happens_before_overrides(tmp_path: Path) -> None:
    text = MAPPING_YAML.replace("name: orders", "name: ${STREAM:-orders}")
    environ = {"STREAM": "events", "POLLER_MAPPINGS__events__BATCH_SIZE": "9"}
    m = kinesis(load_settings(write(tmp_path, text), environ=environ))
    assert (m.name, m.batch_size) == ("events", 9)


def test_default_environ_is_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLLER_AWS__REGION", "ap-south-1")
    assert load_settings(write(tmp_path, MAPPING_YAML)).aws.region == "ap-south-1"


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.yaml") == ["file not found"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == ["is a directory, not a file"]


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    [problem] = yaml_problems(tmp_path, "mappings:\n  - name: x\n   bad: [\n")
    assert problem.startswith("YAML syntax error at line 3, column 4: expected <block end>")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    text = MAPPING_YAML + "    batch_size: 5\n    batch_size: 6\n"
    assert yaml_problems(tmp_path, text) == [
        "invalid YAML at line 7, column 5: duplicate key 'batch_size' (first at line 6)"
    ]


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("", "an empty file")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    assert yaml_problems(tmp_path, text) == [
        "the top level must be a mapping of sections (aws, embedded, checkpoints, shutdown, "
        f"memory, logging, observability, control_api, mappings); got {got}"
    ]


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MAPPING_YAML + "    batch_size: 0\n")
    with pytest.raises(ConfigError, match=f"invalid configuration in {path}:\n  - mappings"):
        load_settings(path, environ={})


# --------------------------------------------------------------------------- shipped examples


@pytest.mark.parametrize(
    ("name", "mappings"),
    [("embedded.yaml", 1), ("example-aws.yaml", 2), ("example-localstack.yaml", 1)],
)
def test_shipped_configs_load(name: str, mappings: int) -> None:
    settings = load_settings(REPO / "config" / name, environ={})
    assert len(settings.mappings) == mappings


def test_the_aws_example_shows_enhanced_fan_out() -> None:
    audit = load_settings(REPO / "config" / "example-aws.yaml", environ={}).mappings[1]
    assert isinstance(audit, KinesisMapping)
    assert audit.reads_pushed
    assert audit.enhanced_fan_out is not None
    assert audit.enhanced_fan_out.consumer_name == "poller-audit"


def test_embedded_config_is_the_local_demo() -> None:
    settings = load_settings(REPO / "config" / "embedded.yaml", environ={})
    assert settings.embedded.enabled
    assert settings.embedded.traffic.enabled
    assert settings.embedded.shard_count == 2
    assert settings.embedded.traffic.records_per_second == 5.0
    assert settings.checkpoints.path == Path(".work/embedded-checkpoints.db")
    m = kinesis(settings)
    assert (m.name, m.stream_name, m.account_id) == ("demo", "poller-demo", "123456789012")
    assert (m.starting_position, m.batch_size, m.maximum_batching_window_in_seconds) == (
        "TRIM_HORIZON",
        10,
        1,
    )
    assert m.target == PythonTargetConfig(type="python", handler="examples.handlers:log_batch")


def test_example_configs_use_their_targets() -> None:
    aws = load_settings(REPO / "config" / "example-aws.yaml", environ={})
    assert isinstance(aws.mappings[0].target, LambdaTargetConfig)
    m = kinesis(aws)
    assert (m.maximum_retry_attempts, m.maximum_record_age_in_seconds) == (3, 3600)
    assert m.bisect_batch_on_function_error is True
    assert m.report_batch_item_failures is False  # shown commented out
    assert m.on_failure_arn == "arn:aws:sqs:us-east-1:123456789012:orders-failures"
    assert m.parallelization_factor == 2
    local = load_settings(REPO / "config" / "example-localstack.yaml", environ={})
    assert local.aws.endpoint_url == "http://localhost:4566"
    assert isinstance(local.mappings[0].target, HttpTargetConfig)


# --------------------------------------------------------------------------- SQS mappings

FIFO_ARN = "arn:aws:sqs:us-east-1:123456789012:orders.fifo"
Q0 = "mappings[0] (orders)"


def sqs_mapping(**fields: Any) -> dict[str, Any]:
    """A valid SQS mapping dict, with ``fields`` replacing or adding keys."""
    base: dict[str, Any] = {
        "name": "orders",
        "event_source_arn": SQS_ARN,
        "target": dict(PYTHON_TARGET),
    }
    base.update(fields)
    return base


def sqs_problems(tmp_path: Path, **fields: Any) -> list[str]:
    return dict_problems(tmp_path, config(mappings=[sqs_mapping(**fields)]))


def test_sqs_defaults_follow_aws(tmp_path: Path) -> None:
    m = load_dict(tmp_path, config(mappings=[sqs_mapping()])).mappings[0]
    assert isinstance(m, SqsMapping)
    assert (m.source, m.queue_name, m.is_fifo) == ("sqs", "orders-queue", False)
    assert (m.batch_size, m.maximum_batching_window_in_seconds, m.enabled) == (10, 0, True)
    assert (m.scaling_config, m.maximum_concurrency) == (None, SQS_DEFAULT_MAXIMUM_CONCURRENCY)
    assert (m.function_response_types, m.report_batch_item_failures) == ([], False)
    assert m.visibility_timeout_on_failure is None
    assert m.receive_wait_time_seconds == 20
    assert (m.partition, m.region, m.account_id) == ("aws", "us-east-1", "123456789012")
    dumped = m.model_dump()
    for absent in ("destination_config", "starting_position", "starting_position_timestamp"):
        assert absent not in dumped


def test_sqs_mapping_loads_from_yaml_with_every_field(tmp_path: Path) -> None:
    text = f"""\
    mappings:
      - name: orders
        event_source_arn: {SQS_ARN}
        batch_size: 500
        maximum_batching_window_in_seconds: 5
        scaling_config: {{maximum_concurrency: 3}}
        function_response_types: [ReportBatchItemFailures]
        visibility_timeout_on_failure: {{base_seconds: 2, max_seconds: 60}}
        target: {{type: lambda, function_name: orders-consumer}}
    """
    m = load_settings(write(tmp_path, text), environ={}).mappings[0]
    assert isinstance(m, SqsMapping)
    assert (m.batch_size, m.maximum_batching_window_in_seconds) == (500, 5)
    assert m.scaling_config == ScalingConfig(maximum_concurrency=3)
    assert m.maximum_concurrency == 3
    assert m.report_batch_item_failures
    assert m.visibility_timeout_on_failure == VisibilityBackoff(base_seconds=2, max_seconds=60)


def test_sqs_empty_scaling_config_keeps_the_default_cap(tmp_path: Path) -> None:
    m = load_dict(tmp_path, config(mappings=[sqs_mapping(scaling_config={})])).mappings[0]
    assert isinstance(m, SqsMapping)
    assert m.maximum_concurrency == SQS_DEFAULT_MAXIMUM_CONCURRENCY


@pytest.mark.parametrize(("size", "window"), [(1, 0), (10, 0), (11, 1), (10000, 300)])
def test_sqs_batch_size_and_window_accepted(tmp_path: Path, size: int, window: int) -> None:
    fields = {"batch_size": size, "maximum_batching_window_in_seconds": window}
    m = load_dict(tmp_path, config(mappings=[sqs_mapping(**fields)])).mappings[0]
    assert (m.batch_size, m.maximum_batching_window_in_seconds) == (size, window)


@pytest.mark.parametrize("fields", [{"maximum_batching_window_in_seconds": 0}, {}])
def test_sqs_batch_above_10_needs_a_window_like_aws(tmp_path: Path, fields: Any) -> None:
    """With the window 0, written or by default, AWS's own message is quoted."""
    assert sqs_problems(tmp_path, batch_size=11, **fields) == [
        f"{Q0}.maximum_batching_window_in_seconds: 0 is not allowed with batch_size 11; "
        "allowed 1 to 300 when batch_size is greater than 10. AWS says: Maximum batch window "
        "in seconds must be greater than 0 if maximum batch size is greater than 10"
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"batch_size": 0},
            f"{Q0}.batch_size: 0 is out of range; allowed 1 to 10000 (AWS BatchSize)",
        ),
        (
            {"batch_size": 10001, "maximum_batching_window_in_seconds": 1},
            f"{Q0}.batch_size: 10001 is out of range; allowed 1 to 10000 (AWS BatchSize)",
        ),
        (
            {"maximum_batching_window_in_seconds": 301},
            f"{Q0}.maximum_batching_window_in_seconds: 301 is out of range; allowed 0 to 300 "
            "(AWS MaximumBatchingWindowInSeconds)",
        ),
        (
            {"scaling_config": {"maximum_concurrency": 1}},
            f"{Q0}.scaling_config.maximum_concurrency: 1 is out of range; allowed 2 to 1000 "
            "(AWS MaximumConcurrency)",
        ),
        (
            {"scaling_config": {"maximum_concurrency": 1001}},
            f"{Q0}.scaling_config.maximum_concurrency: 1001 is out of range; allowed 2 to 1000 "
            "(AWS MaximumConcurrency)",
        ),
        (
            {"function_response_types": ["ReportBatchItemFailure"]},
            f"{Q0}.function_response_types[0]: 'ReportBatchItemFailure' is not allowed; allowed "
            "items [ReportBatchItemFailures] (AWS FunctionResponseTypes)",
        ),
        (
            {"visibility_timeout_on_failure": {"base_seconds": 10, "max_seconds": 5}},
            f"{Q0}.visibility_timeout_on_failure.max_seconds: 5 is less than base_seconds (10); "
            "allowed 10 to 43200",
        ),
        (
            {"visibility_timeout_on_failure": {"base_seconds": -1}},
            f"{Q0}.visibility_timeout_on_failure.base_seconds: -1 is out of range; "
            "allowed 0 to 43200",
        ),
        (
            {"receive_wait_time_seconds": 0},
            f"{Q0}.receive_wait_time_seconds: 0 is out of range; allowed 1 to 20",
        ),
        (
            {"receive_wait_time_seconds": 21},
            f"{Q0}.receive_wait_time_seconds: 21 is out of range; allowed 1 to 20",
        ),
    ],
)
def test_sqs_field_errors(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    assert sqs_problems(tmp_path, **fields) == [expected]


def test_stream_only_fields_are_unknown_on_sqs(tmp_path: Path) -> None:
    [problem] = sqs_problems(tmp_path, parallelization_factor=2)
    assert problem.startswith(
        f"{Q0}.parallelization_factor: unknown field; allowed fields: name, event_source_arn, "
    )
    for field in ("scaling_config", "visibility_timeout_on_failure", "receive_wait_time_seconds"):
        assert field in problem


def test_sqs_fifo_batch_size_at_most_10(tmp_path: Path) -> None:
    m = load_dict(tmp_path, config(mappings=[sqs_mapping(event_source_arn=FIFO_ARN)]))
    assert isinstance(m.mappings[0], SqsMapping)
    assert m.mappings[0].is_fifo
    fifo_10 = config(mappings=[sqs_mapping(event_source_arn=FIFO_ARN, batch_size=10)])
    assert load_dict(tmp_path, fifo_10).mappings[0].batch_size == 10
    assert sqs_problems(
        tmp_path, event_source_arn=FIFO_ARN, batch_size=11, maximum_batching_window_in_seconds=1
    ) == [
        f"{Q0}.batch_size: 11 is out of range for a FIFO queue; allowed 1 to 10 (AWS BatchSize: "
        "FIFO queues take at most 10 messages per batch)"
    ]
    # Only the FIFO limit is reported, not also the window rule for sizes above 10.
    assert len(sqs_problems(tmp_path, event_source_arn=FIFO_ARN, batch_size=20)) == 1


def test_sqs_destination_config_is_refused_with_aws_message(tmp_path: Path) -> None:
    destination = {"on_failure": {"destination_arn": QUEUE_ARN}}
    [problem] = sqs_problems(tmp_path, destination_config=destination)
    assert problem.startswith(f"{Q0}.destination_config: an SQS mapping has no on-failure")
    assert "redrive policy" in problem
    assert problem.endswith(
        "AWS says: Unsupported DestinationConfig parameter for given event source mapping type."
    )


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("starting_position", "TRIM_HORIZON", "'TRIM_HORIZON'"),
        ("starting_position_timestamp", 1700000000, "1700000000"),
    ],
)
def test_sqs_refuses_stream_positions(tmp_path: Path, field: str, value: Any, shown: str) -> None:
    assert sqs_problems(tmp_path, **{field: value}) == [
        f"{Q0}.{field}: {shown} is set, but {field} does not apply to SQS queues: a queue has "
        "no positions; messages are received as they become visible"
    ]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:sqs:us-east-1:123456789012:" + "q" * 81,
        "arn:aws:sqs:us-east-1:123456789012:" + "q" * 76 + ".fifo",
        "arn:aws:sqs:us-east-1:12345:orders",
        "arn:aws:sqs:us-east-1:123456789012:or/ders",
    ],
)
def test_sqs_invalid_queue_arn(tmp_path: Path, arn: str) -> None:
    [problem] = sqs_problems(tmp_path, event_source_arn=arn)
    assert problem.startswith(f"{Q0}.event_source_arn: '{arn}' is not valid; expected arn:")
    assert "(a FIFO queue's name ends in .fifo)" in problem


def test_sqs_longest_queue_names_are_accepted(tmp_path: Path) -> None:
    for name in ("q" * 80, "q" * 75 + ".fifo"):
        arn = f"arn:aws-us-gov:sqs:us-gov-west-1:123456789012:{name}"
        m = load_dict(tmp_path, config(mappings=[sqs_mapping(event_source_arn=arn)])).mappings[0]
        assert isinstance(m, SqsMapping)
        assert m.queue_name == name


@pytest.mark.parametrize(("count", "delay"), [(0, 2), (1, 2), (2, 4), (5, 32), (6, 60), (99, 60)])
def test_visibility_backoff_doubles_by_receive_count_up_to_the_cap(count: int, delay: int) -> None:
    assert VisibilityBackoff(base_seconds=2, max_seconds=60).delay(count) == delay


def test_visibility_backoff_defaults() -> None:
    assert VisibilityBackoff() == VisibilityBackoff(base_seconds=5, max_seconds=900)


def test_env_override_of_an_sqs_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(config(mappings=[sqs_mapping()])))
    environ = {
        "POLLER_MAPPINGS__orders__BATCH_SIZE": "100",
        "POLLER_MAPPINGS__orders__MAXIMUM_BATCHING_WINDOW_IN_SECONDS": "2",
        "POLLER_MAPPINGS__orders__SCALING_CONFIG__MAXIMUM_CONCURRENCY": "4",
    }
    m = load_settings(path, environ=environ).mappings[0]
    assert isinstance(m, SqsMapping)
    assert (m.batch_size, m.maximum_batching_window_in_seconds, m.maximum_concurrency) == (
        100,
        2,
        4,
    )
    bad = {"POLLER_MAPPINGS__orders__BATCH_SIZE": "100"}
    [problem] = problems_of(path, bad)
    assert problem.startswith(f"{Q0}.maximum_batching_window_in_seconds: 0 is not allowed")


# --------------------------------------------------------------------------- DynamoDB Streams


def ddb_mapping(**fields: Any) -> dict[str, Any]:
    return mapping(**{"event_source_arn": DDB_ARN, **fields})


def test_dynamodb_stream_mapping_defaults(tmp_path: Path) -> None:
    m = load_dict(tmp_path, config(mappings=[ddb_mapping()])).mappings[0]
    assert isinstance(m, DynamoDBStreamMapping)
    assert not isinstance(m, KinesisMapping), "app and streams tell the sources apart by type"
    assert (m.source, m.table_name) == ("dynamodb", "Orders")
    assert (m.batch_size, m.maximum_batching_window_in_seconds) == (100, 0)
    assert (m.maximum_retry_attempts, m.maximum_record_age_in_seconds) == (-1, -1)
    assert (m.parallelization_factor, m.on_failure_arn) == (1, None)
    assert m.identity_arn == "arn:aws:iam::123456789012:role/poller"
    assert m.mapping_uuid == str(uuid.uuid5(uuid.NAMESPACE_URL, f"poller:orders:{DDB_ARN}"))
    assert "starting_position_timestamp" not in m.model_dump()


def test_kinesis_mapping_source() -> None:
    m = kinesis(parse_settings(config()))
    assert isinstance(m, KinesisMapping)
    assert m.source == "kinesis"


@pytest.mark.parametrize("position", ["TRIM_HORIZON", "LATEST"])
def test_dynamodb_starting_positions_accepted(tmp_path: Path, position: str) -> None:
    m = load_dict(tmp_path, config(mappings=[ddb_mapping(starting_position=position)]))
    assert m.mappings[0].starting_position == position


def test_dynamodb_at_timestamp_is_refused_with_aws_message(tmp_path: Path) -> None:
    data = config(mappings=[ddb_mapping(starting_position="AT_TIMESTAMP")])
    assert dict_problems(tmp_path, data) == [
        f"{Q0}.starting_position: 'AT_TIMESTAMP' is not allowed for a DynamoDB stream; allowed "
        f"TRIM_HORIZON, LATEST. AWS says: Unsupported starting position for arn type: {DDB_ARN}"
    ]


def test_dynamodb_has_no_starting_position_timestamp(tmp_path: Path) -> None:
    data = config(mappings=[ddb_mapping(starting_position_timestamp=1700000000)])
    [problem] = dict_problems(tmp_path, data)
    assert problem.startswith(f"{Q0}.starting_position_timestamp: unknown field")


def test_dynamodb_missing_starting_position_quotes_aws(tmp_path: Path) -> None:
    data = ddb_mapping()
    del data["starting_position"]
    [problem] = dict_problems(tmp_path, config(mappings=[data]))
    assert problem.startswith(f"{Q0}.starting_position: required field is missing")
    assert AWS_NULL in problem


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:dynamodb:us-east-1:123456789012:table/Orders",
        "arn:aws:dynamodb:us-east-1:123456789012:table/O/stream/2024-05-01T00:00:00.000",
        "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/",
    ],
)
def test_dynamodb_invalid_stream_arn(tmp_path: Path, arn: str) -> None:
    [problem] = dict_problems(tmp_path, config(mappings=[ddb_mapping(event_source_arn=arn)]))
    assert problem.startswith(
        f"{Q0}.event_source_arn: '{arn}' is not valid; expected arn:<partition>:dynamodb:"
    )


def test_dynamodb_error_handling_fields_apply(tmp_path: Path) -> None:
    fields = {
        "maximum_retry_attempts": 3,
        "bisect_batch_on_function_error": True,
        "destination_config": {"on_failure": {"destination_arn": QUEUE_ARN}},
        "parallelization_factor": 4,
    }
    m = load_dict(tmp_path, config(mappings=[ddb_mapping(**fields)])).mappings[0]
    assert isinstance(m, DynamoDBStreamMapping)
    assert (m.maximum_retry_attempts, m.bisect_batch_on_function_error) == (3, True)
    assert (m.on_failure_arn, m.parallelization_factor) == (QUEUE_ARN, 4)
    [problem] = dict_problems(
        tmp_path, config(mappings=[ddb_mapping(maximum_record_age_in_seconds=5)])
    )
    assert problem.startswith(f"{Q0}.maximum_record_age_in_seconds: 5 is out of range")


def test_one_file_holds_every_source_kind(tmp_path: Path) -> None:
    data = config(
        mappings=[
            mapping(name="k"),
            ddb_mapping(name="d"),
            sqs_mapping(name="q"),
        ]
    )
    settings = load_dict(tmp_path, data)
    assert [(type(m), m.source) for m in settings.mappings] == [
        (KinesisMapping, "kinesis"),
        (DynamoDBStreamMapping, "dynamodb"),
        (SqsMapping, "sqs"),
    ]
    data["mappings"][2]["name"] = "k"
    [problem] = dict_problems(tmp_path, data)
    assert "name 'k' is used by mappings[0] and mappings[2]" in problem


# ------------------------------------------------------------------- hostile files (#18, #20)


def alias_bomb(levels: int, width: int = 9) -> str:
    """The "billion laughs": each level is a list of `width` aliases of the level before."""
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n" + MAPPING_YAML


@pytest.mark.timeout(20)
@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, levels: int) -> None:
    """#18: 9 levels of 9 aliases stand for 387 million values; loading them never ended."""
    path = write(tmp_path, alias_bomb(levels))
    assert path.stat().st_size < 800
    started = time.process_time()  # CPU time: CI's load stretches the wall clock
    [problem] = problems_of(path)
    assert time.process_time() - started < 2
    assert problem.startswith("YAML refused at line ")
    assert "more than 100,000 values once aliases (*name) are expanded" in problem


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    text = MAPPING_YAML.replace("target:", "target: &t") + "  - {name: b, event_source_arn: "
    text += f"'{ARN}-b', starting_position: LATEST, target: *t}}\n"
    settings = load_settings(write(tmp_path, text), environ={})
    assert [m.target for m in settings.mappings] == [
        PythonTargetConfig.model_validate(PYTHON_TARGET)
    ] * 2


@pytest.mark.timeout(20)
def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    """A recursive alias made `${VAR}` expansion recurse until RecursionError."""
    [problem] = yaml_problems(tmp_path, "aws: &a {endpoints: [*a]}\n" + MAPPING_YAML)
    assert problem == "YAML refused at line 1, column 6: an alias refers to a node that contains it"


@pytest.mark.timeout(20)
def test_aliases_that_nest_too_deep_are_refused(tmp_path: Path) -> None:
    chain = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))
    [problem] = yaml_problems(tmp_path, chain + MAPPING_YAML)
    assert "nested more than 64 levels deep once aliases (*name) are expanded" in problem


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 2000 + "]" * 2000,
        "a: " + "{a: " * 400 + "1" + "}" * 400,
        "".join(f"{'  ' * level}a:\n" for level in range(400)),
    ],
)
def test_deeply_nested_yaml_is_a_one_line_error(tmp_path: Path, text: str) -> None:
    """#20: deep nesting raised RecursionError out of the YAML composer."""
    [problem] = yaml_problems(tmp_path, text + "\n")
    assert problem.startswith("YAML refused at line ")
    assert problem.endswith("nested more than 64 levels deep; a configuration is flatter")


def test_a_nul_byte_is_a_one_line_error(tmp_path: Path) -> None:
    """#20: the YAML reader's ReaderError escaped as a traceback."""
    path = tmp_path / "poller.yaml"
    path.write_bytes(MAPPING_YAML.replace("name: orders", "name: ord\0ers").encode())
    assert problems_of(path) == [
        "the file contains U+0000, a control character YAML does not allow, at line 2, "
        "column 14; a configuration is text"
    ]


def test_bytes_that_are_not_utf8_name_their_position(tmp_path: Path) -> None:
    path = tmp_path / "poller.yaml"
    path.write_bytes(b"mappings: \xff\n")
    assert problems_of(path) == ["the file is not UTF-8 text: invalid start byte at byte 10"]


@pytest.mark.timeout(20)
def test_dev_zero_is_refused_without_reading_it() -> None:
    """#20: `--config /dev/zero` read forever and filled memory."""
    assert problems_of(Path("/dev/zero")) == [
        "is a character device, not a regular file; give the path of a YAML file"
    ]


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """#20: opening a FIFO blocked until a writer came, so the loader hung."""
    fifo = tmp_path / "poller.yaml"
    os.mkfifo(fifo)
    assert problems_of(fifo) == [
        "is a FIFO (named pipe), not a regular file; give the path of a YAML file"
    ]


def test_a_file_over_1_mib_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MAPPING_YAML + "#" * (1024 * 1024) + "\n")
    assert problems_of(path) == ["the file is larger than 1 MiB; a configuration is far smaller"]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("9" * 5000, "'" + "9" * 296 + "..."),
        ("2024-13-45", "'2024-13-45' cannot be read as tag:yaml.org,2002:timestamp: month must be"),
        ("!!int abc", "'abc' cannot be read as tag:yaml.org,2002:int: invalid literal"),
    ],
)
def test_a_scalar_its_tag_cannot_read_is_a_one_line_error(
    tmp_path: Path, value: str, shown: str
) -> None:
    """Found by fuzzing: PyYAML's safe constructors raise ValueError for these."""
    [problem] = yaml_problems(tmp_path, MAPPING_YAML + f"    batch_size: {value}\n")
    assert problem.startswith(f"invalid YAML at line 6, column 17: {shown}")


# ------------------------------------------------------------------- overrides into lists (#20)


def test_an_override_into_a_list_item_replaces_or_appends_it(tmp_path: Path) -> None:
    """#20: `..._TYPES__0=x` raised TypeError (a list indexed by the text '0')."""
    text = MAPPING_YAML + "    function_response_types: [ReportBatchItemFailures]\n"
    var = "POLLER_MAPPINGS__orders__FUNCTION_RESPONSE_TYPES__0"
    assert yaml_problems(tmp_path, text, {var: "x"}) == [
        "mappings[0] (orders).function_response_types[0]: 'x' is not allowed; allowed items "
        f"[ReportBatchItemFailures] (AWS FunctionResponseTypes) (set by {var})"
    ]
    appended = {var: "ReportBatchItemFailures"}
    assert kinesis(
        load_settings(write(tmp_path, MAPPING_YAML), environ=appended)
    ).report_batch_item_failures


@pytest.mark.parametrize("segment", ["5", "first", "0000000000000000000000000000000001"])
def test_an_override_with_a_bad_list_index_names_the_variable(tmp_path: Path, segment: str) -> None:
    text = MAPPING_YAML + "    function_response_types: [ReportBatchItemFailures]\n"
    var = f"POLLER_MAPPINGS__orders__FUNCTION_RESPONSE_TYPES__{segment}"
    assert yaml_problems(tmp_path, text, {var: "x"}) == [
        f"{var}: mappings[0] (orders).function_response_types is a list of 1 item(s); address "
        f"an item by its number, 0 to 0, or 1 to add one, not {segment!r}"
    ]


# --------------------------------------------------------------------------- smaller (#21)


def test_merge_keys_are_supported(tmp_path: Path) -> None:
    """#21: `<<: *base` was refused as a "syntax error" (no constructor for the merge tag)."""
    text = (
        "mappings:\n"
        f"  - &base {{name: a, event_source_arn: '{ARN}', starting_position: LATEST,\n"
        "      batch_size: 7, target: {type: python, handler: 'examples.handlers:log_batch'}}\n"
        f"  - <<: *base\n    name: b\n    event_source_arn: '{ARN}-b'\n"
    )
    a, b = load_settings(write(tmp_path, text), environ={}).mappings
    assert (a.name, b.name, b.batch_size, b.event_source_arn) == ("a", "b", 7, ARN + "-b")


def test_a_key_repeated_beside_a_merge_is_still_a_duplicate(tmp_path: Path) -> None:
    text = "x: &x {a: 1}\n" + MAPPING_YAML + "    <<: *x\n    batch_size: 5\n    batch_size: 6\n"
    assert yaml_problems(tmp_path, text) == [
        "invalid YAML at line 9, column 5: duplicate key 'batch_size' (first at line 8)"
    ]


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("batch_size", "true", "mappings[0] (orders).batch_size"),
        ("parallelization_factor", "false", "mappings[0] (orders).parallelization_factor"),
        (
            "maximum_record_age_in_seconds",
            "true",
            "mappings[0] (orders).maximum_record_age_in_seconds",
        ),
    ],
)
def test_a_boolean_is_not_a_number(tmp_path: Path, field: str, value: str, kind: str) -> None:
    """#21: `batch_size: true` became 1."""
    assert yaml_problems(tmp_path, MAPPING_YAML + f"    {field}: {value}\n") == [
        f"{kind}: {value} is not a number; write a number, not true or false"
    ]


def test_a_boolean_is_not_a_number_in_sections_either(tmp_path: Path) -> None:
    text = "shutdown: {drain_timeout_seconds: true}\nobservability: {port: false}\n" + MAPPING_YAML
    assert yaml_problems(tmp_path, text) == [
        "shutdown.drain_timeout_seconds: true is not a number; write a number, not true or false",
        "observability.port: false is not a number; write a number, not true or false",
    ]


@pytest.mark.parametrize(
    ("written", "problem"),
    [
        (
            "${A:-${B}}",
            "aws.region: '${A:-${B}}': a default cannot hold another reference (nested ${...} "
            "is not supported); give A's default as plain text",
        ),
        (
            "eu-${X",
            "aws.region: 'eu-${X': '${' is never closed by '}'; use ${NAME} or "
            "${NAME:-default}, or $${ for a literal ${",
        ),
    ],
)
def test_nested_and_unterminated_references_are_errors(
    tmp_path: Path, written: str, problem: str
) -> None:
    """#21: both stayed in the value as literal text, without a word."""
    text = f"aws:\n  region: '{written}'\n" + MAPPING_YAML
    assert yaml_problems(tmp_path, text, {"B": "x"}) == [problem]


def test_a_doubled_dollar_writes_a_literal_reference(tmp_path: Path) -> None:
    text = MAPPING_YAML.replace("name: orders", "name: orders\n    uuid: $${X}")
    [problem] = yaml_problems(tmp_path, text)
    assert problem.startswith("mappings[0] (orders).uuid: '${X}' is not valid")


SECRET_YAML = f"""\
aws:
  endpoint_url: http://admin:${{DB_PASSWORD}}@localhost:4566
mappings:
  - name: orders
    event_source_arn: {ARN}
    starting_position: TRIM_HORIZON
    batch_size: ${{API_TOKEN}}
    target:
      type: http
      url: https://bob:hunter22@example.com/x
      headers: {{Authorization: "Bearer ${{API_TOKEN}}", X-Key: header-secret}}
      timeout_seconds: header-secret
"""
SECRETS = ("pa55word", "tok-abcdef", "hunter22", "header-secret", "admin:")


def test_validation_errors_hide_secrets(tmp_path: Path) -> None:
    """#21: errors echoed header values, URL credentials and `${VAR}`-expanded secrets."""
    environ = {"DB_PASSWORD": "pa55word", "API_TOKEN": "tok-abcdef"}
    problems = yaml_problems(
        tmp_path, SECRET_YAML.replace("localhost:4566", "localhost:port"), environ
    )
    assert problems == [
        "aws.endpoint_url: 'http://***@localhost:port' is not an http:// or https:// URL",
        "mappings[0] (orders).batch_size: '***' is not a whole number",
        "mappings[0] (orders).target.timeout_seconds: '***' is not a number",
    ]


def test_validate_print_hides_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """#21: `validate --print` printed header values, URL credentials and expanded secrets."""
    monkeypatch.setenv("DB_PASSWORD", "pa55word")
    monkeypatch.setenv("API_TOKEN", "tok-abcdef")
    text = SECRET_YAML.replace("${API_TOKEN}\n", "5\n").replace(
        "timeout_seconds: header-secret", "timeout_seconds: 5"
    )
    text = text.replace("url: https://", "url: https://x.example/?t=${API_TOKEN}&u=https://")
    checkpoint = tmp_path / "checkpoints.db"
    text += f"checkpoints: {{path: '{checkpoint}'}}\nobservability: {{enabled: false}}\n"
    path = write(tmp_path, text)
    assert cli.main(["validate", "--print", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[: out.rindex("}") + 1])
    assert printed["aws"]["endpoint_url"] == "http://***@localhost:4566"
    target = printed["mappings"][0]["target"]
    assert target["headers"] == {"Authorization": "***", "X-Key": "***"}
    assert target["url"] == "https://x.example/?t=***&u=https://***@example.com/x"
    for secret in SECRETS:
        assert secret not in out


# ------------------------------------------------------------------- validate checks the host (#21)


def validate(path: Path, *extra: str) -> int:
    return cli.main(["validate", *extra, "--config", str(path)])


def test_validate_imports_handlers_and_says_what_it_cannot_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#21: `validate` passed a handler that `run` could not import."""
    text = MAPPING_YAML.replace("examples.handlers:log_batch", "no_such_module:handle")
    path = write(tmp_path, text + "observability: {enabled: false}\n")
    assert validate(path) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  - mappings[0] (orders).target.handler: handler module 'no_such_module' not found",
        "  - (--config-only checks the file without these checks of this host)",
    ]
    assert validate(path, "--config-only") == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: valid (1 mapping(s): orders)",
        cli.NOT_CHECKED,
    ]


@pytest.mark.parametrize("where", ["a-file/checkpoints.db", "a-directory"])
def test_validate_checks_the_checkpoint_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """#21: `validate` passed a checkpoint path that `run` could not open."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-directory").mkdir()
    checkpoint = tmp_path / where
    text = f"checkpoints: {{path: '{checkpoint}'}}\nobservability: {{enabled: false}}\n"
    assert validate(write(tmp_path, text + MAPPING_YAML)) == 2
    expected = (
        f"cannot be created: '{tmp_path / 'a-file'}' is not a directory"
        if where.startswith("a-file")
        else "is a directory; give the path of the checkpoint file"
    )
    assert f"  - checkpoints.path: '{checkpoint}' {expected}" in capsys.readouterr().err


def test_validate_accepts_a_checkpoint_file_in_a_directory_to_be_created(tmp_path: Path) -> None:
    checkpoint = tmp_path / "new" / "deeper" / "checkpoints.db"
    text = f"checkpoints: {{path: '{checkpoint}'}}\nobservability: {{enabled: false}}\n"
    assert validate(write(tmp_path, text + MAPPING_YAML)) == 0
    assert not (tmp_path / "new").exists(), "validate creates nothing"


def test_validate_binds_the_observability_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#21: `validate` passed an address that `run` could not bind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = f"observability: {{host: 127.0.0.1, port: {port}}}\n" + MAPPING_YAML
        assert validate(write(tmp_path, text)) == 2
    assert (
        f"  - observability: cannot listen on 127.0.0.1:{port}: Address already in use; free "
        "the port or set observability.host/observability.port"
    ) in capsys.readouterr().err
