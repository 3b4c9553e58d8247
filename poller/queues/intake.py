"""Intake: receives messages for one poller's next batch.

Data flow::

    the queue --ReceiveMessage (≤ 10 messages, ≤ 20 s)--> Intake --add()--> Holding
    Intake.gather() --Gathering (cut by core.batching.BatchBuilder)--> the poller

A batch is gathered until ``batch_size``, the batching window (from the first message) or
6 MB, metadata included; messages received beyond what fits stay in ``Holding.carry`` and
start the next batch. Before the first message a receive long-polls; after it, it waits only
for what is left of the window (:func:`poller.core.queue_rules.wait_seconds`). A failed
receive is retried with backoff; a poller whose receives keep failing marks the mapping
unreachable until one succeeds. Every successful receive counts its messages as polled, an
empty one 0 (as Lambda's ``PolledEventCount`` does).

A message too large for any invocation (:func:`poller.core.batching.fits_alone`) is never
invoked. On a FIFO queue with a redrive policy poller moves it to the dead-letter queue itself
(``send_copy``, then delete), and the later messages of its group go on in this batch: left
to the redrive policy it would hold its group back, and SQS would move the group's healthy
messages with it. If the copy cannot be sent, it goes back as on a standard queue, with the
later messages of its group (:func:`poller.core.queue_rules.held_back`), so the group keeps its
order. On a standard queue with a redrive policy it is made visible again after
``OVERSIZED_VISIBILITY_SECONDS``, so that SQS moves it to the dead-letter queue after
``maxReceiveCount`` receives. Without a redrive policy nothing would ever take it off the
queue, so it is deleted. The log line names it (its id and size, never its body). It counts
once in ``records_oversized``: when moved or deleted, or on the receive after which SQS moves
it. The queue's attributes are read when such a message comes (rare: SQS's 1 MiB messages fit
in 6 MB), so a redrive policy added meanwhile is honoured.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from poller.core.batching import BatchBuilder, fits_alone
from poller.core.queue_rules import held_back, wait_seconds
from poller.errors import SourceError
from poller.observability.metrics import Metrics
from poller.queues.holding import Holding
from poller.queues.ports import QueueApi
from poller.queues.stopping import pause
from poller.retry import READ_BACKOFF
from poller.sources.sqs import MAX_WAIT_SECONDS, RECEIVE_LIMIT, QueueInfo, SqsMessage

if TYPE_CHECKING:
    from poller.config import SqsMapping

log = structlog.get_logger("poller.queues")

#: Failed receives in a row, by one poller, after which the queue counts as unreachable (the
#: mapping is reported down). SQS answers a passing error now and then; with READ_BACKOFF
#: between them, three in a row mean seconds of errors, not one blip.
UNREACHABLE_AFTER_FAILURES = 3
#: The visibility timeout an oversized message (and, on a FIFO queue where it could not be
#: moved, the rest of its group) is given back with when the queue has a redrive policy:
#: short, so that it reaches ``maxReceiveCount`` and the dead-letter queue in seconds, not
#: visibility timeouts.
OVERSIZED_VISIBILITY_SECONDS = 1


class Gathering:
    """A batch being assembled: at most ``limit`` messages and ``max_bytes`` of event."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self._batch: BatchBuilder[SqsMessage] = BatchBuilder(limit, max_bytes)
        #: When the receive that brought the first message began.
        self.received_at = time.monotonic()

    @property
    def messages(self) -> list[SqsMessage]:
        return self._batch.records

    @property
    def full(self) -> bool:
        """Full by count or by size: nothing more may join."""
        return self._batch.is_full

    @property
    def room(self) -> int:
        return self._batch.room

    def received(self, started: float) -> None:
        if not self.messages:
            self.received_at = started

    def take(self, pending: list[SqsMessage]) -> list[SqsMessage]:
        """Add messages from the front of ``pending`` while they fit; return the rest."""
        return self._batch.take(pending)


def _wait_seconds(deadline: float | None, window: int, long_poll: int) -> int | None:
    """WaitTimeSeconds for the next receive, as of now (see :func:`wait_seconds`)."""
    return wait_seconds(deadline, window, long_poll, now=time.monotonic())


def _without(messages: list[SqsMessage], dropped: list[SqsMessage]) -> list[SqsMessage]:
    ids = {m.message_id for m in dropped}
    return [m for m in messages if m.message_id not in ids]


