"""Delivery of one batch: invoke, then apply Lambda's error handling until every record settles.

Data flow::

    Lane --batch--> Delivery.deliver
        -> TumblingWindows.enter / fit / event (with a window; else a plain event)
        -> Invoker: lease guard, Target.invoke -> InvokeResult
        -> StreamRetryPolicy.judge: Settle / Retry (after a backoff) / Split (bisect) / GiveUp
        -> settle (Checkpointer) | FailureRouter.give_up | the segment queue again

Errors follow :mod:`poller.core.retry_policy`; a lane that retries blocks only itself. An
infinite maximum record age is the stream's retention (``retention``). Each invocation
attempt counts its records as invoked at its start (:class:`Invoker`) and its outcome at its
end (:meth:`Delivery._count_invocation`), and is logged in one line, with positions only,
never record data. Shutdown abandons the wait between attempts; an invocation in progress
finishes and its records are settled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog

from poller.core.retry_policy import (
    Action,
    GiveUp,
    Judgement,
    Retry,
    Segment,
    Settle,
    Split,
    StreamRetryPolicy,
    first_segment,
    oversized,
)
from poller.observability.metrics import Metrics, NullMetrics
from poller.retry import Backoff
from poller.streams.failures import FailureRouter, span
from poller.streams.stopping import StopSignal
from poller.streams.windows import TumblingWindows
from poller.types import InvokeResult, Outcome, StreamRecord, Target

log = structlog.get_logger("poller.streams")


class Invoker:
    """Invokes the target, after the guard (lease self-fencing), and times the invocation.

    Every attempt that passes the guard counts its records as invoked at its start, as
    Lambda's ``InvokedEventCount`` does: throttled and failed attempts too, so a retried
    record counts again, and a record that failed was always counted as invoked first. A
    window's final invocation carries no records and counts none."""

    def __init__(
        self,
        target: Target,
        guard: Callable[[], None] | None,
        *,
        metrics: Metrics | None = None,
        mapping: str = "",
    ) -> None:
        self._target = target
        #: Called before every invocation; raises to stop the shard.
        self._guard = guard
        self._metrics: Metrics = metrics or NullMetrics()
        self._mapping = mapping

    async def __call__(self, event: dict[str, Any]) -> tuple[InvokeResult, float]:
        """The result and how long the invocation took, in seconds."""
        if self._guard is not None:
            self._guard()
        if records := len(event.get("Records", ())):
            self._metrics.records_invoked(self._mapping, records)
        started = time.monotonic()
        result = await self._target.invoke(event)
        return result, time.monotonic() - started


