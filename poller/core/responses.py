"""Partial batch responses: what a function's answer says about each item of its batch.

With ``function_response_types: [ReportBatchItemFailures]`` a function may answer
``{"batchItemFailures": [{"itemIdentifier": "<id>"}, ...]}`` to fail only some items. After a
successful invocation the shard processor (streams) or the SQS batch processor passes the answer
here, with the batch's item identifiers in batch order, and acts on the verdict. I/O-free and
synchronous.

Rules (docs/aws-esm.md §1.3 and §2.5; for streams, exactly what AWS did in the recorded scenarios
``test_kinesis_report_batch_item_success_scenarios`` and ``..._failure_scenarios`` of
``conformance/aws-recorded/esm-kinesis.json``):

* **Success**: ``""``, ``[]``, ``null``, ``{}``, ``{"batchItemFailures": []}`` and
  ``{"batchItemFailures": null}`` as recorded; more generally any response that is not an
  object, because AWS only looks inside an object.
* **Invalid**, a complete failure: ``batchItemFailures`` neither null nor a list; an item that
  is not an object; an item without ``itemIdentifier`` (recorded: ``{"foo": 123}``,
  ``{"foo": null}``); an ``itemIdentifier`` that is not a string (recorded: ``123``, ``null``)
  or is not an identifier in the batch (recorded: ``""``).
* **Partial**, when every reported item is valid. Streams (identifier = sequence number)
  checkpoint before the lowest reported record and retry from it; duplicates are allowed.
  With KPL de-aggregation a user record's identifier is ``seq:sub``; the plain ``seq`` of an
  aggregate in the batch is accepted too and means its first user record in the batch.
  Queues (identifier = ``messageId``) keep exactly the reported messages.
* A body that is not JSON (only an HTTP target can produce one) is success for streams and a
  complete failure for queues ("invalid JSON response").

"Invalid" counts as a function error: it is retried and counted against
``MaximumRetryAttempts`` like a thrown error, but its failure record carries
``responseContext.functionError: null`` because the function itself returned normally.
Reasons name the offending item and value; they never quote record data beyond an identifier.
"""

from __future__ import annotations

import json
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: Longest rendering of an offending value in a reason, so a huge answer cannot flood logs.
MAX_VALUE_CHARS = 120
#: Most keys of an item without ``itemIdentifier`` to list in a reason.
MAX_KEYS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """The verdict on a Kinesis or DynamoDB Streams batch.

    Attributes:
        kind: ``success`` (the whole batch), ``partial`` or ``invalid`` (a function error).
        failed_from: for ``partial``, the index in the batch of the lowest reported record;
            that record and all after it are retried.
        reason: for ``invalid``, why, naming the offending item or value.
    """

    kind: Literal["success", "partial", "invalid"]
    failed_from: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class QueueResponse:
    """The verdict on an SQS batch.

    Attributes:
        kind: ``success`` (the whole batch), ``partial`` or ``invalid`` (a function error).
        failed_ids: for ``partial``, the message ids that stay in the queue.
        reason: for ``invalid``, why, naming the offending item or value.
    """

    kind: Literal["success", "partial", "invalid"]
    failed_ids: frozenset[str] = frozenset()
    reason: str | None = None


class _InvalidResponse(ValueError):
    """The response is malformed; the message says why."""


def parse_stream_response(
    payload: Any,
    *,
    payload_is_json: bool,
    item_ids: Sequence[str],
    aggregates: Sequence[str | None] = (),
) -> StreamResponse:
    """Judge a stream function's response.

    Args:
        payload: the response parsed from JSON, or the raw text when it was not JSON.
        payload_is_json: False when the body was not JSON.
        item_ids: the sequence numbers of the batch's records, in batch order (``seq:sub``
            for a user record of a KPL aggregate).
        aggregates: for each record, the plain sequence number of its KPL aggregate (None for
            a plain record); that number then identifies the aggregate's first record here.
    """
    if not payload_is_json:
        return StreamResponse("success")
    # The first index of each id: with (unexpected) repeats, the earliest record is retried.
    index = {item_id: i for i, item_id in reversed(tuple(enumerate(item_ids)))}
    for i, aggregate in enumerate(aggregates):
        if aggregate is not None:
            index.setdefault(aggregate, i)
    try:
        reported = _reported_ids(payload, index)
    except _InvalidResponse as exc:
        return StreamResponse("invalid", reason=str(exc))
    if not reported:
        return StreamResponse("success")
    return StreamResponse("partial", failed_from=min(index[i] for i in reported))


def parse_queue_response(
    payload: Any, *, payload_is_json: bool, item_ids: Sequence[str]
) -> QueueResponse:
    """Judge a queue function's response.

    Args:
        payload: the response parsed from JSON, or the raw text when it was not JSON.
        payload_is_json: False when the body was not JSON.
        item_ids: the message ids of the batch's messages, in batch order.
    """
    if not payload_is_json:
        # The raw text may echo message bodies, so the reason does not quote it.
        return QueueResponse("invalid", reason="invalid JSON response")
    try:
        reported = _reported_ids(payload, frozenset(item_ids))
    except _InvalidResponse as exc:
        return QueueResponse("invalid", reason=str(exc))
    if not reported:
        return QueueResponse("success")
    return QueueResponse("partial", failed_ids=frozenset(reported))


def _reported_ids(payload: Any, batch_ids: Container[str]) -> list[str]:
    """The identifiers a response reports as failed; empty for complete success.

    Raises:
        _InvalidResponse: the response is malformed, by the rules in the module docstring.
    """
    if not isinstance(payload, dict):
        return []
    failures = payload.get("batchItemFailures")
    if failures is None:
        return []
    if not isinstance(failures, list):
        raise _InvalidResponse(f"batchItemFailures must be a list or null, not {_show(failures)}")
    return [_item_id(position, item, batch_ids) for position, item in enumerate(failures)]


def _item_id(position: int, item: Any, batch_ids: Container[str]) -> str:
    """The identifier of ``batchItemFailures[position]``, checked against the batch."""
    where = f"batchItemFailures[{position}]"
    if not isinstance(item, dict):
        raise _InvalidResponse(f"{where} must be an object, not {_show(item)}")
    if "itemIdentifier" not in item:
        raise _InvalidResponse(f"{where} has no itemIdentifier (keys: {_show_keys(item)})")
    identifier = item["itemIdentifier"]
    if not isinstance(identifier, str):
        raise _InvalidResponse(f"{where}.itemIdentifier must be a string, not {_show(identifier)}")
    if identifier not in batch_ids:
        raise _InvalidResponse(f"{where}.itemIdentifier {_show(identifier)} is not in the batch")
    return identifier


def _show_keys(item: dict[Any, Any]) -> str:
    """The first few keys of an object, to show what the function sent instead."""
    names = [_show(key) for key in list(item)[:MAX_KEYS_SHOWN]]
    if len(item) > MAX_KEYS_SHOWN:
        names.append("...")
    return ", ".join(names) or "none"


def _show(value: Any) -> str:
    """A short rendering of a value from a response: JSON scalars, containers by kind."""
    if isinstance(value, dict):
        return f"an object ({len(value)} keys)"
    if isinstance(value, list):
        return f"an array ({len(value)} items)"
    if value is None or isinstance(value, str | int | float):  # bool is an int
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = type(value).__name__  # not a JSON value: from a Python handler
    if len(text) > MAX_VALUE_CHARS:
        return f"{text[:MAX_VALUE_CHARS]}... ({len(text)} chars)"
    return text
