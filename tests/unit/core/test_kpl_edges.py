"""Edges of poller.core.kpl's hash-key placement that the reference aggregator never writes:
explicit hash keys shared by several user records, and keys too long to be a hash key."""

from __future__ import annotations

from poller.core.kpl import FULL_HASH_RANGE, UserRecord
from tests.unit.core.test_kpl import body, deagg, user_record, wrap

#: More digits than int() reads by default (4300), as a hostile producer could write.
HUGE_DIGITS = 5000


def test_records_sharing_an_explicit_hash_key_are_placed_alike() -> None:
    """Three records point at one explicit hash key: all follow it into or out of the shard,
    each keeping its own index as sub-sequence number."""
    message = body(
        ["a", "b"],
        ["150", "999"],
        [
            user_record(0, b"x", 0),
            user_record(1, b"y", 1),
            user_record(1, b"z", 0),
            user_record(0, b"w", 0),
        ],
    )
    assert deagg(wrap(message), (100, 200)) == [
        UserRecord("a", "150", b"x", 0),
        UserRecord("b", "150", b"z", 2),
        UserRecord("a", "150", b"w", 3),
    ]
    assert deagg(wrap(message), (900, 1000)) == [UserRecord("b", "999", b"y", 1)]
    assert deagg(wrap(message), (300, 400)) == []


def test_explicit_hash_keys_longer_than_any_hash_key_are_dropped_not_fatal() -> None:
    """A key with more significant digits than 2**128 - 1 is past every shard, whatever its
    sign or length: it is dropped (as KCL's BigInteger comparison drops it), even when it is
    too long for int(), and the aggregate's other records still arrive."""
    too_long = [
        "1" + "0" * len(str(FULL_HASH_RANGE[1])),  # one digit more than the largest key
        "9" * HUGE_DIGITS,
        "-" + "9" * HUGE_DIGITS,
        "+" + "1" * HUGE_DIGITS,
    ]
    ehks = [*too_long, "42"]
    message = body(["a"], ehks, [user_record(0, b"x", i) for i in range(len(ehks))])
    assert deagg(wrap(message)) == [UserRecord("a", "42", b"x", len(too_long))]


def test_leading_zeros_do_not_make_a_key_too_long() -> None:
    """Only significant digits count: thousands of leading zeros before 42 still read as 42."""
    padded = "0" * HUGE_DIGITS + "42"
    message = body(["a"], [padded], [user_record(0, b"x", 0)])
    assert deagg(wrap(message), (42, 42)) == [UserRecord("a", padded, b"x", 0)]
    assert deagg(wrap(message), (43, 50)) == []
