"""Sample handlers for the Python target, used by the embedded local mode and the benchmarks.

Data flow::

    ShardWorker --event--> PythonTarget --handler(event, context)--> log_batch / noop
    SqsRunner / ShardWorker --event--> PythonTarget --> process_records --per record--> batch helper

``log_batch`` is the demo's function: it shows that batches arrive, in order, shard by shard.
It logs counts and sequence numbers only, never record data, as a production handler should.
``process_records`` shows the batch helper (:mod:`poller.batch`): it handles records one by one
and returns a partial batch response naming the records that failed (the mapping needs
``function_response_types: [ReportBatchItemFailures]``).
Run ``poller`` from the repository root and the handler path ``examples.handlers:log_batch``
imports from here (the Python target adds the working directory to ``sys.path``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import structlog

from poller.batch import process_batch

_log = structlog.get_logger("examples.handlers")


def _sequence_number(record: dict[str, Any]) -> str | None:
    """A record's position in its shard or queue, whatever the source."""
    if "kinesis" in record:
        return str(record["kinesis"].get("sequenceNumber"))
    if "dynamodb" in record:
        return str(record["dynamodb"].get("SequenceNumber"))
    # SQS: standard queues have no sequence numbers, FIFO queues do.
    attributes = record.get("attributes") or {}
    return attributes.get("SequenceNumber") or record.get("messageId")


def _shard(record: dict[str, Any]) -> str | None:
    """The shard id a stream record came from: the ``eventID`` prefix for Kinesis."""
    event_id = record.get("eventID")
    if isinstance(event_id, str) and ":" in event_id:
        return event_id.split(":", 1)[0]
    return None


def log_batch(event: dict[str, Any], context: Any) -> None:
    """Log one line per batch: how many records, from which shard, which sequence numbers.

    Args:
        event: the Lambda event, ``{"Records": [...]}``.
        context: the Lambda-style context; only its request id is used.
    """
    records = event.get("Records") or []
    first = records[0] if records else {}
    last = records[-1] if records else {}
    _log.info(
        "handler.batch_received",
        request_id=getattr(context, "aws_request_id", None),
        records=len(records),
        event_source=first.get("eventSource"),
        shard=_shard(first),
        first_sequence_number=_sequence_number(first) if records else None,
        last_sequence_number=_sequence_number(last) if records else None,
    )


def noop(event: dict[str, Any], context: Any) -> None:
    """Do nothing; the benchmarks measure the pipeline, not the handler."""


#: Milliseconds kept back at the end of an invocation: records not started by then are
#: reported unprocessed (and retried) rather than the whole batch timing out.
RESERVE_MS = 1000


def process_records(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Handle each record on its own; report the failed ones (and, on a stream or a FIFO queue,
    every record after the first failure, so that order holds on the retry).

    A record whose payload is not a JSON object fails: try it with a message body ``oops``.

    Args:
        event: the Lambda event, ``{"Records": [...]}`` of an SQS queue or a stream.
        context: the Lambda-style context; its remaining time is checked before each record.

    Returns:
        ``{"batchItemFailures": [{"itemIdentifier": ...}, ...]}``.
    """
    return process_batch(event, _process_record, context=context, reserve_ms=RESERVE_MS)


def _process_record(record: dict[str, Any]) -> None:
    """One record's work: here, parse its payload and log its size (never its content)."""
    payload = _payload(record)
    if not isinstance(payload, dict):
        raise TypeError(f"expected a JSON object, got {type(payload).__name__}")
    _log.info("handler.record_processed", fields=len(payload), event_source=record["eventSource"])


def _payload(record: dict[str, Any]) -> Any:
    """The record's payload: the SQS body or Kinesis data as JSON, a DynamoDB item's keys."""
    if "kinesis" in record:
        return json.loads(base64.b64decode(record["kinesis"]["data"]))
    if "dynamodb" in record:
        return record["dynamodb"].get("Keys")
    return json.loads(record["body"])
