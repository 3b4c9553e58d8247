"""Sample handlers for tests of the Python target and the Invoke-API test server.

Each is a plain ``handler(event, context)`` as Lambda's Python runtime calls it; tests load
them by path (``tests.support.handlers:ok``) or register them with the Invoke-API server.
Handlers that block take their delays from the event so a test states its own timing.
The hostile ones raise what no handler should (``BaseException`` subclasses, a cancellation
of their own), block the event loop, or hang forever, as buggy user code does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel

from tests.support import file_sink

#: Not a function: ``load_handler`` must refuse it.
NOT_CALLABLE = 42


def ok(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Succeed with an empty partial batch response."""
    return {"batchItemFailures": []}


async def async_ok(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Succeed asynchronously, reporting how many records arrived."""
    await anyio.lowlevel.checkpoint()
    return {"count": len(event.get("Records", []))}


def count_records(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report how many records arrived."""
    return {"count": len(event.get("Records", []))}


def fail(event: dict[str, Any], context: Any) -> None:
    """Raise, as a function with a bug does."""
    raise ValueError("boom")


def sleep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Block the calling thread for ``event["sleep"]`` seconds, then succeed."""
    time.sleep(float(event.get("sleep", 0)))
    return {"slept": event.get("sleep", 0)}


async def async_sleep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Sleep asynchronously for ``event["sleep"]`` seconds, then succeed."""
    await anyio.sleep(float(event.get("sleep", 0)))
    return {"slept": event.get("sleep", 0)}


def fail_first_record(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report the first record as failed in a partial batch response (any source)."""
    records = event.get("Records", [])
    if not records:
        return {"batchItemFailures": []}
    first = records[0]
    if "kinesis" in first:
        identifier = first["kinesis"]["sequenceNumber"]
    elif "dynamodb" in first:
        identifier = first["dynamodb"]["SequenceNumber"]
    else:
        identifier = first["messageId"]
    return {"batchItemFailures": [{"itemIdentifier": identifier}]}


def unserializable(event: dict[str, Any], context: Any) -> set[int]:
    """Return a value JSON cannot hold."""
    return {1, 2}


def context_fields(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Return the context's attributes, so tests can check what a handler sees."""
    first = context.get_remaining_time_in_millis()
    time.sleep(float(event.get("sleep", 0)))
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_first": first,
        "remaining_after": context.get_remaining_time_in_millis(),
    }


def mutate_event(event: dict[str, Any], context: Any) -> None:
    """Change the event in place, which must not reach the caller's copy."""
    event["Records"].clear()
    event["mutated"] = True


# -- hostile handlers ------------------------------------------------------------------------


class HandlerBaseError(BaseException):
    """A ``BaseException`` subclass of the handler's own, as some libraries define."""


def raise_keyboard_interrupt(event: dict[str, Any], context: Any) -> None:
    raise KeyboardInterrupt("raised by the handler")


def raise_generator_exit(event: dict[str, Any], context: Any) -> None:
    raise GeneratorExit("raised by the handler")


def raise_base_exception(event: dict[str, Any], context: Any) -> None:
    raise HandlerBaseError("raised by the handler")


async def async_raise_keyboard_interrupt(event: dict[str, Any], context: Any) -> None:
    await anyio.lowlevel.checkpoint()
    raise KeyboardInterrupt("raised by the handler")


async def async_raise_base_exception(event: dict[str, Any], context: Any) -> None:
    await anyio.lowlevel.checkpoint()
    raise HandlerBaseError("raised by the handler")


async def async_raise_cancelled(event: dict[str, Any], context: Any) -> None:
    """Raise the cancellation exception although nobody cancelled the handler."""
    await anyio.lowlevel.checkpoint()
    raise anyio.get_cancelled_exc_class()("raised by the handler")


async def async_block(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Block the event loop for ``event["block"]`` seconds (a blocking call in async code)."""
    time.sleep(float(event["block"]))  # noqa: ASYNC251 - blocking the loop is the point
    return {"blocked": event["block"]}


async def async_block_then_await(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Block the event loop, then await: the timeout's cancellation lands only then."""
    time.sleep(float(event["block"]))  # noqa: ASYNC251 - blocking the loop is the point
    await anyio.lowlevel.checkpoint()
    return {"blocked": event["block"]}


def thread_kind(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report the thread the handler runs in."""
    thread = threading.current_thread()
    return {"daemon": thread.daemon, "main": thread is threading.main_thread()}


def interrupt_while_flagged(event: dict[str, Any], context: Any) -> None:
    """In a service subprocess: raise ``KeyboardInterrupt`` while the file named by
    ``POLLER_TEST_FAIL_FLAG`` exists, else record the batch as :func:`file_sink.handler` does."""
    if os.path.exists(os.environ["POLLER_TEST_FAIL_FLAG"]):
        raise KeyboardInterrupt("raised by the handler")
    file_sink.handler(event, context)


def hang(event: dict[str, Any], context: Any) -> None:
    """In a service subprocess: note the batch in ``POLLER_TEST_STARTED``, then never return."""
    with open(os.environ["POLLER_TEST_STARTED"], "a", encoding="utf-8") as out:
        out.write(f"{len(event['Records'])}\n")
    threading.Event().wait()


async def async_swallow_cancellation(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Swallow every cancellation in a loop for ``event["swallow"]`` seconds (a handler with a
    bare ``except BaseException`` around its awaits), then succeed."""
    give_up_at = time.monotonic() + float(event["swallow"])
    while time.monotonic() < give_up_at:
        # Swallowing the cancellation is the point.
        with contextlib.suppress(BaseException):
            await anyio.sleep(0.02)
    return {"swallowed": event["swallow"]}


async def async_uncancellable_wait(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Wait ``event["sleep"]`` seconds in a worker thread that cancellation cannot interrupt
    (``anyio.to_thread.run_sync`` without ``abandon_on_cancel``)."""
    await anyio.to_thread.run_sync(time.sleep, float(event["sleep"]))
    return {"slept": event["sleep"]}


class UnprintableError(Exception):
    """An exception whose message cannot be built: ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


def raise_unprintable(event: dict[str, Any], context: Any) -> None:
    raise UnprintableError


class _ItemsRaise(dict[str, Any]):
    """A dict whose items cannot be read: JSON serialisation raises ``KeyboardInterrupt``."""

    def items(self) -> Any:
        raise KeyboardInterrupt("from items()")


def return_items_raise(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _ItemsRaise(a=1)


def return_deep(event: dict[str, Any], context: Any) -> list[Any]:
    """A list nested far deeper than JSON serialisation can recurse."""
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


def return_bytes(event: dict[str, Any], context: Any) -> str:
    """A string of ``event["size"]`` characters (a response too big for Lambda past 6 MB)."""
    return "x" * int(event["size"])


async def async_return_bytes(event: dict[str, Any], context: Any) -> str:
    await anyio.lowlevel.checkpoint()
    return "x" * int(event["size"])


async def swallow_forever(event: dict[str, Any], context: Any) -> None:
    """In a service subprocess: note the batch in ``POLLER_TEST_STARTED``, then swallow every
    cancellation forever."""
    # ASYNC230: one short append, and the loop it would block is the handlers' own.
    with open(os.environ["POLLER_TEST_STARTED"], "a", encoding="utf-8") as out:  # noqa: ASYNC230
        out.write(f"{len(event['Records'])}\n")
    while True:
        with contextlib.suppress(BaseException):  # swallowing the cancellation is the point
            await anyio.sleep(0.05)


async def async_interrupt_the_loop(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Raise ``KeyboardInterrupt`` from a callback of the loop the handler runs on, outside the
    handler's own call: asyncio lets it escape the loop's ``run_forever``."""
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        raise KeyboardInterrupt("raised by a callback the handler scheduled")

    loop.call_soon(interrupt)
    await anyio.sleep(0.05)
    return {"interrupted": True}


async def async_to_thread_kind(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Report the kind of thread ``asyncio.to_thread`` runs blocking code in."""
    return await asyncio.to_thread(thread_kind, event, context)


async def hang_in_to_thread(event: dict[str, Any], context: Any) -> None:
    """In a service subprocess: note the batch in ``POLLER_TEST_STARTED``, then wait forever
    in ``asyncio.to_thread`` (whose thread cancellation cannot stop)."""
    with open(os.environ["POLLER_TEST_STARTED"], "a", encoding="utf-8") as out:  # noqa: ASYNC230
        out.write(f"{len(event['Records'])}\n")
    await asyncio.to_thread(threading.Event().wait)
