"""A hostile review of the batch helper (poller.batch): its responses judged by poller's own
engine rules, and the inputs its own tests leave out.

The first part feeds every response the helper builds for small batches (every pattern of
failures, with and without a time reserve) into the functions that judge them in poller
(:func:`poller.core.responses.parse_stream_response` for streams,
:func:`poller.core.queue_rules.judge` for queues) and checks that nothing the engine settles
(deletes, or checkpoints past) was left unhandled or failed, and that a FIFO group or a shard
is never handled out of order. The rest probes the edges: handles of the wrong colour (sync
against async), ``BaseException`` subclasses, clocks that go negative or raise, huge batches,
identifiers of the wrong type, malformed ``Records``, what is logged, and Python 3.10.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

import poller.batch
from poller.batch import MalformedEvent, aprocess_batch, process_batch
from poller.core.queue_rules import judge
from poller.core.responses import parse_stream_response
from poller.core.retry_policy import GiveUp, Retry, Segment, StreamRetryPolicy, first_segment
from poller.core.windows import parse_window_response
from poller.types import InvokeResult, Outcome, StreamRecord

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
FIFO = "arn:aws:sqs:us-east-1:123456789012:orders.fifo"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-12-05T00:00:00.000"
#: Put in every record and every exception message: it must never reach a log line.
SECRET = "s3cr3t-card-4111"


# -- events -----------------------------------------------------------------------------------


def sqs(ids: Sequence[str], *, arn: str = QUEUE, groups: str | None = None) -> dict[str, Any]:
    """An SQS event; ``groups`` gives message ``i`` the MessageGroupId ``groups[i]``."""
    records = []
    for index, message_id in enumerate(ids):
        attributes = {"ApproximateReceiveCount": "1"}
        if groups is not None:
            attributes["MessageGroupId"] = groups[index]
        records.append(
            {
                "messageId": message_id,
                "body": f"{SECRET} {message_id}",
                "attributes": attributes,
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
            }
        )
    return {"Records": records}


def kinesis(sequences: Sequence[str], subs: Sequence[int | None] = ()) -> dict[str, Any]:
    """A Kinesis event; ``subs[i]`` makes record ``i`` a de-aggregated KPL user record."""
    records = []
    for index, sequence in enumerate(sequences):
        fields: dict[str, Any] = {"sequenceNumber": sequence, "data": SECRET, "partitionKey": "k"}
        if index < len(subs) and subs[index] is not None:
            fields["subSequenceNumber"] = subs[index]
        records.append({"kinesis": fields, "eventSource": "aws:kinesis", "eventSourceARN": STREAM})
    return {"Records": records}


def dynamodb(sequences: Sequence[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "dynamodb": {"SequenceNumber": s, "NewImage": {"card": {"S": SECRET}}},
                "eventSource": "aws:dynamodb",
                "eventSourceARN": TABLE,
            }
            for s in sequences
        ]
    }


def reported(response: dict[str, list[dict[str, str]]]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


class Handle:
    """Records the index of each record it is given (records carry their index under
    ``_index``) and raises for the indices in ``failing``."""

    def __init__(self, failing: Sequence[int] = (), error: BaseException | None = None) -> None:
        self.failing = set(failing)
        self.error = error
        self.seen: list[int] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.seen.append(record["_index"])
        if self.seen[-1] in self.failing:
            raise self.error or RuntimeError(f"refused {SECRET}")


def indexed(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with each record's index in the batch under ``_index``."""
    for index, record in enumerate(event["Records"]):
        record["_index"] = index
    return event


class StoppingClock:
    """A Lambda-like context with plenty of time for ``reads`` readings, then none."""

    def __init__(self, reads: int) -> None:
        self.reads = reads

    def get_remaining_time_in_millis(self) -> int:
        self.reads -= 1
        return 60_000 if self.reads >= 0 else 0


# -- the engines' verdicts on every small batch -----------------------------------------------

SIZE = 5
FAILURE_PATTERNS = [
    frozenset(c) for n in range(SIZE + 1) for c in itertools.combinations(range(SIZE), n)
]
#: Clock readings before the time runs out; SIZE + 1: never within the batch.
STOPS = range(SIZE + 2)


