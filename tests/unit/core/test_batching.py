"""Batch cutting by count and by the exact serialized size of the event."""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.batching import MAX_PAYLOAD_BYTES, BatchBuilder, event_size
from poller.core.windows import Window, window_event, window_overhead
from poller.sources.dynamodb_streams import make_ddb_record_factory
from poller.sources.kinesis import make_deaggregator, make_record_factory
from poller.targets.lambda_ import encode_event
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


def test_oversized_record_is_set_aside() -> None:
    """A record larger than the limit on its own is never batched: it is set aside, and the
    batch fills on behind it (tests/unit/test_oversized_core.py has the rest)."""
    big = record(1, b"b" * 2000)
    small = record(2)
    builder = BatchBuilder(max_records=10, max_bytes=1000)
    pending = deque([big, small])
    builder.fill_from(pending)
    assert builder.oversized == [big]
    assert builder.records == [small]
    assert not pending


def test_six_megabyte_default() -> None:
    """The default limit is Lambda's synchronous payload limit, 6 MB."""
    assert MAX_PAYLOAD_BYTES == 6_291_456
    one_mib = record(1, b"m" * (1024 * 1024))  # base64 makes this ~1.33 MiB in the event
    builder = BatchBuilder(max_records=10_000)
    pending = deque(record(i, b"m" * (1024 * 1024)) for i in range(10))
    builder.fill_from(pending)
    assert len(builder.records) == 4
    assert builder.size_bytes <= MAX_PAYLOAD_BYTES < builder.size_bytes + one_mib.size


def test_overhead_counts_toward_the_limit() -> None:
    """Fields besides Records (a tumbling window's window and state) shrink the room left."""
    records = [record(i, b"x" * 1000) for i in range(10)]
    plain, loaded = BatchBuilder(100, 6_000), BatchBuilder(100, 6_000, overhead=3_000)
    plain.fill_from(deque(records))
    loaded.fill_from(deque(records))
    assert len(loaded.records) < len(plain.records)
    assert loaded.size_bytes == compact(loaded.records) + 3_000
    assert loaded.size_bytes <= 6_000


@dataclass(frozen=True)
class Item:
    """Any item that knows its size: the builder is shared by streams and queues."""

    name: str
    size: int


def test_take_adds_from_the_front_and_returns_the_rest() -> None:
    """take() is fill_from() over a list: the SQS poller carries what is left over."""
    items = [Item(name, 100) for name in "abcd"]
    builder: BatchBuilder[Item] = BatchBuilder(10, event_size(items[:2]))
    assert builder.take(items) == items[2:]
    assert builder.records == items[:2]
    assert (builder.is_full, builder.room) == (True, 8)


def test_take_of_what_fits_returns_nothing_and_leaves_room() -> None:
    builder: BatchBuilder[Item] = BatchBuilder(3)
    assert builder.take([Item("a", 10)]) == []
    assert (builder.is_full, builder.room) == (False, 2)
    assert builder.take([Item("b", 10), Item("c", 10), Item("d", 10)]) == [Item("d", 10)]
    assert (builder.is_full, builder.room) == (True, 0)


# -- property: every 6 MB computation counts what is actually sent (issue 11 review) ---------

#: Text AWS can hold: any code point but a lone surrogate (services reject invalid UTF-8).
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_arrival = st.floats(min_value=1e9, max_value=2e9, allow_nan=False)
_kinesis_raw = st.builds(
    lambda seq, key, data, arrival: {
        "SequenceNumber": str(seq),
        "PartitionKey": key or "k",
        "Data": base64.b64encode(data).decode(),
        "ApproximateArrivalTimestamp": arrival,
    },
    st.integers(min_value=0, max_value=10**56),
    _text,
    st.binary(max_size=40),
    _arrival,
)
_ddb_raw = st.builds(
    lambda seq, key, image, created: {
        "eventID": "e" + str(seq),
        "eventName": "INSERT",
        "dynamodb": {
            "SequenceNumber": str(seq),
            "Keys": {"id": {"S": key}},
            "NewImage": {"v": {"S": json.dumps(image, ensure_ascii=False)}},
            "ApproximateCreationDateTime": created,
            "StreamViewType": "NEW_IMAGE",
        },
    },
    st.integers(min_value=0, max_value=10**30),
    _text,
    _json,
    st.integers(min_value=10**9, max_value=2 * 10**9),
)


def _aggregate(raw: dict[str, object], users: list[tuple[str, bytes]]) -> dict[str, object]:
    """``raw`` with its data replaced by a KPL aggregate of ``users``."""
    aggregator = RecordAggregator()
    for key, data in users:
        aggregator.add_user_record(key, data)
    record = aggregator.clear_and_get()
    assert record is not None
    _, _, blob = record.get_contents()
    return raw | {"Data": base64.b64encode(blob).decode()}


