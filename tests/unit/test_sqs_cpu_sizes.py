"""An SQS message's ``size`` (the bytes its record adds to the event, for the 6 MB cut), now
computed from the record's parts, equals what dumping the record gives (``_json_size``, the
computation it replaces) and the bytes ``encode_event`` really adds, on hostile input:
quotes, backslashes, control characters, 2-, 3- and 4-byte UTF-8, lone surrogates, big bodies,
null MD5s, system and message attributes, values that are not strings, odd queue ARNs."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.sources.sqs import _json_size, make_message_factory
from poller.targets.lambda_ import encode_event

ARN = "arn:aws:sqs:us-east-1:123456789012:q"
#: Characters that JSON escapes, or that take more than one UTF-8 byte, or cannot take any.
HOSTILE = st.sampled_from(
    ['"', "\\", "\x00", "\x1f", "\n", "\t", "é", "€", "😀", "\u2028", "\ud800"]
)
TEXT = st.text(st.one_of(HOSTILE, st.characters()), max_size=40)
ATTRIBUTE = st.fixed_dictionaries(
    {"DataType": st.sampled_from(["String", "Number", "String.x"]), "StringValue": TEXT},
    optional={"StringListValues": st.lists(TEXT, max_size=2)},
)


def raw_messages() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"MessageId": TEXT, "ReceiptHandle": TEXT, "Body": TEXT},
        optional={
            "MD5OfBody": TEXT,
            "MD5OfMessageAttributes": TEXT,
            "Attributes": st.dictionaries(TEXT, st.one_of(TEXT, st.integers()), max_size=5),
            "MessageAttributes": st.dictionaries(TEXT, ATTRIBUTE, max_size=3),
        },
    )


def added_bytes(record: dict[str, Any]) -> int:
    """What the record adds to an event of its own: the ground truth of ``size``."""
    return len(encode_event({"Records": [record]})) - len(encode_event({"Records": []}))


@settings(max_examples=400, deadline=None)
@given(raw=raw_messages(), arn=st.sampled_from([ARN, ARN + "é", ARN + "\ud800"]))
def test_sizes_equal_the_dumped_records(raw: dict[str, Any], arn: str) -> None:
    message = make_message_factory(queue_arn=arn, region="us-east-1")(raw)
    assert message.size == _json_size(message.event_record)
    assert message.size == added_bytes(message.event_record)


def test_a_big_body_and_every_attribute() -> None:
    raw = {
        "MessageId": "id",
        "ReceiptHandle": "h" * 500,
        "Body": "é😀\x01" * 80_000,
        "MD5OfBody": "d41d8cd98f00b204e9800998ecf8427e",
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1", "AWSTraceHeader": "r"},
        "MessageAttributes": {"b": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
    }
    message = make_message_factory(queue_arn=ARN, region="eu-west-1")(raw)
    assert message.size == _json_size(message.event_record) == added_bytes(message.event_record)


def test_values_that_are_not_strings_are_sized_by_dumping() -> None:
    """A hostile answer's id may be a number (botocore keeps JSON types as they come)."""
    raw = {"MessageId": 7, "ReceiptHandle": None, "Body": ["x"], "MD5OfBody": None}
    message = make_message_factory(queue_arn=ARN, region="us-east-1")(raw)
    assert message.size == _json_size(message.event_record) == added_bytes(message.event_record)