def run(event: dict[str, Any], failing: frozenset[int], stop: int, **options: Any) -> Any:
    handle = Handle(sorted(failing))
    response = process_batch(
        indexed(event), handle, context=StoppingClock(stop), reserve_ms=1, **options
    )
    return handle, response


def stream_settled(event: dict[str, Any], response: Any, ids: list[str]) -> int:
    """How many records, from the start, the stream engine settles (checkpoints past)."""
    records = event["Records"]
    aggregates = [
        r["kinesis"]["sequenceNumber"] if "subSequenceNumber" in r.get("kinesis", {}) else None
        for r in records
    ]
    verdict = parse_stream_response(
        response, payload_is_json=True, item_ids=ids, aggregates=aggregates
    )
    assert verdict.kind != "invalid", verdict.reason
    return len(records) if verdict.kind == "success" else int(verdict.failed_from or 0)


def stream_cases() -> Iterator[tuple[str, dict[str, Any], list[str]]]:
    plain = [f"4960{i}" for i in range(SIZE)]
    yield "kinesis", kinesis(plain), plain
    yield "dynamodb", dynamodb(plain), plain
    # A KPL aggregate of three user records between two plain records.
    subs: list[int | None] = [None, 0, 1, 2, None]
    sequences = ["100", "200", "200", "200", "300"]
    ids = ["100", "200:0", "200:1", "200:2", "300"]
    yield "kpl", kinesis(sequences, subs), ids


@pytest.mark.parametrize("case", ["kinesis", "dynamodb", "kpl"])
def test_a_stream_engine_never_checkpoints_past_a_failed_or_unhandled_record(case: str) -> None:
    """For every failure pattern and time-out point, the engine settles exactly the records
    handled before the first failure (or the stop), all of which succeeded, in shard order."""
    for failing, stop in itertools.product(FAILURE_PATTERNS, STOPS):
        name, event, ids = next(c for c in stream_cases() if c[0] == case)
        handle, response = run(event, failing, stop)
        settled = stream_settled(event, response, ids)
        first_failure = min(failing, default=SIZE)
        expected = min(first_failure, stop, SIZE)
        assert handle.seen == list(range(min(first_failure + 1, stop, SIZE))), (name, failing)
        assert settled == expected, (name, failing, stop, reported(response))


@dataclass(frozen=True)
class Message:
    """A received message as :func:`poller.core.queue_rules.judge` sees it."""

    message_id: str
    group_id: str | None


def queue_kept(event: dict[str, Any], response: Any, *, fifo: bool) -> frozenset[int]:
    """The indices that poller's SQS engine keeps in the queue after ``response``."""
    attributes = [r["attributes"] for r in event["Records"]]
    batch = [
        Message(r["messageId"], a.get("MessageGroupId"))
        for r, a in zip(event["Records"], attributes, strict=True)
    ]
    verdict = judge(
        batch,
        InvokeResult(Outcome.SUCCESS, payload=response),
        report_batch_item_failures=True,
        fifo=fifo,
    )
    assert verdict.outcome != "invalid_response", verdict.reason
    return verdict.keep


def test_a_standard_queue_keeps_exactly_the_failed_and_unhandled_messages() -> None:
    for failing, stop in itertools.product(FAILURE_PATTERNS, STOPS):
        ids = [f"m{i}" for i in range(SIZE)]
        event = sqs(ids)
        handle, response = run(event, failing, stop)
        kept = queue_kept(event, response, fifo=False)
        assert handle.seen == list(range(min(stop, SIZE)))
        assert kept == (failing & set(handle.seen)) | set(range(min(stop, SIZE), SIZE))


