"""Runs one SQS mapping: pollers that receive, batch, invoke and settle, scaled like Lambda.

Data flow::

    SqsMappingRunner
      ├─ scaler (one tick a second): adds pollers while batches come back full, up to
      │  ``maximum_concurrency``; a poller whose long poll comes back empty retires (never
      │  below two), and so does one whose batch failed
      └─ poller (a task; each holds a CapacityLimiter slot of maximum_concurrency while busy)
           gather:    ReceiveMessage (≤ 10 messages, ≤ 20 s) until batch_size, the batching
                      window (from the first message) or 6 MB, metadata included
           heartbeat: ChangeMessageVisibilityBatch at half the queue's visibility timeout,
                      for every message the poller holds, until it is settled
           invoke:    Target.invoke({"Records": [...]}); throttles and service errors are
                      retried in place for up to one visibility timeout
           settle:    DeleteMessageBatch the settled messages (failed entries retried with
                      backoff); leave the others to reappear, or with
                      ``visibility_timeout_on_failure`` make them visible after a backoff

Lambda's rules (aws-esm.md §2.2, §2.3, §2.5):

* **Success** deletes the batch. **Failure** (function error, timeout, an invalid partial
  response, a throttle that outlasted the visibility timeout) deletes nothing: the messages
  reappear after the visibility timeout, their receive count goes up, and the queue's redrive
  policy moves them to its dead-letter queue after ``maxReceiveCount`` receives.
* **ReportBatchItemFailures**: every message but the reported ones is deleted
  (:func:`~poller.core.responses.parse_queue_response`; unknown ids, malformed responses and
  non-JSON answers fail the whole batch).
* **Filtering** (``filter_criteria``): messages no filter matches are deleted without an
  invocation, as Lambda does for SQS (aws-esm.md §0); a batch left empty invokes nothing.
* **FIFO**: a batch holds messages of several groups, each group in order. When a message
  fails, the later messages of its group in the batch are kept with it (not deleted), so the
  group is retried in order; SQS delivers nothing more of a group while any of its messages is
  in flight, and other groups go on. Messages received past the 6 MB cut (carried to the next
  batch) follow the same rule: those of a group with a failed message go back with it
  (:func:`carried_apart`).
* **Scaling**: five pollers to start (or ``maximum_concurrency`` if smaller), five more each
  second while batches come back full (Lambda adds 300 a minute), one fewer per empty long
  poll, failed batch or throttle, never fewer than two. An idle queue costs one long poll
  (20 seconds, ``receive_wait_time_seconds``) per poller at a time and nothing else.

Beyond Lambda: the visibility heartbeat, so that a function running longer than the
visibility timeout is never delivered twice at once; ``visibility_timeout_on_failure``; and
deletes that are retried until SQS confirms them (or the queue is gone) instead of being
dropped.

Shutdown: when ``stopping`` is set, no new receive starts; receives in flight complete (a long
poll lasts at most ``receive_wait_time_seconds``; cancelling it could leave messages SQS had
already handed over invisible for a visibility timeout); every message received is invoked
and settled, and heartbeats keep running until every batch is settled. The service cancels
what still runs at the drain deadline; those messages reappear after their visibility
timeout.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from poller.core.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES
from poller.core.responses import parse_queue_response
from poller.errors import SourceError
from poller.observability.metrics import Metrics, NullMetrics
from poller.retry import INVOKE_BACKOFF, READ_BACKOFF, Backoff, retrying
from poller.sources.sqs import (
    MAX_WAIT_SECONDS,
    QUEUE_GONE,
    RECEIVE_LIMIT,
    SETTLE_CLIENT_CONFIG,
    EntryFailure,
    QueueInfo,
    SqsMessage,
    SqsQueue,
    receive_client_config,
)
from poller.types import InvokeResult, Outcome, Target

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.config import SqsMapping

log = structlog.get_logger("poller.queues")

#: Pollers a mapping starts with (Lambda starts five).
START_POLLERS = 5
#: Pollers a mapping keeps when idle (Lambda scales down to two).
MIN_POLLERS = 2
#: Pollers added per scaling tick while batches come back full (Lambda: 300 a minute).
SCALE_UP_STEP = 5
#: Seconds between scaling decisions.
SCALE_INTERVAL = 1.0
#: Between attempts to delete messages that SQS did not confirm.
DELETE_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: After a heartbeat call failed as a whole, try again this soon (at most).
HEARTBEAT_RETRY_SECONDS = 2.0
#: Failed receives in a row, by one poller, after which the queue counts as unreachable (the
#: mapping is reported down). SQS answers a passing error now and then; with READ_BACKOFF
#: between them, three in a row mean seconds of errors, not one blip.
UNREACHABLE_AFTER_FAILURES = 3

_RETRIED_IN_PLACE = (Outcome.THROTTLE, Outcome.SERVICE_ERROR)


async def build_sqs_runner(
    mapping: SqsMapping,
    *,
    clients: ClientFactory,
    target: Target,
    stopping: anyio.Event,
    metrics: Metrics | None = None,
) -> SqsMappingRunner:
    """The runner of one SQS mapping, with its receive and settle clients.

    Each mapping has a receive client of its own, with a connection per poller, so that its
    long polls never wait for another mapping's; deletes and visibility changes share a
    client per region, so that long polls never delay them.
    """
    receive = await clients.client(
        "sqs",
        purpose=f"sqs-receive:{mapping.name}",
        config=receive_client_config(mapping.maximum_concurrency),
        region=mapping.region,
    )
    settle = await clients.client(
        "sqs", purpose="sqs-settle", config=SETTLE_CLIENT_CONFIG, region=mapping.region
    )
    queue = SqsQueue(
        receive_client=receive,
        settle_client=settle,
        queue_arn=mapping.event_source_arn,
        region=mapping.region,
    )
    return SqsMappingRunner(
        mapping, queue=queue, target=target, stopping=stopping, metrics=metrics or NullMetrics()
    )


def held_back(batch: Sequence[SqsMessage], failed_ids: Iterable[str], *, fifo: bool) -> set[int]:
    """The indices of the messages that stay in the queue after a partial failure.

    On a standard queue these are the reported messages. On a FIFO queue every message of a
    group from its first reported message on stays too, so that the group is retried in
    order; the messages of that group before it, and of the other groups, are deleted.
    """
    failed = set(failed_ids)
    keep: set[int] = set()
    blocked: set[str | None] = set()
    for index, message in enumerate(batch):
        if message.message_id in failed or (fifo and message.group_id in blocked):
            keep.add(index)
            if fifo:
                blocked.add(message.group_id)
    return keep


def carried_apart(
    carry: Sequence[SqsMessage], kept: Sequence[SqsMessage], *, fifo: bool
) -> tuple[list[SqsMessage], list[SqsMessage]]:
    """Split the messages carried past a 6 MB cut into those that may still start the next
    batch and those that must wait with a failed message of their group.

    On a FIFO queue a carried message comes after every message of its group in the batch
    just processed; if one of those stays in the queue (it failed), delivering the carried
    one first would break the group's order. So it is held back with them, by the same group
    rule as a batch's own messages (:func:`held_back`), and SQS delivers the group again in
    order. A standard queue has no order to keep: everything carried goes on.
    """
    if not fifo or not kept:
        return list(carry), []
    blocked = {m.group_id for m in kept}
    return [m for m in carry if m.group_id not in blocked], [
        m for m in carry if m.group_id in blocked
    ]


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What to do with a batch after its invocation."""

    #: ``success``, ``partial_failure``, or the failed invocation's outcome.
    outcome: str
    #: Indices of the messages that stay in the queue.
    keep: frozenset[int]
    #: Why the batch failed, for the log line; never message data.
    reason: str | None = None
    #: Messages the function reported as failed (partial batch responses).
    reported: int = 0


