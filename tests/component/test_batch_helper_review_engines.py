"""A hostile review of the batch helper through poller's real SQS engine: a handler built on
:func:`poller.batch.process_batch` runs in a ``PythonTarget``, the SQS runner reads a
``FakeQueue``, and the test checks what the engine deletes.

The break shown here: an ``async def`` record function handed to the sync ``process_batch``
is never run (its coroutine is never awaited), yet the helper answers success, so the engine
deletes messages nobody handled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.batch import process_batch
from tests.component.sqs_fakes import FakeQueue, python_target_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Generous: the handler runs in worker threads on a shared, loaded machine.
LIMIT = 30.0


def queue_running(
    queue: FakeQueue, handler: Callable[..., Any]
) -> AbstractAsyncContextManager[None]:
    """An SQS runner with ReportBatchItemFailures on ``queue``, ``handler`` in a Python
    target, until the block ends."""
    return python_target_running(queue, handler, limit=LIMIT * 2)


class Invocations:
    """What the handler did, across worker threads: the records its record function ran
    for, and whether an invocation ended in an exception."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handled: list[str] = []
        self.raised: list[str] = []

    def note_handled(self, message_id: str) -> None:
        with self._lock:
            self.handled.append(message_id)

    def note_raised(self, error: Exception) -> None:
        with self._lock:
            self.raised.append(type(error).__name__)


async def test_process_batch_with_an_async_handle_deletes_no_unhandled_message() -> None:
    """BREAK. a and b are sent; the handler calls ``process_batch`` with an ``async def``
    record function. Today the function never runs and the response is empty, so the engine
    deletes a and b: both are lost. The helper must fail the invocation instead (a
    TypeError), so that nothing unhandled is deleted."""
    queue, seen = FakeQueue(), Invocations()
    queue.send("a")
    queue.send("b")

    async def handle(record: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()
        seen.note_handled(record["messageId"])

    def handler(event: dict[str, Any], context: Any) -> Any:
        try:
            return process_batch(event, handle)
        except Exception as exc:
            seen.note_raised(exc)
            raise

    async with queue_running(queue, handler):
        await wait_until(
            lambda: seen.raised or {"a", "b"} <= set(queue.deleted),
            LIMIT,
            "the invocation failed or its messages were deleted",
            0.005,
        )
    lost = set(queue.deleted) - set(seen.handled)
    assert lost == set(), f"deleted without being handled: {sorted(lost)}"
    assert seen.raised == ["TypeError"]
