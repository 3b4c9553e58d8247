"""Settlement: what happens to a batch's messages once it is judged.

Data flow::

    batch --delete(settled)--> Settler --DeleteMessageBatch--> the queue
    batch --give_back(kept)--> Settler --ChangeMessageVisibilityBatch--> the queue (or nothing)

Settled messages are deleted, and deletes are retried until SQS confirms them or refuses one
for good (beyond Lambda, which drops them). Failed messages are left to reappear after the
queue's visibility timeout, as Lambda does: the queue's redrive policy then moves a message
that keeps failing to its dead-letter queue after ``maxReceiveCount`` receives. That is the
SQS engine's failure routing; it has no on-failure destination. With
``visibility_timeout_on_failure`` they reappear after a backoff instead, and a batch whose
function never ran (shutdown cut its throttle retries short) is made visible at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import anyio
import structlog

from poller.observability.metrics import Metrics
from poller.queues.ports import QueueApi
from poller.retry import Backoff
from poller.sources.sqs import QUEUE_GONE, EntryFailure, SqsMessage

if TYPE_CHECKING:
    from poller.config import VisibilityBackoff

log = structlog.get_logger("poller.queues")

#: Between attempts to delete messages that SQS did not confirm.
DELETE_BACKOFF = Backoff(initial=0.5, maximum=30.0)


def failure_codes(failures: Iterable[EntryFailure]) -> dict[str, int]:
    """How many failed entries answered each error code, for a log line."""
    return dict(Counter(f.code for f in failures))


class Settler:
    """Deletes settled messages and gives failed ones back to the queue."""

    def __init__(
        self,
        queue: QueueApi,
        *,
        on_failure: VisibilityBackoff | None,
        metrics: Metrics,
        name: str,
    ) -> None:
        self._queue = queue
        self._on_failure = on_failure
        self._metrics = metrics
        self._name = name

    async def delete(self, messages: Sequence[SqsMessage]) -> int:
        """Delete messages until SQS confirms each, or refuses one for good; how many went.

        An entry refused as the sender's fault (ReceiptHandleIsInvalid: typically its
        visibility lapsed and it was received again) is logged and left: the message will be
        delivered again. So is every entry when the queue was deleted: its messages are gone.
        Anything else is retried with backoff, also during the drain; the poller's heartbeat
        keeps the messages hidden meanwhile.

        Not :func:`poller.retry.retrying`: each round resends only the entries SQS did not
        confirm (a partial result, not an exception), and it never gives up during a drain.
        """
        pending = list(messages)
        deleted = attempt = 0
        while pending:
            failures = await self._queue.delete(pending)
            deleted += len(pending) - len(failures)
            self._log_refused([f for f in failures if f.sender_fault])
            pending = [f.message for f in failures if not f.sender_fault]
            if pending:
                attempt += 1
                wait = DELETE_BACKOFF.delay(attempt)
                log.warning(
                    "messages.delete_retry",
                    count=len(pending),
                    codes=failure_codes(failures),
                    error=next(f.text for f in failures if not f.sender_fault),
                    attempt=attempt,
                    wait_s=round(wait, 2),
                )
                await anyio.sleep(wait)
        if messages:  # a delete SQS refused for good counts 0 (Lambda's DeletedEventCount)
            self._metrics.records_deleted(self._name, deleted)
        return deleted

    @staticmethod
    def _log_refused(refused: list[EntryFailure]) -> None:
        if not refused:
            return
        gone = all(f.code == QUEUE_GONE for f in refused)
        log.warning(
            "messages.delete_refused",
            count=len(refused),
            codes=failure_codes(refused),
            hint="the queue was deleted, and its messages with it"
            if gone
            else "these messages will be delivered again after their visibility timeout",
        )

    async def give_back(self, messages: Sequence[SqsMessage], *, release: bool) -> None:
        """Let failed messages reappear: after the visibility timeout (Lambda), after the
        configured backoff, or at once when the function never ran (``release``)."""
        backoff = self._on_failure
        if release:
            changes = [(m, 0) for m in messages]
        elif backoff is not None:
            changes = [(m, backoff.delay(m.receive_count)) for m in messages]
        else:
            return
        failures = await self._queue.change_visibility(changes)
        if failures:
            log.warning(
                "visibility.change_failed",
                count=len(failures),
                codes=failure_codes(failures),
                hint="these messages reappear after the queue's visibility timeout instead",
            )
