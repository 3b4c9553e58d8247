"""The SQS event and settlement against AWS's recordings (tests/fixtures/aws-recorded/esm-sqs.json).

Each scenario replays one recorded AWS test: the same messages, batch size, response types and
redrive policy (``maxReceiveCount`` 2), and a Python function that behaves like the recorded
Lambda function: ``lambda_sqs_integration.py`` (exactly one record per event; fail while
``fail_attempts`` >= the receive count) or ``lambda_sqs_batch_item_failure.py`` (report those
records in ``batchItemFailures``, or return a fixed response). The events our function receives
must match the recorded events field for field, its responses the recorded responses, and the
queue and its dead-letter queue must end holding exactly the messages AWS left there.

Visibility timeouts are 1 second instead of AWS's 2 to 8, so that retries come quickly.

Normalisation, the same the recording applied: the recorder replaced ``SentTimestamp`` and (in
some scenarios) ``SenderId`` with fixed words, parsed JSON bodies in some scenarios, and left
``md5OfMessageAttributes`` out where it was null in the events that passed through a function;
:func:`normalise` does the same to our records after checking the values it replaces.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import sqs as support
from tests.support.conformance import assert_matches, recorded
from tests.support.service import running
from tests.support.sqs import (
    NewQueue,
    Queue,
    eventually,
    invocations,
    queue_depth,
    receive_all,
    send_bodies,
    send_entries,
    sqs_settings,
)

pytestmark = pytest.mark.anyio

DESTINATION = "http://queue.local/123456789012/destination"
#: The mapping fields of the recorded batch-item-failure scenarios.
REPORTING_BATCHES = {"batch_size": 10, "function_response_types": ["ReportBatchItemFailures"]}


def scenario(name: str, key: str) -> Any:
    return recorded("esm-sqs.json", f"test_lambda_integration_sqs.py::{name}", key)


def normalise(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Our event record, transformed the way the recorder transformed AWS's."""
    record = copy.deepcopy(actual)
    attributes = record["attributes"]
    assert attributes["SentTimestamp"].isdigit()
    assert attributes["ApproximateFirstReceiveTimestamp"].isdigit()
    if expected["attributes"].get("SentTimestamp") == "sent-timestamp":
        attributes["SentTimestamp"] = "sent-timestamp"
    if expected["attributes"].get("SenderId") == "sender-id":
        assert attributes["SenderId"]
        attributes["SenderId"] = "sender-id"
    if isinstance(expected["body"], dict):
        record["body"] = json.loads(record["body"])
    if "md5OfMessageAttributes" not in expected:
        assert record.pop("md5OfMessageAttributes") is None
    return record


def assert_records(
    records: list[dict[str, Any]], expected: list[dict[str, Any]], bindings: dict[str, Any]
) -> None:
    assert len(records) == len(expected), (len(records), len(expected))
    actual = [normalise(r, e) for r, e in zip(records, expected, strict=True)]
    assert_matches(actual, expected, bindings)


def assert_dlq_message(message: dict[str, Any], expected: Any, bindings: dict[str, Any]) -> None:
    body = message["Body"]
    shown = {
        "Body": json.loads(body) if isinstance(expected["Body"], dict) else body,
        "MD5OfBody": message["MD5OfBody"],
        "MessageId": message["MessageId"],
        "ReceiptHandle": message["ReceiptHandle"],
    }
    assert_matches(shown, expected, bindings)


# --------------------------------------------------------------------------- the functions


def integration_function(records: list[dict[str, Any]]) -> None:
    """lambda_sqs_integration.py: one record; fail while fail_attempts >= the receive count."""
    if len(records) != 1:
        raise ValueError("the payload must consist of exactly one record")
    message = json.loads(records[0]["body"])
    if message["fail_attempts"] >= int(records[0]["attributes"]["ApproximateReceiveCount"]):
        raise ValueError("failed attempt")


def batch_item_failure_function(overwrite: Any = None) -> Callable[[list[dict[str, Any]]], Any]:
    """lambda_sqs_batch_item_failure.py, optionally with its OVERWRITE_RESULT."""

    def function(records: list[dict[str, Any]]) -> Any:
        failed = [
            r["messageId"]
            for r in records
            if json.loads(r["body"])["fail_attempts"]
            >= int(r["attributes"]["ApproximateReceiveCount"])
        ]
        if overwrite is not None:
            return overwrite
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}

    return function


# --------------------------------------------------------------------------- running one


