"""Fuzzing the KPL de-aggregator: arbitrary bytes and mutated aggregates never raise.

``deaggregate`` has two documented outcomes: the user records (possibly none), or None for
data that is not a valid aggregate. Random bytes almost never get past the magic and the MD5
trailer, so most examples are built aggregates, mutated in the protobuf body and re-sealed
with a correct trailer: that is what reaches the protobuf reader.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.core.kpl import FULL_HASH_RANGE, MAGIC, UserRecord, deaggregate
from tests.unit.core.test_kpl import body, user_record, varint, wrap

pytestmark = pytest.mark.timeout(60)

HASH_KEY_LIMIT = 2**128

explicit_hash_keys = (
    st.integers(min_value=-(2**130), max_value=2**130).map(str)
    | st.text(max_size=8)
    # Past Python's int-from-text limit (4300 digits): Java's BigInteger reads any length.
    | st.integers(min_value=4290, max_value=4400).map(lambda n: "9" * n)
    | st.integers(min_value=4290, max_value=4400).map(lambda n: "0" * n + "7")
)
hash_ranges = st.none() | st.tuples(
    st.integers(min_value=0, max_value=HASH_KEY_LIMIT - 1),
    st.integers(min_value=0, max_value=HASH_KEY_LIMIT - 1),
).map(sorted).map(tuple)


@st.composite
def aggregates(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int | None, bytes]], list[str]]:
    """A valid AggregatedRecord body, its records (pk index, ehk index, data) and its ehks."""
    pks = draw(st.lists(st.text(max_size=6), min_size=1, max_size=3))
    ehks = draw(st.lists(explicit_hash_keys, max_size=3))
    records = draw(
        st.lists(
            st.tuples(
                st.integers(0, len(pks) - 1),
                st.none() | st.integers(0, len(ehks) - 1) if ehks else st.none(),
                st.binary(max_size=12),
            ),
            max_size=5,
        )
    )
    message = body(pks, ehks, [user_record(pk, data, ehk) for pk, ehk, data in records])
    return message, records, ehks


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Flip, insert or delete bytes at positions taken modulo the length."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] ^= value or 1
        elif kind == 1:
            out[at:at] = bytes([value])
        elif at < len(out):
            del out[at]
    return bytes(out)


def check(result: list[UserRecord] | None) -> None:
    assert result is None or isinstance(result, list)
    for record in result or []:
        assert isinstance(record, UserRecord)
        assert isinstance(record.partition_key, str)
        assert isinstance(record.data, bytes)


@given(st.binary(max_size=300), hash_ranges)
def test_arbitrary_bytes_give_records_or_none(
    data: bytes, hash_range: tuple[int, int] | None
) -> None:
    check(deaggregate(data, parent_partition_key="pk", shard_hash_range=hash_range))
    sealed = wrap(data)  # magic and a correct trailer: straight into the protobuf reader
    check(deaggregate(sealed, parent_partition_key="pk", shard_hash_range=hash_range))


@given(aggregates(), hash_ranges)
def test_valid_aggregates_give_their_records(
    aggregate: tuple[bytes, list[tuple[int, int | None, bytes]], list[str]],
    hash_range: tuple[int, int] | None,
) -> None:
    message, records, _ehks = aggregate
    result = deaggregate(wrap(message), parent_partition_key="pk", shard_hash_range=hash_range)
    check(result)
    if hash_range in (None, FULL_HASH_RANGE) and all(ehk is None for _, ehk, _ in records):
        assert result is not None  # every record, in order, with its own key and position
        assert [(r.data, r.sub_sequence_number) for r in result] == [
            (data, index) for index, (_, _, data) in enumerate(records)
        ]


@pytest.mark.parametrize(
    ("explicit_hash_key", "kept"),
    [("9" * 4301, False), ("-" + "9" * 4400, False), ("0" * 4300 + "7", True)],
)
def test_an_explicit_hash_key_of_thousands_of_digits_is_read_like_java(
    explicit_hash_key: str, kept: bool
) -> None:
    """Found by fuzzing: int() refuses more than 4300 digits, so deaggregate raised
    ValueError. Java's BigInteger reads any length: a key past 2**128 - 1 is outside every
    shard, so KCL drops the record, and leading zeros change nothing."""
    message = body(["pk"], [explicit_hash_key], [user_record(0, b"x", 0)])
    result = deaggregate(wrap(message), parent_partition_key="pk")
    assert result == ([UserRecord("pk", explicit_hash_key, b"x", 0)] if kept else [])


@given(
    aggregates(),
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    hash_ranges,
)
def test_mutated_aggregates_give_records_or_none(
    aggregate: tuple[bytes, list[tuple[int, int | None, bytes]], list[str]],
    edits: list[tuple[int, int, int]],
    hash_range: tuple[int, int] | None,
) -> None:
    message = mutate(aggregate[0], edits)
    check(deaggregate(wrap(message), parent_partition_key="pk", shard_hash_range=hash_range))
    # A corrupted trailer or magic: never an aggregate.
    sealed = wrap(message)
    assert deaggregate(sealed[:-1] + bytes([sealed[-1] ^ 1]), parent_partition_key="pk") is None
    assert deaggregate(b"\x00" + sealed[len(MAGIC) - 3 :], parent_partition_key="pk") is None


@given(st.integers(min_value=0, max_value=2**70), st.binary(max_size=4))
def test_huge_lengths_and_indexes_never_raise(number: int, tail: bytes) -> None:
    for message in (
        varint(1 << 3 | 2) + varint(number) + tail,  # a table entry claiming `number` bytes
        varint(3 << 3 | 2) + varint(len(varint(number)) + 2) + varint(1 << 3) + varint(number),
    ):
        check(deaggregate(wrap(message), parent_partition_key="pk"))
