"""Enhanced fan-out's lean event decoding: a ``SubscribeToShardEvent`` frame decoded by
``EventDecoder`` equals what the event stream's own parser (botocore's ``EventStreamJSONParser``
with the source client's settings, through aiobotocore's ``AioEventStream._parse_event``, the
call ``_PushEvents`` falls back to) makes of the same frame; and every frame it does not read
(other message types, payloads its compiled shape refuses) is left to that parser.

Frames are encoded as the wire carries them (``tests.support.fault_proxy.encode_event``) and cut
by botocore's own ``EventStreamBuffer``, which checks their CRCs. The client is a real source
client whose endpoint nothing listens on: nothing here sends a request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.eventstream import AioEventStream
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from poller.aws.clients import ClientFactory
from poller.ports import PushEvent
from poller.sources.kinesis_efo import EventDecoder, KinesisSubscriptions, push_event
from tests.support.aws import CREDENTIALS, REGION
from tests.support.fault_proxy import encode_event

pytestmark = pytest.mark.anyio

CONSUMER = "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1700000000"
RECORD_HEADERS = {
    ":message-type": "event",
    ":event-type": "SubscribeToShardEvent",
    ":content-type": "application/json",
}


def record(sequence: str, **fields: Any) -> dict[str, Any]:
    return {
        "SequenceNumber": sequence,
        "ApproximateArrivalTimestamp": 1_780_000_000.125,
        "Data": "eA==",
        "PartitionKey": "k",
        **fields,
    }


#: Payloads the decoder reads itself: what AWS sends, and what botocore still reads the same.
DECODED: dict[str, Any] = {
    "records": {
        "Records": [
            record("1", PartitionKey="ключ-🔑", Data="AAEC/w=="),
            record("2", ApproximateArrivalTimestamp=1780000001, EncryptionType="KMS"),
            record("3", Data=""),
        ],
        "ContinuationSequenceNumber": "3",
        "MillisBehindLatest": 1234,
    },
    "empty_records": {"Records": [], "ContinuationSequenceNumber": "9", "MillisBehindLatest": 0},
    "split_end": {
        "Records": [record("7")],
        "MillisBehindLatest": 0,
        "ChildShards": [
            {
                "ShardId": "shardId-000000000001",
                "ParentShards": ["shardId-000000000000"],
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": str(2**127 - 1)},
            },
            {
                "ShardId": "shardId-000000000002",
                "ParentShards": ["shardId-000000000000"],
                "HashKeyRange": {"StartingHashKey": str(2**127), "EndingHashKey": str(2**128 - 1)},
            },
        ],
    },
    "merge_end": {
        "Records": [],
        "ChildShards": [
            {
                "ShardId": "shardId-000000000003",
                "ParentShards": ["shardId-000000000001", "shardId-000000000002"],
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "9"},
                "Future": [1],
            }
        ],
    },
    "empty_child_shards": {"Records": [], "ContinuationSequenceNumber": "4", "ChildShards": []},
    "no_continuation": {"Records": [record("5")], "MillisBehindLatest": 0},
    "null_members": {
        "Records": [record("6", PartitionKey=None, EncryptionType=None)],
        "ContinuationSequenceNumber": None,
        "MillisBehindLatest": None,
        "ChildShards": None,
    },
    "unknown_members": {
        "Records": [record("8", Headers={"a": 1}, Checksum="x")],
        "ContinuationSequenceNumber": "8",
        "MillisBehindLatest": 0,
        "Throughput": {"bytes": 10},
    },
    "integer_and_float_timestamps": {
        "Records": [
            record("10", ApproximateArrivalTimestamp=0),
            record("11", ApproximateArrivalTimestamp=1780000000),
            record("12", ApproximateArrivalTimestamp=1780000000.999999),
            record("13", ApproximateArrivalTimestamp=-1.5),
        ],
        "ContinuationSequenceNumber": "13",
    },
    "iso_and_text_timestamps": {
        "Records": [
            record("14", ApproximateArrivalTimestamp="2026-12-05T03:00:00Z"),
            record("15", ApproximateArrivalTimestamp="2026-12-05T03:00:00.123456+02:00"),
            record("16", ApproximateArrivalTimestamp="Sat, 05 Dec 2026 03:00:00 GMT"),
            record("17", ApproximateArrivalTimestamp="1780000000.25"),
        ],
        "ContinuationSequenceNumber": "17",
    },
    # Types the model does not check: botocore keeps them as they came, and so does the decoder.
    "scalars_of_other_types": {
        "Records": [record("18", PartitionKey=7, SequenceNumber=18, Data=["x"])],
        "ContinuationSequenceNumber": 18,
        "MillisBehindLatest": "5",
    },
    "no_members": {},
}

#: Payloads the compiled shape refuses: botocore reads (or refuses) them, each its own way.
REFUSED: dict[str, bytes] = {
    "empty": b"",
    "not_json": b"not json",
    "not_utf8": b'{"Records": ["\xff"]}',
    "json_null": b"null",
    "json_list": b"[]",
    "records_an_object": json.dumps({"Records": {"a": 1}}).encode(),
    "a_null_record": json.dumps({"Records": [None], "ContinuationSequenceNumber": "1"}).encode(),
    "parent_shards_an_object": json.dumps(
        {"Records": [], "ChildShards": [{"ShardId": "s", "ParentShards": {"p": 1}}]}
    ).encode(),
    "a_timestamp_in_words": json.dumps(
        {"Records": [record("1", ApproximateArrivalTimestamp="x")]}
    ).encode(),
    "a_timestamp_object": json.dumps(
        {"Records": [record("1", ApproximateArrivalTimestamp={})]}
    ).encode(),
    "a_timestamp_too_large": json.dumps(
        {"Records": [record("1", ApproximateArrivalTimestamp=10**400)]}
    ).encode(),
}


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A source client as the service builds one; its endpoint is never called."""
    factory = nowhere()
    yield await factory.client("kinesis", purpose="source")
    await factory.aclose()


