"""The queue the SQS engine polls and settles through: the one seam between the runner and AWS.

Data flow::

    intake --receive()--> [SqsMessage, ...] --> batch --> settle --delete() / change_visibility()
    intake (an oversized FIFO message) --send_copy()--> the dead-letter queue, then delete()
    heartbeat --change_visibility()--> the queue                      runner --open()--> QueueInfo
    runner (provisioned mode) --backlog()--> ApproximateNumberOfMessages, every few seconds

:class:`~poller.sources.sqs.SqsQueue` implements :class:`QueueApi` against SQS; the component
tests implement it in memory. The runner depends on this shape only. :class:`BacklogProbe` is
a separate, optional port: provisioned mode scales on the backlog when the queue offers it,
and on its batches alone otherwise. :class:`PacedQueue` wraps a queue so that one poller's
receives keep provisioned mode's pace (:class:`~poller.core.scaling.ReceivePace`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import anyio

from poller.core.scaling import ReceivePace
from poller.sources.sqs import EntryFailure, QueueInfo, SqsMessage


class QueueApi(Protocol):
    """The calls of one queue. ``open``, ``receive`` and ``send_copy`` raise
    :class:`~poller.errors.SourceError`; ``delete`` and ``change_visibility`` never raise for
    a failed call, they return its entries as :class:`EntryFailure` values."""

    @property
    def name(self) -> str:
        """The queue's name, for logs."""
        ...

    async def open(self) -> QueueInfo:
        """Resolve the queue and read the attributes the runner needs, once at start."""
        ...

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        """One receive: up to ``max_messages`` (≤ 10), waiting up to ``wait_seconds``."""
        ...

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        """Delete messages; return the entries that were not deleted."""
        ...

    async def change_visibility(
        self, changes: Sequence[tuple[SqsMessage, int]]
    ) -> list[EntryFailure]:
        """Set each message's visibility timeout (seconds from now); return what failed."""
        ...

    async def send_copy(self, message: SqsMessage, queue_arn: str) -> None:
        """Send a copy of ``message`` (body, message attributes; on a FIFO queue its group,
        deduplicated by its message id) to the queue ``queue_arn``. Raises
        :class:`~poller.errors.SourceError` when it was not sent."""
        ...


@runtime_checkable
class BacklogProbe(Protocol):
    """Reads how many messages wait in the queue (provisioned mode's scaling signal)."""

    async def backlog(self) -> int | None:
        """The queue's ApproximateNumberOfMessages (visible messages, not those in flight), or
        None when it could not be read; the runner then keeps the last value it read (it
        does so too if the read raises :class:`~poller.errors.SourceError`).
        """
        ...


class PacedQueue:
    """``queue`` for one provisioned poller: its receives keep :class:`ReceivePace` (at most
    ten a second, AWS's per-poller poll rate); every other call passes straight through."""

    def __init__(self, queue: QueueApi, stopping: anyio.Event | None = None) -> None:
        self._queue = queue
        self._pace = ReceivePace(now=time.monotonic())
        self._stopping = stopping or anyio.Event()

    @property
    def name(self) -> str:
        return self._queue.name

    async def open(self) -> QueueInfo:
        return await self._queue.open()

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        delay = self._pace.wait(now=time.monotonic())
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._stopping.wait()
        if self._stopping.is_set():
            return []  # shutdown began during the wait: no receive starts after it
        return await self._queue.receive(max_messages, wait_seconds)

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        return await self._queue.delete(messages)

    async def change_visibility(
        self, changes: Sequence[tuple[SqsMessage, int]]
    ) -> list[EntryFailure]:
        return await self._queue.change_visibility(changes)

    async def send_copy(self, message: SqsMessage, queue_arn: str) -> None:
        await self._queue.send_copy(message, queue_arn)
