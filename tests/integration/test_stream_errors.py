"""Lambda's stream error handling end to end: poison records, record age, destinations,
throttles, destination outages, and shard isolation.

The service reads moto's Kinesis (directly, or through the fault proxy when records must look
old) and invokes functions behind the Invoke API through the real aiobotocore Lambda client.
Failure records are compared with the ones AWS recorded for the same scenario.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import delivered, kinesis_settings, running, wait_until
from tests.integration.stream_errors_harness import (
    checkpoint_of,
    make_queue,
    queue_bodies,
    stream_with,
    wait_for_messages,
)
from tests.support import recorder
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.conformance import assert_matches, recorded
from tests.support.fault_proxy import FaultProxy
from tests.support.invoke_api import InvokeApiServer, Throttled

pytestmark = pytest.mark.anyio

GET_RECORDS = "Kinesis_20131202.GetRecords"


@pytest.fixture
def server() -> Iterator[InvokeApiServer]:
    with InvokeApiServer() as invoke_api:
        yield invoke_api


def sequences(event: dict[str, Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


def age_records(seconds: float, only_first: bool = False) -> Any:
    """A GetRecords rewrite that makes records look ``seconds`` older than they are."""

    def change(body: dict[str, Any]) -> dict[str, Any]:
        for i, record in enumerate(body.get("Records", [])):
            if i == 0 or not only_first:
                record["ApproximateArrivalTimestamp"] -= seconds
            if only_first:
                break
        return body

    return change


def lambda_settings(
    moto_url: str, server: InvokeApiServer, stream: str, db: Path, **mapping: Any
) -> Any:
    return kinesis_settings(
        endpoint_url=mapping.pop("kinesis_url", moto_url),
        endpoints={
            "lambda": server.url,
            "sqs": mapping.pop("sqs_url", moto_url),
            "sns": moto_url,
            "s3": moto_url,
        },
        stream=stream,
        db=db,
        target={"type": "lambda", "function_name": "fn"},
        **mapping,
    )


async def test_poison_record_among_10000_is_isolated(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """Bisect on, two retries: only the poison record reaches the SQS destination, every other
    record is delivered, and the failure record has the shape AWS recorded."""
    stream, db = unique("poison"), tmp_path / "c.db"
    records = [(f"k{i % 97}", b"poison" if i == 6_543 else b"fine") for i in range(10_000)]
    written = await stream_with(moto_url, stream, records)
    poison = written[6_543]
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    lock, delivered_ok, poison_invocations = threading.Lock(), [], []

    def fn(event: dict[str, Any], context: Any) -> None:
        seqs = sequences(event)
        if poison in seqs:
            with lock:
                poison_invocations.append(len(seqs))
            raise ValueError("cannot parse record")
        with lock:
            delivered_ok.extend(seqs)

    server.register("fn", fn, timeout=10)
    settings = lambda_settings(
        moto_url,
        server,
        stream,
        db,
        batch_size=100,
        maximum_retry_attempts=2,
        bisect_batch_on_function_error=True,
        destination_config={"on_failure": {"destination_arn": queue_arn}},
    )
    async with running(settings):
        await wait_until(lambda: checkpoint_of(db) == written[-1], 120, "the whole stream settled")
    assert sorted(delivered_ok, key=int) == [s for s in written if s != poison]
    assert len(delivered_ok) == len(set(delivered_ok)) == 9_999
    (message,) = await queue_bodies(moto_url, queue_url)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == poison
    assert message["KinesisBatchInfo"]["batchSize"] == 1
    assert message["requestContext"]["approximateInvokeCount"] == len(poison_invocations)
    assert poison_invocations[-3:] == [1, 1, 1], "one try and two retries of the isolated record"
    expected = recorded(
        "esm-kinesis.json",
        "::test_kinesis_event_source_mapping_with_on_failure_destination_config",
        "sqs_payload",
    )["Messages"][0]["Body"]
    expected["requestContext"]["approximateInvokeCount"] = len(poison_invocations)
    assert_matches(message, expected)


async def test_record_age_exceeded_before_first_invocation(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """A record older than MaximumRecordAgeInSeconds is never invoked; its failure record is
    AWS's RecordAgeExceeded with approximateInvokeCount 1 and no responseContext."""
    stream, db = unique("age"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [("test", b"stream-data")])
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    server.register("fn", lambda event, context: None, timeout=5)
    with FaultProxy(moto_url) as proxy:
        proxy.rewrite(GET_RECORDS, age_records(120))
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            kinesis_url=proxy.url,
            batch_size=1,
            maximum_retry_attempts=0,
            maximum_record_age_in_seconds=60,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(lambda: checkpoint_of(db) == written[0], 30, "the record settled")
    assert server.invocations("fn") == []
    (message,) = await queue_bodies(moto_url, queue_url)
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_maximum_record_age_exceeded[expire-before-ingestion]",
        "record_age_exceeded_payload",
    )["Messages"][0]["Body"]
    assert_matches(message, expected)
    assert "responseContext" not in message


