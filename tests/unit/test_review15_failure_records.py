"""Hostile review of ``poller redrive``'s failure-record parsing (issue 15).

A redrive sorts each page of parsed failure records by ``sequence_key`` (``int``) before it
delivers anything, so every pointer that parses must carry sequence numbers ``int`` reads: one
that does not is a crash of the whole run, not one failure record reported as malformed.
"""

from __future__ import annotations

import json

import pytest

from poller.operations.failure_sources import MalformedFailureRecord, parse_failure_record
from poller.operations.ranges import sequence_key

STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"


def body(start: str, end: str) -> str:
    info = {
        "shardId": "shardId-000000000000",
        "startSequenceNumber": start,
        "endSequenceNumber": end,
        "approximateArrivalOfFirstRecord": "2026-12-05T09:00:00.000Z",
        "approximateArrivalOfLastRecord": "2026-12-05T09:00:01.000Z",
        "batchSize": 2,
        "streamArn": STREAM,
    }
    return json.dumps({"requestContext": {}, "KinesisBatchInfo": info})


@pytest.mark.parametrize("odd", ["\u00b2", "1\u00b3", "\u2460"])
def test_sequence_number_of_non_decimal_digits_is_malformed(odd: str) -> None:
    """``str.isdigit`` accepts superscripts and circled digits, which ``int`` refuses."""
    with pytest.raises(MalformedFailureRecord):
        parse_failure_record(body(odd, odd))


@pytest.mark.parametrize("digits", ["49590338271490256608559692538361571095921575989136588898"])
def test_every_parsed_sequence_number_sorts(digits: str) -> None:
    """Guard: a real Kinesis sequence number (56 digits) parses and sorts as an integer."""
    pointer = parse_failure_record(body(digits, digits))
    assert sequence_key(pointer.start_sequence) == int(digits)
