"""Visibility heartbeats: while a poller holds messages, SQS must not deliver them again.

Data flow::

    Holding --due()--> Heartbeat --change_visibility(timeout)--> the queue
                       Heartbeat --set_due() / drop()--> Holding

Every message a poller holds (in a batch being gathered or invoked, or carried to the next
batch) has its visibility extended to the queue's full visibility timeout at half that
timeout, until it is settled, so that a function running longer than the visibility timeout
is never delivered twice at once (beyond Lambda). Messages whose heartbeats fall due within a
quarter interval of each other go in one call.
"""

from __future__ import annotations

import time

import anyio
import structlog

from poller.observability.metrics import Metrics
from poller.queues.holding import Holding
from poller.queues.ports import QueueApi
from poller.queues.settle import failure_codes
from poller.sources.sqs import EntryFailure, QueueInfo

log = structlog.get_logger("poller.queues")

#: After a heartbeat call failed as a whole, try again this soon (at most).
HEARTBEAT_RETRY_SECONDS = 2.0


class Heartbeat:
    """Extends the visibility of the messages one poller holds, until cancelled."""

    def __init__(
        self, queue: QueueApi, holding: Holding, *, info: QueueInfo, metrics: Metrics, name: str
    ) -> None:
        self._queue = queue
        self._holding = holding
        self._timeout = info.visibility_timeout
        self._fifo = info.fifo
        self._metrics = metrics
        self._name = name

    async def run(self) -> None:
        """Extend the visibility of held messages at half the visibility timeout."""
        holding = self._holding
        interval = holding.interval
        while True:
            next_due = holding.next_due()
            if next_due is None:
                await holding.wait_for_messages()
                continue
            delay = next_due - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            started = time.monotonic()
            due = holding.due(started + interval / 4)
            if not due:
                continue
            failures = await self._queue.change_visibility([(m, self._timeout) for m in due])
            failed = {id(f.message) for f in failures}
            holding.set_due((m for m in due if id(m) not in failed), started + interval)
            extended = len(due) - len(failed)
            if extended:
                self._metrics.visibility_extended(self._name, extended)
            self._failed(failures, started)

    def _failed(self, failures: list[EntryFailure], started: float) -> None:
        """Let go of refused receipts; try the other failed entries again soon.

        Not :func:`poller.retry.retrying`: a failed extension is rescheduled on the
        heartbeat's own clock, alongside the other held messages, not retried in a loop.
        """
        holding = self._holding
        # Entries about messages settled meanwhile (deleted while the call ran) are expected.
        failures = [f for f in failures if holding.holds(f.message)]
        if not failures:
            return
        refused = [f for f in failures if f.sender_fault]
        if refused:
            carried = holding.drop((f.message for f in refused), fifo=self._fifo)
            log.warning(
                "visibility.extend_refused",
                count=len(refused),
                codes=failure_codes(refused),
                dropped_from_next_batch=carried,
                hint="these messages may be delivered again while their batch is in flight",
            )
        retry = [f.message for f in failures if not f.sender_fault]
        if retry:
            holding.set_due(retry, started + min(HEARTBEAT_RETRY_SECONDS, holding.interval / 4))
            log.warning(
                "visibility.extend_failed",
                count=len(retry),
                error=next(f.text for f in failures if not f.sender_fault),
            )
