"""The SQS runner's I/O-free rules: which messages a partial failure keeps, batch cutting by
count and 6 MB, the receive wait within a batching window, the scaler, and event shaping.

They test poller/core/queue_rules.py, poller/queues/ and poller/sources/sqs.py from the
inside; the SQS integration tests (tests/integration/test_sqs_*.py) run the same code against
moto.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from poller.core.batching import ENVELOPE_BYTES
from poller.core.queue_rules import (
    MIN_POLLERS,
    SCALE_UP_STEP,
    START_POLLERS,
    Scaler,
    carried_apart,
    held_back,
)
from poller.queues.intake import Gathering, _wait_seconds
from poller.sources.sqs import SqsMessage, make_message_factory

ARN = "arn:aws:sqs:us-east-1:123456789012:q.fifo"


def message(message_id: str, group: str | None = None, size: int = 100) -> SqsMessage:
    return SqsMessage(message_id, f"rh-{message_id}", group, 1, {"messageId": message_id}, size)


# --------------------------------------------------------------------------- held back


def test_standard_queue_keeps_exactly_the_reported_messages() -> None:
    batch = [message(i) for i in "abcde"]
    assert held_back(batch, {"b", "d"}, fifo=False) == {1, 3}


def test_fifo_keeps_the_rest_of_a_failed_group_only() -> None:
    """Group x fails at x2: x2 and x3 stay (x1 before it is deleted); group y is untouched."""
    batch = [
        message("x1", "x"),
        message("y1", "y"),
        message("x2", "x"),
        message("y2", "y"),
        message("x3", "x"),
    ]
    assert held_back(batch, {"x2"}, fifo=True) == {2, 4}


def test_fifo_failures_in_two_groups() -> None:
    batch = [message("a1", "a"), message("a2", "a"), message("b1", "b"), message("b2", "b")]
    assert held_back(batch, {"a1", "b2"}, fifo=True) == {0, 1, 3}


def test_nothing_reported_keeps_nothing() -> None:
    assert held_back([message("a", "g"), message("b", "g")], set(), fifo=True) == set()


def test_fifo_carried_messages_of_a_failed_group_wait_with_it() -> None:
    """Carried past the 6 MB cut: x3 waits with group x's failed message; y3 and z1 go on."""
    carry = [message("x3", "x"), message("y3", "y"), message("z1", "z")]
    kept = [message("x2", "x")]
    go_on, behind = carried_apart(carry, kept, fifo=True)
    assert [m.message_id for m in go_on] == ["y3", "z1"]
    assert [m.message_id for m in behind] == ["x3"]


def test_carried_messages_go_on_on_a_standard_queue_or_without_failures() -> None:
    carry = [message("a"), message("b")]
    assert carried_apart(carry, [message("c")], fifo=False) == (carry, [])
    fifo_carry = [message("a", "g")]
    assert carried_apart(fifo_carry, [], fifo=True) == (fifo_carry, [])


# --------------------------------------------------------------------------- gathering


def test_gathering_cuts_at_the_batch_size_and_returns_the_rest() -> None:
    gathering = Gathering(limit=3, max_bytes=10_000)
    rest = gathering.take([message(str(i)) for i in range(5)])
    assert [m.message_id for m in gathering.messages] == ["0", "1", "2"]
    assert [m.message_id for m in rest] == ["3", "4"]
    assert gathering.full


def test_gathering_cuts_before_the_message_that_would_pass_the_byte_limit() -> None:
    """Sizes are those of the compact event: envelope, records and the commas between."""
    limit = ENVELOPE_BYTES + 100 + 1 + 100  # exactly two 100-byte records
    gathering = Gathering(limit=10, max_bytes=limit)
    rest = gathering.take([message("a"), message("b"), message("c")])
    assert [m.message_id for m in gathering.messages] == ["a", "b"]
    assert [m.message_id for m in rest] == ["c"]
    assert gathering.full


def test_gathering_below_both_limits_is_not_full() -> None:
    gathering = Gathering(limit=10, max_bytes=10_000)
    assert gathering.take([message("a")]) == []
    assert not gathering.full
    assert gathering.room == 9


# --------------------------------------------------------------------------- receive waits


def test_first_receive_long_polls() -> None:
    assert _wait_seconds(None, window=5, long_poll=20) == 20


def test_window_zero_stops_after_the_first_messages() -> None:
    assert _wait_seconds(time.monotonic(), window=0, long_poll=20) is None


def test_wait_is_what_is_left_of_the_window_rounded_down() -> None:
    now = time.monotonic()
    assert _wait_seconds(now + 7.6, window=10, long_poll=20) == 7
    assert _wait_seconds(now + 0.5, window=10, long_poll=20) == 0  # a short poll
    assert _wait_seconds(now - 0.1, window=10, long_poll=20) is None
    assert _wait_seconds(now + 250, window=300, long_poll=20) == 20


