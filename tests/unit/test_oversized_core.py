"""Records larger than any invocation, in the pure core: the cut sets them aside, the retry
policy gives them up as ``RecordSizeExceeded``, the failure record says so, and a give-up for
the stream's retention is marked as such (issue 16, item 3 and §2.2 item 5).

Sizes are those of the compact JSON event, so a small ``max_bytes`` stands for Lambda's 6 MB.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.batching import ENVELOPE_BYTES, BatchBuilder, event_size, fits_alone
from poller.core.failure_record import failure_record
from poller.core.retry_policy import GiveUp, Segment, StreamRetryPolicy, oversized
from poller.core.windows import Window, window_overhead
from poller.sources.dynamodb_streams import make_ddb_record_factory
from poller.sources.kinesis import make_record_factory
from poller.types import StreamRecord
from tests.support.conformance import assert_matches, recorded

ARRIVAL = 1_767_268_800.0
SHARD = "shardId-000000000000"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
convert = make_record_factory(
    shard_id=SHARD,
    stream_arn=STREAM_ARN,
    region="us-east-1",
    identity_arn="arn:aws:iam::123456789012:role/r",
)


def record(seq: int, data: bytes = b"x" * 10, arrival: float = ARRIVAL) -> StreamRecord:
    return convert(
        {
            "SequenceNumber": str(seq),
            "PartitionKey": "k",
            "Data": base64.b64encode(data).decode(),
            "ApproximateArrivalTimestamp": arrival,
        }
    )


#: A limit that holds three small records but not one of 2,000 bytes of data.
LIMIT = 2_000


def small(seq: int) -> StreamRecord:
    return record(seq)


def big(seq: int) -> StreamRecord:
    return record(seq, b"b" * 2_000)


def seqs(records: list[StreamRecord]) -> list[str]:
    return [r.sequence_number for r in records]


# -- fits_alone ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    size: int


def test_fits_alone_counts_the_envelope_and_the_overhead_and_is_inclusive() -> None:
    assert fits_alone(Item(100), max_bytes=ENVELOPE_BYTES + 100)
    assert not fits_alone(Item(101), max_bytes=ENVELOPE_BYTES + 100)
    assert fits_alone(Item(90), max_bytes=ENVELOPE_BYTES + 100, overhead=10)
    assert not fits_alone(Item(91), max_bytes=ENVELOPE_BYTES + 100, overhead=10)


def test_fits_alone_defaults_to_lambdas_six_megabytes() -> None:
    assert fits_alone(Item(6 * 1024 * 1024 - ENVELOPE_BYTES))
    assert not fits_alone(Item(6 * 1024 * 1024 - ENVELOPE_BYTES + 1))


# -- BatchBuilder ---------------------------------------------------------------------------


def test_an_oversized_record_alone_is_set_aside_never_batched() -> None:
    huge = big(1)
    builder = BatchBuilder(max_records=10, max_bytes=LIMIT)
    pending = deque([huge])
    builder.fill_from(pending)
    assert builder.records == []
    assert builder.oversized == [huge]
    assert not pending
    assert not builder.is_full  # the batch goes on filling behind it
    assert builder.size_bytes == ENVELOPE_BYTES


def test_an_oversized_first_record_does_not_end_the_batch() -> None:
    huge, a, b = big(1), small(2), small(3)
    builder = BatchBuilder(max_records=10, max_bytes=LIMIT)
    builder.fill_from(deque([huge, a, b]))
    assert builder.oversized == [huge]
    assert builder.records == [a, b]
    assert builder.size_bytes == event_size([a, b])


def test_an_oversized_record_between_normal_ones_ends_the_batch_then_starts_the_next() -> None:
    """Set aside only where it would start a batch: every set-aside record comes before every
    batched one, so giving them up first keeps the shard's order."""
    a, huge, b = small(1), big(2), small(3)
    pending = deque([a, huge, b])
    first = BatchBuilder(max_records=10, max_bytes=LIMIT)
    first.fill_from(pending)
    assert (first.records, first.oversized, first.is_full) == ([a], [], True)
    second = BatchBuilder(max_records=10, max_bytes=LIMIT)
    second.fill_from(pending)
    assert (second.oversized, second.records) == ([huge], [b])
    assert not pending


