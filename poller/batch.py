"""Partial batch responses for Python handlers: run a function per record, report what failed.

Where it sits::

    Lambda or poller --event {"Records": [...]}--> your handler
        --process_batch(event, handle)--> handle(record), record by record, in order
        <--{"batchItemFailures": [{"itemIdentifier": ...}, ...]}-- returned by your handler

The response follows Lambda's partial batch response (docs/aws-esm.md §1.3): SQS keeps only
the listed messages, a stream checkpoints before the lowest listed record and retries from
there. The mapping must have ``function_response_types: [ReportBatchItemFailures]``, or the
response is ignored.

Rules:

* ``handle(record)`` runs once per record, in the batch's order. An ``Exception`` marks the
  record failed; a ``BaseException`` (``KeyboardInterrupt``, a cancellation) propagates, so
  the whole batch fails, as it would in Lambda.
* **Ordered** batches (Kinesis, DynamoDB Streams and FIFO queues, unless ``ordered`` says
  otherwise) stop at the first failure: it and every later record are reported. For a stream
  that is what Lambda retries anyway; for a FIFO queue it is what AWS requires ("stop
  processing messages after the first failure and return all failed and unprocessed
  messages"), so a later message of the group never overtakes a failed one.
* ``skip_group_on_failure`` (FIFO queues): only the failed message's group stops; its later
  messages are reported with it, and the other groups go on.
* ``reserve_ms``: once ``context.get_remaining_time_in_millis()`` drops below it, the records
  not yet processed are reported, so they are retried instead of the whole batch timing out.

This module imports nothing but the standard library and nothing from ``poller``: copy the
file into a Lambda deployment package, or ``pip install poller`` and import ``poller.batch``.
Failures are logged through :mod:`logging` (logger ``poller.batch``) with the record's
identifier and the exception's type, never the record's data or the exception's message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BatchResponse",
    "LambdaContextLike",
    "MalformedEvent",
    "aprocess_batch",
    "process_batch",
]

_log = logging.getLogger("poller.batch")

#: The response: ``{"batchItemFailures": [{"itemIdentifier": "<id>"}, ...]}``.
BatchResponse = dict[str, list[dict[str, str]]]

#: Where each source keeps a record's ``itemIdentifier``: (section or None, key).
_ID_FIELDS: dict[str, tuple[str | None, str]] = {
    "aws:sqs": (None, "messageId"),
    "aws:kinesis": ("kinesis", "sequenceNumber"),
    "aws:dynamodb": ("dynamodb", "SequenceNumber"),
}
#: Sources whose batches are ordered: a stream's shard, whatever the function does.
_ORDERED_SOURCES = frozenset({"aws:kinesis", "aws:dynamodb"})


class MalformedEvent(ValueError):
    """The event is not a batch of one SQS queue, Kinesis stream or DynamoDB stream: a record
    without its identifier, records of several sources, an unknown source. Raised before any
    record is processed."""


class LambdaContextLike(Protocol):
    """What the helper needs of Lambda's ``context``: the time left in the invocation."""

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds before the invocation times out."""
        ...


@dataclass(frozen=True, slots=True)
class _Item:
    """One record, with what the rules need to know about it."""

    index: int
    record: dict[str, Any]
    identifier: str
    group: str | None


def process_batch(
    event: Mapping[str, Any] | None,
    handle: Callable[[dict[str, Any]], object],
    *,
    ordered: bool | None = None,
    skip_group_on_failure: bool = False,
    context: LambdaContextLike | None = None,
    reserve_ms: int = 0,
) -> BatchResponse:
    """Call ``handle(record)`` for each record of ``event`` and build the partial batch response.

    Args:
        event: the Lambda event of an SQS, Kinesis or DynamoDB Streams mapping.
        handle: called once per record, in order; its return value is ignored. Raising an
            ``Exception`` marks the record failed.
        ordered: stop at the first failure and report every later record too. None (the
            default) decides from the event: ordered for Kinesis, DynamoDB Streams and FIFO
            queues (an ``eventSourceARN`` ending in ``.fifo``), not for standard queues.
        skip_group_on_failure: FIFO queues only: stop only the failed message's group, and go
            on with the other groups.
        context: Lambda's ``context``; needed with ``reserve_ms``.
        reserve_ms: report the remaining records unprocessed once fewer milliseconds than
            this are left in the invocation. 0 never stops.

    Returns:
        ``{"batchItemFailures": [...]}``, in record order; empty when every record succeeded
        or the event has no records. When every record fails, all are listed and nothing is
        raised.

    Raises:
        MalformedEvent: (a ``ValueError``) a record without its identifier, records of more
            than one source, an unknown source; raised before any record is processed.
        ValueError: options that do not fit the batch (``skip_group_on_failure`` on anything
            but a FIFO queue, ``reserve_ms`` without a context).
        BaseException: whatever non-``Exception`` ``handle`` raised.
    """
    batch = _Batch(event, ordered, skip_group_on_failure, context, reserve_ms)
    for item in batch.pending():
        try:
            result = handle(item.record)
        except Exception as exc:  # noqa: BLE001 - a failed record is a result, not an error
            batch.failed(item, exc)
            continue
        if inspect.isawaitable(result) or inspect.isgenerator(result):
            _discard(result)
            # Never awaited or iterated, the record was not handled: succeeding it would lose it.
            raise TypeError(
                "handle returned an awaitable or a generator: its body never ran (use "
                "aprocess_batch for async handles; a handle must not be a generator function)"
            )
    return batch.response()


def _discard(awaitable: object) -> None:
    """Close a coroutine that will never run, so it does not warn "never awaited"."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