# --------------------------------------------------------------------------- scaling


def started(cap: int) -> Scaler:
    scaler = Scaler(cap)
    scaler.active = scaler.target
    return scaler


def test_scaler_starts_at_five_or_the_cap() -> None:
    assert Scaler(1000).target == START_POLLERS
    assert Scaler(3).target == 3
    assert Scaler(3).floor == MIN_POLLERS


def test_full_batches_add_pollers_up_to_the_cap() -> None:
    scaler = started(12)
    scaler.batch(full=True)
    assert scaler.tick() == SCALE_UP_STEP
    scaler.active = scaler.target
    scaler.batch(full=True)
    assert scaler.tick() == 2  # capped at 12
    scaler.active = scaler.target
    scaler.batch(full=True)
    assert scaler.tick() == 0


def test_partial_batches_or_failures_stop_the_growth() -> None:
    for event in ("partial", "failed", "idle"):
        scaler = started(100)
        scaler.batch(full=True)
        if event == "partial":
            scaler.batch(full=False)
        elif event == "failed":
            scaler.failed()
        else:
            scaler.idle()
        assert scaler.tick() == 0, event


def test_empty_receives_retire_pollers_down_to_two() -> None:
    scaler = started(1000)
    for _ in range(10):
        scaler.idle()
    assert scaler.target == MIN_POLLERS
    assert scaler.surplus()


# --------------------------------------------------------------------------- event shape


def raw_message(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "MessageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "MD5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "Body": "Test message.",
        "Attributes": {
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
        },
    }
    raw.update(overrides)
    return raw


def test_standard_record_is_lambdas_documented_example() -> None:
    convert = make_message_factory(
        queue_arn="arn:aws:sqs:us-east-2:123456789012:my-queue", region="us-east-2"
    )
    converted = convert(raw_message())
    assert converted.event_record == {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": "Test message.",
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfMessageAttributes": None,
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-2:123456789012:my-queue",
        "awsRegion": "us-east-2",
    }
    assert list(converted.event_record["attributes"]) == [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ]
    assert (converted.group_id, converted.receive_count) == (None, 1)


def test_fifo_attributes_and_message_attributes() -> None:
    convert = make_message_factory(queue_arn=ARN, region="us-east-1")
    raw = raw_message(
        Attributes={
            "SenderId": "S",
            "SentTimestamp": "1",
            "ApproximateReceiveCount": "3",
            "ApproximateFirstReceiveTimestamp": "2",
            "MessageDeduplicationId": "d1",
            "MessageGroupId": "g1",
            "SequenceNumber": "18849496460467696128",
            "AWSTraceHeader": "Root=1-5759e988",
        },
        MD5OfMessageAttributes="47e9e599bb21a58f4014c2bb72225a14",
        MessageAttributes={
            "B": {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
            "S": {"StringValue": "v", "DataType": "String"},
            "N": {"StringValue": "5", "DataType": "Number.int"},
        },
    )
    converted = convert(raw)
    record = converted.event_record
    # Lambda's order (the AWS documentation's FIFO example), whatever order SQS sent; the
    # attributes that example lacks (AWSTraceHeader) follow.
    assert list(record["attributes"].items()) == [
        ("ApproximateReceiveCount", "3"),
        ("SentTimestamp", "1"),
        ("SequenceNumber", "18849496460467696128"),
        ("MessageGroupId", "g1"),
        ("SenderId", "S"),
        ("MessageDeduplicationId", "d1"),
        ("ApproximateFirstReceiveTimestamp", "2"),
        ("AWSTraceHeader", "Root=1-5759e988"),
    ]
    assert record["messageAttributes"] == {
        "B": {
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
        "S": {
            "stringValue": "v",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "N": {
            "stringValue": "5",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number.int",
        },
    }
    assert record["md5OfMessageAttributes"] == "47e9e599bb21a58f4014c2bb72225a14"
    assert (converted.group_id, converted.receive_count) == ("g1", 3)


@pytest.mark.parametrize(
    "body", ["plain", 'quotes " and \\ backslashes', "héllo wörld ✓", "\x00\n"]
)
def test_size_is_the_utf8_length_of_the_compact_record(body: str) -> None:
    convert = make_message_factory(queue_arn=ARN, region="us-east-1")
    converted = convert(raw_message(Body=body))
    text = json.dumps(converted.event_record, separators=(",", ":"), ensure_ascii=False)
    assert converted.size == len(text.encode("utf-8"))