def _cut_and_send(
    records: list[StreamRecord], state: dict[str, object] | None, limit: int
) -> list[tuple[int, int, int]]:
    """Cut ``records`` as the pipeline does; (records, counted size, sent size) per event."""
    window = Window(1_600_000_000, 1_600_000_060)
    pending = deque(records)
    out = []
    while pending:
        overhead = 0
        if state is not None:
            overhead = window_overhead(window, state, shard_id="shardId-0", event_source_arn="a")
        builder = BatchBuilder(1_000, limit, overhead)
        builder.fill_from(pending)
        event: dict[str, object] = {"Records": [r.event_record for r in builder.records]}
        if state is not None:
            event = window_event(
                builder.records,
                window=window,
                state=state,
                shard_id="shardId-0",
                event_source_arn="a",
            )
        out.append((len(builder.records), builder.size_bytes, len(encode_event(event))))
    return out


def _check(
    records: list[StreamRecord], state: dict[str, object] | None, limit: int, *, exact: bool
) -> None:
    """No event is larger than counted (over-counting only where JSON escapes text)."""
    for count, counted, sent in _cut_and_send(records, state, limit):
        assert sent <= counted, (sent, counted)
        assert counted <= limit or count == 0, "only an event with no record may pass the limit"
        if exact:
            assert sent == counted


def _plain(text: str) -> bool:
    """Whether JSON writes ``text`` as it is (then a Kinesis record's size is exact)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


@settings(max_examples=150, deadline=None)
@given(
    raws=st.lists(_kinesis_raw, min_size=1, max_size=20),
    state=st.none() | st.dictionaries(_text, _json, max_size=4),
    limit=st.integers(min_value=400, max_value=5_000),
)
def test_kinesis_events_never_exceed_what_the_cut_counted(
    raws: list[dict[str, object]], state: dict[str, object] | None, limit: int
) -> None:
    factory = make_record_factory(
        shard_id="shardId-0", stream_arn="a", region="r", identity_arn="i"
    )
    exact = all(_plain(str(r["PartitionKey"])) for r in raws)
    _check([factory(r) for r in raws], state, limit, exact=exact)


@settings(max_examples=100, deadline=None)
@given(
    raws=st.lists(_kinesis_raw, min_size=1, max_size=5),
    users=st.lists(st.tuples(_text.filter(bool), st.binary(max_size=30)), min_size=1, max_size=6),
    state=st.none() | st.dictionaries(_text, _json, max_size=3),
    limit=st.integers(min_value=400, max_value=5_000),
)
def test_kpl_user_records_never_exceed_what_the_cut_counted(
    raws: list[dict[str, object]],
    users: list[tuple[str, bytes]],
    state: dict[str, object] | None,
    limit: int,
) -> None:
    factory = make_record_factory(
        shard_id="shardId-0", stream_arn="a", region="r", identity_arn="i"
    )
    expand = make_deaggregator(factory, None, None)
    records = [r for raw in raws for r in expand(_aggregate(raw, users))]
    _check(records, state, limit, exact=all(_plain(key) for key, _ in users))


@settings(max_examples=100, deadline=None)
@given(
    raws=st.lists(_ddb_raw, min_size=1, max_size=10),
    state=st.none() | st.dictionaries(_text, _json, max_size=3),
    limit=st.integers(min_value=600, max_value=5_000),
)
def test_dynamodb_events_never_exceed_what_the_cut_counted(
    raws: list[dict[str, object]], state: dict[str, object] | None, limit: int
) -> None:
    factory = make_ddb_record_factory(stream_arn="a", region="r")
    _check([factory(r) for r in raws], state, limit, exact=False)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), max_size=30),
    first=st.lists(st.integers(min_value=0, max_value=60), max_size=5),
    max_records=st.integers(min_value=1, max_value=12),
    max_bytes=st.integers(min_value=1, max_value=200),
)
def test_fill_from_adds_exactly_what_try_add_would(
    sizes: list[int], first: list[int], max_records: int, max_bytes: int
) -> None:
    """fill_from is try_add inlined: the same records, bytes, refusal and leftovers, from an
    empty builder or one that already holds (or refused) records."""

    def builder() -> BatchBuilder[Item]:
        made: BatchBuilder[Item] = BatchBuilder(max_records, max_bytes)
        for n, size in enumerate(first):
            made.try_add(Item(f"first{n}", size))
        return made

    filled, added = builder(), builder()
    left_filled = deque(Item(f"item{n}", size) for n, size in enumerate(sizes))
    left_added = deque(left_filled)
    filled.fill_from(left_filled)
    while left_added and added.try_add(left_added[0]):
        left_added.popleft()
    assert filled.records == added.records
    assert filled.size_bytes == added.size_bytes
    assert filled.is_full == added.is_full
    assert list(left_filled) == list(left_added)