async def test_record_age_exceeded_while_retrying(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """With infinite retries a failing record is given up once it passes its age: the count is
    the invocations made plus the one that was about to be (AWS recorded 8 after 7)."""
    stream, db = unique("age"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [("test", b"stream-data")])
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))

    def fail(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("always")

    server.register("fn", fail, timeout=5)
    with FaultProxy(moto_url) as proxy:
        proxy.rewrite(GET_RECORDS, age_records(55))
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            kinesis_url=proxy.url,
            batch_size=1,
            maximum_record_age_in_seconds=60,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(lambda: checkpoint_of(db) == written[0], 30, "the record settled")
    invocations = len(server.invocations("fn"))
    assert invocations >= 2
    (message,) = await queue_bodies(moto_url, queue_url)
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_maximum_record_age_exceeded[expire-while-retrying]",
        "record_age_exceeded_payload",
    )["Messages"][0]["Body"]
    expected["requestContext"]["approximateInvokeCount"] = invocations + 1
    assert_matches(message, expected)


async def test_expired_record_is_discarded_and_the_rest_delivered(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """AWS's discard scenario: of six records the first is too old; it goes to the destination
    alone (batchSize 1) and the five others are delivered in one invocation."""
    stream, db = unique("age"), tmp_path / "c.db"
    written = await stream_with(
        moto_url, stream, [("test", f"stream-data-{i}".encode()) for i in range(6)]
    )
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    server.register("fn", lambda event, context: None, timeout=5)
    with FaultProxy(moto_url) as proxy:
        proxy.rewrite(GET_RECORDS, age_records(120, only_first=True))
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            kinesis_url=proxy.url,
            batch_size=10,
            maximum_batching_window_in_seconds=1,
            maximum_retry_attempts=0,
            maximum_record_age_in_seconds=60,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(lambda: checkpoint_of(db) == written[-1], 30, "all six settled")
    assert [sequences(i.event) for i in server.invocations("fn")] == [written[1:]]
    (message,) = await queue_bodies(moto_url, queue_url)
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_maximum_record_age_exceeded_discard_records",
        "record_age_exceeded_payload",
    )["Messages"][0]["Body"]
    assert_matches(message, expected)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[0]


