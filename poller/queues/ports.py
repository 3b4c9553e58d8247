"""The queue the SQS engine polls and settles through: the one seam between the runner and AWS.

Data flow::

    intake --receive()--> [SqsMessage, ...] --> batch --> settle --delete() / change_visibility()
    heartbeat --change_visibility()--> the queue                      runner --open()--> QueueInfo

:class:`~poller.sources.sqs.SqsQueue` implements :class:`QueueApi` against SQS; the component
tests implement it in memory. The runner depends on this shape only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from poller.sources.sqs import EntryFailure, QueueInfo, SqsMessage


class QueueApi(Protocol):
    """The calls of one queue. ``open`` and ``receive`` raise
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
