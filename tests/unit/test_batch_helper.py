"""The batch helper's rules (poller.batch), one test per rule, on hand-built events.

Each test builds an event as the mapping would deliver it, runs ``process_batch`` (or
``aprocess_batch``) with a handle that records what it saw and fails where the test says,
and checks both the response and which records the handle was given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import anyio.lowlevel
import pytest

from poller.batch import MalformedEvent, aprocess_batch, process_batch

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
FIFO = "arn:aws:sqs:us-east-1:123456789012:orders.fifo"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-12-05T00:00:00.000"


# -- events -----------------------------------------------------------------------------------


def sqs(*ids: str, arn: str = QUEUE, groups: Iterable[str] | None = None) -> dict[str, Any]:
    """An SQS event; ``groups`` gives each message its MessageGroupId (FIFO)."""
    group_of = dict(zip(ids, groups, strict=True)) if groups is not None else {}
    records = []
    for message_id in ids:
        attributes = {"ApproximateReceiveCount": "1"}
        if message_id in group_of:
            attributes["MessageGroupId"] = group_of[message_id]
        records.append(
            {
                "messageId": message_id,
                "body": f"secret body of {message_id}",
                "attributes": attributes,
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
            }
        )
    return {"Records": records}


def fifo(*ids: str) -> dict[str, Any]:
    """A FIFO event; each id's first letter is its group (``x1`` is in group ``x``)."""
    return sqs(*ids, arn=FIFO, groups=[i[0] for i in ids])


def kinesis(*sequences: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "kinesis": {"sequenceNumber": s, "data": "c2VjcmV0", "partitionKey": "k"},
                "eventSource": "aws:kinesis",
                "eventSourceARN": STREAM,
            }
            for s in sequences
        ]
    }


def dynamodb(*sequences: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "dynamodb": {"SequenceNumber": s, "Keys": {"id": {"S": "secret"}}},
                "eventSource": "aws:dynamodb",
                "eventSourceARN": TABLE,
            }
            for s in sequences
        ]
    }


def identifier(record: dict[str, Any]) -> str:
    """The record's id as the tests name it (the same fields the helper reads)."""
    if "kinesis" in record:
        return str(record["kinesis"]["sequenceNumber"])
    if "dynamodb" in record:
        return str(record["dynamodb"]["SequenceNumber"])
    return str(record["messageId"])


class Handle:
    """A handle that records each id it is given and raises for the ids in ``failing``."""

    def __init__(self, *failing: str, error: BaseException | None = None) -> None:
        self.failing = set(failing)
        self.error = error
        self.seen: list[str] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.seen.append(identifier(record))
        if self.seen[-1] in self.failing:
            raise self.error or RuntimeError(f"refused {record}")


def reported(response: dict[str, list[dict[str, str]]]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


class Abort(BaseException):
    """A BaseException that is not an Exception, as a cancellation or an exit is."""


# -- per record, in order -----------------------------------------------------------------------


def test_every_record_is_handled_once_in_order_and_success_reports_nothing() -> None:
    handle = Handle()
    assert process_batch(sqs("a", "b", "c"), handle) == {"batchItemFailures": []}
    assert handle.seen == ["a", "b", "c"]


def test_an_exception_reports_that_record_and_a_standard_queue_goes_on() -> None:
    handle = Handle("b", "d")
    response = process_batch(sqs("a", "b", "c", "d", "e"), handle)
    assert reported(response) == ["b", "d"]
    assert handle.seen == ["a", "b", "c", "d", "e"]


def test_a_base_exception_propagates_and_stops_the_batch() -> None:
    handle = Handle("b", error=Abort())
    with pytest.raises(Abort):
        process_batch(sqs("a", "b", "c"), handle)
    assert handle.seen == ["a", "b"]


def test_when_every_record_fails_all_are_reported_and_nothing_is_raised() -> None:
    handle = Handle("a", "b", "c")
    assert reported(process_batch(sqs("a", "b", "c"), handle)) == ["a", "b", "c"]
    assert handle.seen == ["a", "b", "c"]


# -- identifiers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "failing"),
    [
        (sqs("m-1", "m-2"), "m-2"),
        (kinesis("4961", "4962"), "4962"),
        (dynamodb("1100", "1200"), "1200"),
    ],
    ids=["sqs-messageId", "kinesis-sequenceNumber", "dynamodb-SequenceNumber"],
)
def test_each_source_reports_its_own_identifier(event: dict[str, Any], failing: str) -> None:
    assert reported(process_batch(event, Handle(failing))) == [failing]