@dataclass
class Queues:
    """A scenario's source queue and its dead-letter queue."""

    source: Queue
    dlq: Queue

    @property
    def url(self) -> str:
        return self.source.url

    @property
    def arn(self) -> str:
        return self.source.arn

    def calls(self) -> list[support.Invocation]:
        return invocations(self.arn)


async def make_queues(new_queue: NewQueue, *, fifo: bool = False) -> Queues:
    """The recorded scenarios' queues: visibility 1 s, two receives before the dead-letter queue."""
    suffix = ".fifo" if fifo else ""
    dlq = await new_queue("dlq" + suffix)
    source = await new_queue(
        "source" + suffix, visibility_timeout=1, dlq_arn=dlq.arn, max_receive_count=2
    )
    return Queues(source, dlq)


async def replay(
    sqs: Any,
    sqs_url: str,
    tmp_path: Path,
    queues: Queues,
    function: Callable[[list[dict[str, Any]]], Any],
    calls: int,
    **mapping: Any,
) -> None:
    """Run the service on the queue until ``function`` was invoked ``calls`` times and the
    source queue is empty."""
    support.BEHAVIOUR[queues.arn] = function

    async def ended() -> bool:
        return len(queues.calls()) >= calls and await queue_depth(sqs, queues.url) == (0, 0)

    settings = sqs_settings(
        endpoint_url=sqs_url, queue=queues.source.name, db=tmp_path / "c.db", **mapping
    )
    async with running(settings):
        await eventually(ended, 30, "the scenario's end state")


def assert_attempts(name: str, calls: list[support.Invocation], bindings: dict[str, Any]) -> None:
    """The two attempts of a failing-function scenario, each against its recording: the
    records and the error."""
    assert len(calls) == 2
    for call, key in zip(calls, ("first_attempt", "second_attempt"), strict=True):
        [message] = scenario(name, key)["Messages"]
        assert call.error == message["Body"]["error"]
        assert_records(call.records, message["Body"]["event"]["Records"], bindings)


def assert_invocations(
    name: str,
    calls: list[support.Invocation],
    bindings: dict[str, Any],
    keys: tuple[str, ...] = ("first_invocation", "second_invocation"),
) -> None:
    """Each invocation of a batch-item-failure scenario against its recording under ``keys``:
    the records and the function's response."""
    assert len(calls) == len(keys)
    for call, key in zip(calls, keys, strict=True):
        [message] = scenario(name, key)["Messages"]
        assert_records(call.records, message["Body"]["event"]["Records"], bindings)
        assert_matches(call.result, message["Body"]["result"], bindings)


async def assert_reported_twice_then_dead_lettered(
    sqs: Any, sqs_url: str, tmp_path: Path, queues: Queues, name: str, function: Any
) -> None:
    """Replay a batch-item-failure scenario that ends in the dead-letter queue: two
    invocations, each matching its recording, then the message AWS dead-lettered."""
    await replay(sqs, sqs_url, tmp_path, queues, function, 2, **REPORTING_BATCHES)
    bindings: dict[str, Any] = {}
    assert_invocations(name, queues.calls(), bindings)
    await assert_dead_lettered(sqs, queues, name, bindings)


async def assert_dead_lettered(
    sqs: Any, queues: Queues, name: str, bindings: dict[str, Any]
) -> None:
    """The one message the scenario dead-lettered is in the dead-letter queue as AWS left it."""
    [dead] = await receive_all(sqs, queues.dlq.url, expected=1, limit=10)
    [expected] = scenario(name, "dlq_response")["Messages"]
    assert_dlq_message(dead, expected, bindings)


# --------------------------------------------------------------------------- event shape


@pytest.mark.parametrize(
    ("name", "bodies", "fields"),
    [
        (
            "TestSQSEventSourceMapping::test_sqs_event_source_mapping_batch_size[15]",
            [f"{i}-0-message-{i}" for i in range(10)] + [f"{i}-1-message-{i}" for i in range(5)],
            {"batch_size": 15, "maximum_batching_window_in_seconds": 2},
        ),
        (
            "TestSQSEventSourceMapping::test_sqs_event_source_mapping",
            [json.dumps({"foo": "bar"})],
            {},
        ),
    ],
)
async def test_event_matches_recording(
    sqs: Any,
    sqs_url: str,
    tmp_path: Path,
    new_queue: NewQueue,
    name: str,
    bodies: list[str],
    fields: Any,
) -> None:
    """Records of a standard queue, shaped exactly as AWS's: ``md5OfMessageAttributes`` null,
    ``messageAttributes`` empty, all attributes strings."""
    expected = scenario(name, "Records" if "batch_size" in name else "events")
    if "batch_size" not in name:
        expected = [r for event in expected for r in event["Records"]]
    queues = await make_queues(new_queue)
    await send_bodies(sqs, queues.url, bodies)
    await replay(sqs, sqs_url, tmp_path, queues, lambda records: None, 1, **fields)
    records = [r for c in queues.calls() for r in c.records]
    key = "body"
    assert_records(
        sorted(records, key=lambda r: r[key]),
        sorted(expected, key=lambda r: json.dumps(r[key])),
        {},
    )