def test_try_add_and_take_set_aside_the_same_way() -> None:
    a, huge, b = small(1), big(2), small(3)
    builder = BatchBuilder(max_records=10, max_bytes=LIMIT)
    assert builder.try_add(huge)
    assert builder.try_add(a)
    assert (builder.oversized, builder.records) == ([huge], [a])
    taker = BatchBuilder(max_records=10, max_bytes=LIMIT)
    assert taker.take([huge, huge, a, huge, b]) == [huge, b]
    assert (taker.oversized, taker.records) == ([huge, huge], [a])


def test_set_aside_items_take_no_room() -> None:
    builder = BatchBuilder(max_records=2, max_bytes=LIMIT)
    assert builder.take([big(1), small(2)]) == []
    assert (builder.room, builder.oversized) == (1, [big(1)])
    # Once a batch holds a record, a record too large waits for the next batch.
    assert builder.take([big(3)]) == [big(3)]
    assert builder.is_full


def test_a_full_batch_sets_nothing_aside() -> None:
    builder = BatchBuilder(max_records=1, max_bytes=LIMIT)
    builder.fill_from(deque([small(1)]))
    pending = deque([big(2)])
    builder.fill_from(pending)
    assert not builder.try_add(big(3))
    assert builder.oversized == []
    assert len(pending) == 1


def test_the_window_state_overhead_makes_a_record_oversized() -> None:
    """A tumbling window's fields and state travel with every record of its window: a
    record that fits a plain event may fit no windowed one."""
    window = Window(1_767_268_800, 1_767_268_860)
    state = {"total": "s" * 600}
    overhead = window_overhead(window, state, shard_id=SHARD, event_source_arn=STREAM_ARN)
    middling = record(1, b"m" * 1_000)
    assert fits_alone(middling, LIMIT)
    assert not fits_alone(middling, LIMIT, overhead)
    plain = BatchBuilder(max_records=10, max_bytes=LIMIT)
    windowed = BatchBuilder(max_records=10, max_bytes=LIMIT, overhead=overhead)
    plain.fill_from(deque([middling]))
    windowed.fill_from(deque([middling]))
    assert (plain.records, plain.oversized) == ([middling], [])
    assert (windowed.records, windowed.oversized) == ([], [middling])