def test_a_kpl_user_record_is_reported_as_sequence_and_sub_sequence() -> None:
    """poller's de-aggregated KPL records carry ``subSequenceNumber``; the response names the
    user record (``seq:sub``), which poller checkpoints inside the aggregate."""
    event = kinesis("4961", "4961", "4962")
    for sub, record in enumerate(event["Records"][:2]):
        record["kinesis"]["subSequenceNumber"] = sub
    calls = 0

    def second_fails(record: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ValueError("second")

    assert reported(process_batch(event, second_fails)) == ["4961:1", "4962"]


def test_an_identifier_repeated_in_a_batch_is_reported_once() -> None:
    handle = Handle("a")
    assert reported(process_batch(sqs("a", "b", "a"), handle)) == ["a"]
    assert handle.seen == ["a", "b", "a"]


# -- ordering -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [kinesis("1", "2", "3", "4"), dynamodb("1", "2", "3", "4"), fifo("x1", "y2", "x3", "y4")],
    ids=["kinesis", "dynamodb", "fifo"],
)
def test_streams_and_fifo_queues_stop_at_the_first_failure_and_report_the_rest(
    event: dict[str, Any],
) -> None:
    ids = [identifier(r) for r in event["Records"]]
    handle = Handle(ids[1])
    assert reported(process_batch(event, handle)) == ids[1:]
    assert handle.seen == ids[:2]


def test_ordered_true_stops_a_standard_queue_at_its_first_failure() -> None:
    handle = Handle("b")
    assert reported(process_batch(sqs("a", "b", "c"), handle, ordered=True)) == ["b", "c"]
    assert handle.seen == ["a", "b"]


def test_ordered_false_lets_a_stream_go_on_after_a_failure() -> None:
    handle = Handle("2")
    assert reported(process_batch(kinesis("1", "2", "3"), handle, ordered=False)) == ["2"]
    assert handle.seen == ["1", "2", "3"]


def test_skip_group_on_failure_stops_only_the_failed_group() -> None:
    """x2 fails: x3 and x4 (later in group x) are reported unprocessed; group y goes on. The
    response lists them in record order."""
    handle = Handle("x2")
    response = process_batch(
        fifo("x1", "y1", "x2", "y2", "x3", "y3", "x4"), handle, skip_group_on_failure=True
    )
    assert reported(response) == ["x2", "x3", "x4"]
    assert handle.seen == ["x1", "y1", "x2", "y2", "y3"]


def test_skip_group_on_failure_reports_every_failed_group() -> None:
    handle = Handle("x1", "y2")
    response = process_batch(
        fifo("x1", "y1", "x2", "y2", "z1", "y3"), handle, skip_group_on_failure=True
    )
    assert reported(response) == ["x1", "x2", "y2", "y3"]
    assert handle.seen == ["x1", "y1", "y2", "z1"]


@pytest.mark.parametrize("event", [sqs("a"), kinesis("1"), dynamodb("1")])
def test_skip_group_on_failure_is_refused_outside_fifo_queues(event: dict[str, Any]) -> None:
    handle = Handle()
    with pytest.raises(ValueError, match="FIFO queues only"):
        process_batch(event, handle, skip_group_on_failure=True)
    assert handle.seen == []


