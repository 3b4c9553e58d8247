"""On-failure destinations against moto: real aiobotocore clients over HTTP, nothing patched.

Each test creates its own queue, topic or bucket, sends a failure record through the
destination the registry builds from its ARN, and reads back what AWS would have delivered.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from poller.aws.clients import ClientFactory
from poller.core.failure_record import failure_record
from poller.destinations import build_destination
from poller.destinations.s3 import S3Destination
from poller.destinations.sns import SnsDestination
from poller.destinations.sqs import SqsDestination
from poller.errors import ConfigError, DestinationError
from poller.sources.kinesis import make_record_factory
from poller.types import InvokeResult, Outcome, StreamRecord
from tests.support.aws import ACCOUNT, CREDENTIALS, REGION, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.sqs import queue_arn

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
MAPPING = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
STREAM = stream_arn("orders")
NOW = 1764064981.021  # 2025-11-25T10:03:01.021Z

convert = make_record_factory(
    shard_id=SHARD,
    stream_arn=STREAM,
    region=REGION,
    identity_arn=f"arn:aws:iam::{ACCOUNT}:role/poller",
)


@pytest.fixture
async def clients(moto_url: str) -> AsyncIterator[ClientFactory]:
    factory = ClientFactory(region=REGION, endpoint_url=moto_url, credentials=CREDENTIALS)
    yield factory
    await factory.aclose()


@pytest.fixture
async def aws(clients: ClientFactory) -> dict[str, Any]:
    """Plain clients for setting up and inspecting resources."""
    return {name: await clients.client(name) for name in ("sqs", "sns", "s3")}


def records() -> list[StreamRecord]:
    return [
        convert(
            {
                "SequenceNumber": f"4966812345678901234567890123456789012345678901234567890{i}",
                "PartitionKey": "custom",
                "Data": "eyJpbnB1dCI6ICJoZWxsbyJ9",
                "ApproximateArrivalTimestamp": NOW - 60 + i,
            }
        )
        for i in range(2)
    ]


def record(batch: list[StreamRecord]) -> dict[str, Any]:
    return failure_record(
        kind="kinesis",
        condition="RetryAttemptsExhausted",
        approximate_invoke_count=3,
        request_id="0b5b3c1e-7d4f-4b8a-9c6e-2f1a3d5e7b9c",
        function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn",
        last_result=InvokeResult(
            Outcome.FUNCTION_ERROR, status_code=200, function_error="Unhandled"
        ),
        shard_id=SHARD,
        stream_arn=STREAM,
        records=batch,
        now=NOW,
    )


def topic_arn(name: str) -> str:
    return f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"


async def send(destination: Any, batch: list[StreamRecord]) -> dict[str, Any]:
    payload = record(batch)
    await destination.send(payload, records=batch, mapping_uuid=MAPPING, shard_id=SHARD)
    return payload


async def receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return list(response.get("Messages", []))


async def test_sqs_receives_exactly_the_record(clients: ClientFactory, aws: dict[str, Any]) -> None:
    name = unique("dlq")
    url = (await aws["sqs"].create_queue(QueueName=name))["QueueUrl"]
    destination = await build_destination(queue_arn(name), clients=clients)
    assert isinstance(destination, SqsDestination)
    assert destination.arn == queue_arn(name)

    sent = await send(destination, records())

    messages = await receive_all(aws["sqs"], url)
    assert len(messages) == 1
    assert messages[0]["Body"] == json.dumps(sent)
    assert json.loads(messages[0]["Body"]) == sent
    assert "payload" not in json.loads(messages[0]["Body"])


async def test_sqs_resolves_the_queue_again_after_a_failed_lookup(
    clients: ClientFactory, aws: dict[str, Any]
) -> None:
    name = unique("dlq")
    destination = await build_destination(queue_arn(name), clients=clients)
    with pytest.raises(DestinationError, match="GetQueueUrl"):
        await send(destination, records())

    url = (await aws["sqs"].create_queue(QueueName=name))["QueueUrl"]
    await send(destination, records())
    await send(destination, records())
    assert len(await receive_all(aws["sqs"], url)) == 2


async def test_sqs_queue_deleted_after_lookup(clients: ClientFactory, aws: dict[str, Any]) -> None:
    name = unique("dlq")
    url = (await aws["sqs"].create_queue(QueueName=name))["QueueUrl"]
    destination = await build_destination(queue_arn(name), clients=clients)
    await send(destination, records())
    await aws["sqs"].delete_queue(QueueUrl=url)

    with pytest.raises(DestinationError, match="SendMessage failed with") as caught:
        await send(destination, records())
    assert queue_arn(name) in str(caught.value)

    url = (await aws["sqs"].create_queue(QueueName=name))["QueueUrl"]
    await send(destination, records())
    assert len(await receive_all(aws["sqs"], url)) == 1


async def test_sns_delivers_the_record_as_the_notification_message(
    clients: ClientFactory, aws: dict[str, Any]
) -> None:
    topic = (await aws["sns"].create_topic(Name=unique("failures")))["TopicArn"]
    queue = unique("subscriber")
    url = (await aws["sqs"].create_queue(QueueName=queue))["QueueUrl"]
    await aws["sns"].subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn(queue))
    destination = await build_destination(topic, clients=clients)
    assert isinstance(destination, SnsDestination)

    sent = await send(destination, records())

    messages = await receive_all(aws["sqs"], url)
    assert len(messages) == 1
    envelope = json.loads(messages[0]["Body"])
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == topic
    assert json.loads(envelope["Message"]) == sent


S3_KEY = re.compile(
    rf"^aws/lambda/{MAPPING}/{SHARD}/2025/11/25/2025-11-25T10\.03\.01-"
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)


async def test_s3_object_has_aws_key_and_the_records_as_payload(
    clients: ClientFactory, aws: dict[str, Any]
) -> None:
    bucket = unique("failures")
    await aws["s3"].create_bucket(Bucket=bucket)
    destination = await build_destination(f"arn:aws:s3:::{bucket}", clients=clients)
    assert isinstance(destination, S3Destination)
    batch = records()

    sent = await send(destination, batch)
    await send(destination, batch)

    listing = await aws["s3"].list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listing["Contents"]]
    assert len(keys) == 2
    assert len(set(keys)) == 2, "each failure record gets its own object"
    for key in keys:
        assert S3_KEY.match(key), key
    stored = await aws["s3"].get_object(Bucket=bucket, Key=keys[0])
    assert stored["ContentType"] == "application/json"
    body = json.loads(await stored["Body"].read())
    assert body == {**sent, "payload": {"Records": [r.event_record for r in batch]}}


@pytest.mark.parametrize(
    ("service", "code"),
    [
        ("sqs", "NonExistentQueue"),
        ("sns", "NotFound"),
        ("s3", "NoSuchBucket"),
    ],
)
async def test_missing_resource_raises_destination_error_naming_the_arn(
    clients: ClientFactory, service: str, code: str
) -> None:
    name = unique("missing")
    arn = {"sqs": queue_arn(name), "sns": topic_arn(name), "s3": f"arn:aws:s3:::{name}"}[service]
    destination = await build_destination(arn, clients=clients)
    with pytest.raises(DestinationError) as caught:
        await send(destination, records())
    assert arn in str(caught.value)
    assert code in str(caught.value)
    assert caught.value.retriable
    assert caught.value.permanent, "a missing destination needs an operator: it is permanent"
    assert "eyJpbnB1dCI6" not in str(caught.value), "record data must not leak into errors"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_endpoint_raises_destination_error_quickly() -> None:
    factory = ClientFactory(
        region=REGION,
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        credentials=CREDENTIALS,
    )
    arns = [queue_arn("q"), topic_arn("t"), "arn:aws:s3:::b"]
    errors: dict[str, DestinationError] = {}

    async def attempt(arn: str) -> None:
        destination = await build_destination(arn, clients=factory)
        try:
            await send(destination, records())
        except DestinationError as exc:
            errors[arn] = exc

    try:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as group:
                for arn in arns:
                    group.start_soon(attempt, arn)
    finally:
        await factory.aclose()
    assert sorted(errors) == sorted(arns)
    for arn, exc in errors.items():
        assert arn in str(exc)
        assert "could not reach" in str(exc)
        assert not exc.permanent, "an unreachable endpoint may come back by itself"


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:failures.fifo",
        f"arn:aws:sns:{REGION}:{ACCOUNT}:failures.fifo",
    ],
)
async def test_fifo_destination_is_rejected_at_build(clients: ClientFactory, arn: str) -> None:
    with pytest.raises(DestinationError, match="FIFO") as caught:
        await build_destination(arn, clients=clients)
    assert arn in str(caught.value)


@pytest.mark.parametrize(
    "arn",
    [
        "not-an-arn",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn",
        f"arn:aws:sqs::{ACCOUNT}:no-region",
        f"arn:aws:sns:{REGION}::no-account",
        "arn:aws:s3:::bucket/with/key",
        f"arn:aws:s3:{REGION}:{ACCOUNT}:bucket",
    ],
)
async def test_invalid_destination_arn_is_a_config_error(clients: ClientFactory, arn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await build_destination(arn, clients=clients)
    assert arn in str(caught.value)


async def make_destination_resource(aws: dict[str, Any], service: str) -> str:
    """A queue, topic or bucket that exists; returns its ARN."""
    name = unique("refusing")
    if service == "sqs":
        await aws["sqs"].create_queue(QueueName=name)
        return queue_arn(name)
    if service == "sns":
        return str((await aws["sns"].create_topic(Name=name))["TopicArn"])
    await aws["s3"].create_bucket(Bucket=name)
    return f"arn:aws:s3:::{name}"


@pytest.mark.parametrize(
    ("service", "operation", "code"),
    [
        # The codes each service's model gives its KMS and access errors (botocore data).
        ("sns", "SNS.Publish", "KMSDisabled"),
        ("sns", "SNS.Publish", "KMSAccessDenied"),
        ("sns", "SNS.Publish", "KMSNotFound"),
        ("sns", "SNS.Publish", "KMSInvalidState"),
        ("sns", "SNS.Publish", "KMSOptInRequired"),
        ("sns", "SNS.Publish", "InvalidSecurity"),
        ("sqs", "AmazonSQS.SendMessage", "KmsDisabled"),
        ("sqs", "AmazonSQS.SendMessage", "KmsAccessDenied"),
        ("sqs", "AmazonSQS.SendMessage", "KmsNotFound"),
        # SQS's query-compatible codes, which botocore reports when AWS sends them.
        ("sqs", "AmazonSQS.SendMessage", "KMS.DisabledException"),
        ("sqs", "AmazonSQS.SendMessage", "KMS.AccessDeniedException"),
        ("s3", "S3.PutObject", "KMS.DisabledException"),
        ("s3", "S3.PutObject", "KMS.NotFoundException"),
    ],
)
async def test_a_disabled_or_forbidden_kms_key_is_a_permanent_refusal(
    moto_url: str, aws: dict[str, Any], service: str, operation: str, code: str
) -> None:
    """The README promises that a disabled KMS key blocks loudly (``permanent``). Before, only
    Kinesis-style codes (``KMSDisabledException``) were known, none of which SNS, SQS or S3
    send: their KMS refusals passed for transient, a warning per attempt and no gauge."""
    arn = await make_destination_resource(aws, service)
    with FaultProxy(moto_url) as proxy:
        factory = ClientFactory(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)
        try:
            destination = await build_destination(arn, clients=factory)
            proxy.fail(operation, code=code, times=1)
            with pytest.raises(DestinationError) as caught:
                await send(destination, records())
        finally:
            await factory.aclose()
    assert code in str(caught.value)
    assert caught.value.permanent