class Delivery:
    """Carries one shard's batches through invocations until every record is settled."""

    def __init__(
        self,
        *,
        mapping: str,
        shard_id: str,
        invoke: Invoker,
        retry: StreamRetryPolicy,
        backoff: Backoff,
        windows: TumblingWindows,
        failures: FailureRouter,
        settle: Callable[[Sequence[StreamRecord]], Awaitable[None]],
        metrics: Metrics,
        retention: Callable[[], Awaitable[float | None]] | None,
        stop: StopSignal,
    ) -> None:
        self._mapping = mapping
        self._shard_id = shard_id
        self._invoke = invoke
        self._retry = retry
        self._backoff = backoff
        self._windows = windows
        self._failures = failures
        self._settle = settle
        self._metrics = metrics
        #: The stream's retention, seconds: the age limit when the maximum age is infinite.
        self._retention = retention
        self._stop = stop

    async def deliver(self, records: Sequence[StreamRecord], lane: int) -> bool:
        """Carry a batch through invocations until every record is settled.

        Returns False when shutdown abandoned it between attempts (nothing settled from then).
        """
        if not await self._windows.enter(records[0]):
            return False
        queue: deque[Segment] = deque([first_segment(records)])
        retry_policy = self._retry
        # Not poller.retry.retrying: whether and what to retry is Lambda's rule (the policy
        # settles, retries, bisects or gives up per segment); only the wait is a Backoff.
        while queue:
            retention = await self._retention_limit()
            expired, segment = retry_policy.expire(queue.popleft(), time.time(), retention)
            if expired is not None and not await self._failures.give_up(expired):
                return False
            if segment is None:
                continue
            segment, too_large = self._windows.fit(segment, queue)
            if too_large:
                # The window's state grew since the batch was cut: no invocation can carry it.
                if not await self._failures.give_up(oversized(segment.records[0])):
                    return False
                continue
            result, duration = await self._invoke(self._windows.event(segment.records))
            judgement = retry_policy.judge(segment, result)
            self._count_invocation(segment, result, judgement, duration)
            _log_invocation(segment, result, judgement, lane, duration)
            state = self._windows.answered_state(result)
            if not await self._carry_out(judgement.actions, state, queue):
                return False
        return True

    async def _retention_limit(self) -> float | None:
        """The stream's retention when the maximum record age is infinite, else None."""
        if self._retention is None or self._retry.maximum_record_age_seconds >= 0:
            return None
        return await self._retention()

    async def _carry_out(
        self, actions: list[Action], state: dict[str, Any] | None, queue: deque[Segment]
    ) -> bool:
        """Carry out the retry policy's actions; False when shutdown abandoned the batch.

        ``state`` is what a windowed invocation answered: it becomes the window's state right
        before the records are settled, with no await between, so a checkpoint pairs them.
        """
        for action in actions:
            if isinstance(action, Settle):
                if state is not None:
                    if not await self._windows.adopt_state(state):
                        return False
                    state = None
                await self._settle(action.records)
            elif isinstance(action, GiveUp):
                if not await self._failures.give_up(action):
                    return False
            elif isinstance(action, Split):
                queue.extendleft((action.second, action.first))
            elif isinstance(action, Retry):
                queue.appendleft(action.segment)
                self._metrics.retry(self._mapping)
                if not await self._wait_before_retry(action.segment):
                    return False
        return True

    async def _wait_before_retry(self, segment: Segment) -> bool:
        """The backoff before re-invoking ``segment``; False when shutdown abandoned it."""
        with self._stop.interruptible() as scope:
            await anyio.sleep(self._backoff.delay(segment.failures))
        if scope.cancelled_caught:
            log.info("batch.abandoned", size=len(segment.records), attempt=segment.failures + 1)
            return False
        return True

    def _count_invocation(
        self, segment: Segment, result: InvokeResult, judgement: Judgement, duration: float
    ) -> None:
        """Lambda's event counts for one invocation, at its end (the :class:`Invoker` counted
        its records as invoked at its start); see ``poller.observability.metrics``.

        Every attempt that did not succeed fails its whole segment, throttles and service
        errors included; so does a partial batch response, whose listed items are counted
        apart. A malformed answer is a ``function_error`` (as AWS counts it, and as SQS does
        here)."""
        size, metrics, mapping = len(segment.records), self._metrics, self._mapping
        if judgement.outcome == "success":
            metrics.iterator_age(mapping, self._shard_id, _age_ms(segment.records[-1]))
        else:
            metrics.records_failed_invoke(mapping, size)
            if judgement.outcome == "partial_failure":
                metrics.batch_item_failures(mapping, listed_items(result))
        metrics.invocation(mapping, judgement.outcome, duration, size)


def listed_items(result: InvokeResult) -> int:
    """The distinct items a partial batch response lists in ``batchItemFailures`` (the
    retry policy has checked that it is a list of objects with an ``itemIdentifier``)."""
    payload = result.payload
    failures = payload.get("batchItemFailures") if isinstance(payload, dict) else None
    if not isinstance(failures, list):
        return 0
    return len({item.get("itemIdentifier") for item in failures if isinstance(item, dict)})


def _age_ms(record: StreamRecord) -> float:
    """Lambda's IteratorAge: how old the batch's last record is now that the batch finished."""
    return (time.time() - record.arrival_timestamp) * 1000


def _log_invocation(
    segment: Segment, result: InvokeResult, judgement: Judgement, lane: int, duration: float
) -> None:
    """The one log line per invocation: never record data, only positions, the outcome (as the
    invocation metric counts it) and why it failed."""
    records = segment.records
    fields = span(records) | {
        "duration_ms": round(duration * 1000, 1),
        "outcome": judgement.outcome,
        "attempt": segment.failures + 1,
        "lane": lane,
        "iterator_age_ms": int(_age_ms(records[-1])),
    }
    if judgement.outcome == "success":
        log.info("batch.processed", **fields)
    elif judgement.outcome == "partial_failure":
        log.warning("batch.partially_failed", reason=judgement.reason, **fields)
    elif result.outcome is Outcome.SUCCESS:
        # The function returned normally, but its answer was malformed: a function error
        # with no functionError, as in the failure record.
        log.warning("batch.failed", error=judgement.reason, function_error=None, **fields)
    else:
        log.warning(
            "batch.failed", error=result.error, function_error=result.function_error, **fields
        )
