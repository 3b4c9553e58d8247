"""KPL de-aggregation: splits a Kinesis record packed by the Kinesis Producer Library.

The Kinesis adapter may pass each record's raw bytes through :func:`deaggregate` before
filtering and batching, as the KCL does (Lambda itself delivers aggregates untouched). An
aggregate becomes the user records inside it, each keeping the parent's sequence number plus
its sub-sequence number; anything that is not a valid aggregate (:func:`deaggregate` returns
None) is delivered as the plain record it is. I/O-free and synchronous.

Wire format (``aggregation-format.md`` of amazon-kinesis-producer): the 4 magic bytes
:data:`MAGIC`, a protobuf ``AggregatedRecord``, then the 16-byte MD5 of the protobuf bytes::

    message AggregatedRecord {
      repeated string partition_key_table = 1;
      repeated string explicit_hash_key_table = 2;
      repeated Record records = 3;
    }
    message Record {
      required uint64 partition_key_index = 1;
      optional uint64 explicit_hash_key_index = 2;
      required bytes data = 3;
      repeated Tag tags = 4;
    }

The protobuf reader here is minimal and strict about bounds, so the service has no protobuf
dependency: it knows these fields, skips others by wire type as protobuf does, and turns any
malformed input into None rather than an exception.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

#: The first 4 bytes of every KPL aggregate.
MAGIC: Final = b"\xf3\x89\x9a\xc2"
#: Hash keys span 0 .. 2**128 - 1; the range used when no shard range is given (as KCL).
FULL_HASH_RANGE: Final = (0, 2**128 - 1)

_DIGEST_SIZE: Final = 16
#: Decimal digits of the largest hash key, 2**128 - 1: a longer one is past every shard.
_HASH_KEY_DIGITS: Final = len(str(FULL_HASH_RANGE[1]))
_MIN_SIZE: Final = len(MAGIC) + _DIGEST_SIZE + 1  # KCL needs at least one protobuf byte
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_UINT64_LIMIT: Final = 1 << 64
# Field tags: field number << 3 | wire type.
_PARTITION_KEY_TABLE: Final = 1 << 3 | _LENGTH_DELIMITED
_EXPLICIT_HASH_KEY_TABLE: Final = 2 << 3 | _LENGTH_DELIMITED
_RECORDS: Final = 3 << 3 | _LENGTH_DELIMITED
_PARTITION_KEY_INDEX: Final = 1 << 3 | _VARINT
_EXPLICIT_HASH_KEY_INDEX: Final = 2 << 3 | _VARINT
_DATA: Final = 3 << 3 | _LENGTH_DELIMITED


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One record as the producer's user put it, taken out of an aggregate.

    Attributes:
        partition_key: The user record's own partition key.
        explicit_hash_key: Its explicit hash key (decimal text), or None when it had none.
        data: Its payload.
        sub_sequence_number: Its index within the aggregate (stable even when records
            before it were dropped), paired with the parent record's sequence number.
    """

    partition_key: str
    explicit_hash_key: str | None
    data: bytes
    sub_sequence_number: int


class _Malformed(Exception):
    """The protobuf is truncated or invalid; never escapes this module."""


def is_aggregated(data: bytes) -> bool:
    """Whether ``data`` looks like a KPL aggregate: the magic bytes and room for a body.

    A cheap prefix test; :func:`deaggregate` also checks the MD5 trailer and the protobuf.
    """
    return len(data) >= _MIN_SIZE and data.startswith(MAGIC)


def deaggregate(
    data: bytes,
    *,
    parent_partition_key: str,
    shard_hash_range: tuple[int, int] | None = None,
) -> list[UserRecord] | None:
    """The user records inside a KPL aggregate, in order.

    User records whose effective hash key (the explicit hash key, else the MD5 of the
    partition key read as a big-endian integer) falls outside ``shard_hash_range`` (inclusive)
    are left out: after a reshard they belong to another shard's reader. KCL drops them too.

    Args:
        data: The Kinesis record's raw bytes.
        parent_partition_key: The Kinesis record's partition key. Not needed for decoding
            (every user record carries its own); accepted so callers pass the full context.
        shard_hash_range: The shard's (starting, ending) hash keys; None means the whole key
            space, so only explicit hash keys outside 0 .. 2**128 - 1 are dropped.

    Returns:
        The kept user records (possibly none), or None when ``data`` is not a valid aggregate
        (no magic, a wrong MD5 trailer, or a truncated or invalid protobuf, including table
        indexes out of range and explicit hash keys that are not decimal integers). The caller
        then delivers ``data`` as one plain record, as KCL does.
    """
    del parent_partition_key  # see Args
    if not is_aggregated(data):
        return None
    body = data[len(MAGIC) : -_DIGEST_SIZE]
    if hashlib.md5(body, usedforsecurity=False).digest() != data[-_DIGEST_SIZE:]:
        return None
    try:
        return _user_records(body, shard_hash_range or FULL_HASH_RANGE)
    except (_Malformed, IndexError):  # IndexError: a read past the end of the protobuf
        return None