async def aprocess_batch(
    event: Mapping[str, Any] | None,
    handle: Callable[[dict[str, Any]], Awaitable[object] | object],
    *,
    ordered: bool | None = None,
    skip_group_on_failure: bool = False,
    context: LambdaContextLike | None = None,
    reserve_ms: int = 0,
) -> BatchResponse:
    """:func:`process_batch` for an async ``handle``: each record's call is awaited before the
    next starts, so the order rules hold. The arguments and rules are the same."""
    batch = _Batch(event, ordered, skip_group_on_failure, context, reserve_ms)
    for item in batch.pending():
        try:
            result = handle(item.record)
            # A sync handle's return value is its record's result, as in process_batch.
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001 - a failed record is a result, not an error
            batch.failed(item, exc)
    return batch.response()


class _Batch:
    """One batch's records and what has become of them; shared by the sync and async loops."""

    def __init__(
        self,
        event: Mapping[str, Any] | None,
        ordered: bool | None,
        skip_group_on_failure: bool,
        context: LambdaContextLike | None,
        reserve_ms: int,
    ) -> None:
        records = _records(event)
        self._source, fifo = _source_of(records)
        self._ordered = _ordering(self._source, fifo, ordered, skip_group_on_failure)
        self._by_group = skip_group_on_failure
        self._clock = _clock(context, reserve_ms)
        self._reserve_ms = reserve_ms
        self._items = [self._item(index, record) for index, record in enumerate(records)]
        self._reported: list[str] = []
        self._unprocessed = 0
        self._stopped = False
        self._stopped_groups: set[str | None] = set()

    def pending(self) -> Iterator[_Item]:
        """The records to process next, in order. Read lazily: each failure reported through
        :meth:`failed` decides what comes after it."""
        for item in self._items:
            if self._stopped or item.group in self._stopped_groups or self._out_of_time(item):
                self._reported.append(item.identifier)
                self._unprocessed += 1
            else:
                yield item

    def failed(self, item: _Item, exc: Exception) -> None:
        """``handle`` raised ``exc`` for ``item``: report it, and stop what must stop."""
        self._reported.append(item.identifier)
        _log.warning(
            "batch record %d (%s %s) failed: %s",
            item.index,
            self._source,
            item.identifier,
            type(exc).__name__,
        )
        # The traceback may quote record data in its message: only on request.
        _log.debug("batch record %d failed", item.index, exc_info=exc)
        if self._by_group:
            self._stopped_groups.add(item.group)
        elif self._ordered:
            self._stopped = True

    def response(self) -> BatchResponse:
        """The partial batch response, in record order, each identifier once."""
        if self._unprocessed:
            _log.warning(
                "batch: %d of %d records reported unprocessed (after a failure, or for lack of "
                "time)",
                self._unprocessed,
                len(self._items),
            )
        # An identifier twice in one batch (never in a well-formed event) is reported once.
        reported = dict.fromkeys(self._reported)
        return {"batchItemFailures": [{"itemIdentifier": i} for i in reported]}

    def _item(self, index: int, record: dict[str, Any]) -> _Item:
        group = _group_of(index, record) if self._by_group else None
        return _Item(index, record, _identifier(index, self._source, record), group)

    def _out_of_time(self, item: _Item) -> bool:
        """Whether fewer than ``reserve_ms`` milliseconds are left before ``item`` starts."""
        if self._clock is None:
            return False
        left = self._clock()
        if left >= self._reserve_ms:
            return False
        self._stopped = True
        _log.warning(
            "batch: %d ms left, under the %d ms reserve: records from %d on reported unprocessed",
            left,
            self._reserve_ms,
            item.index,
        )
        return True


# -- reading the event ------------------------------------------------------------------------


