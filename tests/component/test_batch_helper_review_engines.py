"""A hostile review of the batch helper through poller's real SQS engine: a handler built on
:func:`poller.batch.process_batch` runs in a ``PythonTarget``, the SQS runner reads a
``FakeQueue``, and the test checks what the engine deletes.

The break shown here: an ``async def`` record function handed to the sync ``process_batch``
is never run (its coroutine is never awaited), yet the helper answers success, so the engine
deletes messages nobody handled.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.batch import process_batch
from poller.config import SqsMapping
from poller.queues import SqsMappingRunner
from poller.retry import Backoff
from poller.targets.python import PythonTarget
from tests.component.sqs_fakes import FakeQueue
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Generous: the handler runs in worker threads on a shared, loaded machine.
LIMIT = 30.0
FAST_BACKOFF = Backoff(initial=0.005, maximum=0.02)


@asynccontextmanager
async def queue_running(queue: FakeQueue, handler: Callable[..., Any]) -> AsyncIterator[None]:
    """An SQS runner with ReportBatchItemFailures on ``queue``, ``handler`` in a Python
    target, until the block ends."""
    config = SqsMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "function_response_types": ["ReportBatchItemFailures"],
        }
    )
    target = PythonTarget(handler, timeout_seconds=30)
    stopping = anyio.Event()
    runner = SqsMappingRunner(
        config, queue=queue, target=target, stopping=stopping, backoff=FAST_BACKOFF
    )
    try:
        with anyio.fail_after(LIMIT * 2):
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                yield
                stopping.set()
    finally:
        await target.aclose()


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
