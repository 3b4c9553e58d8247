"""Lambda's stream error handling end to end: poison records, record age, destinations,
throttles, destination outages, and shard isolation.

The service reads moto's Kinesis (directly, or through the fault proxy when records must look
old) and invokes functions behind the Invoke API through the real aiobotocore Lambda client.
Failure records are compared with the ones AWS recorded for the same scenario.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from poller.config import KinesisMapping, Settings
from poller.observability.metrics import PrometheusMetrics
from tests.integration.kinesis_harness import delivered, kinesis_settings, lambda_settings
from tests.integration.stream_errors_harness import (
    checkpoint_of,
    make_queue,
    queue_bodies,
    run_until_checkpoint,
    stream_with,
    wait_for_messages,
)
from tests.support import recorder
from tests.support.aws import ACCOUNT, REGION, aws_client, stream_arn, stream_holding, unique
from tests.support.conformance import assert_matches, recorded, recorded_message
from tests.support.fault_proxy import FaultProxy
from tests.support.invoke_api import InvokeApiServer, Throttled
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

GET_RECORDS = "Kinesis_20131202.GetRecords"


@pytest.fixture
def server() -> Iterator[InvokeApiServer]:
    with InvokeApiServer() as invoke_api:
        yield invoke_api


def sequences(event: dict[str, Any]) -> list[str]:
    return [r["kinesis"]["sequenceNumber"] for r in event["Records"]]


def always(kind: type[Exception], message: str) -> Any:
    """A function that raises ``kind(message)`` on every invocation."""

    def fn(event: dict[str, Any], context: Any) -> None:
        raise kind(message)

    return fn


def recorded_age_exceeded(variant: str) -> Any:
    """The RecordAgeExceeded failure record AWS sent in the recorded scenario
    ``test_kinesis_maximum_record_age_exceeded<variant>``."""
    return recorded_message(
        "esm-kinesis.json",
        f"test_kinesis_maximum_record_age_exceeded{variant}",
        "record_age_exceeded_payload",
    )


@contextlib.contextmanager
def aged_kinesis(moto_url: str, seconds: float, only_first: bool = False) -> Iterator[str]:
    """moto's Kinesis behind a fault proxy whose GetRecords answers make records look
    ``seconds`` older than they are (only the first record of each answer if ``only_first``);
    yields the proxy's URL."""

    def change(body: dict[str, Any]) -> dict[str, Any]:
        for i, record in enumerate(body.get("Records", [])):
            if i == 0 or not only_first:
                record["ApproximateArrivalTimestamp"] -= seconds
            if only_first:
                break
        return body

    with FaultProxy(moto_url) as proxy:
        proxy.rewrite(GET_RECORDS, change)
        yield proxy.url


@dataclass
class Case:
    """One scenario: a one-shard stream holding its records, an SQS queue (the on-failure
    destination unless a test names another), and the mapping's checkpoint file; the function
    ``fn`` runs behind ``server``."""

    moto_url: str
    server: InvokeApiServer
    db: Path
    stream: str
    written: list[str]
    queue_url: str
    queue_arn: str

    def settings(self, destination: str | None = None, **mapping: Any) -> Settings:
        return lambda_settings(
            self.moto_url,
            self.server,
            self.stream,
            self.db,
            destination=destination or self.queue_arn,
            **mapping,
        )

    async def settle(
        self, sequence: str, limit: float = 30, what: str = "the record settled", **mapping: Any
    ) -> Settings:
        """Run the service until the checkpoint reaches ``sequence``; return its settings."""
        settings = self.settings(**mapping)
        await run_until_checkpoint(settings, self.db, sequence, limit, what)
        return settings

    async def settle_aged(
        self, seconds: float, sequence: str, only_first: bool = False, **mapping: Any
    ) -> None:
        """:meth:`settle`, reading the stream through :func:`aged_kinesis`."""
        with aged_kinesis(self.moto_url, seconds, only_first) as kinesis_url:
            await self.settle(sequence, kinesis_url=kinesis_url, **mapping)

    async def failure_records(self) -> list[dict[str, Any]]:
        """What the queue holds."""
        return await queue_bodies(self.moto_url, self.queue_url)


NewCase = Callable[[str, list[tuple[str, bytes]]], Awaitable[Case]]


@pytest.fixture
def new_case(moto_url: str, server: InvokeApiServer, tmp_path: Path) -> NewCase:
    """Makes a :class:`Case` from a name prefix and the stream's (partition key, data) records."""

    async def make(prefix: str, records: list[tuple[str, bytes]]) -> Case:
        stream = unique(prefix)
        written = await stream_with(moto_url, stream, records)
        queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
        db = tmp_path / "c.db"
        return Case(moto_url, server, db, stream, written, queue_url, queue_arn)

    return make


