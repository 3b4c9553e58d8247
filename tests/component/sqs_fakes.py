"""An in-memory SQS queue behind :class:`poller.queues.ports.QueueApi`, for the component tier.

Data flow::

    test --send()--> FakeQueue <--receive() / delete() / change_visibility()-- SqsMappingRunner
                               <--send_copy() (an oversized FIFO message to the DLQ)--
    test <--deleted, in_flight(), visibility_calls, copies, dead_letters-- FakeQueue

It keeps SQS's rules that the runner relies on: a received message is invisible for the
visibility timeout (or until a visibility change says otherwise) and then delivered again with
a higher receive count and a new receipt handle; a delete or visibility change with a stale
receipt handle is refused as the sender's fault; on a FIFO queue nothing more of a group is
delivered while one of its messages is in flight, and a group's messages come in order.
Messages are converted with the SQS adapter's own converter, so event records and sizes are
the production ones. Time passes for real (the runner reads ``time.monotonic``), but a test
can end every visibility timeout at once with :meth:`FakeQueue.expire_visibility`, and a long
poll lasts at most ``poll_seconds``, so that shutdown is quick.

:func:`fake_mapping` and :func:`runner_running` run the real ``SqsMappingRunner`` on such a
queue for the length of a block; :func:`python_target_running` does so with a handler in a
real ``PythonTarget``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from poller.config import SqsMapping
from poller.errors import SourceError
from poller.queues import SqsMappingRunner
from poller.queues.ports import QueueApi
from poller.retry import Backoff
from poller.sources.sqs import (
    EntryFailure,
    QueueInfo,
    SqsMessage,
    copy_params,
    make_message_factory,
)
from poller.targets.python import PythonTarget
from poller.types import Target

REGION = "us-east-1"
ACCOUNT = "123456789012"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


#: The dead-letter queue of every FakeQueue's redrive policy.
DEAD_LETTER_ARN = queue_arn("dlq")


@dataclass
class _Stored:
    """A message in the queue, and where it stands."""

    message_id: str
    body: str
    group_id: str | None
    sent: int
    receive_count: int = 0
    #: The receipt handle of the latest receive; None before the first.
    handle: str | None = None
    #: ``time.monotonic()`` before which the message is in flight (invisible).
    visible_at: float = 0.0

    def in_flight(self, now: float) -> bool:
        return self.handle is not None and self.visible_at > now


class FakeQueue:
    """One queue in memory. Attributes a test reads:

    Attributes:
        deleted: the message ids deleted, in order.
        visibility_calls: every ``change_visibility`` call, as ``[(message id, seconds)]``.
        receives: how many receive calls were made.
        copies, dead_letters: what ``send_copy`` sent (see ``__init__``).
    """

    def __init__(
        self,
        name: str = "orders",
        *,
        visibility_timeout: int = 30,
        poll_seconds: float = 0.01,
    ) -> None:
        self.name = name
        self.arn = queue_arn(name)
        self.fifo = name.endswith(".fifo")
        self.visibility_timeout = visibility_timeout
        self.poll_seconds = poll_seconds
        self._stored: dict[str, _Stored] = {}
        self._arrived = anyio.Event()
        self._convert = make_message_factory(queue_arn=self.arn, region=REGION)
        self.deleted: list[str] = []
        self.visibility_calls: list[list[tuple[str, int]]] = []
        self.receives = 0
        #: What ``send_copy`` sent, as ``(queue ARN, SendMessage parameters)``.
        self.copies: list[tuple[str, dict[str, object]]] = []
        #: The ids of the messages ``send_copy`` sent to the dead-letter queue ``open`` names.
        self.dead_letters: list[str] = []
        #: When set, ``send_copy`` fails with this text (no permission, no such queue, ...).
        self.refuse_copies: str | None = None

    # -- the test's side --------------------------------------------------------------------

    def send(self, message_id: str, body: str = "{}", *, group: str | None = None) -> None:
        """Put a message in the queue (``group`` is required on a FIFO queue)."""
        if self.fifo and group is None:
            raise ValueError(f"a FIFO queue needs a group for {message_id!r}")
        self._stored[message_id] = _Stored(message_id, body, group, len(self._stored))
        self._arrived.set()
        self._arrived = anyio.Event()

    def expire_visibility(self) -> None:
        """Let every visibility timeout end now: messages in flight become visible again."""
        for stored in self._stored.values():
            stored.visible_at = 0.0
        self._arrived.set()
        self._arrived = anyio.Event()

    def in_flight(self) -> list[str]:
        """The ids of the messages received and neither deleted nor visible again."""
        now = time.monotonic()
        return [s.message_id for s in self._stored.values() if s.in_flight(now)]

    def remaining(self) -> list[str]:
        """The ids of the messages not deleted, in send order."""
        return list(self._stored)

    def size_of(self, message_id: str) -> int:
        """The bytes the message adds to an event (on its next receive)."""
        stored = self._stored[message_id]
        return self._message(stored, stored.receive_count + 1).size

    # -- QueueApi -----------------------------------------------------------------------------

    async def open(self) -> QueueInfo:
        return QueueInfo(
            url=f"memory://{self.name}",
            visibility_timeout=self.visibility_timeout,
            redrive_policy={"deadLetterTargetArn": DEAD_LETTER_ARN, "maxReceiveCount": 5},
            fifo=self.fifo,
        )

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        """Take what is visible; else wait until something arrives or the poll ends."""
        self.receives += 1
        with anyio.move_on_after(min(wait_seconds, self.poll_seconds)):
            while not (found := self._take(max_messages)):
                await self._arrived.wait()
            return found
        return []

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        failures = []
        for message in messages:
            stored = self._current(message)
            if stored is None:
                failures.append(_refused(message))
                continue
            del self._stored[stored.message_id]
            self.deleted.append(stored.message_id)
        await anyio.lowlevel.checkpoint()
        return failures

    async def change_visibility(
        self, changes: Sequence[tuple[SqsMessage, int]]
    ) -> list[EntryFailure]:
        self.visibility_calls.append([(m.message_id, seconds) for m, seconds in changes])
        now = time.monotonic()
        failures = []
        for message, seconds in changes:
            stored = self._current(message)
            if stored is None or not stored.in_flight(now):
                failures.append(_refused(message))
                continue
            stored.visible_at = now + seconds
        if any(seconds == 0 for _, seconds in changes):
            self._arrived.set()
            self._arrived = anyio.Event()
        await anyio.lowlevel.checkpoint()
        return failures

    async def send_copy(self, message: SqsMessage, queue_arn: str) -> None:
        """Record the SendMessage the adapter would make; a FIFO queue stores a deduplication
        id once, as SQS does within its 5 minutes."""
        await anyio.lowlevel.checkpoint()
        if self.refuse_copies is not None:
            raise SourceError(self.refuse_copies)
        params = copy_params(message)
        dedup = params.get("MessageDeduplicationId")
        if dedup is not None and any(
            arn == queue_arn and sent.get("MessageDeduplicationId") == dedup
            for arn, sent in self.copies
        ):
            return
        self.copies.append((queue_arn, params))
        if queue_arn == DEAD_LETTER_ARN:
            self.dead_letters.append(message.message_id)

    # -- inside -------------------------------------------------------------------------------

    def _take(self, limit: int) -> list[SqsMessage]:
        now = time.monotonic()
        busy = {s.group_id for s in self._stored.values() if self.fifo and s.in_flight(now)}
        taken: list[SqsMessage] = []
        for stored in self._stored.values():
            if len(taken) == limit:
                break
            if stored.in_flight(now) or stored.group_id in busy:
                continue
            stored.receive_count += 1
            stored.handle = f"rh-{stored.message_id}-{stored.receive_count}"
            stored.visible_at = now + self.visibility_timeout
            taken.append(self._message(stored, stored.receive_count))
        return taken

    def _message(self, stored: _Stored, receive_count: int) -> SqsMessage:
        attributes = {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": str(1_700_000_000_000 + stored.sent),
            "SenderId": ACCOUNT,
            "ApproximateFirstReceiveTimestamp": "1700000000000",
        }
        if stored.group_id is not None:
            attributes["MessageGroupId"] = stored.group_id
        return self._convert(
            {
                "MessageId": stored.message_id,
                "ReceiptHandle": f"rh-{stored.message_id}-{receive_count}",
                "MD5OfBody": hashlib.md5(stored.body.encode()).hexdigest(),
                "Body": stored.body,
                "Attributes": attributes,
            }
        )

    def _current(self, message: SqsMessage) -> _Stored | None:
        """The stored message if ``message``'s receipt handle is its latest one."""
        stored = self._stored.get(message.message_id)
        if stored is None or stored.handle != message.receipt_handle:
            return None
        return stored


