"""Records larger than any invocation, end to end (issue 16, item 3).

Kinesis: moto and ministack refuse a record over 1 MiB; kinesis-local accepts up to 10 MiB
once the stream's ``MaxRecordSizeInKiB`` is raised (as Kinesis does since 2025), and returns it
from GetRecords. So a 7 MiB record (about 9.3 MiB in the event, base64) is written to
kinesis-local, between two small ones, and the service runs at Lambda's real 6 MB limit with
an SQS on-failure destination on moto: the record is never invoked, its failure record
(``RecordSizeExceeded``) reaches the queue, and the checkpoint passes it.

SQS: real messages are at most 1 MiB and always fit, so the runner's ``max_bytes`` seam stands
for the limit, on moto, with and without a redrive policy, and on a FIFO queue (which poller
moves to its dead-letter queue itself).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from poller.config import parse_settings
from poller.retry import Backoff
from poller.testing import RecordingMetrics, RecordingTarget
from tests.integration.stream_errors_harness import (
    checkpoint_of,
    make_queue,
    wait_for_messages,
)
from tests.support import recorder
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.conformance import assert_matches, recorded_message
from tests.support.kinesis_local import kinesis_local
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import (
    Queue,
    create_queue,
    fifo_with_dlq,
    runner_on_endpoint,
    send_bodies,
    send_entries,
    total_depth,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Kinesis's largest record once the stream allows it (10 MiB), and the one written here.
TEN_MIB_IN_KIB = 10 * 1024
BIG = 7 * 1024 * 1024


@pytest.fixture(scope="module")
def kl_url() -> Iterator[str]:
    with kinesis_local() as url:
        yield url


async def big_record_stream(kl_url: str, name: str) -> list[str]:
    """A one-shard stream on kinesis-local holding a small record, a 7 MiB one and a small
    one, same partition key; returns their sequence numbers."""
    async with aws_client("kinesis", kl_url) as kinesis:
        await kinesis.create_stream(
            StreamName=name, ShardCount=1, MaxRecordSizeInKiB=TEN_MIB_IN_KIB
        )

        async def active() -> bool:
            described = await kinesis.describe_stream_summary(StreamName=name)
            return bool(described["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

        await wait_until(active, 30, "the stream active")
        written = []
        for data in (b'{"n":1}', b"B" * BIG, b'{"n":3}'):
            put = await kinesis.put_record(StreamName=name, Data=data, PartitionKey="k")
            written.append(str(put["SequenceNumber"]))
    return written


@pytest.mark.slow
async def test_a_kinesis_record_over_six_megabytes_goes_to_the_destination_never_invoked(
    kl_url: str, moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    name = unique("oversized")
    arn = stream_arn(name)
    recorded_streams.append(arn)
    small, big, after = await big_record_stream(kl_url, name)
    queue_url, queue_arn = await make_queue(moto_url, unique("oversized-failures"))
    db = tmp_path / "c.db"
    mapping = stream_mapping(
        "m",
        arn,
        "tests.support.recorder:record",
        batch_size=10,
        destination_config={"on_failure": {"destination_arn": queue_arn}},
    )
    settings = parse_settings(
        service_config(
            moto_url, mapping, checkpoints={"path": str(db)}, endpoints={"kinesis": kl_url}
        )
    )
    async with running(settings):
        await wait_until(lambda: checkpoint_of(db) == after, 120, "the shard settled")
    delivered = [seq for _, seq in recorder.sequence_numbers(arn)]
    assert delivered == [small, after]
    (message,) = await wait_for_messages(moto_url, queue_url)
    expected = recorded_message(
        "esm-kinesis.json",
        "test_kinesis_maximum_record_age_exceeded[expire-before-ingestion]",
        "record_age_exceeded_payload",
    )
    expected["requestContext"] |= {
        "condition": "RecordSizeExceeded",
        "approximateInvokeCount": 0,
        "functionArn": "python:tests.support.recorder:record",  # a Python target's name
    }
    assert_matches(message, expected)
    info = message["KinesisBatchInfo"]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == big
    assert info["batchSize"] == 1
    assert "responseContext" not in message


# -- SQS on moto, through the max_bytes seam ----------------------------------------------------

MAX_BYTES = 6_000
FAST = Backoff(initial=0.01, maximum=0.05)
HUGE = "H" * 8_000


def runner_at_max_bytes(
    sqs_url: str, arn: str, target: RecordingTarget, metrics: RecordingMetrics
) -> AbstractAsyncContextManager[None]:
    """One ``SqsMappingRunner`` on moto, cutting at ``MAX_BYTES``, until the block ends."""
    return runner_on_endpoint(
        sqs_url, arn, target=target, metrics=metrics, max_bytes=MAX_BYTES, backoff=FAST
    )


async def small_huge_small(sqs_url: str, *, redrive: bool) -> tuple[Queue, Queue | None]:
    """A queue holding "small", HUGE, "small"; with ``redrive``, a dead-letter queue after 2
    receives."""
    name = unique("oversized")
    async with aws_client("sqs", sqs_url) as sqs:
        dlq = None
        if redrive:
            dlq = Queue(f"{name}-dlq", await create_queue(sqs, f"{name}-dlq"))
        queue = Queue(
            name,
            await create_queue(sqs, name, dlq_arn=dlq.arn if dlq else None, max_receive_count=2),
        )
        await send_bodies(sqs, queue.url, ["small", HUGE, "small"])
    return queue, dlq


def bodies(target: RecordingTarget) -> list[str]:
    return sorted(r["body"] for event in target.events for r in event["Records"])


def oversized(metrics: RecordingMetrics) -> list[int]:
    return [c["count"] for c in metrics.calls_to("records_oversized", "orders")]


async def test_an_oversized_sqs_message_reaches_the_dead_letter_queue_never_invoked(
    sqs_url: str,
) -> None:
    """Given back with a 1-second visibility each time, the message is received twice and
    then moved by SQS (moto) to the dead-letter queue."""
    queue, dlq = await small_huge_small(sqs_url, redrive=True)
    assert dlq is not None
    target, metrics = RecordingTarget(), RecordingMetrics()
    async with runner_at_max_bytes(sqs_url, queue.arn, target, metrics):
        await wait_until(lambda: _is(total_depth(sqs_url, dlq), 1), 60, "the message in the DLQ")
        await wait_until(lambda: _is(total_depth(sqs_url, queue), 0), 60, "the queue empty")
    assert bodies(target) == ["small", "small"]
    assert sum(oversized(metrics)) == 1  # once, on the receive after which SQS moves it
    async with aws_client("sqs", sqs_url) as sqs:
        (moved,) = (await sqs.receive_message(QueueUrl=dlq.url))["Messages"]
    assert moved["Body"] == HUGE


async def test_without_a_redrive_policy_an_oversized_sqs_message_is_deleted(
    sqs_url: str,
) -> None:
    queue, _ = await small_huge_small(sqs_url, redrive=False)
    target, metrics = RecordingTarget(), RecordingMetrics()
    async with runner_at_max_bytes(sqs_url, queue.arn, target, metrics):
        await wait_until(lambda: _is(total_depth(sqs_url, queue), 0), 60, "the queue empty")
    assert bodies(target) == ["small", "small"]
    assert oversized(metrics) == [1]


#: Message attributes of every SQS type, as SendMessage takes them.
ATTRIBUTES = {
    "colour": {"DataType": "String", "StringValue": "blue"},
    "weight": {"DataType": "Number", "StringValue": "12.5"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01binary"},
}


async def test_on_a_fifo_queue_poller_moves_the_message_to_the_dlq_and_the_group_goes_on(
    sqs_url: str,
) -> None:
    """Group g holds a1, HUGE (with message attributes), a2, a3; maxReceiveCount 2. poller
    sends HUGE to the FIFO dead-letter queue itself (same body, attributes and group; its
    message id as deduplication id), deletes it, and invokes a1, a2, a3 in order, none of
    them held back (and so none moved by SQS with it)."""
    name = unique("ovfifo")
    async with aws_client("sqs", sqs_url) as sqs:
        queue, dlq = await fifo_with_dlq(sqs, name)
        entries: list[dict[str, object]] = [{"MessageBody": b} for b in ["a1", HUGE, "a2", "a3"]]
        entries[1]["MessageAttributes"] = ATTRIBUTES
        ids = await send_entries(
            sqs,
            queue.url,
            (
                {**e, "MessageGroupId": "g", "MessageDeduplicationId": str(i)}
                for i, e in enumerate(entries)
            ),
        )
    target, metrics = RecordingTarget(), RecordingMetrics()
    async with runner_at_max_bytes(sqs_url, queue.arn, target, metrics):
        await wait_until(lambda: _is(total_depth(sqs_url, queue), 0), 60, "the queue empty")
    assert [r["body"] for event in target.events for r in event["Records"]] == ["a1", "a2", "a3"]
    assert oversized(metrics) == [1]
    async with aws_client("sqs", sqs_url) as sqs:
        (moved,) = (
            await sqs.receive_message(
                QueueUrl=dlq.url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
        )["Messages"]
    assert moved["Body"] == HUGE
    assert moved["MessageAttributes"] == ATTRIBUTES
    assert moved["Attributes"]["MessageGroupId"] == "g"
    assert moved["Attributes"]["MessageDeduplicationId"] == ids[1]


async def _is(count: Awaitable[int], expected: int) -> bool:
    return await count == expected
