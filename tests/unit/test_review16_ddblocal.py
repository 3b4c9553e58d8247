"""Hostile review of issue 16 item 8 (DynamoDB Local ARNs): what DynamoDB Local's minute-rounded
creation times do to the record-age rules.

Where it sits: a raw change record (as DynamoDB Local returns it: ``ApproximateCreationDateTime``
rounded *down to the minute*, checked against DynamoDB Local 1.25.1) --DynamoDBStreamApi's
converter--> StreamRecord (``arrival_timestamp``) --StreamRetryPolicy.expire--> given up or
invoked.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from poller.config import DynamoDBStreamMapping, parse_settings
from poller.core.retry_policy import Segment
from poller.ports import StartPosition
from poller.sources.dynamodb_streams import DynamoDBStreamApi
from poller.streams.supervisor import batch_policy

LOCAL = "arn:aws:dynamodb:ddblocal:000000000000:table/Orders/stream/2026-12-05T12:07:59.149"
AWS = "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
#: A change made 50 s into a minute.
MADE_AT = 1_796_472_420.0 + 50.0
#: AWS's shortest MaximumRecordAgeInSeconds (-1 aside).
SHORTEST_MAXIMUM_AGE = 60


def reported_creation(arn: str, made_at: float) -> float:
    """``ApproximateCreationDateTime`` as each service reports it: DynamoDB Local rounds down
    to the minute, AWS to the second."""
    step = 60.0 if ":ddblocal:" in arn else 1.0
    return math.floor(made_at / step) * step


def raw_change(arn: str, made_at: float) -> dict[str, Any]:
    return {
        "eventID": "e1",
        "eventName": "INSERT",
        "dynamodb": {
            "ApproximateCreationDateTime": reported_creation(arn, made_at),
            "Keys": {"id": {"S": "1"}},
            "SequenceNumber": "000000000000000000001",
        },
    }


def mapping_of(arn: str) -> DynamoDBStreamMapping:
    """A mapping of ``arn`` with AWS's shortest maximum record age and endless retries."""
    settings = parse_settings(
        {
            "aws": {"region": "eu-west-1", "endpoints": {"dynamodbstreams": "http://127.0.0.1:1"}},
            "mappings": [
                {
                    "name": "orders",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "maximum_record_age_in_seconds": SHORTEST_MAXIMUM_AGE,
                    "target": {"type": "python", "handler": "json:loads"},
                }
            ],
        }
    )
    mapping = settings.mappings[0]
    assert isinstance(mapping, DynamoDBStreamMapping)
    return mapping


@pytest.mark.parametrize("arn", [AWS, LOCAL], ids=["aws", "dynamodb_local"])
def test_a_change_read_15_seconds_after_it_was_made_is_not_too_old(arn: str) -> None:
    """With ``maximum_record_age_in_seconds: 60``, a change 15 s old is invoked on AWS. On
    DynamoDB Local its creation time reads 50 s earlier than it was made, so it is given up
    as ``RecordAgeExceeded`` (sent to the destination, or dropped) without being invoked."""
    api = DynamoDBStreamApi(client=None, stream_arn=arn, region="eu-west-1")
    [record] = api.converter("shardId-1", StartPosition("TRIM_HORIZON"))([raw_change(arn, MADE_AT)])
    policy = batch_policy(mapping_of(arn)).retry
    expired, rest = policy.expire(Segment((record,)), now=MADE_AT + 15.0)
    assert expired is None, f"given up {15.0} s after it was made: {expired}"
    assert rest is not None
    assert rest.records == (record,)
