"""Review 13b: a Kinesis page converts exactly as its records one at a time would, whatever
arrival times the wire carries (the per-page converter reuses the rounding of the previous
record's arrival when the two are equal)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from poller.sources.kinesis import make_page_converter, make_record_factory, rounded_arrival

NAMES = {"shard_id": "shardId-0", "stream_arn": "arn:s", "region": "r", "identity_arn": "arn:i"}


def raw(seq: int, arrival: Any) -> dict[str, Any]:
    return {
        "SequenceNumber": str(seq),
        "PartitionKey": "k",
        "Data": "eA==",
        "ApproximateArrivalTimestamp": arrival,
    }


def same_number(a: Any, b: Any) -> bool:
    """Equal as Lambda's event would carry them: same type, same text (-0.0 is not 0.0)."""
    return type(a) is type(b) and repr(a) == repr(b)


def test_a_negative_zero_after_a_zero_is_rounded_as_itself() -> None:
    page = make_page_converter(**NAMES)([raw(1, 0.0), raw(2, -0.0)])
    assert same_number(page[1].arrival_timestamp, round(-0.0, 3))
    assert same_number(page[1].event_record["kinesis"]["approximateArrivalTimestamp"], -0.0)
    assert page[1].size == page[0].size + 1  # "-0.0" is a character longer than "0.0"


arrivals = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0.0, -0.0, 1.0005, 1700000000.0005, 2.0**33, 0.0005]),
)


@given(st.lists(arrivals, min_size=1, max_size=8))
def test_a_page_converts_as_its_records_one_at_a_time(wire: list[Any]) -> None:
    raws = [raw(i, a) for i, a in enumerate(wire)]
    one = make_record_factory(**NAMES)
    page = make_page_converter(**NAMES)(raws)
    for got, alone in zip(page, (one(r) for r in raws), strict=True):
        assert same_number(got.arrival_timestamp, alone.arrival_timestamp)
        assert got.size == alone.size
        assert got.event_record == alone.event_record or math.isnan(got.arrival_timestamp)


@given(arrivals)
def test_rounded_arrival_is_round_and_its_repr(wire: Any) -> None:
    rounded, size = rounded_arrival(wire)
    assert same_number(rounded, round(wire, 3))
    assert size == len(repr(round(wire, 3)))