def nowhere() -> ClientFactory:
    """A factory whose clients' endpoint nothing listens on (the discard port)."""
    return ClientFactory(region=REGION, endpoint_url="http://127.0.0.1:9", credentials=CREDENTIALS)


def botocore_stream(client: Any) -> AioEventStream:
    """An event stream as the client's endpoint builds one for SubscribeToShard (parser made by
    the client's parser factory, the operation's event stream shape), over no body: only its
    ``_parse_event`` is used."""
    model = client.meta.service_model
    parser = client._endpoint._response_parser_factory.create_parser(model.protocol)
    shape = model.operation_model("SubscribeToShard").output_shape.members["EventStream"]
    return AioEventStream(None, shape, parser._event_stream_parser, "SubscribeToShard")


def message_of(frame: bytes) -> EventStreamMessage:
    frames = EventStreamBuffer()
    frames.add_data(frame)
    message: EventStreamMessage = next(frames)
    return message


def record_message(payload: bytes) -> EventStreamMessage:
    return message_of(encode_event(RECORD_HEADERS, payload))


async def botocore_event(client: Any, message: EventStreamMessage) -> dict[str, Any]:
    """What the stream's parser makes of a record event."""
    parsed = await botocore_stream(client)._parse_event(message)
    event: dict[str, Any] = parsed["SubscribeToShardEvent"]
    return event


