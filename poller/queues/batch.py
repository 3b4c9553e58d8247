"""One SQS batch, from gathered messages to settled ones: filter, invoke, judge, settle.

Data flow::

    intake --[SqsMessage, ...]--> BatchProcessor
        filter:  messages no ``filter_criteria`` filter matches are deleted unseen (Lambda)
        invoke:  Target.invoke({"Records": [...]}); throttles and service errors are retried
                 in place for up to one visibility timeout from the first receive
        judge:   poller.core.queue_rules.judge -> Verdict (which messages stay, and why)
        settle:  plan_settlement -> Settler.delete / Settler.give_back; Holding.release

A batch left empty by the filters invokes nothing. The log line ``batch.processed`` or
``batch.failed`` closes every batch that was invoked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from poller.core.queue_rules import Scaler, Verdict, judge, plan_settlement
from poller.observability.metrics import Metrics
from poller.queues.holding import Holding
from poller.queues.settle import Settler
from poller.queues.stopping import pause
from poller.retry import INVOKE_BACKOFF, Backoff
from poller.sources.sqs import QueueInfo, SqsMessage
from poller.types import InvokeResult, Outcome, Target

if TYPE_CHECKING:
    from poller.config import SqsMapping

log = structlog.get_logger("poller.queues")

_RETRIED_IN_PLACE = (Outcome.THROTTLE, Outcome.SERVICE_ERROR)


@dataclass(frozen=True, slots=True)
class Invocation:
    """The last invocation of a batch."""

    result: InvokeResult
    attempts: int
    #: Seconds the last attempt took.
    duration: float
    #: Shutdown cut the retries of a throttled batch short; the function never ran.
    interrupted: bool = False


class BatchProcessor:
    """Invokes and settles the batches of one mapping, for all its pollers."""

    def __init__(
        self,
        mapping: SqsMapping,
        *,
        target: Target,
        settler: Settler,
        scaler: Scaler,
        stopping: anyio.Event,
        metrics: Metrics,
        backoff: Backoff = INVOKE_BACKOFF,
    ) -> None:
        self.mapping = mapping
        self._backoff = backoff
        self._target = target
        self._settler = settler
        self._scaler = scaler
        self._stopping = stopping
        self._metrics = metrics
        self._name = mapping.name
        self._filters = mapping.filters  # compiled once; None when the mapping has none
        self._in_flight = 0

    async def process(
        self, batch: list[SqsMessage], holding: Holding, received_at: float, info: QueueInfo
    ) -> bool:
        """Invoke, then settle. True unless the batch (or part of it) failed."""
        batch, filtered = self._filter(batch)
        if not batch:  # every message filtered out: delete them, invoke nothing
            holding.release(filtered)
            await self._settler.delete(filtered)
            return True
        self._in_flight += 1
        self._metrics.sqs_in_flight(self._name, self._in_flight)
        started = time.monotonic()
        try:
            invocation = await self._invoke(batch, received_at, info.visibility_timeout)
            verdict = judge(
                batch,
                invocation.result,
                report_batch_item_failures=self.mapping.report_batch_item_failures,
                fifo=info.fifo,
            )
            self._count(verdict, invocation.duration, len(batch))
            plan = plan_settlement(
                batch, verdict.keep, carry=holding.carry, filtered=filtered, fifo=info.fifo
            )
            holding.carry = plan.carry
            holding.release(plan.keep)
            if plan.keep:
                await self._settler.give_back(plan.keep, release=invocation.interrupted)
            deleted = await self._settler.delete(plan.delete)
            holding.release(plan.delete)
        finally:
            self._in_flight -= 1
            self._metrics.sqs_in_flight(self._name, self._in_flight)
        fields: dict[str, Any] = {
            "size": len(batch),
            "outcome": verdict.outcome,
            "deleted": deleted,
            "returned": len(plan.keep),
            "filtered": len(filtered),
            "attempts": invocation.attempts,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }
        if verdict.outcome == "success":
            log.info("batch.processed", **fields)
            return True
        log.warning(
            "batch.failed",
            error=verdict.reason,
            function_error=invocation.result.function_error,
            reported=verdict.reported,
            **fields,
        )
        return False

    def _filter(self, batch: list[SqsMessage]) -> tuple[list[SqsMessage], list[SqsMessage]]:
        """Split off the messages ``filter_criteria`` rejects (Lambda deletes them unseen)."""
        filters = self._filters
        if filters is None:
            return batch, []
        passed: list[SqsMessage] = []
        rejected: list[SqsMessage] = []
        for message in batch:
            (passed if filters.matches(message.event_record) else rejected).append(message)
        # 0 when every message matched (Lambda: "matching events emit 0").
        self._metrics.records_filtered(self._name, len(rejected))
        return passed, rejected

    async def _invoke(
        self, batch: list[SqsMessage], received_at: float, visibility_timeout: int
    ) -> Invocation:
        """Invoke once, and again after throttles or service errors, for up to one
        visibility timeout from the first receive (as Lambda does).

        Every attempt counts the batch as invoked at its start, and a failed one as failed at
        its end (Lambda's InvokedEventCount and FailedInvokeEventCount), throttles included.

        Not :func:`poller.retry.retrying`: a failed invocation is a result, not an exception,
        and the retries end at the visibility timeout or when shutdown begins.
        """
        event = {"Records": [m.event_record for m in batch]}
        attempts = 0
        while True:
            attempts += 1
            self._metrics.records_invoked(self._name, len(batch))
            began = time.monotonic()
            result = await self._target.invoke(event)
            duration = time.monotonic() - began
            if result.outcome is Outcome.SUCCESS:
                return Invocation(result, attempts, duration)
            self._metrics.records_failed_invoke(self._name, len(batch))
            self._metrics.invocation(self._name, result.outcome.value, duration, len(batch))
            if result.outcome not in _RETRIED_IN_PLACE:
                return Invocation(result, attempts, duration)
            self._scaler.failed()  # Lambda backs off by reducing concurrency
            if time.monotonic() - received_at >= visibility_timeout:
                return Invocation(result, attempts, duration)
            log.info("batch.retry_scheduled", outcome=result.outcome.value, attempt=attempts)
            self._metrics.retry(self._name)
            if not await pause(self._stopping, self._backoff.delay(attempts)):
                return Invocation(result, attempts, duration, interrupted=True)

    def _count(self, verdict: Verdict, duration: float, size: int) -> None:
        """Count an invocation the function answered, by how its answer reads (a failed
        invocation was counted when it failed): a partial batch response fails the whole
        batch, and its listed items are counted apart."""
        if verdict.counted_as is None:
            return
        self._metrics.invocation(self._name, verdict.counted_as, duration, size)
        if verdict.failed_records:
            self._metrics.records_failed_invoke(self._name, verdict.failed_records)
        if verdict.reported:
            self._metrics.batch_item_failures(self._name, verdict.reported)