def _records(event: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The event's records; none when ``Records`` is missing, null or empty."""
    if event is None:
        return []
    if not isinstance(event, Mapping):
        raise MalformedEvent(f"the event must be a mapping, not {type(event).__name__}")
    records = event.get("Records")
    if records is None:
        return []
    if not isinstance(records, list):
        raise MalformedEvent(f"the event's Records must be a list, not {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedEvent(f"record {index} must be an object, not {type(record).__name__}")
    return records


def _source_of(records: list[dict[str, Any]]) -> tuple[str, bool]:
    """The batch's ``eventSource``, and whether it is a FIFO queue.

    Raises:
        MalformedEvent: a record of an unknown source, or records of more than one source.
    """
    if not records:
        return "", False
    first = records[0]
    source, arn = first.get("eventSource"), first.get("eventSourceARN")
    for index, record in enumerate(records):
        # isinstance first: an unhashable value would escape the lookup as a TypeError.
        named = record.get("eventSource")
        if not isinstance(named, str) or named not in _ID_FIELDS:
            raise MalformedEvent(
                f"record {index} has eventSource {record.get('eventSource')!r}; expected one of "
                + ", ".join(_ID_FIELDS)
            )
        if (record.get("eventSource"), record.get("eventSourceARN")) != (source, arn):
            raise MalformedEvent(
                f"records of more than one source in one batch: record 0 is from {source} "
                f"{arn!r}, record {index} from {record.get('eventSource')} "
                f"{record.get('eventSourceARN')!r}"
            )
    fifo = source == "aws:sqs" and isinstance(arn, str) and arn.endswith(".fifo")
    return str(source), fifo


def _ordering(source: str, fifo: bool, ordered: bool | None, by_group: bool) -> bool:
    """Whether a failure stops the rest of the batch (or of its group, with ``by_group``).

    Raises:
        ValueError: ``by_group`` on anything but a FIFO queue, or with ``ordered=False``.
    """
    if by_group and source and not fifo:
        raise ValueError(
            f"skip_group_on_failure applies to FIFO queues only (an eventSourceARN ending in "
            f".fifo); this batch is from {source}"
        )
    if by_group and ordered is False:
        raise ValueError("skip_group_on_failure keeps each group in order: it needs ordered")
    if fifo and ordered is False:
        raise ValueError(
            "ordered=False does not apply to FIFO queues: AWS requires a FIFO function to stop "
            "at its first failure (use skip_group_on_failure to let other groups go on)"
        )
    if ordered is None:
        return fifo or source in _ORDERED_SOURCES
    return ordered


def _clock(context: LambdaContextLike | None, reserve_ms: int) -> Callable[[], int] | None:
    """What tells the time left, when ``reserve_ms`` asks for it.

    Raises:
        ValueError: a negative reserve, or a reserve without a context.
        TypeError: a context without ``get_remaining_time_in_millis``.
    """
    if reserve_ms < 0:
        raise ValueError(f"reserve_ms must be 0 or more, not {reserve_ms}")
    if not reserve_ms:
        return None
    if context is None:
        raise ValueError("reserve_ms needs the invocation's context (context=...)")
    if not callable(getattr(context, "get_remaining_time_in_millis", None)):
        raise TypeError(f"context {type(context).__name__} has no get_remaining_time_in_millis()")
    return context.get_remaining_time_in_millis


def _identifier(index: int, source: str, record: dict[str, Any]) -> str:
    """The record's ``itemIdentifier``: SQS ``messageId``, Kinesis ``kinesis.sequenceNumber``
    (``<sequenceNumber>:<subSequenceNumber>`` for a user record of a KPL aggregate that poller
    de-aggregated), DynamoDB ``dynamodb.SequenceNumber``.

    Raises:
        MalformedEvent: the identifier is missing or not a non-empty string.
    """
    section, key = _ID_FIELDS[source]
    fields = record if section is None else record.get(section)
    if not isinstance(fields, dict) or not isinstance(fields.get(key), str) or not fields[key]:
        where = key if section is None else f"{section}.{key}"
        raise MalformedEvent(f"record {index} ({source}) has no {where}")
    sub = fields.get("subSequenceNumber") if section == "kinesis" else None
    return str(fields[key]) if sub is None else f"{fields[key]}:{sub}"


def _group_of(index: int, record: dict[str, Any]) -> str:
    """A FIFO message's ``attributes.MessageGroupId``.

    Raises:
        MalformedEvent: the message has none.
    """
    attributes = record.get("attributes")
    group = attributes.get("MessageGroupId") if isinstance(attributes, dict) else None
    if not isinstance(group, str):
        raise MalformedEvent(f"record {index} (aws:sqs FIFO) has no attributes.MessageGroupId")
    return group