def _refused(message: SqsMessage) -> EntryFailure:
    return EntryFailure(
        message=message,
        code="ReceiptHandleIsInvalid",
        text=f"The receipt handle of {message.message_id} is not valid",
        sender_fault=True,
    )


# -- the runner over a fake queue ---------------------------------------------------------------

#: After a failed batch, milliseconds instead of production's half a second.
FAST_BACKOFF = Backoff(initial=0.005, maximum=0.02)
#: A mapping's fields for at most two batches in flight.
TWO_AT_A_TIME: dict[str, Any] = {"scaling_config": {"maximum_concurrency": 2}}


def fake_mapping(queue: FakeQueue, **fields: Any) -> SqsMapping:
    """The mapping "orders" on ``queue`` with ReportBatchItemFailures, plus ``fields`` (its
    target names the test handler, but the tests hand the runner their own)."""
    return SqsMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "function_response_types": ["ReportBatchItemFailures"],
            **fields,
        }
    )


@asynccontextmanager
async def runner_running(
    mapping: SqsMapping, queue: QueueApi, target: Target, *, limit: float, **runner_options: Any
) -> AsyncIterator[None]:
    """The real ``SqsMappingRunner`` (with :data:`FAST_BACKOFF` unless ``runner_options``
    say otherwise) until the block ends, then shut down; all within ``limit`` seconds."""
    runner_options.setdefault("backoff", FAST_BACKOFF)
    stopping = anyio.Event()
    runner = SqsMappingRunner(
        mapping, queue=queue, target=target, stopping=stopping, **runner_options
    )
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            yield
            stopping.set()


@asynccontextmanager
async def python_target_running(
    queue: FakeQueue, handler: Callable[..., Any], *, limit: float
) -> AsyncIterator[None]:
    """:func:`runner_running` on ``queue`` with ``handler`` in a real ``PythonTarget``, closed
    when the block ends."""
    target = PythonTarget(handler, timeout_seconds=30)
    try:
        async with runner_running(fake_mapping(queue), queue, target, limit=limit):
            yield
    finally:
        await target.aclose()
