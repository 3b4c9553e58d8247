"""KPL de-aggregation against aggregates built by aws-kinesis-agg and by hand."""

from __future__ import annotations

import hashlib
import random

import pytest
from aws_kinesis_agg.aggregator import AggRecord, RecordAggregator

from poller.core.kpl import FULL_HASH_RANGE, MAGIC, UserRecord, deaggregate, is_aggregated

# --- A minimal protobuf writer, to build aggregates (valid or not) by hand -----------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def uint(field: int, value: int) -> bytes:
    return key(field, 0) + varint(value)


def blob(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def user_record(pk_index: int | None, data: bytes | None, ehk_index: int | None = None) -> bytes:
    """A ``Record`` message; None leaves a field out."""
    out = b"" if pk_index is None else uint(1, pk_index)
    out += b"" if ehk_index is None else uint(2, ehk_index)
    return out + (b"" if data is None else blob(3, data))


def body(pks: list[str], ehks: list[str], records: list[bytes]) -> bytes:
    """An ``AggregatedRecord`` message."""
    return (
        b"".join(blob(1, pk.encode()) for pk in pks)
        + b"".join(blob(2, ehk.encode()) for ehk in ehks)
        + b"".join(blob(3, record) for record in records)
    )


def wrap(message: bytes) -> bytes:
    """Magic, message, MD5 trailer: a Kinesis record's data."""
    return MAGIC + message + hashlib.md5(message, usedforsecurity=False).digest()


def deagg(data: bytes, hash_range: tuple[int, int] | None = None) -> list[UserRecord] | None:
    return deaggregate(data, parent_partition_key="parent", shard_hash_range=hash_range)


def md5_hash_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode(), usedforsecurity=False).digest())


def agg_bytes(record: AggRecord) -> bytes:
    _, _, data = record.get_contents()
    assert isinstance(data, bytes)
    return data


# --- Round trips with the reference aggregator ---------------------------------------------


def test_round_trip_1000_records_in_50_aggregates() -> None:
    """1,000 user records in 50 aggregates come back exactly: keys, data, order, sub-sequence."""
    rng = random.Random(7)
    sent: list[list[tuple[str, str | None, bytes]]] = []
    blobs: list[bytes] = []
    for _ in range(50):
        aggregator = RecordAggregator()
        batch = []
        for _ in range(20):
            partition_key = f"pk-{rng.randrange(30)}-ü"
            explicit = str(rng.randrange(2**128)) if rng.random() < 0.3 else None
            data = rng.randbytes(rng.randrange(0, 300))
            assert aggregator.add_user_record(partition_key, data, explicit) is None
            batch.append((partition_key, explicit, data))
        full = aggregator.clear_and_get()
        assert full is not None
        sent.append(batch)
        blobs.append(agg_bytes(full))

    received = 0
    for batch, data in zip(sent, blobs, strict=True):
        assert is_aggregated(data)
        records = deagg(data)
        assert records == [
            UserRecord(pk, ehk, payload, index) for index, (pk, ehk, payload) in enumerate(batch)
        ]
        received += len(records)
    assert received == 1000


def test_full_aggregates_as_the_aggregator_cuts_them() -> None:
    """Aggregates cut at the 1 MB limit by the aggregator decode to the same records."""
    aggregator = RecordAggregator()
    cut: list[AggRecord] = []
    payloads = [bytes([i % 251]) * 5000 for i in range(600)]
    for i, payload in enumerate(payloads):
        full = aggregator.add_user_record(f"key-{i % 13}", payload)
        if full is not None:
            cut.append(full)
    last = aggregator.clear_and_get()
    assert last is not None
    cut.append(last)
    assert len(cut) > 1
    out: list[bytes] = []
    for record in cut:
        data = agg_bytes(record)
        assert len(data) <= 1024 * 1024
        decoded = deagg(data)
        assert decoded is not None
        assert [r.sub_sequence_number for r in decoded] == list(range(len(decoded)))
        out.extend(r.data for r in decoded)
    assert out == payloads


