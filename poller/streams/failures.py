"""Failure routing: records that failed for good go to the on-failure destination, then settle.

Data flow::

    Delivery --GiveUp(records, condition)--> FailureRouter.give_up
    Lane --GiveUp(record too large, RecordSizeExceeded)--> FailureRouter.give_up
        -> failure_record(...) -> FailureDestination.send, repeated until it accepts
           (or, without a destination: logged as ``records.dropped``,
            ``records.expired_by_retention`` or ``records.oversized``)
        -> settle(records) (the Checkpointer)

Records that exhaust their retries or their maximum age, or that no invocation can carry, are
sent to the on-failure destination (retried until it accepts them) or, without one, logged and
dropped, as AWS does; only then are they settled. AWS's ``DroppedEventCount`` counts only the
records given up for their maximum age or their retries: records past the stream's retention
(an infinite maximum age) and oversized records are not counted as dropped; the oversized
ones count in ``records_oversized`` whether sent or not.

A destination that refuses for a permanent reason (access denied, no such queue) is waited for
too, never dropped: the lane stays blocked and says so once a minute per destination, however
many shards it blocks (``destination.blocked`` at error level, the ``destination_blocked``
gauge). Shutdown abandons the wait between sends: the records stay unsettled, to be
re-delivered after the restart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from poller.core.failure_record import SourceKind, failure_record
from poller.core.retry_policy import GiveUp
from poller.destinations import FailureDestination
from poller.errors import DestinationError
from poller.observability.metrics import Metrics
from poller.retry import Backoff
from poller.streams.stopping import StopSignal
from poller.types import StreamRecord, Target

log = structlog.get_logger("poller.streams")

#: While a destination refuses for a permanent reason, the error log repeats this often.
BLOCKED_ALERT_SECONDS = 60.0
#: Backoff between sends of a failure record the destination refused.
DESTINATION_BACKOFF = Backoff(initial=0.5, maximum=30.0)


@dataclass(frozen=True, slots=True)
class FailureRouting:
    """What a failure record needs besides the records: where it goes and what it names."""

    kind: SourceKind
    stream_arn: str
    mapping_uuid: str
    destination: FailureDestination | None = None


def span(records: Sequence[StreamRecord]) -> dict[str, Any]:
    """The log fields naming a batch: its size and first and last sequence numbers."""
    return {
        "size": len(records),
        "first_sequence": records[0].sequence_number,
        "last_sequence": records[-1].sequence_number,
    }


class FailureRouter:
    """Routes one shard's failed records to the on-failure destination, then settles them."""

    def __init__(
        self,
        *,
        mapping: str,
        shard_id: str,
        routing: FailureRouting,
        target: Target,
        metrics: Metrics,
        settle: Callable[[Sequence[StreamRecord]], Awaitable[None]],
        stop: StopSignal,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self._mapping = mapping
        #: The lease's self-fencing check (as before an invocation): raises once the lease is
        #: gone, so a replica that lost the shard neither sends nor drops its records.
        self._guard = guard
        self._shard_id = shard_id
        self._routing = routing
        #: Only its ``function_arn``, which the failure record names.
        self._target = target
        self._metrics = metrics
        self._settle = settle
        self._stop = stop

    async def give_up(self, action: GiveUp) -> bool:
        """Route records that failed for good, then settle them. False when shutdown abandoned
        the wait for the destination (the records stay unsettled, to be re-delivered)."""
        self._fence()
        last = action.last_result if action.condition == "RetryAttemptsExhausted" else None
        request_id = (action.last_result.request_id if action.last_result else "") or str(
            uuid.uuid4()
        )
        routing = self._routing
        record = failure_record(
            kind=routing.kind,
            condition=action.condition,
            approximate_invoke_count=action.invoke_count,
            request_id=request_id,
            function_arn=self._target.function_arn,
            last_result=last,
            shard_id=self._shard_id,
            stream_arn=routing.stream_arn,
            records=action.records,
            now=time.time(),
        )
        fields = span(action.records) | {
            "condition": action.condition,
            "invoke_count": action.invoke_count,
        }
        if action.condition == "RecordSizeExceeded":
            # Each record's event size: why no invocation could carry it.
            fields["record_bytes"] = [r.size for r in action.records]
        count = len(action.records)
        if routing.destination is None:
            self._drop(action, fields)
        else:
            if not await self._send(routing.destination, record, action.records):
                return False
            log.warning(
                "records.sent_to_destination", destination=routing.destination.arn, **fields
            )
            self._metrics.records_sent_to_destination(self._mapping, count)
        if action.condition == "RecordSizeExceeded":
            self._metrics.records_oversized(self._mapping, count)
        await self._settle(action.records)
        return True

    def _fence(self) -> None:
        if self._guard is not None:
            self._guard()

    def _drop(self, action: GiveUp, fields: dict[str, Any]) -> None:
        """Records given up with no destination: logged (positions and sizes, never data);
        counted as dropped only when AWS would (their maximum age or their retries), and
        retention expiry in a series of its own (AWS counts it nowhere; an alert needs it)."""
        reason = "no on-failure destination"
        if action.condition == "RecordSizeExceeded":
            log.error("records.oversized", reason=reason, **fields)
        elif action.by_retention:
            log.error("records.expired_by_retention", reason=reason, **fields)
            self._metrics.records_expired_by_retention(self._mapping, len(action.records))
        else:
            log.error("records.dropped", reason=reason, **fields)
            self._metrics.records_dropped(self._mapping, len(action.records))

    async def _send(
        self,
        destination: FailureDestination,
        record: dict[str, Any],
        records: Sequence[StreamRecord],
    ) -> bool:
        """Deliver the failure record; until it is accepted, the records stay unsettled.
        False when shutdown came while waiting to send again: nothing is in flight then, so
        the shard stops at once instead of waiting for the drain deadline."""
        blocked = _Blocked(self._mapping, self._shard_id, destination.arn, self._metrics)
        kind = destination.arn.split(":")[2]
        failures = 0
        try:
            # Not poller.retry.retrying: a permanent refusal is waited out too (never raised),
            # each refusal is alerted on, and shutdown abandons the wait with False.
            while not blocked.delivered:
                self._fence()
                try:
                    await destination.send(
                        record,
                        records=records,
                        mapping_uuid=self._routing.mapping_uuid,
                        shard_id=self._shard_id,
                    )
                except DestinationError as exc:
                    failures += 1
                    self._metrics.destination_delivery_failed(self._mapping, kind)
                    blocked.refused(exc, failures, span(records))
                    with self._stop.interruptible() as scope:
                        await anyio.sleep(DESTINATION_BACKOFF.delay(failures))
                    if scope.cancelled_caught:
                        log.info("destination.abandoned", destination=destination.arn)
                        return False
                else:
                    blocked.delivered = True
        finally:
            blocked.end()
        return True


class _BlockedAlerts:
    """The batches each destination blocks, process-wide, and when that was last logged.

    Shared by every shard, so that a destination blocking many shards is reported in one
    line a minute (naming how many batches it blocks), not one line a minute per shard.
    An entry lives only while a batch is blocked.
    """

    def __init__(self) -> None:
        self._blocked: dict[tuple[str, str], int] = {}
        self._last_alert: dict[tuple[str, str], float] = {}

    def start(self, key: tuple[str, str]) -> None:
        """One more batch blocked by ``key`` (mapping, destination)."""
        self._blocked[key] = self._blocked.get(key, 0) + 1

    def stop(self, key: tuple[str, str]) -> None:
        """One batch fewer; the last one forgets the destination."""
        left = self._blocked.get(key, 1) - 1
        if left > 0:
            self._blocked[key] = left
        else:
            self._blocked.pop(key, None)
            self._last_alert.pop(key, None)

    def blocked(self, key: tuple[str, str]) -> int:
        """How many batches ``key`` blocks now."""
        return self._blocked.get(key, 0)

    def due(self, key: tuple[str, str], now: float) -> bool:
        """Whether ``key`` is to be reported now (and, if so, note that it was)."""
        last = self._last_alert.get(key)
        if last is not None and now - last < BLOCKED_ALERT_SECONDS:
            return False
        self._last_alert[key] = now
        return True


_BLOCKED_ALERTS = _BlockedAlerts()


class _Blocked:
    """The alerts of one failure record while its destination refuses it.

    A passing refusal (throttling, a 5xx, the network) logs a warning per attempt. A permanent
    one (``DestinationError.permanent``: access denied, no such queue, topic or bucket) cannot
    pass without an operator, so the batch counts in the ``destination_blocked`` gauge until it
    is delivered, and ``destination.blocked`` is logged at error level once a minute per
    destination (whatever the number of shards it blocks). Nothing is dropped either way: the
    operator can fix the permission or create the queue.
    """

    def __init__(self, mapping: str, shard_id: str, arn: str, metrics: Metrics) -> None:
        self._mapping, self._shard_id, self._arn, self._metrics = mapping, shard_id, arn, metrics
        self._key = (mapping, arn)
        self._since: float | None = None
        self.delivered = False

    def refused(self, exc: DestinationError, attempt: int, span: dict[str, Any]) -> None:
        """One refused send."""
        fields = {"destination": self._arn, "shard": self._shard_id, "error": str(exc)} | span
        now = time.monotonic()
        if not exc.permanent:
            log.warning("destination.refused", attempt=attempt, **fields)
            return
        if self._since is None:
            self._since = now
            self._metrics.destination_blocked(self._mapping, True)
            _BLOCKED_ALERTS.start(self._key)
        if not _BLOCKED_ALERTS.due(self._key, now):
            return
        log.error(
            "destination.blocked",
            attempt=attempt,
            blocked_s=round(now - self._since),
            blocked_batches=_BLOCKED_ALERTS.blocked(self._key),
            action="fix the destination or the permission; the shard waits, nothing is dropped",
            **fields,
        )

    def end(self) -> None:
        """The send loop ended: delivered, or abandoned by the drain deadline."""
        if self._since is None:
            return
        self._metrics.destination_blocked(self._mapping, False)
        _BLOCKED_ALERTS.stop(self._key)
        log.info(
            "destination.unblocked",
            destination=self._arn,
            shard=self._shard_id,
            delivered=self.delivered,
            blocked_s=round(time.monotonic() - self._since),
        )
