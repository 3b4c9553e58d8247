"""The rules of an SQS mapping, apart from any I/O: I/O-free and synchronous.

Where they sit::

    poller.queues (runner, intake, batch)
        how long a receive waits ........ wait_seconds
        how many pollers run ............ Scaler
        what an invocation means ........ judge -> Verdict (which messages stay, how it counts)
        which messages go where ......... plan_settlement -> Settlement (delete / return / carry)
            FIFO order .................. held_back, carried_apart

Lambda's rules (docs/aws-esm.md §2.2, §2.3, §2.5), as they apply here:

* **Success** deletes the batch; **failure** deletes nothing (the messages reappear after the
  visibility timeout and the queue's redrive policy counts their receives).
* **ReportBatchItemFailures**: every message but the reported ones is deleted
  (:func:`~poller.core.responses.parse_queue_response`; unknown ids, malformed responses and
  non-JSON answers fail the whole batch).
* **FIFO**: when a message fails, the later messages of its group stay with it, so that the
  group is retried in order; other groups go on. Messages carried past a 6 MB cut follow the
  same rule.
* **Scaling**: five pollers to start (or ``maximum_concurrency`` if smaller), five more each
  interval while batches come back full, one fewer per empty long poll, failed batch or
  throttle, never fewer than two.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from poller.core.responses import parse_queue_response
from poller.types import InvokeResult, Outcome

#: Pollers a mapping starts with (Lambda starts five).
START_POLLERS = 5
#: Pollers a mapping keeps when idle (Lambda scales down to two).
MIN_POLLERS = 2
#: Pollers added per scaling tick while batches come back full (Lambda: 300 a minute).
SCALE_UP_STEP = 5


class QueuedMessage(Protocol):
    """What the rules need of a received message."""

    @property
    def message_id(self) -> str:
        """The ``itemIdentifier`` of partial batch responses."""
        ...

    @property
    def group_id(self) -> str | None:
        """The FIFO message group; None on a standard queue."""
        ...


MessageT = TypeVar("MessageT", bound=QueuedMessage)


# -- FIFO hold-back ----------------------------------------------------------------------------


def held_back(batch: Sequence[QueuedMessage], failed_ids: Iterable[str], *, fifo: bool) -> set[int]:
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
    carry: Sequence[MessageT], kept: Sequence[QueuedMessage], *, fifo: bool
) -> tuple[list[MessageT], list[MessageT]]:
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


# -- receive waits -----------------------------------------------------------------------------


def wait_seconds(deadline: float | None, window: int, long_poll: int, *, now: float) -> int | None:
    """WaitTimeSeconds for the next receive; None when the batching window is over.

    Before the first message (no ``deadline`` yet), a full long poll. After it, what is left
    of the window at ``now``, rounded down, so that a batch is never held past its window;
    with under a second left, one short poll that takes only what is already there.
    """
    if deadline is None:
        return long_poll
    remaining = deadline - now
    if window == 0 or remaining <= 0:
        return None
    return min(long_poll, int(remaining))


# -- scaling -----------------------------------------------------------------------------------


class Scaler:
    """How many pollers a mapping runs: Lambda's scaling, from what the pollers report.

    The runner counts the pollers it runs in ``active``; a poller retires when
    :meth:`surplus` says so, and :meth:`tick` says how many to start.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.floor = min(MIN_POLLERS, cap)
        self.target = min(START_POLLERS, cap)
        self.active = 0
        self._full = self._partial = self._idle = self._failed = 0

    def batch(self, *, full: bool) -> None:
        """A poller gathered a batch, full (by count or size) or not."""
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
        """More pollers run than the target: the next one free retires."""
        return self.active > self.target

    def tick(self) -> int:
        """Decide once per interval; return how many pollers to start."""
        busy = self._full > 0 and not (self._partial or self._idle or self._failed)
        self._full = self._partial = self._idle = self._failed = 0
        if busy and self.active >= self.target:
            self.target = min(self.cap, self.target + SCALE_UP_STEP)
        return max(0, self.target - self.active)


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an invocation means for its batch."""

    #: ``success``, ``partial_failure``, ``invalid_response``, or the failed invocation's
    #: outcome.
    outcome: str
    #: Indices of the messages that stay in the queue.
    keep: frozenset[int]
    #: Why the batch failed, for the log line; never message data.
    reason: str | None = None
    #: Distinct messages the function listed as failed (partial batch responses).
    reported: int = 0
    #: The outcome the invocation metric records for a function that answered; None for a
    #: failed invocation (the invoker counted it when it failed).
    counted_as: str | None = None
    #: Records the metrics count as failed by the function's answer: the whole batch when
    #: it failed or listed any item in ``batchItemFailures`` (Lambda's
    #: FailedInvokeEventCount "includes any event with a non-empty BatchItemFailures").
    failed_records: int = 0


def judge(
    batch: Sequence[QueuedMessage],
    result: InvokeResult,
    *,
    report_batch_item_failures: bool,
    fifo: bool,
) -> Verdict:
    """Judge the last invocation of ``batch``; a successful one by how its response reads."""
    everything = frozenset(range(len(batch)))
    if result.outcome is not Outcome.SUCCESS:
        return Verdict(result.outcome.value, everything, result.error)
    if not report_batch_item_failures:
        return Verdict("success", frozenset(), counted_as="success")
    response = parse_queue_response(
        result.payload,
        payload_is_json=result.payload_is_json,
        item_ids=[m.message_id for m in batch],
    )
    if response.kind == "success":
        return Verdict("success", frozenset(), counted_as="success")
    if response.kind == "invalid":
        return Verdict(
            "invalid_response",
            everything,
            response.reason,
            counted_as="function_error",
            failed_records=len(batch),
        )
    reported = len(response.failed_ids)
    keep = frozenset(held_back(batch, response.failed_ids, fifo=fifo))
    return Verdict(
        "partial_failure",
        keep,
        "batchItemFailures",
        reported,
        counted_as="partial_failure",
        failed_records=len(batch),
    )


# -- settlement --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settlement(Generic[MessageT]):
    """Where each message a poller holds goes once its batch is judged."""

    #: Settled: the batch's messages that do not stay, and those the filters rejected.
    delete: list[MessageT]
    #: Stay in the queue: the kept messages, then carried ones of their FIFO groups.
    keep: list[MessageT]
    #: Carried messages that still start the poller's next batch.
    carry: list[MessageT]


def plan_settlement(
    batch: Sequence[MessageT],
    keep: Iterable[int],
    *,
    carry: Sequence[MessageT],
    filtered: Sequence[MessageT],
    fifo: bool,
) -> Settlement[MessageT]:
    """Split a judged batch (``keep``: the indices that stay) and the poller's carried
    messages into what to delete, what to return and what to carry on."""
    stays = set(keep)
    kept = [batch[i] for i in sorted(stays)]
    carry_on, behind = carried_apart(carry, kept, fifo=fifo)
    settled = [m for i, m in enumerate(batch) if i not in stays]
    return Settlement(delete=settled + list(filtered), keep=kept + behind, carry=carry_on)