def test_a_dynamodb_record_is_measured_after_event_expansion() -> None:
    """A DynamoDB change becomes a larger event record (typed images, keys, metadata): the
    check is on what the function would receive, not on the item."""
    factory = make_ddb_record_factory(
        stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026", region="us-east-1"
    )
    value = "v" * 1_500
    raw = {
        "eventID": "e1",
        "eventName": "MODIFY",
        "dynamodb": {
            "SequenceNumber": "100",
            "Keys": {"id": {"S": "k"}},
            "NewImage": {"id": {"S": "k"}, "v": {"S": value}},
            "OldImage": {"id": {"S": "k"}, "v": {"S": value}},
            "ApproximateCreationDateTime": 1_767_268_800,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }
    change = factory(raw)
    item_bytes = len(json.dumps({"id": "k", "v": value}))
    limit = ENVELOPE_BYTES + 2 * item_bytes  # room for the item, even twice over
    assert change.size == len(json.dumps(change.event_record, separators=(",", ":")))
    assert change.size > limit - ENVELOPE_BYTES
    builder = BatchBuilder(max_records=10, max_bytes=limit)
    builder.fill_from(deque([change]))
    assert (builder.records, builder.oversized) == ([], [change])


_sizes = st.lists(st.integers(min_value=0, max_value=60), max_size=14)


@settings(max_examples=300, deadline=None)
@given(
    before=_sizes,
    after=_sizes,
    max_records=st.integers(min_value=0, max_value=8),
    max_bytes=st.integers(min_value=0, max_value=120),
    overhead=st.integers(min_value=0, max_value=30),
)
def test_fill_from_sets_aside_exactly_what_try_add_sets_aside(
    before: list[int], after: list[int], max_records: int, max_bytes: int, overhead: int
) -> None:
    """The inlined ``fill_from`` and ``try_add`` agree on the records, the set-aside items,
    the size and the leftovers; no batch passes the limit; every set-aside item is one that
    cannot fit alone, and comes before every batched item."""
    fast: BatchBuilder[Item] = BatchBuilder(max_records, max_bytes, overhead)
    slow: BatchBuilder[Item] = BatchBuilder(max_records, max_bytes, overhead)
    for size in before:
        fast.try_add(Item(size))
        slow.try_add(Item(size))
    fast_pending = deque(Item(s) for s in after)
    slow_pending = deque(fast_pending)
    fast.fill_from(fast_pending)
    while slow_pending and slow.try_add(slow_pending[0]):
        slow_pending.popleft()
    assert (fast.records, fast.oversized) == (slow.records, slow.oversized)
    assert (fast.size_bytes, fast.is_full) == (slow.size_bytes, slow.is_full)
    assert list(fast_pending) == list(slow_pending)
    assert fast.size_bytes <= max_bytes or not fast.records
    assert all(not fits_alone(i, max_bytes, overhead) for i in fast.oversized)


# -- the retry policy and the failure record --------------------------------------------------


def test_an_oversized_record_is_given_up_at_once_uninvoked() -> None:
    huge = big(7)
    assert oversized(huge) == GiveUp((huge,), "RecordSizeExceeded", 0, None)
    assert not oversized(huge).by_retention


def test_the_failure_record_of_an_oversized_record_has_the_record_age_shape() -> None:
    """Same keys as AWS's RecordAgeExceeded record (no responseContext), our condition, and
    no invocation counted."""
    huge = record(49_668_123_456_789_012_345, b"b" * 2_000, arrival=1_657_720_081.0)
    action = oversized(huge)
    sent = failure_record(
        kind="kinesis",
        condition=action.condition,
        approximate_invoke_count=action.invoke_count,
        request_id="0b5b3c1e-7d4f-4b8a-9c6e-2f1a3d5e7b9c",
        function_arn="arn:aws:lambda:us-east-1:111111111111:function:f",
        last_result=action.last_result,
        shard_id=SHARD,
        stream_arn="arn:aws:kinesis:us-east-1:111111111111:stream/s",
        records=action.records,
        now=1_657_720_081.0,
    )
    expected = recorded(
        "esm-kinesis.json",
        "test_kinesis_maximum_record_age_exceeded[expire-while-retrying]",
        "record_age_exceeded_payload",
    )["Messages"][0]["Body"]
    expected["requestContext"] |= {"condition": "RecordSizeExceeded", "approximateInvokeCount": 0}
    assert_matches(json.loads(json.dumps(sent)), expected)
    assert list(sent) == list(expected)
    assert "responseContext" not in sent
    assert sent["KinesisBatchInfo"]["batchSize"] == 1


def test_a_give_up_for_the_streams_retention_says_so() -> None:
    """With an infinite maximum age the retention is the limit, and AWS does not count those
    records as dropped; a maximum age of its own is counted."""
    old, fresh = record(1, arrival=1_000.0), record(2, arrival=9_000.0)
    tried = Segment((old, fresh), invocations=1, retries=1, failures=1)
    by_retention, rest = StreamRetryPolicy().expire(tried, now=10_000.0, retention_seconds=3_600)
    assert by_retention is not None
    assert rest is not None
    assert (by_retention.records, by_retention.condition) == ((old,), "RecordAgeExceeded")
    assert by_retention.by_retention
    assert rest.records == (fresh,)
    by_age, _ = StreamRetryPolicy(maximum_record_age_seconds=3_600).expire(
        tried, now=10_000.0, retention_seconds=86_400
    )
    assert by_age is not None
    assert by_age.records == (old,)
    assert not by_age.by_retention