class Intake:
    """Receives the messages of one mapping's batches, for all its pollers."""

    def __init__(
        self,
        mapping: SqsMapping,
        *,
        queue: QueueApi,
        stopping: anyio.Event,
        metrics: Metrics,
        max_bytes: int,
    ) -> None:
        self.mapping = mapping
        self._queue = queue
        self._stopping = stopping
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._long_poll = max(1, min(MAX_WAIT_SECONDS, mapping.receive_wait_time_seconds))
        self._name = mapping.name
        #: Pollers whose receives failed UNREACHABLE_AFTER_FAILURES times in a row, and not
        #: yet succeeded since.
        self._failing_pollers = 0

    @property
    def reachable(self) -> bool:
        """False while a poller's receives keep failing."""
        return self._failing_pollers == 0

    async def gather(self, holding: Holding) -> Gathering:
        """Receive until the batch is full (by count or 6 MB), the window ends, or shutdown.

        An empty batch means that a long poll came back empty. Messages received beyond what
        fits stay in ``holding.carry`` and start the poller's next batch.
        """
        window = self.mapping.maximum_batching_window_in_seconds
        gathering = Gathering(self.mapping.batch_size, self._max_bytes)
        pending, holding.carry = holding.carry, []
        deadline: float | None = None
        while True:
            pending = await self._set_aside_oversized(pending, holding)
            holding.carry = gathering.take(pending)
            if gathering.full:
                return gathering
            if gathering.messages and deadline is None:
                deadline = time.monotonic() + window
            wait = _wait_seconds(deadline, window, self._long_poll)
            if wait is None:
                return gathering
            started = time.monotonic()
            received = await self._receive(min(RECEIVE_LIMIT, gathering.room), wait)
            if received is None:  # shutdown
                return gathering
            self._metrics.records_polled(self._name, len(received))
            if not received and (deadline is None or wait == 0):
                return gathering
            if received:
                gathering.received(started)
                holding.add(received, started)
            pending = received

    async def _set_aside_oversized(
        self, pending: list[SqsMessage], holding: Holding
    ) -> list[SqsMessage]:
        """``pending`` without the messages too large for any invocation (and, on a FIFO
        queue with a redrive policy, without the later messages of those that go back), which
        are settled here: moved to the dead-letter queue, given back to reach it, or deleted."""
        oversized = [m for m in pending if not fits_alone(m, self._max_bytes)]
        if not oversized:
            return pending
        # Filters first, as for any message (and as the stream engine does): one that no
        # filter matches is deleted unseen and counted as filtered, whatever its size.
        unwanted = self._filtered_out(oversized)
        if unwanted:
            holding.release(unwanted)
            self._metrics.records_filtered(self._name, len(unwanted))
            await self._delete_filtered(unwanted)
            pending = _without(pending, unwanted)
            oversized = _without(oversized, unwanted)
            if not oversized:
                return pending
        info = await self._queue_info()
        reasons: dict[str, str] = {}
        if info is not None and info.fifo and info.redrive_policy is not None:
            # The heartbeat must not extend a message being moved (nor one given back below).
            holding.release(oversized)
            moved, reasons = await self._move_to_dead_letter_queue(oversized, info.redrive_policy)
            pending, oversized = _without(pending, moved), _without(oversized, moved)
            if not oversized:
                return pending
        redrive = info is None or info.redrive_policy is not None
        fifo = info.fifo if info is not None else self.mapping.is_fifo
        ids = {m.message_id for m in oversized}
        # On a FIFO queue the group's later messages wait with a message that goes back, so
        # that SQS delivers the group again in order.
        kept = held_back(pending, ids, fifo=fifo) if redrive else set()
        behind = [m for i, m in enumerate(pending) if i in kept and m.message_id not in ids]
        holding.release([*oversized, *behind])
        self._metrics.records_oversized(self._name, self._last_receives(oversized, info))
        if redrive:
            await self._give_back(oversized, behind, info, reasons)
        else:
            await self._delete(oversized)
        gone = ids | {m.message_id for m in behind}
        return [m for m in pending if m.message_id not in gone]

    async def _move_to_dead_letter_queue(
        self, oversized: list[SqsMessage], policy: dict[str, Any]
    ) -> tuple[list[SqsMessage], dict[str, str]]:
        """Move oversized FIFO messages to the dead-letter queue (a copy sent, then the
        original deleted), in order; return those moved, and why each other one was not.

        Left to the redrive policy, the message would hold its group back until
        ``maxReceiveCount``, and SQS would move the group's healthy messages with it. Once a
        message of a group is not moved, the group's later ones are not tried either: they
        go back with it, in order.
        """
        target = policy.get("deadLetterTargetArn")
        moved: list[SqsMessage] = []
        reasons: dict[str, str] = {}
        stopped: dict[str | None, str] = {}  # group -> why its first message was not moved
        for message in oversized:
            reason = stopped.get(message.group_id) or await self._move(message, target)
            if reason is None:
                moved.append(message)
                continue
            reasons[message.message_id] = reason
            stopped.setdefault(message.group_id, f"an earlier message of its group: {reason}")
        if moved:
            self._metrics.records_oversized(self._name, len(moved))
        return moved, reasons

    async def _move(self, message: SqsMessage, target: object) -> str | None:
        """Send a copy of ``message`` to ``target`` and delete it; None once done, else why
        not. Never deletes a message whose copy was not sent; a lost reply to an applied send
        means a duplicate in the dead-letter queue at worst (its deduplication id is the
        message id, so a retry within 5 minutes is stored once)."""
        if not isinstance(target, str):
            return "the redrive policy names no dead-letter queue"
        try:
            await self._queue.send_copy(message, target)
        except SourceError as exc:
            return f"sending to the dead-letter queue failed: {exc}"
        failures = await self._queue.delete([message])
        if failures:
            return f"sent to the dead-letter queue, but the delete was refused: {failures[0].code}"
        log.error(
            "messages.oversized",
            message_id=message.message_id,
            message_bytes=message.size,
            max_bytes=self._max_bytes,
            receive_count=message.receive_count,
            action="moved to the dead-letter queue by poller",
            dead_letter_queue=target,
        )
        return None

    def _filtered_out(self, messages: list[SqsMessage]) -> list[SqsMessage]:
        filters = self.mapping.filters
        if filters is None:
            return []
        return [m for m in messages if not filters.matches(m.event_record)]

    async def _delete_filtered(self, messages: list[SqsMessage]) -> None:
        failures = await self._queue.delete(messages)
        if failures:
            log.warning("messages.filtered_delete_refused", count=len(failures))

    @staticmethod
    def _last_receives(oversized: list[SqsMessage], info: QueueInfo | None) -> int:
        """How many of ``oversized`` leave the queue with this receive: all without a redrive
        policy (deleted); with one, those SQS moves to the dead-letter queue on their next
        receive. A message given back counts once, not once per receive."""
        policy = info.redrive_policy if info is not None else None
        if info is None:
            return 0  # given back with no known policy: counted when it finally leaves
        if policy is None:
            return len(oversized)
        limit = int(policy.get("maxReceiveCount", 1))
        return sum(1 for m in oversized if m.receive_count >= limit)

    async def _queue_info(self) -> QueueInfo | None:
        """The queue's attributes as of now; None when they cannot be read (then nothing is
        deleted: the message is given back, as if the queue had a redrive policy)."""
        try:
            return await self._queue.open()
        except SourceError as exc:
            log.warning("queue.attributes_unreadable", error=str(exc))
            return None

    async def _give_back(
        self,
        oversized: list[SqsMessage],
        behind: list[SqsMessage],
        info: QueueInfo | None,
        not_moved: dict[str, str],
    ) -> None:
        """Make the oversized messages (and the group messages behind them) visible again
        soon, so that the redrive policy moves each oversized one to its dead-letter queue.
        ``not_moved`` says why poller did not move a FIFO message there itself."""
        seconds = OVERSIZED_VISIBILITY_SECONDS
        failures = await self._queue.change_visibility([(m, seconds) for m in oversized + behind])
        refused = {f.message.message_id for f in failures}
        policy = info.redrive_policy if info is not None else None
        action = (
            "returned: the redrive policy moves it to the dead-letter queue"
            if policy is not None
            else "returned: the queue's redrive policy could not be read"
        )
        for message in oversized:
            why = not_moved.get(message.message_id)
            log.error(
                "messages.oversized",
                message_id=message.message_id,
                message_bytes=message.size,
                max_bytes=self._max_bytes,
                receive_count=message.receive_count,
                max_receive_count=(policy or {}).get("maxReceiveCount"),
                action=action if why is None else f"{action} (not moved by poller: {why})",
                held_back=len(behind),
                visibility_changed=message.message_id not in refused,
            )

    async def _delete(self, oversized: list[SqsMessage]) -> None:
        """Delete oversized messages: with no redrive policy nothing else would ever take them
        off the queue. A refused delete leaves the message to come back and be deleted then."""
        failures = await self._queue.delete(oversized)
        refused = {f.message.message_id for f in failures}
        for message in oversized:
            log.error(
                "messages.oversized",
                message_id=message.message_id,
                message_bytes=message.size,
                max_bytes=self._max_bytes,
                action="deleted: the queue has no redrive policy",
                deleted=message.message_id not in refused,
            )

    async def _receive(self, count: int, wait: int) -> list[SqsMessage] | None:
        """One ReceiveMessage, retried with backoff on errors; None once shutdown began.

        A receive in flight when shutdown begins is not cancelled: SQS may already have handed
        it messages, which would then stay invisible for a visibility timeout (and an
        abandoned long poll keeps taking messages that arrive after the service stopped). Its
        messages are processed like any other; no new receive starts.

        Not :func:`poller.retry.retrying`: its wait must end when shutdown begins, and the
        failures in a row count towards :attr:`reachable`.
        """
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    return await self._queue.receive(count, wait)
                except SourceError as exc:
                    failures += 1
                    if failures == UNREACHABLE_AFTER_FAILURES:
                        self._failing_pollers += 1
                    log.warning("queue.receive_failed", error=str(exc), attempt=failures)
                if not await pause(self._stopping, READ_BACKOFF.delay(failures)):
                    return None
            return None
        finally:
            if failures >= UNREACHABLE_AFTER_FAILURES:
                self._failing_pollers -= 1
