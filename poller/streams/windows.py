"""Tumbling windows on one shard: the open window, its state, and the final invocations.

Data flow::

    Lane --batch--> Delivery --enter(first record)--> TumblingWindows (close the old window?)
        Delivery --event(records)--> {"Records", "window", "state", ...} --> Target.invoke
        Delivery --adopt_state(answered state)--> TumblingWindows, then settle
    Lane (idle past the window's end, or the shard's end) --close()--> final invocation
        -> Checkpointer.window_closed (the checkpoint no longer holds the state)

With ``tumbling_window_seconds`` > 0 (one lane only) a batch never spans two windows; each
event carries the window and its state (:mod:`poller.core.windows`), and the 6 MB cut counts
them (a retry after a partial failure, whose state may have grown, leaves the records that no
longer fit for the next invocation). A final invocation closes a window when a record of a
later window comes, at the shard's end, or when the wall clock passes the window's end on an
idle shard. A state past the limit ends the window early. The open window and its state are
stored with every checkpoint (:class:`OpenWindow`, read by the
:class:`~poller.streams.checkpointer.Checkpointer`) and restored when the shard starts again.
With no tumbling window the same object answers "no window": plain events, plain batches.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from poller.core.batching import BatchBuilder
from poller.core.retry_policy import Segment
from poller.core.windows import (
    CLOSE_GRACE_SECONDS,
    Window,
    decode_window_state,
    encode_window_state,
    parse_window_response,
    state_size,
    state_too_large,
    window_event,
    window_of,
    window_overhead,
)
from poller.observability.metrics import Metrics
from poller.retry import Backoff
from poller.streams.checkpointer import Checkpointer
from poller.streams.stopping import StopSignal
from poller.types import Checkpoint, InvokeResult, Outcome, StreamRecord

log = structlog.get_logger("poller.streams")

#: Invokes the target with an event (after the lease guard); returns the result and seconds.
Invoke = Callable[[dict[str, Any]], Awaitable[tuple[InvokeResult, float]]]


@dataclass(slots=True)
class OpenWindow:
    """The window open on a shard and the state the function returned last in it.

    Changed by :class:`TumblingWindows` only; the checkpointer stores it (:meth:`encoded`).
    """

    window: Window | None = None
    state: dict[str, Any] = field(default_factory=dict)

    def encoded(self) -> str | None:
        """The window and its state as stored with a checkpoint; None with no open window."""
        if self.window is None:
            return None
        return encode_window_state(self.window, self.state)


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """The shard's window length and limits, and what it reports as."""

    #: TumblingWindowInSeconds; 0 for none.
    seconds: int
    #: The event payload limit (6 MB).
    max_bytes: int
    #: A state past this ends its window early.
    state_limit: int
    #: Between final invocations the function failed.
    backoff: Backoff
    mapping: str
    shard_id: str
    stream_arn: str


