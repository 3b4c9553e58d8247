"""Failure records: the JSON document Lambda sends to an on-failure destination.

Data flow::

    FailureRouter (records exhausted their retries or grew too old)
        --failure_record(...)-->  dict  --FailureDestination.send-->  SQS / SNS / S3

When a Kinesis or DynamoDB Streams batch is given up on (or a record too large for any
invocation, condition ``RecordSizeExceeded``), the stream engine
(``poller.streams.failures``) builds one record describing it (which invocation failed, why, and
which part of the shard it covered) and hands it to the mapping's destination. The shape is AWS's,
key for key and in AWS's key order (``docs/aws-esm.md`` §1.2, and the recordings in
``tests/fixtures/aws-recorded``): SQS and SNS carry it as is; S3 adds the original records as
``payload`` (:func:`with_payload`). I/O-free.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from poller.types import InvokeResult, StreamRecord

#: Why the records were given up on. AWS documents the first two; ``RecordSizeExceeded`` (a
#: record too large for any invocation, never invoked) is poller's own name.
Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded", "RecordSizeExceeded"]
#: The stream the records came from; it names the batch-info key and its timestamp precision.
SourceKind = Literal["kinesis", "dynamodb"]

#: The version field of every failure record.
RECORD_VERSION = "1.0"

#: The key holding the batch description, per source.
BATCH_INFO_KEYS: dict[str, str] = {
    "kinesis": "KinesisBatchInfo",
    "dynamodb": "DDBStreamBatchInfo",
}


def iso_millis(epoch: float) -> str:
    """``epoch`` seconds as ISO-8601 UTC with milliseconds: ``2019-11-14T00:38:06.021Z``."""
    seconds, millis = divmod(round(epoch * 1000), 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def iso_seconds(epoch: float) -> str:
    """``epoch`` seconds as ISO-8601 UTC truncated to the second: ``2022-07-13T13:48:01Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch // 1)))


#: How each source formats the arrival times of its first and last record. DynamoDB Streams
#: only knows the second a change was made (``ApproximateCreationDateTime``).
_ARRIVAL_FORMAT = {"kinesis": iso_millis, "dynamodb": iso_seconds}


def failure_record(
    *,
    kind: SourceKind,
    condition: Condition,
    approximate_invoke_count: int,
    request_id: str,
    function_arn: str,
    last_result: InvokeResult | None,
    shard_id: str,
    stream_arn: str,
    records: Sequence[StreamRecord],
    now: float,
) -> dict[str, Any]:
    """The failure record for ``records``, exactly as Lambda sends it to SQS or SNS.

    Args:
        kind: the source of the records; picks ``KinesisBatchInfo`` or ``DDBStreamBatchInfo``.
        condition: ``RetryAttemptsExhausted``, ``RecordAgeExceeded`` or
            ``RecordSizeExceeded``.
        approximate_invoke_count: invocations attempted for these records (1 + retries; 0
            for ``RecordSizeExceeded``).
        request_id: the request id of the last invocation.
        function_arn: the target's ARN.
        last_result: the last invocation's result, or None when there was none; its status
            code, executed version and function error fill ``responseContext``. A ``None``
            function error becomes JSON null, as AWS sends after a partial batch response.
        shard_id: the shard the records came from.
        stream_arn: the stream's ARN (for DynamoDB, the table's stream ARN).
        records: the records given up on, in shard order; never empty.
        now: epoch seconds of the failure, for ``timestamp``.

    Returns:
        A fresh dict, ready for ``json.dumps``. ``responseContext`` is present only for
        ``RetryAttemptsExhausted``: AWS omits it when the records grew too old, and a record
        too large was never invoked.

    Raises:
        ValueError: ``records`` is empty, or ``kind`` is not a known source.
    """
    if not records:
        raise ValueError("a failure record describes at least one record")
    if kind not in BATCH_INFO_KEYS:
        raise ValueError(f"unknown source kind {kind!r}")
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": approximate_invoke_count,
        },
    }
    if condition == "RetryAttemptsExhausted":
        record["responseContext"] = _response_context(last_result)
    record["version"] = RECORD_VERSION
    record["timestamp"] = iso_millis(now)
    arrival = _ARRIVAL_FORMAT[kind]
    first, last = records[0], records[-1]
    record[BATCH_INFO_KEYS[kind]] = {
        "shardId": shard_id,
        "startSequenceNumber": first.sequence_number,
        "endSequenceNumber": last.sequence_number,
        "approximateArrivalOfFirstRecord": arrival(first.arrival_timestamp),
        "approximateArrivalOfLastRecord": arrival(last.arrival_timestamp),
        "batchSize": len(records),
        "streamArn": stream_arn,
    }
    return record


def _response_context(result: InvokeResult | None) -> dict[str, Any]:
    """``responseContext`` from the last invocation; AWS's defaults where it has no value."""
    if result is None:
        return {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None}
    return {
        "statusCode": result.status_code if result.status_code is not None else 200,
        "executedVersion": result.executed_version or "$LATEST",
        "functionError": result.function_error,
    }


def with_payload(record: dict[str, Any], records: Sequence[StreamRecord]) -> dict[str, Any]:
    """The S3 variant of ``record``: a copy that adds the records as Lambda delivered them.

    ``payload`` is ``{"Records": [...]}``, the event the function received for these records.
    ``record`` itself is not modified.
    """
    return {**record, "payload": {"Records": [r.event_record for r in records]}}