async def test_poison_record_among_10000_is_isolated(
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """Bisect on, two retries: only the poison record reaches the SQS destination, every other
    record is delivered, and the failure record has the shape AWS recorded."""
    records = [(f"k{i % 97}", b"poison" if i == 6_543 else b"fine") for i in range(10_000)]
    case = await new_case("poison", records)
    written = case.written
    poison = written[6_543]
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
    await case.settle(
        written[-1],
        120,
        "the whole stream settled",
        batch_size=100,
        maximum_retry_attempts=2,
        bisect_batch_on_function_error=True,
    )
    assert sorted(delivered_ok, key=int) == [s for s in written if s != poison]
    assert len(delivered_ok) == len(set(delivered_ok)) == 9_999
    (message,) = await case.failure_records()
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == poison
    assert message["KinesisBatchInfo"]["batchSize"] == 1
    assert message["requestContext"]["approximateInvokeCount"] == len(poison_invocations)
    assert poison_invocations[-3:] == [1, 1, 1], "one try and two retries of the isolated record"
    expected = recorded_message(
        "esm-kinesis.json",
        "::test_kinesis_event_source_mapping_with_on_failure_destination_config",
        "sqs_payload",
    )
    expected["requestContext"]["approximateInvokeCount"] = len(poison_invocations)
    assert_matches(message, expected)


async def test_record_age_exceeded_before_first_invocation(
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """A record older than MaximumRecordAgeInSeconds is never invoked; its failure record is
    AWS's RecordAgeExceeded with approximateInvokeCount 1 and no responseContext."""
    case = await new_case("age", [("test", b"stream-data")])
    server.register("fn", lambda event, context: None, timeout=5)
    await case.settle_aged(
        120,
        case.written[0],
        batch_size=1,
        maximum_retry_attempts=0,
        maximum_record_age_in_seconds=60,
    )
    assert server.invocations("fn") == []
    (message,) = await case.failure_records()
    expected = recorded_age_exceeded("[expire-before-ingestion]")
    assert_matches(message, expected)
    assert "responseContext" not in message


# serial: it needs at least two retries inside a record age of a few seconds, which other
# workers' load on 2 cores can leave no room for.
@pytest.mark.serial
async def test_record_age_exceeded_while_retrying(
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """With infinite retries a failing record is given up once it passes its age: the count is
    the invocations made plus the one that was about to be (AWS recorded 8 after 7)."""
    case = await new_case("age", [("test", b"stream-data")])
    server.register("fn", always(RuntimeError, "always"), timeout=5)
    await case.settle_aged(55, case.written[0], batch_size=1, maximum_record_age_in_seconds=60)
    invocations = len(server.invocations("fn"))
    assert invocations >= 2
    (message,) = await case.failure_records()
    expected = recorded_age_exceeded("[expire-while-retrying]")
    expected["requestContext"]["approximateInvokeCount"] = invocations + 1
    assert_matches(message, expected)


async def test_expired_record_is_discarded_and_the_rest_delivered(
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """AWS's discard scenario: of six records the first is too old; it goes to the destination
    alone (batchSize 1) and the five others are delivered in one invocation."""
    case = await new_case("age", [("test", f"stream-data-{i}".encode()) for i in range(6)])
    written = case.written
    server.register("fn", lambda event, context: None, timeout=5)
    await case.settle_aged(
        120,
        written[-1],
        only_first=True,
        what="all six settled",
        batch_size=10,
        maximum_batching_window_in_seconds=1,
        maximum_retry_attempts=0,
        maximum_record_age_in_seconds=60,
    )
    assert [sequences(i.event) for i in server.invocations("fn")] == [written[1:]]
    (message,) = await case.failure_records()
    expected = recorded_age_exceeded("_discard_records")
    assert_matches(message, expected)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[0]


async def test_sns_destination_receives_the_failure_record(
    moto_url: str, server: InvokeApiServer, new_case: NewCase
) -> None:
    """SNS: the failure record is the Message of a standard notification (read through an SQS
    subscription), matching AWS's recording."""
    case = await new_case("sns", [("custom", b'{"input": "hello"}')])
    async with aws_client("sns", moto_url) as sns:
        topic_arn = (await sns.create_topic(Name=unique("topic")))["TopicArn"]
        # The case's queue subscribes to the topic, the destination.
        await sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=case.queue_arn)
    server.register("fn", always(RuntimeError, "boom"), timeout=5)
    settings = case.settings(destination=topic_arn, batch_size=1, maximum_retry_attempts=1)
    async with running(settings):
        messages = await wait_for_messages(moto_url, case.queue_url)
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
    moto_url: str, server: InvokeApiServer, new_case: NewCase
) -> None:
    """S3: the object key follows AWS's scheme, and the body carries the records as payload."""
    record = b'{"input": "hello", "value": "world", "raise_error": 1}'
    case = await new_case("s3", [("custom", record)])
    bucket = unique("bucket")
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)
    server.register("fn", always(RuntimeError, "boom"), timeout=5)
    settings = await case.settle(
        case.written[0],
        destination=f"arn:aws:s3:::{bucket}",
        batch_size=1,
        maximum_retry_attempts=1,
    )
    mapping = settings.mappings[0]
    assert isinstance(mapping, KinesisMapping)
    mapping_uuid = mapping.mapping_uuid
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
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """With MaximumRetryAttempts 0, three throttles are still retried; the fourth try succeeds."""
    case = await new_case("thr", [("k", b"x")])
    calls: list[int] = []

    def fn(event: dict[str, Any], context: Any) -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise Throttled("Rate Exceeded.")

    server.register("fn", fn, timeout=5)
    await case.settle(case.written[0], batch_size=1, maximum_retry_attempts=0)
    assert [i.outcome for i in server.invocations("fn")] == ["throttled"] * 3 + ["success"]
    assert await case.failure_records() == []


async def test_throttled_records_still_expire_by_age(
    server: InvokeApiServer, new_case: NewCase
) -> None:
    """A function that only throttles: the record is given up when it passes its age."""
    case = await new_case("thr", [("k", b"x")])
    server.register("fn", always(Throttled, "Rate Exceeded."), timeout=5)
    await case.settle_aged(
        55,
        case.written[0],
        batch_size=1,
        maximum_retry_attempts=0,
        maximum_record_age_in_seconds=60,
    )
    assert len(server.invocations("fn")) >= 2, (
        "throttles were not retried (MaximumRetryAttempts 0 must not apply to them)"
    )
    (message,) = await case.failure_records()
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert (
        message["requestContext"]["approximateInvokeCount"] == 1
    )  # no invocation reached the function


async def test_destination_outage_holds_the_checkpoint(
    moto_url: str, server: InvokeApiServer, new_case: NewCase
) -> None:
    """While the destination is down the failed record is not settled: the checkpoint stays
    before it and the shard waits. When it recovers nothing was lost."""
    case = await new_case("out", [("a", b"ok"), ("poison", b"bad"), ("b", b"ok")])
    written, db = case.written, case.db

    def fn(event: dict[str, Any], context: Any) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in event["Records"]):
            raise RuntimeError("bad record")

    server.register("fn", fn, timeout=5)
    with FaultProxy(moto_url) as sqs_proxy:
        sqs_proxy.fail("AmazonSQS.SendMessage", code="InternalError", status=500, times=10**6)
        settings = case.settings(sqs_url=sqs_proxy.url, batch_size=1, maximum_retry_attempts=0)
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
    (message,) = await case.failure_records()
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[1]
    assert [sequences(i.event) for i in server.invocations("fn")][-1] == [written[2]]