@pytest.mark.parametrize("groups", ["xxxxx", "xyxyx", "xxyyz", "xyzxy"])
@pytest.mark.parametrize("skip_group", [False, True], ids=["ordered", "skip-group"])
def test_a_fifo_queue_never_deletes_a_message_after_a_kept_one_of_its_group(
    groups: str, skip_group: bool
) -> None:
    """For every failure pattern and time-out point: every message the engine deletes was
    handled and succeeded; in each group the deleted messages come before the kept ones; no
    message was handled after an earlier message of its group failed."""
    for failing, stop in itertools.product(FAILURE_PATTERNS, STOPS):
        ids = [f"{g}{i}" for i, g in enumerate(groups)]
        event = sqs(ids, arn=FIFO, groups=groups)
        handle, response = run(event, failing, stop, skip_group_on_failure=skip_group)
        kept = queue_kept(event, response, fifo=True)
        deleted = set(range(SIZE)) - kept
        assert deleted <= set(handle.seen) - failing, (groups, failing, stop)
        for group in set(groups):
            members = [i for i in range(SIZE) if groups[i] == group]
            flags = [i in kept for i in members]
            assert flags == sorted(flags), (group, flags)
            failed_before = [i for i in handle.seen if groups[i] == group and i in failing]
            if failed_before:
                assert max(i for i in handle.seen if groups[i] == group) == failed_before[0]
        if not skip_group:
            first_failure = min(failing, default=SIZE)
            assert handle.seen == list(range(min(first_failure + 1, stop, SIZE)))


# -- breaks: handles of the wrong colour --------------------------------------------------------


async def _async_handle(record: dict[str, Any]) -> None:
    await anyio.lowlevel.checkpoint()
    raise RuntimeError(f"never runs {SECRET}")


@pytest.mark.parametrize(
    "handle",
    [_async_handle, lambda record: _async_handle(record)],
    ids=["async-def", "returns-a-coroutine"],
)
def test_an_async_handle_given_to_process_batch_raises_instead_of_reporting_success(
    handle: Callable[[dict[str, Any]], Any],
) -> None:
    """BREAK. ``process_batch(event, async_fn)`` calls ``async_fn(record)``, gets a coroutine
    it never awaits, and reports every record a success: the engine deletes (or checkpoints
    past) records that were never handled. A handle whose result is awaitable is a
    programming error that must fail the whole batch (TypeError), never succeed it."""
    with pytest.raises(TypeError):
        process_batch(sqs(["a", "b"]), handle)


@pytest.mark.anyio
async def test_a_sync_handle_given_to_aprocess_batch_does_not_report_handled_records_failed() -> (
    None
):
    """BREAK. ``aprocess_batch(event, sync_fn)`` runs ``sync_fn(record)`` to the end, then
    ``await None`` raises TypeError, which is caught as the record's failure: every record is
    handled and reported failed, so it is redelivered (and handled again) until it reaches
    the DLQ or the retries run out. A result that is not awaitable is the record's result:
    the records succeeded and nothing is reported."""
    handle = Handle()
    # cast: the mistake under test is one the type checker would catch, but not every
    # caller of a copied batch.py runs one.
    response = await aprocess_batch(indexed(sqs(["a", "b", "c"])), cast(Any, handle))
    assert handle.seen == [0, 1, 2]
    assert reported(response) == []


# -- breaks: FIFO order opt-out -----------------------------------------------------------------


def test_ordered_false_on_a_fifo_queue_is_refused_before_any_message_is_handled() -> None:
    """BREAK. ``ordered=False`` on a FIFO batch goes on past x0's failure and handles x1, which
    is not reported: Lambda deletes x1 while x0 returns to the queue, so the group's order is
    broken (AWS: a FIFO function "should stop processing messages after the first failure
    and return all failed and unprocessed messages"); poller's engine holds x1 back and it is
    handled twice. ``skip_group_on_failure`` with ``ordered=False`` is already refused; a
    FIFO batch with ``ordered=False`` must be refused the same way."""
    handle = Handle([0])
    with pytest.raises(ValueError, match="FIFO"):
        process_batch(indexed(sqs(["x0", "x1"], arn=FIFO, groups="xx")), handle, ordered=False)
    assert handle.seen == []


# -- breaks: malformed events answered as success ------------------------------------------------