# --- Shard hash ranges ---------------------------------------------------------------------


def test_explicit_hash_keys_outside_the_shard_are_dropped() -> None:
    """Records whose explicit hash key is outside the range are left out; the rest keep their
    index in the aggregate as sub-sequence number."""
    aggregator = RecordAggregator()
    hash_keys = [10, 99, 100, 150, 200, 201, 5]
    for i, hash_key in enumerate(hash_keys):
        aggregator.add_user_record(f"pk{i}", f"d{i}".encode(), str(hash_key))
    full = aggregator.clear_and_get()
    assert full is not None
    records = deagg(agg_bytes(full), (100, 200))
    assert records == [
        UserRecord("pk2", "100", b"d2", 2),
        UserRecord("pk3", "150", b"d3", 3),
        UserRecord("pk4", "200", b"d4", 4),
    ]
    assert deagg(agg_bytes(full), (300, 400)) == []
    everything = deagg(agg_bytes(full))
    assert everything is not None
    assert [r.explicit_hash_key for r in everything] == [str(k) for k in hash_keys]


def test_partition_key_md5_decides_without_an_explicit_hash_key() -> None:
    """Without an explicit hash key, the MD5 of the partition key places the record."""
    aggregator = RecordAggregator()
    keys = [f"partition-{i}" for i in range(200)]
    for partition_key in keys:
        aggregator.add_user_record(partition_key, partition_key.encode())
    full = aggregator.clear_and_get()
    assert full is not None
    data = agg_bytes(full)
    middle = 2**127
    low = deagg(data, (0, middle - 1))
    high = deagg(data, (middle, FULL_HASH_RANGE[1]))
    assert low is not None
    assert high is not None
    assert all(md5_hash_key(r.partition_key) < middle for r in low)
    assert all(md5_hash_key(r.partition_key) >= middle for r in high)
    assert 0 < len(low) < len(keys)
    merged = sorted(low + high, key=lambda r: r.sub_sequence_number)
    assert [r.partition_key for r in merged] == keys
    assert [r.sub_sequence_number for r in merged] == list(range(len(keys)))


def test_range_bounds_are_inclusive() -> None:
    """A hash key equal to either end of the range belongs to the shard."""
    message = body(["a"], ["7", "8", "9"], [user_record(0, b"x", i) for i in range(3)])
    records = deagg(wrap(message), (7, 9))
    assert records is not None
    assert [r.explicit_hash_key for r in records] == ["7", "8", "9"]
    records = deagg(wrap(message), (8, 8))
    assert records is not None
    assert [r.explicit_hash_key for r in records] == ["8"]


def test_explicit_hash_keys_outside_the_key_space_are_dropped() -> None:
    """Without a shard range the whole key space applies, as in KCL."""
    ehks = ["-1", str(2**128), str(2**128 - 1), "+0", "007"]
    message = body(["a"], ehks, [user_record(0, b"x", i) for i in range(len(ehks))])
    records = deagg(wrap(message))
    assert records is not None
    assert [r.explicit_hash_key for r in records] == [str(2**128 - 1), "+0", "007"]


# --- Hand-built aggregates -----------------------------------------------------------------


def test_hand_built_aggregate() -> None:
    """An aggregate written field by field decodes, tables and indexes resolved."""
    message = body(
        ["alpha", "beta"],
        ["12345"],
        [
            user_record(1, b"first"),
            user_record(0, b"", 0),
            user_record(1, b"\x00\xff" * 100),
        ],
    )
    assert deagg(wrap(message)) == [
        UserRecord("beta", None, b"first", 0),
        UserRecord("alpha", "12345", b"", 1),
        UserRecord("beta", None, b"\x00\xff" * 100, 2),
    ]