def test_skip_group_on_failure_is_refused_with_ordered_false() -> None:
    with pytest.raises(ValueError, match="needs ordered"):
        process_batch(fifo("x1"), Handle(), ordered=False, skip_group_on_failure=True)


def test_skip_group_on_failure_needs_every_message_group() -> None:
    event = fifo("x1", "y1")
    del event["Records"][1]["attributes"]["MessageGroupId"]
    with pytest.raises(MalformedEvent, match=r"record 1 .* has no attributes.MessageGroupId"):
        process_batch(event, Handle(), skip_group_on_failure=True)


# -- time ---------------------------------------------------------------------------------------


class Context:
    """A Lambda-like context whose remaining time drops by ``step`` ms each time it is read."""

    def __init__(self, remaining: int, step: int) -> None:
        self.remaining = remaining
        self.step = step

    def get_remaining_time_in_millis(self) -> int:
        left = self.remaining
        self.remaining -= self.step
        return left


def test_under_the_reserve_the_remaining_records_are_reported_unprocessed() -> None:
    """Readings 3000, 2000, 1000, 0 before a, b, c, d: with 1500 ms reserved, c and d never
    start and are reported; a standard queue's records are retried alone."""
    handle = Handle()
    response = process_batch(
        sqs("a", "b", "c", "d"), handle, context=Context(3000, 1000), reserve_ms=1500
    )
    assert reported(response) == ["c", "d"]
    assert handle.seen == ["a", "b"]


def test_the_time_reserve_applies_after_a_failure_on_a_standard_queue_too() -> None:
    handle = Handle("a")
    response = process_batch(sqs("a", "b", "c"), handle, context=Context(2000, 1000), reserve_ms=1)
    assert reported(response) == ["a", "c"]
    assert handle.seen == ["a", "b"]


def test_without_a_reserve_the_context_is_never_read() -> None:
    context = Context(0, 1)
    assert reported(process_batch(sqs("a", "b"), Handle(), context=context)) == []
    assert context.remaining == 0


@pytest.mark.parametrize(
    ("context", "reserve_ms", "error", "match"),
    [
        (None, 100, ValueError, "needs the invocation's context"),
        (Context(10, 0), -1, ValueError, "0 or more"),
        (object(), 100, TypeError, "no get_remaining_time_in_millis"),
    ],
    ids=["no-context", "negative", "not-a-context"],
)
def test_a_reserve_needs_a_context_that_tells_the_time(
    context: Any, reserve_ms: int, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        process_batch(sqs("a"), Handle(), context=context, reserve_ms=reserve_ms)


# -- malformed events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event", [None, {}, {"Records": []}, {"Records": None}], ids=["none", "no-key", "empty", "null"]
)
def test_an_event_without_records_is_a_success(event: dict[str, Any] | None) -> None:
    handle = Handle()
    assert process_batch(event, handle, skip_group_on_failure=True) == {"batchItemFailures": []}
    assert handle.seen == []


@pytest.mark.parametrize(
    ("event", "field", "match"),
    [
        (sqs("a", "b"), ("messageId",), r"record 1 \(aws:sqs\) has no messageId"),
        (kinesis("1", "2"), ("kinesis", "sequenceNumber"), r"has no kinesis.sequenceNumber"),
        (dynamodb("1", "2"), ("dynamodb", "SequenceNumber"), r"has no dynamodb.SequenceNumber"),
        (kinesis("1", "2"), ("kinesis",), r"record 1 \(aws:kinesis\) has no kinesis.sequence"),
    ],
    ids=["sqs", "kinesis", "dynamodb", "kinesis-section"],
)
def test_a_record_without_its_identifier_is_refused_before_any_is_handled(
    event: dict[str, Any], field: tuple[str, ...], match: str
) -> None:
    *path, key = field
    holder = event["Records"][1]
    for part in path:
        holder = holder[part]
    del holder[key]
    handle = Handle()
    with pytest.raises(MalformedEvent, match=match):
        process_batch(event, handle)
    assert handle.seen == []