@pytest.mark.parametrize("records", ["", 0, False, {}], ids=["str", "zero", "false", "object"])
def test_records_that_are_neither_a_list_nor_null_are_refused_even_when_empty(
    records: Any,
) -> None:
    """BREAK (minor). ``Records`` of ``""``, ``0``, ``False`` or ``{}`` is answered as an
    empty, successful batch, while ``{"a": 1}`` is refused as "Records must be a list": the
    type check runs after ``or []``. Only a missing, null or empty-list ``Records`` means no
    records."""
    with pytest.raises(MalformedEvent, match="Records must be a list"):
        process_batch({"Records": records}, Handle())


def test_an_unhashable_event_source_is_refused_as_malformed_event() -> None:
    """BREAK (minor). ``eventSource: ["aws:sqs"]`` escapes as a bare ``TypeError: unhashable
    type`` from the ``in _ID_FIELDS`` lookup, not the documented MalformedEvent."""
    event = {"Records": [{"eventSource": ["aws:sqs"], "messageId": "a"}]}
    with pytest.raises(MalformedEvent, match="eventSource"):
        process_batch(event, Handle())


# -- confirmed: BaseException, clocks, sizes, identifiers ----------------------------------------


@pytest.mark.parametrize(
    "error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()], ids=lambda e: type(e).__name__
)
def test_system_exit_and_interrupts_propagate_and_stop_the_batch(error: BaseException) -> None:
    handle = Handle([1], error=error)
    with pytest.raises(type(error)):
        process_batch(indexed(sqs(["a", "b", "c"])), handle)
    assert handle.seen == [0, 1]


@pytest.mark.anyio
async def test_an_anyio_cancellation_during_aprocess_batch_propagates_with_no_response() -> None:
    seen: list[str] = []
    responses: list[Any] = []

    async def handle(record: dict[str, Any]) -> None:
        seen.append(record["messageId"])
        if record["messageId"] == "b":
            scope.cancel()
        await anyio.lowlevel.checkpoint()

    with anyio.CancelScope() as scope:
        responses.append(await aprocess_batch(sqs(["a", "b", "c"]), handle))
    assert scope.cancelled_caught
    assert seen == ["a", "b"]
    assert responses == []


class NegativeClock:
    def get_remaining_time_in_millis(self) -> int:
        return -250


def test_a_negative_remaining_time_reports_every_record_unprocessed() -> None:
    handle = Handle()
    response = process_batch(
        indexed(kinesis(["1", "2", "3"])), handle, context=NegativeClock(), reserve_ms=1
    )
    assert handle.seen == []
    assert reported(response) == ["1", "2", "3"]


class BrokenClock:
    def __init__(self) -> None:
        self.reads = 0

    def get_remaining_time_in_millis(self) -> int:
        self.reads += 1
        if self.reads == 2:
            raise OSError(f"clock {SECRET}")
        return 60_000


def test_a_clock_that_raises_fails_the_whole_batch_rather_than_settling_part_of_it() -> None:
    """The clock's error propagates (the invocation fails, every record is retried): no
    response settles the records after it."""
    handle = Handle()
    with pytest.raises(OSError, match="clock"):
        process_batch(indexed(sqs(["a", "b", "c"])), handle, context=BrokenClock(), reserve_ms=1)
    assert handle.seen == [0]


def test_a_reserve_with_ordered_false_reports_the_failures_then_everything_not_started() -> None:
    handle = Handle([0])
    response = process_batch(
        indexed(kinesis(["1", "2", "3", "4"])),
        handle,
        ordered=False,
        context=StoppingClock(2),
        reserve_ms=1,
    )
    assert handle.seen == [0, 1]
    assert reported(response) == ["1", "3", "4"]


def test_skip_group_under_the_reserve_stops_every_group() -> None:
    handle = Handle([0])
    event = indexed(sqs(["x0", "y1", "y2", "z3"], arn=FIFO, groups="xyyz"))
    response = process_batch(
        event, handle, skip_group_on_failure=True, context=StoppingClock(2), reserve_ms=1
    )
    assert handle.seen == [0, 1]
    assert reported(response) == ["x0", "y2", "z3"]


