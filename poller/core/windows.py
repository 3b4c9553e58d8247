"""Tumbling windows on streams: window arithmetic, the window event, the function's answer.

With ``tumbling_window_in_seconds`` W > 0 (AWS TumblingWindowInSeconds, docs/aws-esm.md §1.4) a
shard's records fall into fixed, non-overlapping windows by their arrival timestamp: the
window of a record starts at ``floor(arrival / W) * W`` (epoch seconds) and ends W seconds
later. A batch never spans two windows. Every invocation carries the window and the *state*
the function returned last in that window (``{}`` at first); the function answers
``{"state": ..., "batchItemFailures": [...]}`` and that state is passed to the next
invocation. When the window ends (a record of a later window, the end of the shard, or the
wall clock past the window's end) the function gets a final invocation with no records and
``isFinalInvokeForWindow: true``; then the state is dropped. A state larger than 1 MB ends the
window early (``isWindowTerminatedEarly: true``) and the window continues with a fresh state.

Beyond Lambda, the window and its state are stored with each checkpoint
(:func:`encode_window_state`), so a restart resumes the window where it was.

I/O-free and synchronous; the stream engine (``poller.streams.windows``) owns the clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from poller.types import StreamRecord

#: Lambda's limit on a window's state, as compact JSON (1 MB).
MAX_STATE_BYTES = 1024 * 1024
#: How long after a window's end (wall clock) an idle shard waits before closing the window,
#: so that records written just before the end, still on their way to the reader, join it.
CLOSE_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """A tumbling window: ``[start, end)`` in epoch seconds."""

    start: int
    end: int

    @classmethod
    def of(cls, arrival_timestamp: float, seconds: int) -> Window:
        """The window of a record that arrived at ``arrival_timestamp`` (epoch seconds)."""
        if seconds <= 0:
            raise ValueError(f"a tumbling window needs a positive length, not {seconds}")
        start = math.floor(arrival_timestamp) // seconds * seconds
        return cls(start, start + seconds)

    def as_event(self) -> dict[str, str]:
        """The event's ``window``: ISO-8601 UTC, to the second, with ``Z``."""
        return {"start": _iso(self.start), "end": _iso(self.end)}

    def is_due(self, now: float, grace: float = CLOSE_GRACE_SECONDS) -> bool:
        """Whether an idle shard should close the window at wall-clock time ``now``."""
        return now >= self.end + grace


def window_of(record: StreamRecord, seconds: int) -> Window:
    """The window ``record`` belongs to."""
    return Window.of(record.arrival_timestamp, seconds)


def window_overhead(
    window: Window, state: dict[str, Any], *, shard_id: str, event_source_arn: str
) -> int:
    """Bytes a window event holds besides ``{"Records":[...]}``: the window, the state (up to
    1 MB) and the other fields, as compact UTF-8 JSON, the way the targets send it. The 6 MB
    cut adds this to the records' size (the flags are counted at their longer value)."""
    empty = window_event(
        [], window=window, state=state, shard_id=shard_id, event_source_arn=event_source_arn
    )
    return len(_dumps(empty).encode()) - len('{"Records":[]}')


def window_event(
    records: Sequence[StreamRecord],
    *,
    window: Window,
    state: dict[str, Any],
    shard_id: str,
    event_source_arn: str,
    final: bool = False,
    terminated_early: bool = False,
) -> dict[str, Any]:
    """The event Lambda sends for a tumbling window (docs/aws-esm.md §1.4)."""
    return {
        "Records": [r.event_record for r in records],
        "window": window.as_event(),
        "state": state,
        "shardId": shard_id,
        "eventSourceARN": event_source_arn,
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": terminated_early,
    }


@dataclass(frozen=True, slots=True)
class WindowResponse:
    """The verdict on a windowed invocation's answer.

    Attributes:
        kind: ``ok`` (the answer holds a state) or ``invalid`` (a failed invocation).
        state: for ``ok``, the new state (``{}`` for ``"state": null``).
        reason: for ``invalid``, why.
    """

    kind: Literal["ok", "invalid"]
    state: dict[str, Any] | None = None
    reason: str | None = None


def parse_window_response(payload: Any, *, payload_is_json: bool) -> WindowResponse:
    """Judge a windowed function's answer: it must be an object with a ``state`` object.

    A missing ``state`` is a failed invocation (AWS: "A response without state counts as a
    failed invocation"), counted like a malformed partial batch response. ``null`` counts as
    an empty state. A state holding a lone surrogate (JSON can escape one) is invalid too: it
    could be neither sent, stored nor measured as UTF-8.
    """
    if not payload_is_json:
        return WindowResponse("invalid", reason="the response is not JSON; expected an object")
    if not isinstance(payload, dict):
        kind = "null" if payload is None else type(payload).__name__
        return WindowResponse("invalid", reason=f"the response is {kind}; expected an object")
    if "state" not in payload:
        return WindowResponse("invalid", reason="the response has no state")
    state = payload["state"]
    if state is None:
        return WindowResponse("ok", state={})
    if not isinstance(state, dict):
        return WindowResponse("invalid", reason=f"state is {type(state).__name__}, not an object")
    try:
        _dumps(state).encode()
    except UnicodeEncodeError:
        # JSON may escape half a surrogate pair; such text cannot be sent, stored or measured
        # as UTF-8, and a state that cannot be carried is no state (a malformed answer).
        return WindowResponse("invalid", reason="state holds a lone surrogate (not Unicode text)")
    return WindowResponse("ok", state=state)


def state_size(state: dict[str, Any]) -> int:
    """Bytes of the state as compact JSON, as the 1 MB limit measures it."""
    return len(_dumps(state).encode())


def state_too_large(state: dict[str, Any], limit: int = MAX_STATE_BYTES) -> bool:
    """Whether the state ends its window early."""
    return state_size(state) > limit


def encode_window_state(window: Window, state: dict[str, Any]) -> str:
    """The window and its state as stored with a checkpoint."""
    return _dumps({"start": window.start, "end": window.end, "state": state})


def decode_window_state(text: str) -> tuple[Window, dict[str, Any]]:
    """The window and state stored by :func:`encode_window_state`.

    Raises:
        ValueError: the text is not what :func:`encode_window_state` writes.
    """
    try:
        data = json.loads(text)
        window = Window(int(data["start"]), int(data["end"]))
        state = data["state"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"stored window state is corrupt: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError("stored window state is corrupt: state is not an object")  # noqa: TRY004
    return window, state


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
