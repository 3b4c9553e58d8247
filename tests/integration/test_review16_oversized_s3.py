"""Hostile review of issue 16, item 3: the S3 on-failure destination of a 7 MiB Kinesis record
(too large for any invocation), on moto's S3, through the real FailureRouter.

The record comes from the Kinesis converter (the in-memory stream's, which is production's);
the router gives it up as ``RecordSizeExceeded`` to the real ``S3Destination``. The object must
hold the record's data exactly (S3 is the one destination whose failure record carries the
payload), and no log line may hold it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import anyio
import pytest
import structlog

from poller.aws.clients import ClientFactory
from poller.core.retry_policy import oversized
from poller.destinations.s3 import S3Destination
from poller.streams import FailureRouting
from poller.streams.failures import FailureRouter
from poller.streams.stopping import StopSignal
from poller.testing import STREAM_ARN, FakeStreamApi, RecordingMetrics, RecordingTarget
from poller.types import StreamRecord
from tests.component.harness import SHARD, puts, records
from tests.support.aws import CREDENTIALS, REGION, aws_client, unique

pytestmark = pytest.mark.anyio

SEVEN_MIB = 7 * 1024 * 1024


async def test_the_s3_failure_record_of_a_7_mib_record_holds_its_data_and_no_log_does(
    moto_url: str,
) -> None:
    data = bytes(range(256)) * (SEVEN_MIB // 256)
    (record,) = records(FakeStreamApi(), puts("k", data=data))
    bucket = unique("ovs3")
    settled: list[StreamRecord] = []

    async def settle(done: Sequence[StreamRecord]) -> None:
        settled.extend(done)

    clients = ClientFactory(region=REGION, endpoint_url=moto_url, credentials=CREDENTIALS)
    try:
        client = await clients.client("s3")
        await client.create_bucket(Bucket=bucket)
        destination = S3Destination(client, arn=f"arn:aws:s3:::{bucket}", bucket=bucket)
        router = FailureRouter(
            mapping="m",
            shard_id=SHARD,
            routing=FailureRouting(
                kind="kinesis", stream_arn=STREAM_ARN, mapping_uuid="uuid", destination=destination
            ),
            target=RecordingTarget(),
            metrics=RecordingMetrics(),
            settle=settle,
            stop=StopSignal(anyio.Event()),
        )
        with structlog.testing.capture_logs() as logs:
            assert await router.give_up(oversized(record))
    finally:
        await clients.aclose()
    assert settled == [record]
    async with aws_client("s3", moto_url) as s3:
        (listed,) = (await s3.list_objects_v2(Bucket=bucket))["Contents"]
        body = await (await s3.get_object(Bucket=bucket, Key=listed["Key"]))["Body"].read()
    sent = json.loads(body)
    assert sent["requestContext"]["condition"] == "RecordSizeExceeded"
    (payload_record,) = sent["payload"]["Records"]
    assert base64.b64decode(payload_record["kinesis"]["data"]) == data
    encoded = payload_record["kinesis"]["data"]
    assert not any(encoded[:64] in repr(line) for line in logs)
