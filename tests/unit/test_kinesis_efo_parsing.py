"""The pure parts of enhanced fan-out: consumer ARNs, starting positions, pushed events, and how
SubscribeToShard failures become poller's errors and metric reasons.

The failures are botocore's and aiohttp's own exception classes, built as the libraries build
them (a ClientError from an error response, an EventStreamError from an exception event); no
client is involved, so nothing is mocked. The codes here are the ones ministack cannot produce
on demand (LimitExceeded, InternalFailure, KMS errors) besides those it can.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from botocore.eventstream import ChecksumMismatch, InvalidPayloadLength
from botocore.exceptions import ClientError, EndpointConnectionError, EventStreamError
from botocore.parsers import ResponseParserError

from poller.errors import (
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    SubscriptionBusy,
    Throttled,
)
from poller.observability.metrics.catalog import SUBSCRIPTION_FAILURE_REASONS
from poller.ports import StartPosition
from poller.sources.kinesis_efo import (
    CONSUMER_ARN,
    STREAM_CALL,
    SUBSCRIBE_CALL,
    failure_reason,
    parse_consumer_arn,
    push_event,
    starting_position,
    translate_subscribe_error,
)

STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders.v2"
SHARD = "shardId-000000000007"


def client_error(code: str, message: str = "refused") -> ClientError:
    """A ClientError as botocore raises it for an error response to a call."""
    return ClientError({"Error": {"Code": code, "Message": message}}, "SubscribeToShard")


def exception_event(code: str, message: str = "ended") -> EventStreamError:
    """An EventStreamError as aiobotocore raises it for an exception event mid-stream."""
    return EventStreamError({"Error": {"Code": code, "Message": message}}, "SubscribeToShard")


# -- consumer ARNs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arn", "stream", "name"),
    [
        (f"{STREAM}/consumer/poller:1796438139", STREAM, "poller"),  # AWS, ministack
        (f"{STREAM}/consumer/poller", STREAM, "poller"),  # moto: no creation epoch
        (
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s/consumer/a.b-c_d:1",
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s",
            "a.b-c_d",
        ),
    ],
)
def test_a_consumer_arn_names_its_stream_and_consumer(arn: str, stream: str, name: str) -> None:
    assert parse_consumer_arn(arn) == (stream, name)
    assert re.match(CONSUMER_ARN, arn)


@pytest.mark.parametrize(
    "arn",
    [
        STREAM,
        f"{STREAM}/consumer/",
        f"{STREAM}/consumer/poller:epoch",
        f"{STREAM}/consumer/a/b:1",
        "arn:aws:kinesis:us-east-1:1234:stream/s/consumer/c:1",
        "arn:aws:sqs:us-east-1:123456789012:stream/s/consumer/c:1",
    ],
)
def test_anything_else_is_not_a_consumer_arn(arn: str) -> None:
    with pytest.raises(ValueError, match="not a Kinesis consumer ARN"):
        parse_consumer_arn(arn)
    assert re.match(CONSUMER_ARN, arn) is None


# -- starting positions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "wanted"),
    [
        (StartPosition("TRIM_HORIZON"), {"Type": "TRIM_HORIZON"}),
        (StartPosition("LATEST"), {"Type": "LATEST"}),
        (
            StartPosition("AT_TIMESTAMP", timestamp=1_700_000_000.25),
            {"Type": "AT_TIMESTAMP", "Timestamp": 1_700_000_000.25},
        ),
        (
            StartPosition("AT_SEQUENCE_NUMBER", sequence_number="49", settled_through=3),
            {"Type": "AT_SEQUENCE_NUMBER", "SequenceNumber": "49"},
        ),
        (
            StartPosition("AFTER_SEQUENCE_NUMBER", sequence_number="50"),
            {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "50"},
        ),
    ],
)
def test_starting_positions(position: StartPosition, wanted: dict[str, Any]) -> None:
    assert starting_position(position) == wanted


@pytest.mark.parametrize(
    "position",
    [
        StartPosition("AT_TIMESTAMP"),
        StartPosition("AT_SEQUENCE_NUMBER"),
        StartPosition("AFTER_SEQUENCE_NUMBER"),
    ],
)
def test_a_position_without_its_value_is_refused(position: StartPosition) -> None:
    with pytest.raises(ValueError, match="needs a"):
        starting_position(position)


# -- pushed events -----------------------------------------------------------------------------


def test_an_event_keeps_its_records_and_continuation() -> None:
    records = [{"SequenceNumber": "1", "Data": "eA==", "ApproximateArrivalTimestamp": 1.5}]
    event = push_event(
        {"Records": records, "ContinuationSequenceNumber": "1", "MillisBehindLatest": 250}
    )
    assert event.records is records  # handed on as parsed, not copied
    assert (event.continuation, event.millis_behind_latest) == ("1", 250)
    assert (event.child_shard_ids, event.shard_end) == ((), False)


def test_an_empty_event_is_not_an_end() -> None:
    event = push_event({"Records": [], "ContinuationSequenceNumber": "9", "ChildShards": []})
    assert (event.records, event.shard_end, event.millis_behind_latest) == ([], False, None)


def test_child_shards_end_the_shard() -> None:
    children = [
        {"ShardId": "shardId-000000000001", "ParentShards": [SHARD], "HashKeyRange": {}},
        {"ShardId": "shardId-000000000002", "ParentShards": [SHARD], "HashKeyRange": {}},
    ]
    event = push_event({"Records": [], "ContinuationSequenceNumber": "9", "ChildShards": children})
    assert event.shard_end
    assert event.child_shard_ids == ("shardId-000000000001", "shardId-000000000002")


def test_no_continuation_ends_the_shard() -> None:
    event = push_event({"Records": [], "ContinuationSequenceNumber": None})
    assert (event.continuation, event.shard_end) == (None, True)


# -- errors and reasons ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        ("ResourceInUseException", SubscriptionBusy, "resource_in_use"),
        ("LimitExceededException", Throttled, "limit_exceeded"),
        ("ResourceNotFoundException", StreamNotFound, "not_found"),
        ("InternalFailureException", SourceUnavailable, None),
        ("KMSAccessDeniedException", SourceUnavailable, None),
        ("AccessDeniedException", SourceUnavailable, None),
    ],
)
@pytest.mark.parametrize("where", ["call", "stream"])
def test_error_codes_say_what_to_do(
    code: str, kind: type[SourceError], reason: str | None, where: str
) -> None:
    if where == "call":
        raised, call, other = client_error(code, "no way"), SUBSCRIBE_CALL, "other"
    else:
        raised, call, other = exception_event(code, "no way"), STREAM_CALL, "stream_error"
    error = translate_subscribe_error(call, SHARD, raised)
    error.__cause__ = raised  # as `raise ... from` sets it
    assert type(error) is kind
    assert str(error) == f"{call} on shard {SHARD} failed with {code}: no way"
    assert failure_reason(error) == (reason or other)
    assert failure_reason(raised) == (reason or other)


@pytest.mark.parametrize(
    "raised",
    [
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        EndpointConnectionError(endpoint_url="https://kinesis.us-east-1.amazonaws.com"),
    ],
)
def test_a_failed_connection_is_unavailable(raised: Exception) -> None:
    error = translate_subscribe_error(STREAM_CALL, SHARD, raised)
    error.__cause__ = raised
    assert type(error) is SourceUnavailable
    assert str(error).startswith(f"{STREAM_CALL} on shard {SHARD} lost its connection (")
    assert type(raised).__name__ in str(error)
    assert failure_reason(error) == "connection"


@pytest.mark.parametrize(
    "raised",
    [
        ChecksumMismatch(expected=1, calculated=2),
        InvalidPayloadLength(30_000_000),
        ResponseParserError("Unable to parse event payload"),
    ],
)
def test_an_unreadable_frame_is_unavailable(raised: Exception) -> None:
    error = translate_subscribe_error(STREAM_CALL, SHARD, raised)
    error.__cause__ = raised
    assert type(error) is SourceUnavailable
    assert f"{STREAM_CALL} on shard {SHARD} sent an unreadable frame" in str(error)
    assert type(raised).__name__ in str(error)
    assert failure_reason(error) == "stream_error"


def test_an_unknown_failure_is_other() -> None:
    assert failure_reason(SourceUnavailable("no cause")) == "other"
    assert failure_reason(RuntimeError("not ours")) == "other"


def test_every_reason_is_in_the_metric_catalog() -> None:
    causes: list[BaseException] = [
        client_error("ResourceInUseException"),
        client_error("LimitExceededException"),
        client_error("ResourceNotFoundException"),
        aiohttp.ServerDisconnectedError(),
        exception_event("InternalFailureException"),
        client_error("InternalFailureException"),
    ]
    reasons = [failure_reason(cause) for cause in causes]
    assert reasons == list(SUBSCRIPTION_FAILURE_REASONS)