@dataclass(frozen=True, slots=True)
class _Invocation:
    """The last invocation of a batch."""

    result: InvokeResult
    attempts: int
    #: Seconds the last attempt took.
    duration: float
    #: Shutdown cut the retries of a throttled batch short; the function never ran.
    interrupted: bool = False


class _Held:
    """A message a poller holds, and when its visibility must next be extended."""

    __slots__ = ("due", "message")

    def __init__(self, message: SqsMessage, due: float) -> None:
        self.message = message
        self.due = due


class _Holding:
    """The messages one poller has received and not yet settled; its heartbeat's work list.

    ``carry`` holds messages received for a batch that the 6 MB limit cut: they start the
    poller's next batch.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._held: dict[str, _Held] = {}
        self.carry: list[SqsMessage] = []
        self._added = anyio.Event()

    def __len__(self) -> int:
        return len(self._held)

    def add(self, messages: Iterable[SqsMessage], received_at: float) -> None:
        due = received_at + self.interval
        for message in messages:
            self._held[message.receipt_handle] = _Held(message, due)
        self._added.set()

    def release(self, messages: Iterable[SqsMessage]) -> None:
        for message in messages:
            self._held.pop(message.receipt_handle, None)

    def drop(self, messages: Iterable[SqsMessage], *, fifo: bool) -> int:
        """Give up messages whose receipt SQS refused: no longer held, and no longer carried,
        so that they are never delivered on a receipt that may have passed to another poller
        (SQS delivers them again from a fresh receive). On a FIFO queue the carried messages
        of their groups go too, by the rule of :func:`carried_apart`, or they would be
        delivered before the refused ones come back. Returns how many carried messages went.
        """
        refused = list(messages)
        gone = {m.receipt_handle for m in refused}
        carried = len(self.carry)
        kept = [m for m in self.carry if m.receipt_handle not in gone]
        self.carry, behind = carried_apart(kept, refused, fifo=fifo)
        for handle in gone | {m.receipt_handle for m in behind}:
            self._held.pop(handle, None)
        return carried - len(self.carry)

    def holds(self, message: SqsMessage) -> bool:
        return message.receipt_handle in self._held

    def due(self, by: float) -> list[SqsMessage]:
        return [h.message for h in self._held.values() if h.due <= by]

    def next_due(self) -> float | None:
        return min((h.due for h in self._held.values()), default=None)

    def set_due(self, messages: Iterable[SqsMessage], due: float) -> None:
        for message in messages:
            held = self._held.get(message.receipt_handle)
            if held is not None:
                held.due = due

    async def wait_for_messages(self) -> None:
        if not self._held:
            self._added = anyio.Event()
            await self._added.wait()


class _Gathering:
    """A batch being assembled: at most ``limit`` messages and ``max_bytes`` of event."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.messages: list[SqsMessage] = []
        self.full = False
        #: When the receive that brought the first message began.
        self.received_at = time.monotonic()
        self._limit = limit
        self._max_bytes = max_bytes
        self._size = ENVELOPE_BYTES

    @property
    def room(self) -> int:
        return self._limit - len(self.messages)

    def received(self, started: float) -> None:
        if not self.messages:
            self.received_at = started

    def take(self, pending: list[SqsMessage]) -> list[SqsMessage]:
        """Add messages from the front of ``pending`` while they fit; return the rest."""
        for index, message in enumerate(pending):
            added = message.size + (1 if self.messages else 0)
            if self.room <= 0 or (self.messages and self._size + added > self._max_bytes):
                self.full = True
                return pending[index:]
            self.messages.append(message)
            self._size += added
        self.full = self.full or self.room <= 0
        return []