async def test_other_shards_keep_flowing_while_one_retries(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """A shard stuck on a failing record (infinite retries) does not hold back another shard."""
    stream = unique("iso")
    arn = stream_arn(stream)
    recorded_streams.append(arn)
    stuck, flowing = await stream_holding(
        moto_url, stream, [[("poison", b"x")], [(f"k{i}", b"x") for i in range(200)]]
    )
    attempts = recorder.fail_poison(arn)
    settings = kinesis_settings(
        endpoint_url=moto_url, stream=stream, db=tmp_path / "c.db", batch_size=10
    )
    async with running(settings):
        await wait_until(lambda: len(delivered(stream)) >= 200, 30, "the healthy shard's records")
        await wait_until(lambda: len(attempts) >= 2, 30, "the stuck shard retrying")
    assert delivered(stream) == flowing
    assert stuck[0] not in delivered(stream)


async def test_missing_destination_blocks_the_shard_loudly_and_loses_nothing(
    moto_url: str, server: InvokeApiServer, new_case: NewCase
) -> None:
    """A destination refusing for a permanent reason (a queue that does not exist) is waited
    for, never dropped: the shard stays before the failed record, the
    ``poller_destination_blocked`` gauge says 1 and ``destination.blocked`` is logged at error
    level. Once the queue exists, the failure record reaches it and the shard moves on."""
    case = await new_case("gone", [("a", b"ok"), ("poison", b"bad"), ("b", b"ok")])
    written, db = case.written, case.db
    name = unique("missing")
    missing_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    def fn(event: dict[str, Any], context: Any) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in event["Records"]):
            raise RuntimeError("bad record")

    server.register("fn", fn, timeout=5)
    settings = case.settings(destination=missing_arn, batch_size=1, maximum_retry_attempts=0)
    with structlog.testing.capture_logs() as logs:
        async with running(settings) as service:
            assert isinstance(service.metrics, PrometheusMetrics)
            registry = service.metrics.registry

            def blocked() -> float | None:
                value: float | None = registry.get_sample_value(
                    "poller_destination_blocked", {"mapping": "m"}
                )
                return value

            await wait_until(lambda: blocked() == 1, 30, "the destination reported blocked")
            assert checkpoint_of(db) == written[0]
            alerts = [e for e in logs if e["event"] == "destination.blocked"]
            assert alerts
            assert alerts[0]["log_level"] == "error"
            assert alerts[0]["destination"] == missing_arn
            async with aws_client("sqs", moto_url) as sqs:
                url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
            await wait_until(
                lambda: checkpoint_of(db) == written[2], 60, "the rest settled once it exists"
            )
            assert blocked() == 0
    (message,) = await queue_bodies(moto_url, url)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[1]
    assert [sequences(i.event) for i in server.invocations("fn")] == [[w] for w in written]
