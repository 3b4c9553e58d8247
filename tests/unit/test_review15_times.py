"""Hostile review of how ``poller replay`` and ``poller rewind`` read times (issue 15).

Whatever an operator types, :func:`parse_time` answers an instant or an ``OperationError``
naming the value (the command's one-line error and exit 2), never another exception, which
would be a traceback.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from poller.errors import OperationError
from poller.operations.times import iso, parse_time

NOW = datetime(2026, 12, 5, 9, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "typed",
    [
        "",
        " ",
        "now",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "1e400",
        "-1e20",
        "-1",
        "2026-12-05T25:00:00Z",
        "2026-02-30",
        "9" * 400,
        "0x10",
        "1_000",
        "\u0661\u0662\u0663",
        "2026-12-05T09:00:00Z[Europe/Paris]",
    ],
)
def test_odd_times_are_refused_or_read_never_a_crash(typed: str) -> None:
    outcome = read(typed)
    if isinstance(outcome, str):
        assert outcome.startswith(f"--from {typed!r}")
    else:
        assert 0 <= outcome <= NOW + 1
        iso(outcome)  # the summary prints it


def read(typed: str) -> float | str:
    """The instant, or the refusal's message."""
    try:
        return parse_time(typed, "--from", now=NOW)
    except OperationError as exc:
        return str(exc)


def test_epoch_millis_and_offsets_name_the_same_instant() -> None:
    expected = datetime(2026, 12, 5, 9, 0, tzinfo=UTC).timestamp()
    assert parse_time(str(int(expected * 1000)), "--from", now=NOW) == expected
    assert parse_time(str(int(expected)), "--from", now=NOW) == expected
    assert parse_time("2026-12-05T11:00:00+02:00", "--from", now=NOW) == expected
    assert parse_time("2026-12-05T09:00:00", "--from", now=NOW) == expected
    assert parse_time("2026-12-05 09:00:00Z", "--from", now=NOW) == expected


def test_a_time_just_ahead_of_the_clock_by_an_offset_is_in_the_future() -> None:
    with pytest.raises(OperationError, match="in the future"):
        parse_time("2026-12-05T10:30:00+01:00", "--to", now=NOW - 60)
