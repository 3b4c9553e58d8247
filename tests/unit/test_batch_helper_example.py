"""The shipped example of the batch helper, ``examples.handlers:process_records``, loaded as a
mapping's Python target loads it: a record whose payload is not a JSON object is reported,
and on a stream every record after it too."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from poller.targets.python import LambdaContext, load_handler

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-12-05T00:00:00.000"


def context(seconds: float = 60) -> LambdaContext:
    return LambdaContext(
        function_name="process_records",
        invoked_function_arn="python:examples.handlers:process_records",
        aws_request_id="r-1",
        log_group_name="/aws/lambda/process_records",
        log_stream_name="s",
        memory_limit_in_mb="128",
        _deadline=time.monotonic() + seconds,
    )


def reported(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def test_the_example_reports_the_records_it_cannot_parse_on_a_standard_queue() -> None:
    handler = load_handler("examples.handlers:process_records")
    bodies = {"a": '{"id": 1}', "b": "oops", "c": "[1, 2]", "d": '{"id": 4}'}
    event = {
        "Records": [
            {"messageId": m, "body": b, "eventSource": "aws:sqs", "eventSourceARN": QUEUE}
            for m, b in bodies.items()
        ]
    }
    assert reported(handler(event, context())) == ["b", "c"]


def test_the_example_stops_a_stream_at_its_first_failure() -> None:
    handler = load_handler("examples.handlers:process_records")
    payloads = [{"id": 1}, "not an object", {"id": 3}]
    event = {
        "Records": [
            {
                "kinesis": {
                    "sequenceNumber": str(i),
                    "data": base64.b64encode(json.dumps(p).encode()).decode(),
                },
                "eventSource": "aws:kinesis",
                "eventSourceARN": STREAM,
            }
            for i, p in enumerate(payloads)
        ]
    }
    assert reported(handler(event, context())) == ["1", "2"]


def test_the_example_handles_dynamodb_keys_and_keeps_a_second_in_reserve() -> None:
    """With less than its reserve left, the example reports every record unprocessed."""
    handler = load_handler("examples.handlers:process_records")
    event = {
        "Records": [
            {
                "dynamodb": {"SequenceNumber": s, "Keys": {"id": {"S": s}}},
                "eventSource": "aws:dynamodb",
                "eventSourceARN": TABLE,
            }
            for s in ("100", "200")
        ]
    }
    assert reported(handler(event, context())) == []
    assert reported(handler(event, context(seconds=0.5))) == ["100", "200"]
