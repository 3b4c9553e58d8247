"""Hostile review of the control API's shapes (issue 17): a Kinesis AT_TIMESTAMP start that
the API stores must be one the running mapping can send to Kinesis."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ParamValidationError

from poller.config import KinesisMapping
from poller.control.errors import ApiError
from poller.control.shapes import parse_create, to_mapping
from tests.unit.test_c1_shapes import KINESIS, SETTINGS, stored

REGION = "eu-west-1"


def _create(timestamp: float) -> Any:
    body = {
        "FunctionName": "f",
        "EventSourceArn": KINESIS,
        "StartingPosition": "AT_TIMESTAMP",
        "StartingPositionTimestamp": timestamp,
    }
    return parse_create(body, settings=SETTINGS, region=REGION)


def _kinesis_can_send(timestamp: float) -> None:
    """botocore builds GetShardIterator with this timestamp (no request is sent)."""
    client = botocore.session.get_session().create_client(
        "kinesis",
        region_name="us-east-1",
        aws_access_key_id="AKIDREVIEW17A",
        aws_secret_access_key="review17a",
    )
    operation = client.meta.service_model.operation_model("GetShardIterator")
    params = {
        "StreamARN": KINESIS,
        "ShardId": "shardId-000000000000",
        "ShardIteratorType": "AT_TIMESTAMP",
        "Timestamp": timestamp,
    }
    client._serializer.serialize_to_request(params, operation)


@pytest.mark.parametrize("timestamp", [-1e300, -62_135_596_801, -1e12])
def test_review17a_a_timestamp_no_datetime_holds_is_refused(timestamp: float) -> None:
    """StartingPositionTimestamp -1e300 was stored (the models refuse only future times);
    the mapping then failed at run time: botocore raises RuntimeError building the
    GetShardIterator request ("Unable to calculate correct timezone offset")."""
    with pytest.raises((RuntimeError, ParamValidationError)):
        _kinesis_can_send(timestamp)
    with pytest.raises(ApiError) as refused:
        _create(timestamp)
    assert refused.value.code == "ValidationException"
    assert "Member must be of type timestamp" in refused.value.message


@pytest.mark.parametrize("timestamp", [-62_135_596_800, -1, 0, 1_700_000_000.5])
def test_review17a_past_timestamps_a_datetime_holds_are_stored_and_sendable(
    timestamp: float,
) -> None:
    new = _create(timestamp)
    mapping = to_mapping(stored(new), settings=SETTINGS, region=REGION)
    assert isinstance(mapping, KinesisMapping)
    assert mapping.starting_position_timestamp == timestamp
    _kinesis_can_send(timestamp)