async def test_sns_destination_receives_the_failure_record(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """SNS: the failure record is the Message of a standard notification (read through an SQS
    subscription), matching AWS's recording."""
    stream, db = unique("sns"), tmp_path / "c.db"
    await stream_with(moto_url, stream, [("custom", b'{"input": "hello"}')])
    queue_url, queue_arn = await make_queue(moto_url, unique("sub"))
    async with aws_client("sns", moto_url) as sns:
        topic_arn = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
        await sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def fail(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    server.register("fn", fail, timeout=5)
    settings = lambda_settings(
        moto_url,
        server,
        stream,
        db,
        batch_size=1,
        maximum_retry_attempts=1,
        destination_config={"on_failure": {"destination_arn": topic_arn}},
    )
    async with running(settings):
        messages = await wait_for_messages(moto_url, queue_url)
    (envelope,) = messages
    assert envelope["Type"] == "Notification"
    assert envelope["TopicArn"] == topic_arn
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_event_source_mapping_with_sns_on_failure_destination_config",
        "failure_sns_message",
    )["Message"]
    assert_matches(json.loads(envelope["Message"]), expected)


async def test_s3_destination_gets_aws_key_and_payload(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """S3: the object key follows AWS's scheme, and the body carries the records as payload."""
    stream, db = unique("s3"), tmp_path / "c.db"
    written = await stream_with(
        moto_url, stream, [("custom", b'{"input": "hello", "value": "world", "raise_error": 1}')]
    )
    bucket = unique("bucket")
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)

    def fail(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    server.register("fn", fail, timeout=5)
    settings = lambda_settings(
        moto_url,
        server,
        stream,
        db,
        batch_size=1,
        maximum_retry_attempts=1,
        destination_config={"on_failure": {"destination_arn": f"arn:aws:s3:::{bucket}"}},
    )
    async with running(settings):
        await wait_until(lambda: checkpoint_of(db) == written[0], 30, "the record settled")
        mapping_uuid = settings.mappings[0].mapping_uuid
    async with aws_client("s3", moto_url) as s3:
        (entry,) = (await s3.list_objects_v2(Bucket=bucket))["Contents"]
        body = json.loads(
            await (await s3.get_object(Bucket=bucket, Key=entry["Key"]))["Body"].read()
        )
    stamp = body["timestamp"]
    day, time_part = stamp[:10].replace("-", "/"), stamp[:19].replace(":", ".")
    prefix = f"aws/lambda/{mapping_uuid}/shardId-000000000000/{day}/{time_part}"
    pattern = re.escape(prefix) + r"-[0-9a-f-]{36}"
    assert re.fullmatch(pattern, entry["Key"]), entry["Key"]
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_event_source_mapping_with_s3_on_failure_destination",
        "record_body",
    )
    assert_matches(body, expected)


async def test_throttles_do_not_count_toward_retries(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """With MaximumRetryAttempts 0, three throttles are still retried; the fourth try succeeds."""
    stream, db = unique("thr"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [("k", b"x")])
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    calls: list[int] = []

    def fn(event: dict[str, Any], context: Any) -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise Throttled("Rate Exceeded.")

    server.register("fn", fn, timeout=5)
    settings = lambda_settings(
        moto_url,
        server,
        stream,
        db,
        batch_size=1,
        maximum_retry_attempts=0,
        destination_config={"on_failure": {"destination_arn": queue_arn}},
    )
    async with running(settings):
        await wait_until(lambda: checkpoint_of(db) == written[0], 30, "the record settled")
    assert [i.outcome for i in server.invocations("fn")] == ["throttled"] * 3 + ["success"]
    assert await queue_bodies(moto_url, queue_url) == []


async def test_throttled_records_still_expire_by_age(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """A function that only throttles: the record is given up when it passes its age."""
    stream, db = unique("thr"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [("k", b"x")])
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))

    def fn(event: dict[str, Any], context: Any) -> None:
        raise Throttled("Rate Exceeded.")

    server.register("fn", fn, timeout=5)
    with FaultProxy(moto_url) as proxy:
        proxy.rewrite(GET_RECORDS, age_records(55))
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            kinesis_url=proxy.url,
            batch_size=1,
            maximum_retry_attempts=0,
            maximum_record_age_in_seconds=60,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(lambda: checkpoint_of(db) == written[0], 30, "the record settled")
    assert len(server.invocations("fn")) >= 2, (
        "throttles were not retried (MaximumRetryAttempts 0 must not apply to them)"
    )
    (message,) = await queue_bodies(moto_url, queue_url)
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert (
        message["requestContext"]["approximateInvokeCount"] == 1
    )  # no invocation reached the function


async def test_destination_outage_holds_the_checkpoint(
    moto_url: str, server: InvokeApiServer, tmp_path: Path
) -> None:
    """While the destination is down the failed record is not settled: the checkpoint stays
    before it and the shard waits. When it recovers nothing was lost."""
    stream, db = unique("out"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [("a", b"ok"), ("poison", b"bad"), ("b", b"ok")])
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))

    def fn(event: dict[str, Any], context: Any) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in event["Records"]):
            raise RuntimeError("bad record")

    server.register("fn", fn, timeout=5)
    with FaultProxy(moto_url) as sqs_proxy:
        sqs_proxy.fail("AmazonSQS.SendMessage", code="InternalError", status=500, times=10**6)
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            sqs_url=sqs_proxy.url,
            batch_size=1,
            maximum_retry_attempts=0,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings):
            await wait_until(
                lambda: checkpoint_of(db) == written[0], 30, "the first record settled"
            )
            # The outage lasts for several refused deliveries; the shard must not move meanwhile.
            refused = "AmazonSQS.SendMessage"
            await wait_until(lambda: sqs_proxy.faulted(refused) >= 6, 60, "six refused deliveries")
            assert checkpoint_of(db) == written[0]
            assert [sequences(i.event) for i in server.invocations("fn")] == [
                [written[0]],
                [written[1]],
            ]
            sqs_proxy.heal("AmazonSQS.SendMessage")
            await wait_until(
                lambda: checkpoint_of(db) == written[2], 60, "the rest settled after recovery"
            )
    (message,) = await queue_bodies(moto_url, queue_url)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[1]
    assert [sequences(i.event) for i in server.invocations("fn")][-1] == [written[2]]


async def test_other_shards_keep_flowing_while_one_retries(moto_url: str, tmp_path: Path) -> None:
    """A shard stuck on a failing record (infinite retries) does not hold back another shard."""
    stream = unique("iso")
    arn = stream_arn(stream)
    async with aws_client("kinesis", moto_url) as kinesis:
        shards = await create_stream(kinesis, stream, 2)
        stuck = await put_records(kinesis, stream, [("poison", b"x", hash_key_for(shards[0]))])
        flowing = await put_records(
            kinesis, stream, ((f"k{i}", b"x", hash_key_for(shards[1])) for i in range(200))
        )
    attempts: list[int] = []

    def hook(records: list[dict[str, Any]]) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in records):
            attempts.append(1)
            raise RuntimeError("poison")

    recorder.BEHAVIOUR[arn] = hook
    try:
        settings = kinesis_settings(
            endpoint_url=moto_url, stream=stream, db=tmp_path / "c.db", batch_size=10
        )
        async with running(settings):
            await wait_until(
                lambda: len(delivered(stream)) >= 200, 30, "the healthy shard's records"
            )
            await wait_until(lambda: len(attempts) >= 2, 30, "the stuck shard retrying")
        assert delivered(stream) == flowing
        assert stuck[0] not in delivered(stream)
    finally:
        recorder.clear(arn)
