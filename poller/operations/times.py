"""Times as operators type them and read them, shared by the operator commands.

``replay --from/--to`` and ``rewind --to-timestamp`` read an instant the same way
(:func:`parse_time`); reports print instants (:func:`iso`) and ages (:func:`age_text`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from poller.errors import OperationError

#: A requested instant may be this much ahead of our clock (clock skew), not more.
FUTURE_SLACK_SECONDS = 1.0
#: An epoch number above this is in milliseconds (1e11 seconds is the year 5138).
_MILLIS_ABOVE = 1e11


def parse_time(value: str, what: str, *, now: float) -> float:
    """Epoch seconds from ISO 8601 (a zone-less time is UTC) or epoch seconds (or millis).
    Refused, naming ``what`` and the value: unreadable, in the future, or before 1970."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_seconds(text, value, what)
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise OperationError(f"{what} {value!r}: not a time; {_FORMS}")
        if seconds > _MILLIS_ABOVE:
            seconds /= 1000
    if seconds > now + FUTURE_SLACK_SECONDS:
        raise OperationError(f"{what} {value!r} is in the future (now is {iso(now)})")
    if seconds < 0:
        raise OperationError(f"{what} {value!r} is before 1970")
    return seconds


_FORMS = "give ISO 8601 (2026-12-05T09:00:00Z; UTC when no zone) or epoch seconds"


def _iso_seconds(text: str, value: str, what: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OperationError(f"{what} {value!r}: not a time; {_FORMS}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(epoch: float) -> str:
    """``epoch`` as ISO 8601 UTC to the second."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_text(seconds: float) -> str:
    """A duration as ``2d 03h``, ``4h 05m``, ``6m 07s`` or ``8s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