async def test_message_attributes_match_recording(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_message_body_and_attributes_passed_correctly: String and Number attributes in
    Lambda's camelCase form with empty list fields, and the very MD5 of attributes AWS sent."""
    [expected] = scenario("test_message_body_and_attributes_passed_correctly", "first_attempt")[
        "Messages"
    ]
    queues = await make_queues(new_queue)
    entry = {
        "MessageBody": json.dumps({"destination": DESTINATION, "fail_attempts": 0}),
        "MessageAttributes": {
            "Title": {"DataType": "String", "StringValue": "The Whistler"},
            "Author": {"DataType": "String", "StringValue": "John Grisham"},
            "WeeksOn": {"DataType": "Number", "StringValue": "6"},
        },
    }
    await send_entries(sqs, queues.url, [entry])
    await replay(sqs, sqs_url, tmp_path, queues, integration_function, 1, batch_size=1)
    [call] = queues.calls()
    assert call.error is expected["Body"]["error"] is None
    assert_records(call.records, expected["Body"]["event"]["Records"], {})


# --------------------------------------------------------------------------- settlement


async def test_failing_function_retries_after_visibility_timeout(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_failing_lambda_retries_after_visibility_timeout: the first attempt fails, the
    message comes back with receive count 2, the second attempt succeeds and deletes it."""
    queues = await make_queues(new_queue)
    body = json.dumps({"destination": DESTINATION, "fail_attempts": 1})
    await send_bodies(sqs, queues.url, [body])
    await replay(sqs, sqs_url, tmp_path, queues, integration_function, 2, batch_size=1)
    assert_attempts("test_failing_lambda_retries_after_visibility_timeout", queues.calls(), {})
    assert await queue_depth(sqs, queues.dlq.url) == (0, 0)


async def test_redrive_to_dlq_after_max_receive_count(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_redrive_policy_with_failing_lambda: an always-failing function; two attempts
    (receive counts 1 and 2), then SQS moves the message to the dead-letter queue; no third
    attempt."""
    name = "test_redrive_policy_with_failing_lambda"
    queues = await make_queues(new_queue)
    body = json.dumps({"destination": DESTINATION, "fail_attempts": 2})
    await send_bodies(sqs, queues.url, [body])
    await replay(sqs, sqs_url, tmp_path, queues, integration_function, 2, batch_size=1)
    bindings: dict[str, Any] = {}
    calls = queues.calls()
    assert_attempts(name, calls, bindings)
    assert [c.error for c in calls] == ["failed attempt"] * 2
    await assert_dead_lettered(sqs, queues, name, bindings)


# serial: the receive counts it replays depend on visibility timeouts of a few seconds
# expiring between polls, which other workers' load on 2 cores shifts.
@pytest.mark.serial
async def test_report_batch_item_failures_fifo(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_report_batch_item_failures: four messages of one FIFO group. The first invocation
    reports 2, 3 and 4: only 1 is deleted. The second gets 2, 3, 4 (receive count 2) and
    reports 4: 2 and 3 are deleted. Message 4 then goes to the dead-letter queue."""
    name = "test_report_batch_item_failures"
    queues = await make_queues(new_queue, fifo=True)
    attempts = {1: 0, 2: 1, 3: 1, 4: 2}
    await send_entries(
        sqs,
        queues.url,
        (
            {
                "MessageBody": json.dumps({"message": n, "fail_attempts": fails}),
                "MessageGroupId": "1",
                "MessageDeduplicationId": f"dedup-{n}",
            }
            for n, fails in attempts.items()
        ),
    )
    function = batch_item_failure_function()
    await assert_reported_twice_then_dead_lettered(sqs, sqs_url, tmp_path, queues, name, function)


async def test_invalid_partial_response_fails_the_whole_batch(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_report_batch_item_failures_invalid_result_json_batch_fails: the response
    ``{"batchItemFailures": [{"foo": "notvalid"}]}`` fails the batch; it is delivered again,
    then dead-lettered."""
    name = "test_report_batch_item_failures_invalid_result_json_batch_fails"
    queues = await make_queues(new_queue)
    await send_bodies(sqs, queues.url, [json.dumps({"message": 1, "fail_attempts": 0})])
    function = batch_item_failure_function({"batchItemFailures": [{"foo": "notvalid"}]})
    await assert_reported_twice_then_dead_lettered(sqs, sqs_url, tmp_path, queues, name, function)


async def test_empty_object_response_is_success(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_report_batch_item_failures_empty_json_batch_succeeds: ``{}`` is success; the
    message is deleted after one invocation and never reaches the dead-letter queue."""
    name = "test_report_batch_item_failures_empty_json_batch_succeeds"
    queues = await make_queues(new_queue)
    await send_bodies(sqs, queues.url, [json.dumps({"message": 1, "fail_attempts": 0})])
    function = batch_item_failure_function({})
    await replay(sqs, sqs_url, tmp_path, queues, function, 1, **REPORTING_BATCHES)
    assert_invocations(name, queues.calls(), {}, keys=("first_invocation",))
    assert await queue_depth(sqs, queues.dlq.url) == (0, 0)


async def test_function_error_with_partial_responses_fails_the_batch(
    sqs: Any, sqs_url: str, tmp_path: Path, new_queue: NewQueue
) -> None:
    """test_report_batch_item_failures_on_lambda_error: two messages in one batch and a
    function that raises (it accepts one record only): with ReportBatchItemFailures on, the
    whole batch still fails, twice, and both messages end in the dead-letter queue."""
    expected = scenario("test_report_batch_item_failures_on_lambda_error", "dlq_messages")
    queues = await make_queues(new_queue)
    bodies = ["{not a json body", json.dumps({"message": 2, "fail_attempts": 0})]
    await send_bodies(sqs, queues.url, bodies)
    reporting = {
        "function_response_types": ["ReportBatchItemFailures"],
        # The two messages become visible again a few microseconds apart, so a receive in
        # between returns one of them (on SQS too). A 1 s window gathers both into one batch,
        # the retry AWS recorded, whatever the timing.
        "maximum_batching_window_in_seconds": 1,
    }
    await replay(sqs, sqs_url, tmp_path, queues, integration_function, 2, **reporting)
    calls = queues.calls()
    assert [len(c.records) for c in calls] == [2, 2]
    assert all(c.error == "the payload must consist of exactly one record" for c in calls)
    dead = await receive_all(sqs, queues.dlq.url, expected=2, limit=10)
    bindings: dict[str, Any] = {}
    by_body = {
        json.dumps(e["Body"]) if isinstance(e["Body"], dict) else e["Body"]: e for e in expected
    }
    assert sorted(m["Body"] for m in dead) == sorted(by_body)
    for message in dead:
        assert_dlq_message(message, by_body[message["Body"]], bindings)


# --------------------------------------------------------------------------- filtering


@pytest.mark.parametrize(
    ("case", "pattern", "matching", "not_matching"),
    [
        ("single", {"body": {"my-key": ["my-value"]}}, {"my-key": "my-value"}, {"my-key": "x"}),
        (
            "numeric-range",
            {"body": {"my-number": [{"numeric": [">=", 100, "<", 200]}]}},
            {"my-number": 100},
            {"my-number": 200},
        ),
        ("valid-json-filter", {"body": {"my-key": ["my-value"]}}, {"my-key": "my-value"}, None),
    ],
)
async def test_filtered_out_messages_are_deleted_unseen(
    sqs: Any,
    sqs_url: str,
    tmp_path: Path,
    new_queue: NewQueue,
    case: str,
    pattern: Any,
    matching: Any,
    not_matching: Any,
) -> None:
    """test_sqs_event_filter: the message the filter matches is delivered as AWS delivered it;
    the other one (a plain-string body for valid-json-filter) is deleted without an
    invocation, so the queue ends empty after one invocation."""
    name = f"TestSQSEventSourceMapping::test_sqs_event_filter[{case}]"
    expected = scenario(name, "invocation_events")
    queues = await make_queues(new_queue)
    bodies = [json.dumps(matching), json.dumps(not_matching) if not_matching else "plain-string"]
    await send_bodies(sqs, queues.url, bodies)
    filtering = {
        "maximum_batching_window_in_seconds": 1,
        "filter_criteria": {"filters": [{"pattern": json.dumps(pattern)}]},
    }
    await replay(sqs, sqs_url, tmp_path, queues, lambda records: None, 1, **filtering)
    [call] = queues.calls()
    assert_records(call.records, expected[0]["Records"], {})
    assert await queue_depth(sqs, queues.dlq.url) == (0, 0)