def test_unknown_fields_and_tags_are_skipped() -> None:
    """Fields this reader does not know, of every wire type, and record tags are skipped."""
    unknown = uint(9, 2**63) + key(10, 1) + b"\x01" * 8 + key(11, 5) + b"\x02" * 4
    unknown += blob(12, b"ignored")
    # A known field number with another wire type is an unknown field too.
    top_level = unknown + uint(1, 5) + uint(3, 7)
    in_record = unknown + blob(1, b"not an index") + uint(3, 9)
    tag = blob(1, b"tag-key") + blob(2, b"tag-value")
    record = user_record(0, b"payload") + blob(4, tag) + in_record
    message = top_level + body(["pk"], [], [record]) + top_level
    assert deagg(wrap(message)) == [UserRecord("pk", None, b"payload", 0)]


def test_repeated_scalar_fields_keep_the_last_value() -> None:
    """As in protobuf, a scalar field given twice keeps its last value."""
    record = uint(1, 0) + blob(3, b"old") + uint(1, 1) + blob(3, b"new")
    assert deagg(wrap(body(["a", "b"], [], [record]))) == [UserRecord("b", None, b"new", 0)]


def test_multi_byte_varints() -> None:
    """Indexes and lengths past 127 use several varint bytes."""
    pks = [f"k{i}" for i in range(300)]
    data = b"z" * 70_000
    message = body(pks, [], [user_record(299, data), user_record(128, b"y")])
    assert deagg(wrap(message)) == [
        UserRecord("k299", None, data, 0),
        UserRecord("k128", None, b"y", 1),
    ]


def test_aggregate_without_records() -> None:
    """A valid aggregate may hold no user records."""
    assert deagg(wrap(body(["a"], [], []))) == []


def test_invalid_utf8_keys_are_replaced_not_fatal() -> None:
    """Key tables decode as Java's proto2 does: invalid UTF-8 becomes U+FFFD."""
    message = blob(1, b"bad\xff") + blob(3, user_record(0, b"x"))
    assert deagg(wrap(message)) == [UserRecord("bad\ufffd", None, b"x", 0)]


# --- Not aggregates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain record data",
        b'{"json": true}',
        MAGIC,
        MAGIC + b"\x00" * 16,  # room for the digest but no message: KCL says not aggregated
        b"\xf3\x89\x9a" + b"\x00" * 40,
        b"\x00" + MAGIC + b"\x00" * 40,
    ],
)
def test_non_aggregated_data(data: bytes) -> None:
    """Data without the magic and room for a message is no aggregate."""
    assert not is_aggregated(data)
    assert deagg(data) is None


def test_corrupt_md5_trailer() -> None:
    """A wrong digest means the record is delivered as it is."""
    data = wrap(body(["a"], [], [user_record(0, b"x")]))
    assert is_aggregated(data)
    assert deagg(data) is not None
    for flipped in (len(data) - 1, len(data) - 16, len(MAGIC), len(MAGIC) + 3):
        corrupt = bytearray(data)
        corrupt[flipped] ^= 0x01
        assert is_aggregated(bytes(corrupt))
        assert deagg(bytes(corrupt)) is None


def test_truncated_data() -> None:
    """Every truncation of a real aggregate fails the digest (or the magic) check."""
    aggregator = RecordAggregator()
    for i in range(10):
        aggregator.add_user_record(f"pk{i}", f"data-{i}".encode(), str(i))
    full = aggregator.clear_and_get()
    assert full is not None
    data = agg_bytes(full)
    for size in range(len(data)):
        assert deagg(data[:size]) is None