def test_ten_thousand_records_need_no_recursion_and_each_is_handled_once() -> None:
    """A 150-frame stack is enough for a 10,000-record batch: nothing recurses per record."""
    limit = sys.getrecursionlimit()
    sequences = [str(49_600_000_000 + i) for i in range(10_000)]
    handle = Handle([5_000])
    sys.setrecursionlimit(150)
    try:
        stream = process_batch(indexed(kinesis(sequences)), handle)
        everything = Handle(range(10_000))
        with _quiet():  # 10,000 warning lines, one per failed record
            queue = process_batch(
                indexed(sqs([f"m{i}" for i in range(10_000)])), everything, ordered=False
            )
    finally:
        sys.setrecursionlimit(limit)
    assert handle.seen == list(range(5_001))
    assert reported(stream) == sequences[5_000:]
    assert everything.seen == list(range(10_000))
    assert len(reported(queue)) == 10_000


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The helper's logger silenced for the block."""
    logger = logging.getLogger("poller.batch")
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = False


@pytest.mark.parametrize(
    "event",
    [
        sqs(["a"]),
        kinesis(["1"]),
        dynamodb(["1"]),
    ],
    ids=["sqs-messageId", "kinesis-sequenceNumber", "dynamodb-SequenceNumber"],
)
def test_an_integer_identifier_is_refused_before_any_record_is_handled(
    event: dict[str, Any],
) -> None:
    """The engines accept only string identifiers; an int would make the whole response
    invalid. (The message says "has no messageId" although the field is there: a nit.)"""
    record = event["Records"][0]
    fields = record.get("kinesis") or record.get("dynamodb") or record
    key = next(k for k in ("messageId", "sequenceNumber", "SequenceNumber") if k in fields)
    fields[key] = 12345
    handle = Handle()
    with pytest.raises(MalformedEvent, match="has no"):
        process_batch(indexed(event), handle)
    assert handle.seen == []


def test_records_whose_arns_differ_only_in_case_are_two_sources() -> None:
    event = sqs(["a", "b"])
    event["Records"][1]["eventSourceARN"] = QUEUE.upper()
    handle = Handle()
    with pytest.raises(MalformedEvent, match="more than one source"):
        process_batch(indexed(event), handle)
    assert handle.seen == []


def test_a_handle_that_rewrites_the_identifier_is_reported_by_the_original_one() -> None:
    """The engines reject an identifier not in the batch; the helper reads them up front."""

    def rewrite(record: dict[str, Any]) -> None:
        record["messageId"] = "rewritten"
        raise RuntimeError(SECRET)

    assert reported(process_batch(sqs(["a", "b"]), rewrite)) == ["a", "b"]