def typed(value: Any) -> Any:
    """``value`` with the type of every leaf beside it, for an equality that tells 1 from 1.0
    (and key order aside, as dicts compare)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(item) for item in value])
    if isinstance(value, PushEvent):
        fields = ("records", "continuation", "millis_behind_latest", "child_shard_ids")
        return {name: typed(getattr(value, name)) for name in (*fields, "shard_end")}
    return (type(value).__name__, value)


# -- decoded ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", DECODED.values(), ids=DECODED.keys())
async def test_a_record_event_decodes_as_botocore_parses_it(client: Any, payload: Any) -> None:
    decoder = EventDecoder.for_client(client)
    message = record_message(json.dumps(payload, ensure_ascii=False).encode())
    lean = decoder.decode(message)
    reference = await botocore_event(client, message)
    assert lean is not None
    assert (decoder.decoded, decoder.fallbacks) == (1, 0)
    assert typed(lean) == typed(reference)
    if not lean:  # no field at all: refused as unreadable by both paths, never an end
        with pytest.raises(ValueError, match="without any field"):
            push_event(lean)
        with pytest.raises(ValueError, match="without any field"):
            push_event(reference)
        return
    assert typed(push_event(lean)) == typed(push_event(reference))


async def test_the_event_ends_the_shard_as_botocore_s_does(client: Any) -> None:
    decoder = EventDecoder.for_client(client)
    ends = {}
    for name, payload in DECODED.items():
        event = decoder.decode(record_message(json.dumps(payload).encode()))
        assert event is not None
        if event:  # an event without any field is unreadable, not an end (tested above)
            ends[name] = push_event(event).shard_end
    # Ended by children, or by no continuation (which the push reader believes only for a
    # shard ListShards says is closed); not by an empty list of children.
    assert {name for name, ended in ends.items() if ended} == {
        "split_end",
        "merge_end",
        "no_continuation",
        "null_members",
    }


async def test_a_backlog_event_decodes_as_botocore_parses_it(client: Any) -> None:
    # The shape of ministack's backlog push: thousands of records in one event.
    payload = {
        "Records": [
            record(str(n), PartitionKey=f"key-{n % 17}", ApproximateArrivalTimestamp=1.78e9 + n)
            for n in range(5000)
        ],
        "ContinuationSequenceNumber": "4999",
        "MillisBehindLatest": 0,
    }
    message = record_message(json.dumps(payload).encode())
    lean = EventDecoder.for_client(client).decode(message)
    assert lean is not None
    assert typed(push_event(lean)) == typed(push_event(await botocore_event(client, message)))


# -- left to botocore -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", REFUSED.values(), ids=REFUSED.keys())
async def test_a_payload_the_shape_refuses_is_left_to_botocore(client: Any, payload: bytes) -> None:
    decoder = EventDecoder.for_client(client)
    assert decoder.decode(record_message(payload)) is None
    assert (decoder.decoded, decoder.fallbacks) == (0, 1)


async def test_what_botocore_makes_of_refused_payloads(client: Any) -> None:
    """The fallback is botocore's own answer: some of these parse (oddly), the rest raise."""
    outcomes: dict[str, Any] = {}
    for name, payload in REFUSED.items():
        try:
            outcomes[name] = await botocore_event(client, record_message(payload))
        except Exception as exc:
            outcomes[name] = type(exc)
    assert outcomes == {
        "empty": {},
        "not_json": {},  # botocore reads an unparsable body as {"message": ...}
        "not_utf8": UnicodeDecodeError,
        "json_null": TypeError,
        "json_list": AttributeError,
        "records_an_object": AttributeError,
        "a_null_record": {"Records": [None], "ContinuationSequenceNumber": "1"},
        "parent_shards_an_object": {
            "Records": [],
            "ChildShards": [{"ShardId": "s", "ParentShards": ["p"]}],
        },
        "a_timestamp_in_words": ValueError,
        "a_timestamp_object": ValueError,
        "a_timestamp_too_large": OverflowError,
    }


@pytest.mark.parametrize(
    "headers",
    [
        {":message-type": "event", ":event-type": "initial-response"},
        {":message-type": "event", ":event-type": "SomethingNew"},
        {":message-type": "exception", ":exception-type": "ResourceNotFoundException"},
        {":message-type": "error", ":error-code": "InternalFailure"},
        {":event-type": "SubscribeToShardEvent"},  # no message type: botocore's to judge
        {":message-type": "Event", ":event-type": "SubscribeToShardEvent"},
        {":message-type": "event", ":event-type": "subscribeToShardEvent"},
    ],
)
async def test_other_messages_are_botocore_s_and_not_fallbacks(
    client: Any, headers: dict[str, str]
) -> None:
    decoder = EventDecoder.for_client(client)
    message = message_of(encode_event(headers, json.dumps(DECODED["records"]).encode()))
    assert decoder.decode(message) is None
    assert (decoder.decoded, decoder.fallbacks) == (0, 0)


async def test_decoding_is_off_for_other_clients_or_when_switched_off(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = record_message(json.dumps(DECODED["records"]).encode())
    assert EventDecoder.for_client(client).enabled
    assert KinesisSubscriptions(client, CONSUMER).decoder.enabled
    # A client of botocore's default parsing (bytes, datetimes) gets nothing decoded here.
    plain_factory = nowhere()
    plain = await plain_factory.client("kinesis")
    try:
        assert not EventDecoder.for_client(plain).enabled
        assert EventDecoder.for_client(plain).decode(message) is None
    finally:
        await plain_factory.aclose()
    monkeypatch.setenv("POLLER_LEAN_READS", "0")
    switched_off = EventDecoder.for_client(client)
    assert not switched_off.enabled
    assert switched_off.decode(message) is None
    assert (switched_off.decoded, switched_off.fallbacks) == (0, 0)