def _wait_seconds(deadline: float | None, window: int, long_poll: int) -> int | None:
    """WaitTimeSeconds for the next receive; None when the batching window is over.

    Before the first message, a full long poll (20 seconds). After it, what is left of the
    window, rounded down, so that a batch is never held past its window; with under a second
    left, one short poll that takes only what is already there.
    """
    if deadline is None:
        return long_poll
    remaining = deadline - time.monotonic()
    if window == 0 or remaining <= 0:
        return None
    return min(long_poll, int(remaining))


class _Scaler:
    """How many pollers a mapping runs: Lambda's scaling, from what the pollers report."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.floor = min(MIN_POLLERS, cap)
        self.target = min(START_POLLERS, cap)
        self.active = 0
        self._full = self._partial = self._idle = self._failed = 0

    def batch(self, *, full: bool) -> None:
        if full:
            self._full += 1
        else:
            self._partial += 1

    def idle(self) -> None:
        """A long poll came back empty: one poller fewer, down to the floor."""
        self._idle += 1
        self.target = max(self.floor, self.target - 1)

    def failed(self) -> None:
        """A batch failed or was throttled: back off by one poller, down to the floor."""
        self._failed += 1
        self.target = max(self.floor, self.target - 1)

    def surplus(self) -> bool:
        return self.active > self.target

    def tick(self) -> int:
        """Decide once per interval; return how many pollers to start."""
        busy = self._full > 0 and not (self._partial or self._idle or self._failed)
        self._full = self._partial = self._idle = self._failed = 0
        if busy and self.active >= self.target:
            self.target = min(self.cap, self.target + SCALE_UP_STEP)
        return max(0, self.target - self.active)


class SqsMappingRunner:
    """Keeps the pollers of one SQS mapping running until shutdown.

    ``max_bytes`` (the 6 MB payload limit) is a parameter only so that tests can exercise
    the cut with small messages.
    """

    def __init__(
        self,
        mapping: SqsMapping,
        *,
        queue: SqsQueue,
        target: Target,
        stopping: anyio.Event,
        metrics: Metrics | None = None,
        max_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.mapping = mapping
        self._queue = queue
        self._target = target
        self._stopping = stopping
        self._metrics: Metrics = metrics or NullMetrics()
        self._max_bytes = max_bytes
        self._long_poll = max(1, min(MAX_WAIT_SECONDS, mapping.receive_wait_time_seconds))
        self._name = mapping.name
        self._filters = mapping.filters  # compiled once; None when the mapping has none
        self._scaler = _Scaler(mapping.maximum_concurrency)
        self._limiter = anyio.CapacityLimiter(mapping.maximum_concurrency)
        self._in_flight = 0
        self._next_index = 0
        self._info = QueueInfo(url="", visibility_timeout=30, redrive_policy=None, fifo=False)
        #: Pollers whose receives failed UNREACHABLE_AFTER_FAILURES times in a row, and not
        #: yet succeeded since.
        self._failing_pollers = 0

    @property
    def reachable(self) -> bool:
        """False while a poller's receives keep failing (the queue is missing, forbidden or
        does not answer); the service reports the mapping down meanwhile. One failed receive
        whose retry succeeds does not count."""
        return self._failing_pollers == 0

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the queue and run pollers until shutdown; every batch has settled on return."""
        with structlog.contextvars.bound_contextvars(mapping=self._name):
            self._info = await retrying(f"open queue {self._queue.name}", self._queue.open)
            self._warn_about_queue()
            async with anyio.create_task_group() as tg:
                for _ in range(self._scaler.target):
                    self._spawn(tg)
                tg.start_soon(self._scale_loop, tg)
                log.info(
                    "mapping.started",
                    queue=self._queue.name,
                    fifo=self._info.fifo,
                    visibility_timeout_s=self._info.visibility_timeout,
                    pollers=self._scaler.target,
                    maximum_concurrency=self._scaler.cap,
                )
                task_status.started()

    def _warn_about_queue(self) -> None:
        info = self._info
        if info.redrive_policy is None:
            log.warning(
                "queue.no_redrive_policy",
                queue=self._queue.name,
                hint="messages that keep failing are retried until the queue's retention "
                "period drops them; give the queue a RedrivePolicy with a dead-letter queue",
            )
        if info.visibility_timeout == 0:
            log.warning(
                "queue.visibility_timeout_zero",
                queue=self._queue.name,
                hint="received messages are visible again at once, so batches in flight are "
                "delivered again; the heartbeat cannot extend a zero timeout",
            )
        if info.fifo != self.mapping.is_fifo:
            log.warning("queue.fifo_mismatch", queue=self._queue.name, fifo=info.fifo)

    async def _scale_loop(self, tg: TaskGroup) -> None:
        while await self._pause(SCALE_INTERVAL):
            for _ in range(self._scaler.tick()):
                self._spawn(tg)

    def _spawn(self, tg: TaskGroup) -> None:
        self._scaler.active += 1
        self._next_index += 1
        self._metrics.sqs_concurrency(self._name, self._scaler.active)
        tg.start_soon(self._poller, self._next_index, name=f"sqs poller {self._next_index}")

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless shutdown begins first; False when it did."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
            return False
        return True

    # -- one poller -------------------------------------------------------------------------

    async def _poller(self, index: int) -> None:
        """One poller and its heartbeat, restarted after a backoff if it fails unexpectedly
        (the messages it held then reappear after their visibility timeout)."""
        crashes = 0
        try:
            with structlog.contextvars.bound_contextvars(poller=index):
                while True:
                    holding = _Holding(self._info.visibility_timeout / 2)
                    try:
                        async with anyio.create_task_group() as tg:
                            if self._info.visibility_timeout > 0:
                                tg.start_soon(self._heartbeat, holding)
                            await self._poll(holding)
                            tg.cancel_scope.cancel()
                    except Exception:
                        crashes += 1
                        log.exception("poller.crashed", attempt=crashes, held=len(holding))
                        if not await self._pause(READ_BACKOFF.delay(crashes)):
                            return
                    else:
                        return
        finally:
            self._scaler.active -= 1
            self._metrics.sqs_concurrency(self._name, self._scaler.active)

    async def _poll(self, holding: _Holding) -> None:
        failures = 0
        while not self._stopping.is_set() or holding.carry:
            if self._scaler.surplus() and not holding.carry:
                return
            async with self._limiter:
                gathering = await self._gather(holding)
                if not gathering.messages:
                    if not self._stopping.is_set():
                        self._scaler.idle()
                    continue
                self._scaler.batch(full=gathering.full)
                succeeded = await self._process(gathering.messages, holding, gathering.received_at)
            if succeeded:
                failures = 0
                continue
            failures += 1
            self._scaler.failed()
            await self._pause(INVOKE_BACKOFF.delay(failures))

    async def _gather(self, holding: _Holding) -> _Gathering:
        """Receive until the batch is full (by count or 6 MB), the window ends, or shutdown.

        An empty batch means that a long poll came back empty. Messages received beyond what
        fits stay in ``holding.carry`` and start the poller's next batch.
        """
        window = self.mapping.maximum_batching_window_in_seconds
        gathering = _Gathering(self.mapping.batch_size, self._max_bytes)
        pending, holding.carry = holding.carry, []
        deadline: float | None = None
        while True:
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
            if not received and (deadline is None or wait == 0):
                return gathering
            if received:
                gathering.received(started)
                holding.add(received, started)
                self._metrics.records_polled(self._name, len(received))
            pending = received

    async def _receive(self, count: int, wait: int) -> list[SqsMessage] | None:
        """One ReceiveMessage, retried with backoff on errors; None once shutdown began.

        A receive in flight when shutdown begins is not cancelled: SQS may already have handed
        it messages, which would then stay invisible for a visibility timeout (and an
        abandoned long poll keeps taking messages that arrive after the service stopped). Its
        messages are processed like any other; no new receive starts.
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
                if not await self._pause(READ_BACKOFF.delay(failures)):
                    return None
            return None
        finally:
            if failures >= UNREACHABLE_AFTER_FAILURES:
                self._failing_pollers -= 1

    # -- one batch --------------------------------------------------------------------------

    async def _process(
        self, batch: list[SqsMessage], holding: _Holding, received_at: float
    ) -> bool:
        """Invoke, then settle. True unless the batch (or part of it) failed."""
        batch, filtered = self._filter(batch)
        if not batch:  # every message filtered out: delete them, invoke nothing
            holding.release(filtered)
            await self._delete(filtered)
            return True
        self._in_flight += 1
        self._metrics.sqs_in_flight(self._name, self._in_flight)
        started = time.monotonic()
        try:
            invocation = await self._invoke(batch, received_at)
            verdict = self._verdict(batch, invocation)
            kept = [batch[i] for i in sorted(verdict.keep)]
            holding.carry, behind = carried_apart(holding.carry, kept, fifo=self._info.fifo)
            kept += behind
            settled = [m for i, m in enumerate(batch) if i not in verdict.keep] + filtered
            holding.release(kept)
            if kept:
                await self._return(kept, release=invocation.interrupted)
            deleted = await self._delete(settled)
            holding.release(settled)
        finally:
            self._in_flight -= 1
            self._metrics.sqs_in_flight(self._name, self._in_flight)
        fields: dict[str, Any] = {
            "size": len(batch),
            "outcome": verdict.outcome,
            "deleted": deleted,
            "returned": len(kept),
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
        if rejected:
            self._metrics.records_filtered(self._name, len(rejected))
        return passed, rejected

    async def _invoke(self, batch: list[SqsMessage], received_at: float) -> _Invocation:
        """Invoke once, and again after throttles or service errors, for up to one
        visibility timeout from the first receive (as Lambda does)."""
        event = {"Records": [m.event_record for m in batch]}
        attempts = 0
        while True:
            attempts += 1
            began = time.monotonic()
            result = await self._target.invoke(event)
            duration = time.monotonic() - began
            self._metrics.records_invoked(self._name, len(batch))
            if result.outcome is Outcome.SUCCESS:
                return _Invocation(result, attempts, duration)
            self._metrics.records_failed_invoke(self._name, len(batch))
            self._metrics.invocation(self._name, result.outcome.value, duration, len(batch))
            if result.outcome not in _RETRIED_IN_PLACE:
                return _Invocation(result, attempts, duration)
            self._scaler.failed()  # Lambda backs off by reducing concurrency
            if time.monotonic() - received_at >= self._info.visibility_timeout:
                return _Invocation(result, attempts, duration)
            log.info("batch.retry_scheduled", outcome=result.outcome.value, attempt=attempts)
            self._metrics.retry(self._name)
            if not await self._pause(INVOKE_BACKOFF.delay(attempts)):
                return _Invocation(result, attempts, duration, interrupted=True)

    def _verdict(self, batch: Sequence[SqsMessage], invocation: _Invocation) -> _Verdict:
        """Judge the last invocation; count successful ones by how their response reads."""
        result, size = invocation.result, len(batch)
        everything = frozenset(range(size))
        if result.outcome is not Outcome.SUCCESS:
            return _Verdict(result.outcome.value, everything, result.error)
        metrics, duration = self._metrics, invocation.duration
        if not self.mapping.report_batch_item_failures:
            metrics.invocation(self._name, "success", duration, size)
            return _Verdict("success", frozenset())
        response = parse_queue_response(
            result.payload,
            payload_is_json=result.payload_is_json,
            item_ids=[m.message_id for m in batch],
        )
        if response.kind == "success":
            metrics.invocation(self._name, "success", duration, size)
            return _Verdict("success", frozenset())
        if response.kind == "invalid":
            metrics.invocation(self._name, "function_error", duration, size)
            metrics.records_failed_invoke(self._name, size)
            return _Verdict("invalid_response", everything, response.reason)
        reported = len(response.failed_ids)
        metrics.invocation(self._name, "partial_failure", duration, size)
        metrics.records_failed_invoke(self._name, reported)
        keep = held_back(batch, response.failed_ids, fifo=self._info.fifo)
        return _Verdict("partial_failure", frozenset(keep), "batchItemFailures", reported)

    # -- settlement -------------------------------------------------------------------------

    async def _delete(self, messages: Sequence[SqsMessage]) -> int:
        """Delete messages until SQS confirms each, or refuses one for good.

        An entry refused as the sender's fault (ReceiptHandleIsInvalid: typically its
        visibility lapsed and it was received again) is logged and left: the message will be
        delivered again. So is every entry when the queue was deleted: its messages are gone.
        Anything else is retried with backoff, also during the drain; the poller's heartbeat
        keeps the messages hidden meanwhile.
        """
        pending = list(messages)
        deleted = attempt = 0
        while pending:
            failures = await self._queue.delete(pending)
            deleted += len(pending) - len(failures)
            refused = [f for f in failures if f.sender_fault]
            if refused:
                gone = all(f.code == QUEUE_GONE for f in refused)
                log.warning(
                    "messages.delete_refused",
                    count=len(refused),
                    codes=_codes(refused),
                    hint="the queue was deleted, and its messages with it"
                    if gone
                    else "these messages will be delivered again after their visibility timeout",
                )
            pending = [f.message for f in failures if not f.sender_fault]
            if pending:
                attempt += 1
                wait = DELETE_BACKOFF.delay(attempt)
                log.warning(
                    "messages.delete_retry",
                    count=len(pending),
                    codes=_codes(failures),
                    error=next(f.text for f in failures if not f.sender_fault),
                    attempt=attempt,
                    wait_s=round(wait, 2),
                )
                await anyio.sleep(wait)
        if deleted:
            self._metrics.records_deleted(self._name, deleted)
        return deleted

    async def _return(self, messages: Sequence[SqsMessage], *, release: bool) -> None:
        """Let failed messages reappear: after the visibility timeout (Lambda), after the
        configured backoff, or at once when the function never ran (``release``)."""
        backoff = self.mapping.visibility_timeout_on_failure
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
                codes=_codes(failures),
                hint="these messages reappear after the queue's visibility timeout instead",
            )

    # -- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self, holding: _Holding) -> None:
        """Extend the visibility of held messages at half the visibility timeout."""
        timeout = self._info.visibility_timeout
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
            failures = await self._queue.change_visibility([(m, timeout) for m in due])
            failed = {id(f.message) for f in failures}
            holding.set_due((m for m in due if id(m) not in failed), started + interval)
            extended = len(due) - len(failed)
            if extended:
                self._metrics.visibility_extended(self._name, extended)
            self._heartbeat_failures(holding, failures, started, interval)

    def _heartbeat_failures(
        self, holding: _Holding, failures: list[EntryFailure], started: float, interval: float
    ) -> None:
        # Entries about messages settled meanwhile (deleted while the call ran) are expected.
        failures = [f for f in failures if holding.holds(f.message)]
        if not failures:
            return
        refused = [f for f in failures if f.sender_fault]
        if refused:
            carried = holding.drop((f.message for f in refused), fifo=self._info.fifo)
            log.warning(
                "visibility.extend_refused",
                count=len(refused),
                codes=_codes(refused),
                dropped_from_next_batch=carried,
                hint="these messages may be delivered again while their batch is in flight",
            )
        retry = [f.message for f in failures if not f.sender_fault]
        if retry:
            holding.set_due(retry, started + min(HEARTBEAT_RETRY_SECONDS, interval / 4))
            log.warning(
                "visibility.extend_failed",
                count=len(retry),
                error=next(f.text for f in failures if not f.sender_fault),
            )


def _codes(failures: Iterable[EntryFailure]) -> dict[str, int]:
    return dict(Counter(f.code for f in failures))
