"""The fault-scheduling proxy itself: operation names per protocol, AWS error bodies botocore
parses, outages that end, dropped connections, lost responses after an applied write, latency,
and seeded schedules that replay."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from tests.support.aws import aws_client, unique
from tests.support.fault_proxy import FaultProxy, operation_name
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

ONE_TRY = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"})
SIGNED = "AWS4-HMAC-SHA256 Credential=test/20261204/us-east-1/{}/aws4_request, SignedHeaders=host"


def signed(service: str, **headers: str) -> dict[str, str]:
    return {"Authorization": SIGNED.format(service), **headers}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "expected"),
    [
        (
            "POST",
            "/",
            {"X-Amz-Target": "Kinesis_20131202.GetRecords"},
            b"{}",
            "Kinesis_20131202.GetRecords",
        ),
        (
            "POST",
            "/",
            signed("sns", **{"Content-Type": "application/x-www-form-urlencoded"}),
            b"Action=Publish&TopicArn=x",
            "SNS.Publish",
        ),
        ("PUT", "/bucket/some/key.json", signed("s3"), b"{}", "S3.PutObject"),
        ("PUT", "/bucket", signed("s3"), b"", "S3.CreateBucket"),
        ("POST", "/2015-03-31/functions/f/invocations", signed("lambda"), b"{}", "Lambda.Invoke"),
        ("GET", "/2015-03-31/functions/f", signed("lambda"), b"", "Lambda.GET /{}/{}/{}"),
    ],
)
def test_operation_names_per_protocol(
    method: str, path: str, headers: dict[str, str], body: bytes, expected: str
) -> None:
    assert operation_name(method, path, headers, body) == expected


async def test_errors_reach_botocore_as_aws_errors_in_each_protocol(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        proxy.fail("GetRecords", code="ExpiredIteratorException")
        proxy.fail("Publish", code="AuthorizationError", status=403)
        proxy.fail("S3.PutObject", code="AccessDenied", status=403)
        proxy.fail("Lambda.Invoke", code="TooManyRequestsException", status=429)
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("kinesis", "get_records", {"ShardIterator": "x" * 10}),
            (
                "sns",
                "publish",
                {"TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "m"},
            ),
            ("s3", "put_object", {"Bucket": "b", "Key": "k", "Body": b"x"}),
            ("lambda", "invoke", {"FunctionName": "f", "Payload": b"{}"}),
        ]
        codes = []
        for service, method, arguments in calls:
            async with aws_client(service, proxy.url, ONE_TRY) as client:
                with pytest.raises(ClientError) as caught:
                    await getattr(client, method)(**arguments)
                codes.append(caught.value.response["Error"]["Code"])
    assert codes == [
        "ExpiredIteratorException",
        "AuthorizationError",
        "AccessDenied",
        "TooManyRequestsException",
    ]
    assert proxy.injected["error"] == 4


async def test_an_outage_fails_every_matching_call_then_ends(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        async with (
            aws_client("dynamodb", proxy.url, ONE_TRY) as ddb,
            aws_client("kinesis", proxy.url, ONE_TRY) as kinesis,
        ):
            proxy.outage(1.0, "DynamoDB_20120810.*")
            with pytest.raises(ClientError, match="ServiceUnavailable"):
                await ddb.list_tables()
            await kinesis.list_streams()  # another dependency is unaffected

            async def answers() -> bool:
                try:
                    await ddb.list_tables()
                except ClientError:
                    return False
                return True

            await wait_until(answers, 10, "the outage to end")
    assert proxy.injected["outage"] >= 1


async def test_a_dropped_connection_is_never_forwarded(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        async with aws_client("dynamodb", proxy.url, ONE_TRY) as ddb:
            proxy.drop(operations="ListTables", times=1)
            with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
                await ddb.list_tables()
            await ddb.list_tables()
    assert proxy.injected["drop"] == 1
    assert len(proxy.calls("DynamoDB_20120810.ListTables")) == 1  # only the second got through


@pytest.mark.parametrize("mode", ["drop", "error"])
async def test_a_lost_response_hides_a_write_that_was_applied(moto_url: str, mode: Any) -> None:
    table = unique("lost")
    with FaultProxy(moto_url) as proxy:
        async with aws_client("dynamodb", proxy.url, ONE_TRY) as ddb:
            await ddb.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            proxy.lose_responses("PutItem", times=1, mode=mode)
            with pytest.raises((ClientError, ConnectionClosedError, EndpointConnectionError)):
                await ddb.put_item(TableName=table, Item={"k": {"S": "applied"}})
            item = await ddb.get_item(TableName=table, Key={"k": {"S": "applied"}})
    assert item["Item"] == {"k": {"S": "applied"}}
    assert proxy.injected["lost_response"] == 1


async def test_latency_holds_the_call(moto_url: str) -> None:
    with FaultProxy(moto_url) as proxy:
        async with aws_client("kinesis", proxy.url, ONE_TRY) as kinesis:
            proxy.latency(0.3, "ListStreams")
            began = time.monotonic()
            await kinesis.list_streams()
            assert time.monotonic() - began >= 0.3
    assert proxy.injected["latency"] == 1


async def test_a_seeded_error_rate_replays(moto_url: str) -> None:
    async def outcomes(seed: int) -> list[str]:
        with FaultProxy(moto_url, seed=seed) as proxy:
            proxy.throttle(0.5, "ListStreams")
            async with aws_client("kinesis", proxy.url, ONE_TRY) as kinesis:
                return [await outcome(kinesis.list_streams()) for _ in range(20)]

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert {"ok", "ProvisionedThroughputExceededException"} == set(first)


async def outcome(call: Any) -> str:
    """ "ok", or the AWS error code the call raised."""
    try:
        await call
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    return "ok"
