"""Batch cutting by count and by the exact serialized size of the event."""

from __future__ import annotations

import base64
import json
from collections import deque
from datetime import UTC, datetime

import pytest

from poller.core.batching import MAX_PAYLOAD_BYTES, BatchBuilder, event_size
from poller.sources.kinesis import make_record_factory
from poller.types import StreamRecord

ARRIVAL = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC).timestamp()
convert = make_record_factory(
    shard_id="shardId-000000000000",
    stream_arn="arn:aws:kinesis:us-east-1:123456789012:stream/s",
    region="us-east-1",
    identity_arn="arn:aws:iam::123456789012:role/r",
)


def record(seq: int, data: bytes = b"x" * 10, key: str = "k") -> StreamRecord:
    """A record as a source client returns it: base64 text and epoch seconds."""
    return convert(
        {
            "SequenceNumber": str(seq),
            "PartitionKey": key,
            "Data": base64.b64encode(data).decode(),
            "ApproximateArrivalTimestamp": ARRIVAL,
        }
    )


def compact(records: list[StreamRecord]) -> int:
    event = {"Records": [r.event_record for r in records]}
    return len(json.dumps(event, separators=(",", ":")))


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"", "k"),
        (b"hello", "partition-1"),
        (bytes(range(256)) * 3, "k"),
        (b"x", 'quote"and\\slash'),
        (b"x", "ünïcode-κλειδί"),
        (b"x", "tab\tnewline\n"),
    ],
)
def test_record_size_is_exact_serialized_size(data: bytes, key: str) -> None:
    """A record's size equals the bytes it adds to the compact JSON event."""
    r = record(49590338271490256608559692538361571095921575989136588898, data, key)
    assert r.size == len(json.dumps(r.event_record, separators=(",", ":")))


def test_event_size_matches_serialization() -> None:
    """event_size() of several records equals the length of the serialized event."""
    records = [record(i, b"y" * i, f"key-{i}") for i in range(1, 20)]
    assert event_size(records) == compact(records)
    assert event_size([]) == compact([])


def test_cut_at_batch_size() -> None:
    """The builder refuses records once it holds batch_size of them."""
    builder = BatchBuilder(max_records=3)
    pending = deque(record(i) for i in range(5))
    builder.fill_from(pending)
    assert [r.sequence_number for r in builder.records] == ["0", "1", "2"]
    assert builder.is_full
    assert len(pending) == 2


def test_cut_before_payload_limit() -> None:
    """A record that would push the event past the byte limit starts the next batch."""
    records = [record(i, b"z" * 300) for i in range(10)]
    limit = event_size(records[:4]) + 10  # room for four records, not five
    builder = BatchBuilder(max_records=100, max_bytes=limit)
    pending = deque(records)
    builder.fill_from(pending)
    assert len(builder.records) == 4
    assert builder.size_bytes == compact(builder.records) <= limit
    assert builder.is_full
    assert pending[0].sequence_number == "4"


def test_batch_exactly_at_limit_is_accepted() -> None:
    """The limit is inclusive: an event of exactly max_bytes fits."""
    records = [record(i, b"z" * 100) for i in range(3)]
    builder = BatchBuilder(max_records=10, max_bytes=event_size(records))
    builder.fill_from(deque(records))
    assert len(builder.records) == 3


def test_oversized_record_goes_alone() -> None:
    """A record larger than the limit on its own is accepted into an empty batch, alone."""
    big = record(1, b"b" * 2000)
    small = record(2)
    builder = BatchBuilder(max_records=10, max_bytes=1000)
    pending = deque([big, small])
    builder.fill_from(pending)
    assert builder.records == [big]
    assert builder.is_full
    assert list(pending) == [small]


def test_six_megabyte_default() -> None:
    """The default limit is Lambda's synchronous payload limit, 6 MB."""
    assert MAX_PAYLOAD_BYTES == 6_291_456
    one_mib = record(1, b"m" * (1024 * 1024))  # base64 makes this ~1.33 MiB in the event
    builder = BatchBuilder(max_records=10_000)
    pending = deque(record(i, b"m" * (1024 * 1024)) for i in range(10))
    builder.fill_from(pending)
    assert len(builder.records) == 4
    assert builder.size_bytes <= MAX_PAYLOAD_BYTES < builder.size_bytes + one_mib.size