def test_an_empty_identifier_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="has no messageId"):
        process_batch(sqs(""), Handle())


@pytest.mark.parametrize(
    ("event", "match"),
    [
        ({"Records": sqs("a")["Records"] + kinesis("1")["Records"]}, "more than one source"),
        ({"Records": sqs("a")["Records"] + fifo("x1")["Records"]}, "more than one source"),
        ({"Records": [{"eventSource": "aws:s3"}]}, "eventSource 'aws:s3'; expected one of"),
        ({"Records": [{"messageId": "a"}]}, "eventSource None"),
        ({"Records": ["a"]}, "record 0 must be an object"),
        ({"Records": {"a": 1}}, "Records must be a list"),
        ([1], "the event must be a mapping"),
    ],
    ids=["sqs-and-kinesis", "two-queues", "unknown", "no-source", "not-object", "not-list", "list"],
)
def test_malformed_events_are_refused_naming_the_problem(event: Any, match: str) -> None:
    handle = Handle()
    with pytest.raises(MalformedEvent, match=match):
        process_batch(event, handle)
    assert handle.seen == []
    assert issubclass(MalformedEvent, ValueError)


# -- logs ---------------------------------------------------------------------------------------


def test_failures_are_logged_with_their_id_and_type_but_no_record_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="poller.batch"):
        process_batch(fifo("x1", "x2", "x3"), Handle("x2"))
    messages = [r.getMessage() for r in caplog.records if r.name == "poller.batch"]
    assert messages == [
        "batch record 1 (aws:sqs x2) failed: RuntimeError",
        "batch: 1 of 3 records reported unprocessed (after a failure, or for lack of time)",
    ]
    assert "secret" not in caplog.text  # neither the body nor the exception's message


def test_the_traceback_is_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="poller.batch"):
        process_batch(sqs("a"), Handle("a"))
    [debug] = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert debug.exc_info is not None
    assert debug.exc_info[0] is RuntimeError


# -- async --------------------------------------------------------------------------------------


def async_handle(handle: Handle, running: list[int]) -> Callable[[dict[str, Any]], Any]:
    """``handle`` as a coroutine function that yields to the loop while it runs, and records
    how many of its calls run at once."""

    async def call(record: dict[str, Any]) -> None:
        running.append(running[-1] + 1)
        await anyio.lowlevel.checkpoint()
        try:
            handle(record)
        finally:
            running.append(running[-1] - 1)

    return call


@pytest.mark.anyio
async def test_aprocess_batch_awaits_each_record_before_the_next_and_keeps_the_rules() -> None:
    handle, running = Handle("y1", "2"), [0]
    fifo_response = await aprocess_batch(
        fifo("x1", "y1", "x2", "y2", "x3"),
        async_handle(handle, running),
        skip_group_on_failure=True,
    )
    stream_response = await aprocess_batch(kinesis("1", "2", "3"), async_handle(handle, running))
    assert reported(fifo_response) == ["y1", "y2"]
    assert reported(stream_response) == ["2", "3"]
    assert handle.seen == ["x1", "y1", "x2", "x3", "1", "2"]
    assert max(running) == 1


@pytest.mark.anyio
async def test_aprocess_batch_propagates_a_base_exception() -> None:
    handle = Handle("b", error=Abort())
    with pytest.raises(Abort):
        await aprocess_batch(sqs("a", "b", "c"), async_handle(handle, [0]))
    assert handle.seen == ["a", "b"]


@pytest.mark.anyio
async def test_aprocess_batch_reports_unprocessed_records_under_the_reserve() -> None:
    handle = Handle()
    response = await aprocess_batch(
        kinesis("1", "2", "3"), async_handle(handle, [0]), context=Context(100, 60), reserve_ms=50
    )
    assert reported(response) == ["2", "3"]
    assert handle.seen == ["1"]
