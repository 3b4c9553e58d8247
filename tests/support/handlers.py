"""Sample handlers for tests of the Python target and the Invoke-API test server.

Each is a plain ``handler(event, context)`` as Lambda's Python runtime calls it; tests load
them by path (``tests.support.handlers:ok``) or register them with the Invoke-API server.
Handlers that block take their delays from the event so a test states its own timing.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel

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
