"""A mapping's UUID and its event source mapping ARN, for every source.

The derived stream UUIDs are golden values, computed before ``uuid`` moved from the stream
models to ``MappingBase``: S3 failure-record keys (``aws/lambda/<uuid>/...``) and checkpoints
written by earlier versions depend on them, so they must never change.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from poller.config import AnyMapping, parse_settings
from poller.destinations.s3 import object_key
from poller.errors import ConfigError
from tests.support.conformance import assert_matches, recorded

KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
DYNAMODB = "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
CHINA = "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s"
CONSUMER = "arn:aws:kinesis:us-east-1:123456789012:stream/orders/consumer/c:1700000000"
QUEUE = "arn:aws:sqs:ap-southeast-2:210987654321:jobs"
GOV_QUEUE = "arn:aws-us-gov:sqs:us-gov-west-1:210987654321:jobs.fifo"

#: (name, source ARN, UUID derived by poller 0.x before the move): golden, never recompute.
GOLDEN_STREAM_UUIDS = [
    ("orders", KINESIS, "389cab53-f095-58f1-a116-4623b644f8bb"),
    ("ddb-orders", DYNAMODB, "3f04e72c-1d83-5bd4-9cf0-e52a87aad9ee"),
    ("cn", CHINA, "1ef7bbbe-4c52-5faa-9097-11ef6907e986"),
    ("efo", CONSUMER, "46669c3d-fcae-5d6f-8461-7d7c9ed52c63"),
]

#: The resource pattern AWS's Lambda tagging API enforces (recorded in esm-api.json,
#: test_tag_exceptions: the ESM alternative of its 'resource' constraint).
AWS_ESM_ARN = re.compile(
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}"
)


def load(name: str, arn: str, **fields: Any) -> AnyMapping:
    entry: dict[str, Any] = {
        "name": name,
        "event_source_arn": arn,
        "target": {"type": "python", "handler": "json:loads"},
        **fields,
    }
    if ":sqs:" not in arn:
        entry.setdefault("starting_position", "TRIM_HORIZON")
    return parse_settings({"mappings": [entry]}).mappings[0]


@pytest.mark.parametrize(("name", "arn", "golden"), GOLDEN_STREAM_UUIDS)
def test_derived_stream_uuids_never_change(name: str, arn: str, golden: str) -> None:
    mapping = load(name, arn)
    assert mapping.uuid is None
    assert mapping.mapping_uuid == golden


def test_s3_failure_keys_keep_their_prefix() -> None:
    mapping = load("orders", KINESIS)
    key = object_key(mapping.mapping_uuid, "shardId-000000000000", datetime(2024, 5, 1, tzinfo=UTC))
    prefix = "aws/lambda/389cab53-f095-58f1-a116-4623b644f8bb/shardId-000000000000/2024/05/01/"
    assert key.startswith(prefix)


def test_sqs_mappings_have_a_derived_uuid_of_the_same_form() -> None:
    mapping = load("jobs", QUEUE)
    expected = uuid.uuid5(uuid.NAMESPACE_URL, f"poller:jobs:{QUEUE}")
    assert mapping.mapping_uuid == str(expected)
    assert load("jobs", QUEUE).mapping_uuid == mapping.mapping_uuid
    assert load("jobs-2", QUEUE).mapping_uuid != mapping.mapping_uuid


def test_sqs_mappings_take_a_configured_uuid_in_lower_case() -> None:
    given = "14E0DB71-5D35-4EB5-B481-8945CF9D10C2"
    mapping = load("jobs", QUEUE, uuid=given)
    assert mapping.uuid == mapping.mapping_uuid == given.lower()


def test_sqs_uuid_is_checked_like_a_stream_uuid() -> None:
    with pytest.raises(ConfigError) as caught:
        load("jobs", QUEUE, uuid="jobs-esm")
    [problem] = caught.value.problems
    assert problem.startswith("mappings[0] (jobs).uuid: 'jobs-esm' is not valid; expected a UUID")


@pytest.mark.parametrize(
    ("arn", "prefix"),
    [
        (KINESIS, "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:"),
        (CONSUMER, "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:"),
        (DYNAMODB, "arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:"),
        (CHINA, "arn:aws-cn:lambda:cn-north-1:123456789012:event-source-mapping:"),
        (QUEUE, "arn:aws:lambda:ap-southeast-2:210987654321:event-source-mapping:"),
        (GOV_QUEUE, "arn:aws-us-gov:lambda:us-gov-west-1:210987654321:event-source-mapping:"),
    ],
)
def test_arn_takes_partition_region_and_account_from_the_source(arn: str, prefix: str) -> None:
    mapping = load("m", arn)
    esm_arn = mapping.event_source_mapping_arn("sa-east-1")  # not used: the source has one
    assert esm_arn == prefix + mapping.mapping_uuid
    assert AWS_ESM_ARN.fullmatch(esm_arn)


def test_arn_carries_a_configured_uuid() -> None:
    given = "14e0db71-5d35-4eb5-b481-8945cf9d10c2"
    mapping = load("orders", KINESIS, uuid=given)
    assert mapping.event_source_mapping_arn("us-east-1").endswith(f":event-source-mapping:{given}")


CREATED = "create_event_source_mapping_response"
SQS_CREATED = "create-event-source-mapping-response"


@pytest.mark.parametrize(
    ("file", "scenario", "key", "source_arn"),
    [
        ("esm-kinesis.json", "::test_create_kinesis_event_source_mapping", CREATED, KINESIS),
        ("esm-dynamodbstreams.json", "::test_dynamodb_event_source_mapping", CREATED, DYNAMODB),
        ("esm-sqs.json", "::test_sqs_event_source_mapping", SQS_CREATED, QUEUE),
        ("esm-api.json", "::test_event_source_mapping_lifecycle", "create_response", QUEUE),
    ],
)  # fmt: skip
def test_arn_has_the_shape_of_aws_create_responses(
    file: str, scenario: str, key: str, source_arn: str
) -> None:
    """The UUID and the ARN of a recorded Create response: one <uuid> bound in both."""
    response = recorded(file, scenario, key)
    mapping = load("m", source_arn)
    ours = {
        "UUID": mapping.mapping_uuid,
        "EventSourceMappingArn": mapping.event_source_mapping_arn("us-east-1"),
    }
    assert_matches(ours, {name: response[name] for name in ours})


def test_dynamodb_local_arn_takes_the_configured_region() -> None:
    """DynamoDB Local puts the region ``ddblocal`` in its ARNs: no AWS region, so the ESM ARN
    takes ``aws.region``; partition and account still come from the source ARN."""
    arn = "arn:aws:dynamodb:ddblocal:000000000000:table/Orders/stream/2024-05-01T00:00:00.000"
    settings = parse_settings(
        {
            "aws": {"region": "eu-central-2", "endpoint_url": "http://127.0.0.1:8000"},
            "mappings": [
                {
                    "name": "local",
                    "event_source_arn": arn,
                    "starting_position": "LATEST",
                    "target": {"type": "python", "handler": "json:loads"},
                }
            ],
        }
    )
    mapping = settings.mappings[0]
    expected_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"poller:local:{arn}"))
    assert mapping.mapping_uuid == expected_uuid
    esm_arn = mapping.event_source_mapping_arn(settings.aws.region)
    assert (
        esm_arn == f"arn:aws:lambda:eu-central-2:000000000000:event-source-mapping:{expected_uuid}"
    )
    assert AWS_ESM_ARN.fullmatch(esm_arn)