def test_no_log_line_holds_record_data_or_exception_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failures, unprocessed records and the time reserve, on each source."""
    with caplog.at_level(logging.DEBUG, logger="poller.batch"):
        process_batch(indexed(kinesis(["1", "2", "3"])), Handle([1]))
        process_batch(indexed(dynamodb(["1", "2"])), Handle([0]))
        process_batch(
            indexed(sqs(["x0", "x1", "y2"], arn=FIFO, groups="xxy")),
            Handle([0]),
            skip_group_on_failure=True,
            context=StoppingClock(2),
            reserve_ms=1,
        )
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines
    assert not [line for line in lines if SECRET in line]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert all(SECRET not in r.getMessage() for r in debug)  # only the traceback quotes it


# -- confirmed: "stdlib only, copyable" on Python 3.10 ------------------------------------------


def test_the_module_parses_with_python_3_10_grammar() -> None:
    source = Path(poller.batch.__file__).read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 10))


def _python_3_10() -> str | None:
    """A working Python 3.10 (a pyenv shim on PATH may name one that is not installed)."""
    pyenv = Path.home() / ".pyenv/versions/3.10.13/bin/python"
    for candidate in (str(pyenv), shutil.which("python3.10")):
        if candidate and Path(candidate).exists():
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if version.stdout.strip() == "(3, 10)":
                return candidate
    return None


@pytest.mark.skipif(_python_3_10() is None, reason="no Python 3.10 interpreter on this machine")
def test_a_copy_runs_on_python_3_10_sync_and_async(tmp_path: Path) -> None:
    shutil.copy(poller.batch.__file__, tmp_path / "batch.py")
    script = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import batch
event = {"Records": [
    {"messageId": m, "eventSource": "aws:sqs", "attributes": {"MessageGroupId": m[0]},
     "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q.fifo"} for m in ("x1", "y1", "x2")]}
def fail_x1(record):
    if record["messageId"] == "x1":
        raise ValueError("no")
async def afail_x1(record):
    fail_x1(record)
print(json.dumps([batch.process_batch(event, fail_x1, skip_group_on_failure=True),
                  asyncio.run(batch.aprocess_batch(event, afail_x1))]))
"""
    python = _python_3_10()
    assert python is not None
    done = subprocess.run(
        [python, "-I", "-S", "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    grouped, ordered = (reported(r) for r in json.loads(done.stdout))
    assert grouped == ["x1", "x2"]
    assert ordered == ["x1", "y1", "x2"]


# -- confirmed hazards the docstring does not state ----------------------------------------------


def _stream_records(sequences: Sequence[str]) -> list[StreamRecord]:
    event = kinesis(sequences)
    return [
        StreamRecord(s, "k", 0.0, record, 100)
        for s, record in zip(sequences, event["Records"], strict=True)
    ]


def test_on_a_stream_each_reserve_cut_uses_a_retry_and_can_discard_unhandled_records() -> None:
    """The time reserve's answer is a partial batch response, and poller (like AWS) counts one
    against ``MaximumRetryAttempts``. With ``maximum_retry_attempts: 1`` and time for one
    record per invocation, the third record is given up (sent to the on-failure destination,
    or dropped) without ever being handled or failing. Not a bug of the helper, but its
    docstring promises "they are retried"; it should say that each cut uses a retry."""
    policy = StreamRetryPolicy(maximum_retry_attempts=1, report_batch_item_failures=True)
    pending: list[Segment] = [first_segment(_stream_records(["1", "2", "3"]))]
    handled: list[str] = []
    given_up: list[str] = []
    while pending:
        segment = pending.pop(0)
        event = {"Records": [r.event_record for r in segment.records]}
        response = process_batch(
            event,
            lambda record: handled.append(record["kinesis"]["sequenceNumber"]),
            context=StoppingClock(1),
            reserve_ms=1,
        )
        for action in policy.after_invoke(segment, InvokeResult(Outcome.SUCCESS, response)):
            if isinstance(action, Retry):
                pending.append(action.segment)
            elif isinstance(action, GiveUp):
                given_up.extend(r.sequence_number for r in action.records)
    assert handled == ["1", "2"]
    assert given_up == ["3"]


def test_a_tumbling_window_mapping_fails_every_batch_answered_by_the_helper_alone() -> None:
    """A windowed mapping needs ``state`` in the answer; the helper's response has none, so
    poller (like AWS) counts every such answer as a failed invocation. The docstring does not
    say so, and ``BatchResponse`` (``dict[str, list[dict[str, str]]]``) does not type-check
    with a ``state`` object added."""
    response = process_batch(kinesis(["1"]), lambda record: None)
    verdict = parse_window_response(response, payload_is_json=True)
    assert verdict.kind == "invalid"
    assert verdict.reason == "the response has no state"


def test_a_repeated_sequence_number_is_retried_from_its_first_occurrence() -> None:
    """Records 1, 2, 2', 3 where 2' repeats 2's sequence number and fails: the helper reports
    "2" once and "3"; the stream engine checkpoints before the first "2", so the repeat costs a
    duplicate, never a lost record."""
    event = indexed(kinesis(["1", "2", "2", "3"]))
    handle = Handle([2])
    response = process_batch(event, handle)
    assert handle.seen == [0, 1, 2]
    assert reported(response) == ["2", "3"]
    verdict = parse_stream_response(response, payload_is_json=True, item_ids=["1", "2", "2", "3"])
    assert verdict.failed_from == 1
