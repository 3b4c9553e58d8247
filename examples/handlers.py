"""Sample handlers for the Python target, used by the embedded local mode and the benchmarks.

Data flow::

    ShardWorker --event--> PythonTarget --handler(event, context)--> log_batch / noop

``log_batch`` is the demo's function: it shows that batches arrive, in order, shard by shard.
It logs counts and sequence numbers only, never record data, as a production handler should.
Run ``poller`` from the repository root and the handler path ``examples.handlers:log_batch``
imports from here (the Python target adds the working directory to ``sys.path``).
"""

from __future__ import annotations

from typing import Any

import structlog

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