class TumblingWindows:
    """The tumbling window of one shard (see the module docstring)."""

    def __init__(
        self,
        settings: WindowSettings,
        *,
        opened: OpenWindow,
        checkpointer: Checkpointer,
        invoke: Invoke,
        metrics: Metrics,
        stop: StopSignal,
    ) -> None:
        self._settings = settings
        self._open = opened
        self._checkpointer = checkpointer
        self._invoke = invoke
        self._metrics = metrics
        self._stop = stop
        #: The checkpoint read at start, when it held a window.
        self._resumed: Checkpoint | None = None

    # -- what lanes ask -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether a tumbling window is open (it has had records and no final invocation)."""
        return self._open.window is not None

    def due(self) -> bool:
        """Whether the open window's end (plus a grace) has passed on the wall clock."""
        window = self._open.window
        return window is not None and window.is_due(time.time())

    def close_deadline(self, window: Window | None = None) -> float | None:
        """When (monotonic) ``window`` (by default the open one) should close if idle."""
        window = window or self._open.window
        if window is None:
            return None
        return time.monotonic() + (window.end + CLOSE_GRACE_SECONDS - time.time())

    def batch_builder(
        self, first: StreamRecord | None, max_records: int
    ) -> BatchBuilder[StreamRecord]:
        """A builder for a batch starting at ``first``: with a tumbling window, the 6 MB cut
        counts the window fields and the state the batch will be sent with."""
        settings = self._settings
        if settings.seconds <= 0 or first is None:
            return BatchBuilder(max_records, settings.max_bytes)
        window = window_of(first, settings.seconds)
        state = self._open.state if window == self._open.window else {}
        overhead = window_overhead(
            window, state, shard_id=settings.shard_id, event_source_arn=settings.stream_arn
        )
        return BatchBuilder(max_records, settings.max_bytes, overhead)

    # -- what delivery asks -------------------------------------------------------------------

    async def restore(self) -> None:
        """Resume the window stored with the shard's checkpoint (beyond Lambda)."""
        if self._settings.seconds <= 0:
            return
        checkpoint = await self._checkpointer.read()
        if checkpoint is None or checkpoint.window_state is None:
            return
        try:
            self._open.window, self._open.state = decode_window_state(checkpoint.window_state)
        except ValueError as exc:
            log.exception("window.state_unreadable", error=str(exc))
            return
        self._resumed = checkpoint
        log.info("window.resumed", window=self._open.window.as_event())

    async def enter(self, first: StreamRecord) -> bool:
        """Before a batch: close the open window if the batch is in another one, then open
        the batch's window. False when shutdown abandoned the final invocation."""
        if self._settings.seconds <= 0:
            return True
        window = window_of(first, self._settings.seconds)
        current = self._open.window
        if current is not None and current != window and not await self.close():
            return False
        if self._open.window is None:
            self._open.window, self._open.state = window, {}
            log.debug("window.opened", window=window.as_event())
        return True

    def fit(self, segment: Segment, queue: deque[Segment]) -> tuple[Segment, bool]:
        """Keep a windowed event within the payload limit. The batch was cut for the state it
        had then; a retry after a partial failure carries the state the function returned,
        which may be larger. Records that no longer fit go back to the front of the queue.

        Returns the segment to invoke, and True when it is one record that no invocation of
        the window can carry any more (the caller gives it up, never invokes it)."""
        if self._open.window is None:
            return segment, False
        builder = self.batch_builder(segment.records[0], len(segment.records))
        builder.try_add(segment.records[0])
        if builder.oversized:
            rest = segment.records[1:]
            if rest:
                queue.appendleft(dataclasses.replace(segment, records=rest))
            return dataclasses.replace(segment, records=segment.records[:1]), True
        for record in segment.records[1:]:
            if not builder.try_add(record):
                break
        kept = len(builder.records)
        if kept == len(segment.records):
            return segment, False
        queue.appendleft(dataclasses.replace(segment, records=segment.records[kept:]))
        return dataclasses.replace(segment, records=segment.records[:kept]), False

    def event(self, records: Sequence[StreamRecord]) -> dict[str, Any]:
        """The event for ``records``: plain, or with the open window and its state."""
        window = self._open.window
        if window is None:
            return {"Records": [r.event_record for r in records]}
        return window_event(
            records,
            window=window,
            state=self._open.state,
            shard_id=self._settings.shard_id,
            event_source_arn=self._settings.stream_arn,
        )

    def answered_state(self, result: InvokeResult) -> dict[str, Any] | None:
        """The state a successful windowed invocation returned, else None."""
        if self._open.window is None or result.outcome is not Outcome.SUCCESS:
            return None
        answer = parse_window_response(result.payload, payload_is_json=result.payload_is_json)
        return answer.state

    async def adopt_state(self, state: dict[str, Any]) -> bool:
        """Make ``state`` the window's; past the state limit it ends the window early first."""
        limit = self._settings.state_limit
        if state_too_large(state, limit):
            log.warning("window.terminated_early", state_bytes=state_size(state), limit=limit)
            if not await self._final_invoke(state, terminated_early=True):
                return False
            state = {}
        self._open.state = state
        return True

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> bool:
        """The final invocation of the open window, retried until it succeeds; then the
        state is dropped and the checkpoint says so. False when shutdown abandoned it."""
        window = self._open.window
        if window is None:
            return True
        if not await self._final_invoke(self._open.state, terminated_early=False):
            return False
        self._open.window, self._open.state = None, {}
        await self._checkpointer.window_closed(self._resumed)
        log.info("window.closed", window=window.as_event())
        return True

    async def _final_invoke(self, state: dict[str, Any], *, terminated_early: bool) -> bool:
        """Invoke with no records and ``isFinalInvokeForWindow``; retry until the function
        answers with a state. Processing of the shard waits meanwhile (as Lambda's does)."""
        window = self._open.window
        assert window is not None
        settings = self._settings
        event = window_event(
            [],
            window=window,
            state=state,
            shard_id=settings.shard_id,
            event_source_arn=settings.stream_arn,
            final=True,
            terminated_early=terminated_early,
        )
        fields: dict[str, Any] = {
            "window": window.as_event(),
            "terminated_early": terminated_early,
        }
        failures = 0
        # Not poller.retry.retrying: a failure here is an answer (counted and logged as an
        # invocation), not an exception, and shutdown abandons the wait with False.
        while True:
            result, duration = await self._invoke(event)
            outcome, error = result.outcome.value, result.error
            if result.outcome is Outcome.SUCCESS:
                answer = parse_window_response(
                    result.payload, payload_is_json=result.payload_is_json
                )
                if answer.kind == "ok":
                    self._metrics.invocation(settings.mapping, outcome, duration, 0)
                    log.info(
                        "window.final_invoked", duration_ms=round(duration * 1000, 1), **fields
                    )
                    return True
                outcome, error = Outcome.FUNCTION_ERROR.value, answer.reason
            self._metrics.invocation(settings.mapping, outcome, duration, 0)
            failures += 1
            log.warning(
                "window.final_invoke_failed",
                outcome=outcome,
                error=error,
                attempt=failures,
                **fields,
            )
            self._metrics.retry(settings.mapping)
            with self._stop.interruptible() as scope:
                await anyio.sleep(settings.backoff.delay(failures))
            if scope.cancelled_caught:
                log.info("window.final_invoke_abandoned", **fields)
                return False
