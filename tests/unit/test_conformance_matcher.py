"""The conformance matcher rejects what differs from a recording (so its passes mean something)."""

from __future__ import annotations

import pytest

from tests.support.conformance import assert_matches

RECORDED = {
    "eventID": "shardId-000000000000:<sequence-number:1>",
    "eventSourceARN": "arn:<partition>:kinesis:<region>:111111111111:stream/<resource:1>",
    "kinesis": {
        "sequenceNumber": "<sequence-number:1>",
        "data": "aGVsbG8=",
        "ts": "<approximate-arrival-timestamp>",
    },
    "batchSize": 1,
    "functionError": None,
}
GOOD = {
    "eventID": "shardId-000000000000:42",
    "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
    "kinesis": {"sequenceNumber": "42", "data": "aGVsbG8=", "ts": 1.5},
    "batchSize": 1,
    "functionError": None,
}


def test_accepts_matching_payload() -> None:
    assert_matches(GOOD, RECORDED)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("batchSize"), "keys"),
        (lambda d: d.update(extra=1), "keys"),
        (lambda d: d["kinesis"].update(sequenceNumber="43"), "<sequence-number:1>"),
        (lambda d: d["kinesis"].update(data="other"), "does not match"),
        (lambda d: d.update(batchSize="1"), "not a number"),
        (lambda d: d.update(functionError="Unhandled"), "recorded None"),
        (
            lambda d: d.update(eventSourceARN="arn:aws:sqs:us-east-1:123456789012:q"),
            "does not match",
        ),
        (lambda d: d["kinesis"].update(ts=None), "ts"),
    ],
)
def test_rejects_differences(change, message: str) -> None:  # type: ignore[no-untyped-def]
    import copy

    bad = copy.deepcopy(GOOD)
    change(bad)
    with pytest.raises(AssertionError, match=message):
        assert_matches(bad, RECORDED)