def _user_records(body: bytes, hash_range: tuple[int, int]) -> list[UserRecord]:
    partition_keys, hash_keys, records = _parse_aggregate(body)
    low, high = hash_range
    whole_space = (low, high) == FULL_HASH_RANGE
    pk_hashes: dict[int, int] = {}
    ehk_values: dict[int, int] = {}
    out: list[UserRecord] = []
    for index, (pk_index, ehk_index, payload) in enumerate(records):
        if pk_index >= len(partition_keys):
            raise _Malformed
        partition_key = partition_keys[pk_index]
        if ehk_index is None:
            explicit_hash_key = None
            if whole_space:  # an MD5 is always inside the whole key space
                out.append(UserRecord(partition_key, None, payload, index))
                continue
            if pk_index not in pk_hashes:
                pk_hashes[pk_index] = _md5_int(partition_key)
            hash_key = pk_hashes[pk_index]
        else:
            if ehk_index >= len(hash_keys):
                raise _Malformed
            explicit_hash_key = hash_keys[ehk_index]
            if ehk_index not in ehk_values:
                ehk_values[ehk_index] = _decimal(explicit_hash_key)
            hash_key = ehk_values[ehk_index]
        if low <= hash_key <= high:
            out.append(UserRecord(partition_key, explicit_hash_key, payload, index))
    return out


def _md5_int(partition_key: str) -> int:
    digest = hashlib.md5(partition_key.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def _decimal(text: str) -> int:
    """An explicit hash key as Java's ``new BigInteger(text)`` reads it: [+-]digits."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise _Malformed
    significant = digits.lstrip("0") or "0"
    negative = text[:1] == "-"
    if len(significant) > _HASH_KEY_DIGITS:
        # Outside every shard's range whatever its exact value, and int() refuses text of
        # more than 4300 digits; a value just past the range says the same thing.
        return -(2**128) if negative else 2**128
    return -int(significant) if negative else int(significant)


_Record = tuple[int, int | None, bytes]


def _parse_aggregate(buf: bytes) -> tuple[list[str], list[str], list[_Record]]:
    """The partition key table, explicit hash key table and records of an AggregatedRecord."""
    partition_keys: list[str] = []
    hash_keys: list[str] = []
    records: list[_Record] = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        if tag & 7 != _LENGTH_DELIMITED:
            pos = _skip(buf, pos, tag)
            continue
        size, pos = _varint(buf, pos)
        stop = pos + size
        if stop > end:
            raise _Malformed
        if tag == _PARTITION_KEY_TABLE:
            # Java's proto2 decoding replaces invalid UTF-8; so does KCL, so do we.
            partition_keys.append(buf[pos:stop].decode("utf-8", "replace"))
        elif tag == _EXPLICIT_HASH_KEY_TABLE:
            hash_keys.append(buf[pos:stop].decode("utf-8", "replace"))
        elif tag == _RECORDS:
            records.append(_parse_record(buf, pos, stop))
        elif tag >> 3 == 0:
            raise _Malformed
        pos = stop
    if pos != end:  # a skipped field ran past the end
        raise _Malformed
    return partition_keys, hash_keys, records


def _parse_record(buf: bytes, pos: int, end: int) -> _Record:
    """One Record message in ``buf[pos:end]``; its two required fields must be there.

    Reads may run past ``end`` (never past ``buf``: that raises IndexError); the final
    position check then refuses the record, so the hot loop needs no bounds checks.
    """
    pk_index: int | None = None
    ehk_index: int | None = None
    payload: bytes | None = None
    while pos < end:
        tag = buf[pos]
        pos += 1
        if tag & 0x80:
            tag, pos = _varint_tail(buf, pos, tag)
        if tag == _PARTITION_KEY_INDEX:
            pk_index, pos = _varint(buf, pos)
        elif tag == _EXPLICIT_HASH_KEY_INDEX:
            ehk_index, pos = _varint(buf, pos)
        elif tag == _DATA:
            size, pos = _varint(buf, pos)
            payload, pos = buf[pos : pos + size], pos + size
        else:  # tags (field 4) and unknown fields
            pos = _skip(buf, pos, tag)
    if pos != end or pk_index is None or payload is None:
        raise _Malformed
    return pk_index, ehk_index, payload


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A base-128 varint at ``pos`` and the position after it (IndexError past the end)."""
    byte = buf[pos]
    if byte & 0x80:
        return _varint_tail(buf, pos + 1, byte)
    return byte, pos + 1


def _varint_tail(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte was ``first``: at most 10 bytes, 64 bits."""
    result, shift = first & 0x7F, 7
    while shift < 70:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= _UINT64_LIMIT:
                raise _Malformed
            return result, pos
        shift += 7
    raise _Malformed


def _skip(buf: bytes, pos: int, tag: int) -> int:
    """The position after the value of an unknown field (groups and bad wire types refused)."""
    wire_type = tag & 7
    if tag >> 3 == 0:
        raise _Malformed
    if wire_type == _VARINT:
        return _varint(buf, pos)[1]
    if wire_type == _LENGTH_DELIMITED:
        size, pos = _varint(buf, pos)
        return pos + size
    if wire_type == _FIXED64:
        return pos + 8
    if wire_type == _FIXED32:
        return pos + 4
    raise _Malformed
