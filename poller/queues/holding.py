"""What one SQS poller holds: the messages received and not yet settled.

Data flow::

    intake --add()--> Holding --due()--> heartbeat (extends their visibility)
    batch  --release()--> Holding         (settled: deleted or returned)
    heartbeat --drop()--> Holding         (SQS refused the receipt: let the message go)

``carry`` holds messages received for a batch that the 6 MB limit cut: they start the poller's
next batch, and the heartbeat keeps them hidden meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio

from poller.core.queue_rules import carried_apart
from poller.sources.sqs import SqsMessage


class _Held:
    """A message a poller holds, and when its visibility must next be extended."""

    __slots__ = ("due", "message")

    def __init__(self, message: SqsMessage, due: float) -> None:
        self.message = message
        self.due = due


class Holding:
    """The messages one poller has received and not yet settled; its heartbeat's work list.

    ``interval`` is the heartbeat's period: half the queue's visibility timeout.
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