def test_truncated_protobuf_with_a_valid_digest() -> None:
    """A message cut inside a field is refused even when its digest matches."""
    message = body(["alpha"], ["42"], [user_record(0, b"first", 0), user_record(0, b"second")])
    boundaries = {0, len(message)}
    offset = 0
    for part in (blob(1, b"alpha"), blob(2, b"42")):
        offset += len(part)
        boundaries.add(offset)
    offset += len(blob(3, user_record(0, b"first", 0)))
    boundaries.add(offset)
    for size in range(1, len(message)):
        result = deagg(wrap(message[:size]))
        if size in boundaries:
            assert result is not None, size  # a shorter but whole message
        else:
            assert result is None, size


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(body(["a"], [], [user_record(1, b"x")]), id="pk-index-out-of-range"),
        pytest.param(body(["a"], [], [user_record(2**64 - 1, b"x")]), id="pk-index-huge"),
        pytest.param(body(["a"], ["1"], [user_record(0, b"x", 1)]), id="ehk-index-out-of-range"),
        pytest.param(body(["a"], [], [user_record(0, b"x", 0)]), id="ehk-table-empty"),
        pytest.param(body(["a"], [], [user_record(None, b"x")]), id="missing-pk-index"),
        pytest.param(body(["a"], [], [user_record(0, None)]), id="missing-data"),
        pytest.param(body(["a"], ["12a"], [user_record(0, b"x", 0)]), id="ehk-not-decimal"),
        pytest.param(body(["a"], [""], [user_record(0, b"x", 0)]), id="ehk-empty"),
        pytest.param(body(["a"], ["1_000"], [user_record(0, b"x", 0)]), id="ehk-underscore"),
        pytest.param(body(["a"], [" 12"], [user_record(0, b"x", 0)]), id="ehk-space"),
        pytest.param(body(["a"], ["١٢"], [user_record(0, b"x", 0)]), id="ehk-non-ascii-digits"),
        pytest.param(body(["a"], [], [b"\x08" + b"\xff" * 10 + b"\x01"]), id="varint-11-bytes"),
        pytest.param(body(["a"], [], [b"\x08" + b"\xff" * 9 + b"\x7f"]), id="varint-over-64-bits"),
        pytest.param(body(["a"], [], [user_record(0, b"x") + key(0, 0) + b"\x01"]), id="field-0"),
        pytest.param(key(0, 2) + b"\x00" + body(["a"], [], []), id="top-level-field-0"),
        pytest.param(body(["a"], [], []) + key(5, 3) + key(5, 4), id="group"),
        pytest.param(body(["a"], [], []) + key(5, 6), id="wire-type-6"),
        pytest.param(body(["a"], [], []) + key(5, 7), id="wire-type-7"),
        pytest.param(body(["a"], [], []) + key(1, 2) + varint(100) + b"ab", id="length-past-end"),
        pytest.param(body(["a"], [], []) + key(9, 1) + b"\x00" * 7, id="fixed64-past-end"),
        pytest.param(body(["a"], [], []) + key(9, 5) + b"\x00" * 3, id="fixed32-past-end"),
        pytest.param(body(["a"], [], []) + key(9, 0), id="varint-past-end"),
        pytest.param(body(["a"], [], []) + b"\x80", id="tag-past-end"),
        pytest.param(
            blob(1, b"a") + blob(3, uint(1, 0) + key(3, 2) + varint(50) + b"x"),
            id="data-past-record-end",
        ),
        pytest.param(
            blob(1, b"a") + blob(3, uint(1, 0) + blob(3, b"x") + key(9, 1)) + b"\x00" * 8,
            id="field-past-record-end",
        ),
    ],
)
def test_malformed_protobuf(message: bytes) -> None:
    """Malformed messages with a valid digest are refused (None), never raised."""
    data = wrap(message)
    assert is_aggregated(data)
    assert deagg(data) is None
    assert deagg(data, (0, 10)) is None


def test_random_corruption_never_raises() -> None:
    """Random damage to a valid message, re-signed, yields None or records, never an error."""
    rng = random.Random(11)
    aggregator = RecordAggregator()
    for i in range(30):
        ehk = str(rng.randrange(2**128)) if i % 3 == 0 else None
        aggregator.add_user_record(f"pk{i % 4}", rng.randbytes(rng.randrange(40)), ehk)
    full = aggregator.clear_and_get()
    assert full is not None
    message = agg_bytes(full)[len(MAGIC) : -16]
    outcomes = {"none": 0, "records": 0}
    for _ in range(3000):
        damaged = bytearray(message)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.2:
            del damaged[rng.randrange(len(damaged)) :]
        result = deagg(wrap(bytes(damaged)), (0, 2**127))
        outcomes["none" if result is None else "records"] += 1
    assert outcomes["none"] > 0
    assert outcomes["records"] > 0
