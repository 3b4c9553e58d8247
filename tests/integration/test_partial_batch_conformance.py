"""Every ReportBatchItemFailures scenario AWS recorded, replayed through a Lambda target.

Each scenario is the one in tests/fixtures/aws-recorded/esm-kinesis.json: the same function
response, BatchSize, MaximumRetryAttempts and SQS on-failure destination. The function runs
behind the Invoke API (tests/support/invoke_api.py) and is called through the real aiobotocore
Lambda client. Successes must invoke once and send nothing to the destination; failures must
invoke 1 + MaximumRetryAttempts times and send the failure record AWS sent, field for field.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import lambda_settings
from tests.integration.stream_errors_harness import (
    checkpoint_of,
    make_queue,
    queue_bodies,
    run_until_checkpoint,
    stream_with,
)
from tests.support.aws import unique
from tests.support.conformance import assert_matches, recorded, recorded_message
from tests.support.invoke_api import InvokeApiServer

pytestmark = pytest.mark.anyio

SUCCESS: dict[str, Any] = {
    "empty_string_success": "",
    "empty_list_success": [],
    "null_success": None,
    "empty_dict_success": {},
    "empty_batch_item_failure_success": {"batchItemFailures": []},
    "null_batch_item_failure_success": {"batchItemFailures": None},
}
FAILURE: dict[str, Any] = {
    "item_identifier_not_present_failure": {"batchItemFailures": [{"itemIdentifier": 123}]},
    "empty_string_item_identifier_failure": {"batchItemFailures": [{"itemIdentifier": ""}]},
    "null_item_identifier_failure": {"batchItemFailures": [{"itemIdentifier": None}]},
    "invalid_key_foo_failure": {"batchItemFailures": [{"foo": 123}]},
    "invalid_key_foo_null_value_failure": {"batchItemFailures": [{"foo": None}]},
    "unhandled_exception_in_function": ZeroDivisionError,
}


def respond_with(response: Any) -> Any:
    def function(event: dict[str, Any], context: Any) -> Any:
        if response is ZeroDivisionError:
            return 1 / 0
        return response

    return function


async def run_scenario(
    moto_url: str, tmp_path: Path, function: Any, records: list[tuple[str, bytes]], **mapping: Any
) -> tuple[list[Any], list[dict[str, Any]], str | None, list[str]]:
    """Run one scenario; return (invocations, destination messages, checkpoint, sequences)."""
    stream = unique("pbr")
    queue_url, queue_arn = await make_queue(moto_url, unique("dlq"))
    written = await stream_with(moto_url, stream, records)
    db = tmp_path / f"{stream}.db"
    with InvokeApiServer() as server:
        server.register("fn", function, timeout=5)
        settings = lambda_settings(
            moto_url,
            server,
            stream,
            db,
            destination=queue_arn,
            maximum_batching_window_in_seconds=1,
            function_response_types=["ReportBatchItemFailures"],
            **mapping,
        )
        await run_until_checkpoint(settings, db, written[-1], 30, "the last record settled")
        invocations = server.invocations("fn")
    return invocations, await queue_bodies(moto_url, queue_url), checkpoint_of(db), written


async def answer_one_record(
    moto_url: str, tmp_path: Path, response: Any
) -> tuple[list[Any], list[dict[str, Any]], str | None, list[str]]:
    """The recorded single-record scenarios: one record, BatchSize 1, MaximumRetryAttempts 2,
    and a function that answers ``response``."""
    return await run_scenario(
        moto_url,
        tmp_path,
        respond_with(response),
        [("test", b"hello")],
        batch_size=1,
        maximum_retry_attempts=2,
    )


@pytest.mark.parametrize("scenario", SUCCESS)
async def test_success_scenarios(scenario: str, moto_url: str, tmp_path: Path) -> None:
    """Each success response settles the record after one invocation; nothing is sent."""
    invocations, messages, checkpoint, written = await answer_one_record(
        moto_url, tmp_path, SUCCESS[scenario]
    )
    assert [i.outcome for i in invocations] == ["success"]
    assert messages == []
    assert checkpoint == written[0]
    expected = recorded(
        "esm-kinesis.json",
        f"test_kinesis_report_batch_item_success_scenarios[{scenario}]",
        "kinesis_events",
    )
    assert_matches([invocations[0].event], expected)


@pytest.mark.parametrize("scenario", FAILURE)
async def test_failure_scenarios(scenario: str, moto_url: str, tmp_path: Path) -> None:
    """Each malformed response (or an exception) fails the whole batch; after two retries the
    failure record AWS recorded arrives at the SQS destination, and the checkpoint moves on."""
    invocations, messages, checkpoint, written = await answer_one_record(
        moto_url, tmp_path, FAILURE[scenario]
    )
    assert len(invocations) == 3
    (message,) = messages
    expected = recorded_message(
        "esm-kinesis.json",
        f"test_kinesis_report_batch_item_failure_scenarios[{scenario}]",
        "sqs_payload",
    )
    assert_matches(message, expected)
    assert message["requestContext"]["requestId"] == invocations[-1].request_id
    assert checkpoint == written[0]


async def test_partial_failure_of_last_record(moto_url: str, tmp_path: Path) -> None:
    """test_kinesis_report_batch_item_failures: six records, batch 3, the last reported failed,
    MaximumRetryAttempts 3: four invocations carry it, and the record says so (count 4, batch 1)."""

    def function(event: dict[str, Any], context: Any) -> dict[str, Any]:
        failed = [
            {"itemIdentifier": r["kinesis"]["sequenceNumber"]}
            for r in event["Records"]
            if json.loads(base64.b64decode(r["kinesis"]["data"]))["should_fail"]
        ]
        return {"batchItemFailures": failed}

    records = [(f"test_{i}", json.dumps({"should_fail": i == 5}).encode()) for i in range(6)]
    invocations, messages, _, written = await run_scenario(
        moto_url, tmp_path, function, records, batch_size=3, maximum_retry_attempts=3
    )
    carrying_last = [
        i
        for i in invocations
        if written[5] in [r["kinesis"]["sequenceNumber"] for r in i.event["Records"]]
    ]
    assert len(carrying_last) == 4
    (message,) = messages
    expected = recorded_message(
        "esm-kinesis.json", "::test_kinesis_report_batch_item_failures", "sqs_payload"
    )
    assert_matches(message, expected)
    assert message["KinesisBatchInfo"]["startSequenceNumber"] == written[5]
