"""A LATEST mapping's pinned start on DynamoDB Local: its creation times are whole minutes, so
the start compares by the minute there (by the second on AWS), and no change made after the
start is skipped. The converter is fed raw change records as a source client returns them."""

from __future__ import annotations

from typing import Any

import pytest

from poller.ports import StartPosition
from poller.sources.dynamodb_streams import DynamoDBStreamApi

LOCAL = "arn:aws:dynamodb:ddblocal:000000000000:table/Orders/stream/2026-12-05T12:07:59.149"
AWS = "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
MINUTE = 1_796_472_420.0  # a whole minute, in epoch seconds
START = StartPosition("AT_TIMESTAMP", timestamp=MINUTE + 30.25)  # pinned mid-minute


def change(sequence: int, created: float) -> dict[str, Any]:
    return {
        "eventID": f"e{sequence}",
        "eventName": "INSERT",
        "dynamodb": {
            "ApproximateCreationDateTime": created,
            "Keys": {"id": {"S": str(sequence)}},
            "SequenceNumber": f"{sequence:021d}",
        },
    }


def kept(arn: str, creation_times: list[float]) -> list[float]:
    api = DynamoDBStreamApi(client=None, stream_arn=arn, region="eu-west-1")
    raws = [change(i, t) for i, t in enumerate(creation_times)]
    return [r.arrival_timestamp for r in api.converter("shardId-1", START)(raws)]


def test_dynamodb_local_compares_by_the_minute() -> None:
    """A change after the start reads as the start's minute (DynamoDB Local rounds down): it is
    kept, and so is an earlier change of that minute (at least once); older minutes are not."""
    assert kept(LOCAL, [MINUTE - 60, MINUTE - 1, MINUTE, MINUTE + 60]) == [MINUTE, MINUTE + 60]


def test_aws_compares_by_the_second() -> None:
    times = [MINUTE, MINUTE + 29, MINUTE + 30, MINUTE + 31]
    assert kept(AWS, times) == [MINUTE + 30, MINUTE + 31]


@pytest.mark.parametrize("arn", [LOCAL, AWS])
def test_without_a_pinned_start_every_change_is_kept(arn: str) -> None:
    api = DynamoDBStreamApi(client=None, stream_arn=arn, region="eu-west-1")
    raws = [change(0, MINUTE - 3600), change(1, MINUTE)]
    assert len(api.converter("shardId-1", StartPosition("TRIM_HORIZON"))(raws)) == 2
