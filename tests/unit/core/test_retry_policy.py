"""Lambda's stream error handling as pure decisions: retries, age, bisection, partial responses.

The invoke counts asserted here are the ones AWS recorded (tests/fixtures/aws-recorded):
4 for three retries after a partial failure, 3 for two retries, 1 for a record that expired
before its first invocation, n+1 for one that expired after n failed invocations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import structlog

from poller.checkpoints.memory import MemoryCheckpointStore
from poller.core.retry_policy import (
    Action,
    GiveUp,
    Retry,
    Segment,
    Settle,
    Split,
    StreamRetryPolicy,
    first_segment,
)
from poller.errors import DestinationError
from poller.observability.metrics import RecordingMetrics
from poller.retry import Backoff
from poller.streams import failures as pipeline
from poller.streams.processor import BatchPolicy, FailureRouting, ShardProcessor
from poller.types import Checkpoint, InvokeResult, Outcome, ShardEnd, StreamRecord
from tests.support.waiting import wait_until

NOW = 1_800_000_000.0


def rec(seq: int, age: float = 0.0) -> StreamRecord:
    return StreamRecord(str(seq), f"k{seq}", NOW - age, {"seq": seq}, 10)


def ok(payload: object = None) -> InvokeResult:
    return InvokeResult(Outcome.SUCCESS, payload=payload, status_code=200, request_id="r-ok")


ERROR = InvokeResult(
    Outcome.FUNCTION_ERROR, status_code=200, function_error="Unhandled", request_id="r-err"
)
TIMEOUT = InvokeResult(
    Outcome.TIMEOUT, status_code=200, function_error="Unhandled", request_id="r-to"
)
THROTTLE = InvokeResult(Outcome.THROTTLE, status_code=429, request_id="r-th")
SERVICE = InvokeResult(Outcome.SERVICE_ERROR, request_id="r-svc")


def seqs(records: tuple[StreamRecord, ...]) -> list[str]:
    return [r.sequence_number for r in records]


def drive(
    policy: StreamRetryPolicy,
    records: list[StreamRecord],
    respond: Callable[[Segment], InvokeResult],
    *,
    now: float = NOW,
    max_invocations: int = 1000,
) -> tuple[list[str], list[GiveUp], list[list[str]]]:
    """Run the worker's loop with a scripted function; return settled ids, give-ups, invocations."""
    queue = deque([first_segment(records)])
    settled: list[str] = []
    given_up: list[GiveUp] = []
    invoked: list[list[str]] = []
    while queue:
        expired, segment = policy.expire(queue.popleft(), now)
        if expired:
            given_up.append(expired)
        if segment is None:
            continue
        invoked.append(seqs(segment.records))
        assert len(invoked) <= max_invocations, "the policy never gave up"
        actions: list[Action] = policy.after_invoke(segment, respond(segment))
        for action in actions:
            if isinstance(action, Settle):
                settled += seqs(action.records)
            elif isinstance(action, GiveUp):
                given_up.append(action)
            elif isinstance(action, Split):
                queue.extendleft((action.second, action.first))
            else:
                assert isinstance(action, Retry)
                queue.appendleft(action.segment)
    return settled, given_up, invoked


def test_success_settles_everything() -> None:
    settled, given_up, invoked = drive(StreamRetryPolicy(), [rec(1), rec(2)], lambda s: ok())
    assert settled == ["1", "2"]
    assert not given_up
    assert invoked == [["1", "2"]]


@pytest.mark.parametrize(("retries", "invocations"), [(0, 1), (1, 2), (2, 3), (3, 4)])
def test_retries_exhausted_after_max_plus_one_invocations(retries: int, invocations: int) -> None:
    """MaximumRetryAttempts=N: N+1 invocations, then RetryAttemptsExhausted with that count."""
    policy = StreamRetryPolicy(maximum_retry_attempts=retries)
    settled, given_up, invoked = drive(policy, [rec(1)], lambda s: ERROR)
    assert settled == []
    assert len(invoked) == invocations
    (gave,) = given_up
    assert (gave.condition, gave.invoke_count, seqs(gave.records)) == (
        "RetryAttemptsExhausted",
        invocations,
        ["1"],
    )
    assert gave.last_result is ERROR


def test_timeouts_count_like_function_errors() -> None:
    policy = StreamRetryPolicy(maximum_retry_attempts=1)
    _, (gave,), invoked = drive(policy, [rec(1)], lambda s: TIMEOUT)
    assert len(invoked) == 2
    assert gave.last_result is TIMEOUT


def test_infinite_retries_keep_going() -> None:
    """-1: the policy never gives up on function errors (bounded here by the driver)."""
    with pytest.raises(AssertionError, match="never gave up"):
        drive(StreamRetryPolicy(), [rec(1)], lambda s: ERROR, max_invocations=50)


def test_throttles_and_service_errors_do_not_count() -> None:
    """Ten throttles and service errors, then success: nothing given up with zero retries."""
    script = iter([THROTTLE, SERVICE] * 5 + [ok()])
    policy = StreamRetryPolicy(maximum_retry_attempts=0)
    settled, given_up, invoked = drive(policy, [rec(1)], lambda s: next(script))
    assert settled == ["1"]
    assert not given_up
    assert len(invoked) == 11


def test_throttled_records_still_expire_by_age() -> None:
    """A throttled segment is retried until the records pass their maximum age."""
    policy = StreamRetryPolicy(maximum_retry_attempts=0, maximum_record_age_seconds=60)
    clock = {"now": NOW}
    records = [rec(1)]
    queue = deque([first_segment(records)])
    given_up: list[GiveUp] = []
    while queue:
        expired, segment = policy.expire(queue.popleft(), clock["now"])
        if expired:
            given_up.append(expired)
        if segment is None:
            break
        (action,) = policy.after_invoke(segment, THROTTLE)
        assert isinstance(action, Retry)
        assert action.segment.retries == 0
        queue.append(action.segment)
        clock["now"] += 10
    (gave,) = given_up
    assert gave.condition == "RecordAgeExceeded"
    assert gave.invoke_count == 1  # throttled attempts never reached the function
    assert gave.last_result is None


def test_record_age_exceeded_before_first_invocation() -> None:
    """AWS recorded approximateInvokeCount 1 for a record too old before its first invocation."""
    policy = StreamRetryPolicy(maximum_record_age_seconds=60)
    settled, (gave,), invoked = drive(policy, [rec(1, age=61)], lambda s: ok())
    assert (settled, invoked) == ([], [])
    assert (gave.condition, gave.invoke_count, gave.last_result) == ("RecordAgeExceeded", 1, None)


def test_expired_prefix_is_split_off_and_the_rest_delivered() -> None:
    """AWS's discard scenario: the first record expired, the five fresh ones are delivered."""
    policy = StreamRetryPolicy(maximum_retry_attempts=0, maximum_record_age_seconds=60)
    records = [rec(1, age=90)] + [rec(i, age=1) for i in range(2, 7)]
    settled, (gave,), invoked = drive(policy, records, lambda s: ok())
    assert seqs(gave.records) == ["1"]
    assert gave.invoke_count == 1
    assert invoked == [["2", "3", "4", "5", "6"]]
    assert settled == ["2", "3", "4", "5", "6"]


def test_record_age_exceeded_while_retrying_counts_the_next_attempt() -> None:
    """After n failed invocations the record expires: the count is n + 1 (AWS recorded 8)."""
    policy = StreamRetryPolicy(maximum_record_age_seconds=60)
    segment = first_segment([rec(1)])
    for _ in range(7):
        (action,) = policy.after_invoke(segment, ERROR)
        assert isinstance(action, Retry)
        segment = action.segment
    gave, rest = policy.expire(segment, NOW + 61)
    assert rest is None
    assert gave is not None
    assert (gave.condition, gave.invoke_count) == ("RecordAgeExceeded", 8)


def test_record_exactly_at_max_age_is_not_expired() -> None:
    policy = StreamRetryPolicy(maximum_record_age_seconds=60)
    gave, rest = policy.expire(first_segment([rec(1, age=60)]), NOW)
    assert gave is None
    assert rest is not None


def test_bisect_isolates_the_poison_record() -> None:
    """With bisect and 2 retries, only the bad record is given up; the rest is delivered."""
    records = [rec(i) for i in range(16)]
    policy = StreamRetryPolicy(maximum_retry_attempts=2, bisect_on_function_error=True)
    poison = "11"

    def respond(segment: Segment) -> InvokeResult:
        return ERROR if poison in seqs(segment.records) else ok()

    settled, (gave,), invoked = drive(policy, records, respond)
    assert seqs(gave.records) == [poison]
    assert settled == [str(i) for i in range(16) if str(i) != poison]
    # 16 -> 8 -> 4 -> 2 -> 1 splits cost no retry; then 1 + 2 retries on the single record.
    with_poison = [i for i in invoked if poison in i]
    assert [len(i) for i in with_poison] == [16, 8, 4, 2, 1, 1, 1]
    assert gave.invoke_count == 7


def test_bisect_keeps_order_of_halves() -> None:
    """The first half is retried before the second, so shard order holds."""
    policy = StreamRetryPolicy(bisect_on_function_error=True)
    calls = iter([ERROR, ok(), ok()])
    settled, _, invoked = drive(policy, [rec(i) for i in range(4)], lambda s: next(calls))
    assert invoked == [["0", "1", "2", "3"], ["0", "1"], ["2", "3"]]
    assert settled == ["0", "1", "2", "3"]


def test_partial_response_settles_prefix_and_retries_from_lowest() -> None:
    """AWS scenario: 6 records, batch 3, the last reported failed, MaximumRetryAttempts 3:
    the failure record has approximateInvokeCount 4, batchSize 1, functionError null."""
    policy = StreamRetryPolicy(maximum_retry_attempts=3, report_batch_item_failures=True)

    def respond(segment: Segment) -> InvokeResult:
        failed = [{"itemIdentifier": s} for s in seqs(segment.records) if s == "6"]
        return ok({"batchItemFailures": failed})

    settled_a, given_a, _ = drive(policy, [rec(1), rec(2), rec(3)], respond)
    settled_b, (gave,), invoked = drive(policy, [rec(4), rec(5), rec(6)], respond)
    assert settled_a + settled_b == ["1", "2", "3", "4", "5"]
    assert not given_a
    assert invoked == [["4", "5", "6"], ["6"], ["6"], ["6"]]
    assert (gave.invoke_count, seqs(gave.records)) == (4, ["6"])
    assert gave.last_result is not None
    assert gave.last_result.function_error is None


def test_partial_response_uses_the_lowest_reported_item() -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    segment = first_segment([rec(i) for i in range(5)])
    response = ok({"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "1"}]})
    settle, retry = policy.after_invoke(segment, response)
    assert isinstance(settle, Settle)
    assert isinstance(retry, Retry)
    assert seqs(settle.records) == ["0"]
    assert seqs(retry.segment.records) == ["1", "2", "3", "4"]
    assert retry.segment.retries == 1


@pytest.mark.parametrize(
    "items",
    [
        pytest.param([{"itemIdentifier": 123}], id="item_identifier_not_present_failure"),
        pytest.param([{"itemIdentifier": ""}], id="empty_string_item_identifier_failure"),
        pytest.param([{"itemIdentifier": None}], id="null_item_identifier_failure"),
        pytest.param([{"foo": 123}], id="invalid_key_foo_failure"),
        pytest.param([{"foo": None}], id="invalid_key_foo_null_value_failure"),
    ],
)
def test_malformed_partial_response_fails_whole_batch(items: list[object]) -> None:
    """AWS scenarios: BatchSize 1, MaximumRetryAttempts 2 -> count 3, functionError null."""
    policy = StreamRetryPolicy(maximum_retry_attempts=2, report_batch_item_failures=True)
    settled, (gave,), invoked = drive(policy, [rec(1)], lambda s: ok({"batchItemFailures": items}))
    assert settled == []
    assert len(invoked) == 3
    assert gave.invoke_count == 3
    assert gave.last_result is not None
    assert gave.last_result.function_error is None


@pytest.mark.parametrize(
    "payload",
    ["", [], None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}],
    ids=[
        "empty_string_success",
        "empty_list_success",
        "null_success",
        "empty_dict_success",
        "empty_batch_item_failure_success",
        "null_batch_item_failure_success",
    ],
)
def test_success_variants_of_partial_responses(payload: object) -> None:
    policy = StreamRetryPolicy(maximum_retry_attempts=2, report_batch_item_failures=True)
    settled, given_up, invoked = drive(policy, [rec(1)], lambda s: ok(payload))
    assert (settled, given_up, invoked) == (["1"], [], [["1"]])


def test_batch_item_failures_ignored_when_feature_off() -> None:
    """Without ReportBatchItemFailures, a returned batchItemFailures is ignored: success."""
    policy = StreamRetryPolicy()
    response = ok({"batchItemFailures": [{"itemIdentifier": "1"}]})
    settled, given_up, _ = drive(policy, [rec(1), rec(2)], lambda s: response)
    assert (settled, given_up) == (["1", "2"], [])


def test_partial_failure_is_not_bisected() -> None:
    """With both features on, the batch is cut at the reported record, not halved."""
    policy = StreamRetryPolicy(report_batch_item_failures=True, bisect_on_function_error=True)
    segment = first_segment([rec(i) for i in range(4)])
    actions = policy.after_invoke(segment, ok({"batchItemFailures": [{"itemIdentifier": "3"}]}))
    assert [type(a) for a in actions] == [Settle, Retry]


def test_backoff_counter_grows_with_every_failure() -> None:
    policy = StreamRetryPolicy()
    segment = first_segment([rec(1)])
    for expected in range(1, 5):
        (action,) = policy.after_invoke(segment, THROTTLE if expected % 2 else ERROR)
        assert isinstance(action, Retry)
        segment = action.segment
        assert segment.failures == expected


# -- an infinite maximum age means the stream's retention (issue 11, defect 5) ---------------


def test_infinite_age_gives_up_a_failed_record_past_the_retention() -> None:
    """-1 means "until the record expires": once a record that failed is older than the
    stream's retention, it is given up as RecordAgeExceeded (AWS's condition)."""
    policy = StreamRetryPolicy()
    segment = first_segment([rec(1, age=90_000), rec(2, age=10)])
    (action,) = policy.after_invoke(segment, ERROR)
    assert isinstance(action, Retry)
    expired, rest = policy.expire(action.segment, NOW, retention_seconds=86_400)
    assert expired is not None
    assert (seqs(expired.records), expired.condition) == (["1"], "RecordAgeExceeded")
    assert expired.invoke_count == 2  # one invocation made, the one about to be made
    assert rest is not None
    assert seqs(rest.records) == ["2"]


def test_infinite_age_never_gives_up_a_record_before_its_first_attempt() -> None:
    """A record read for the first time is still in the stream, however old it looks."""
    policy = StreamRetryPolicy()
    segment = first_segment([rec(1, age=90_000)])
    assert policy.expire(segment, NOW, retention_seconds=86_400) == (None, segment)


def test_infinite_age_without_a_known_retention_keeps_retrying() -> None:
    policy = StreamRetryPolicy()
    (action,) = policy.after_invoke(first_segment([rec(1, age=10**7)]), THROTTLE)
    assert isinstance(action, Retry)
    assert policy.expire(action.segment, NOW, retention_seconds=None) == (None, action.segment)


def test_a_configured_maximum_age_ignores_the_retention() -> None:
    policy = StreamRetryPolicy(maximum_record_age_seconds=60)
    segment = first_segment([rec(1, age=30)])
    assert policy.expire(segment, NOW, retention_seconds=10) == (None, segment)


# -- what the logs and metrics are told (issue 11, defect 21a) -------------------------------


def test_malformed_partial_response_is_judged_a_function_error_with_its_reason() -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    segment = first_segment([rec(1), rec(2)])
    judgement = policy.judge(segment, ok({"batchItemFailures": [{"itemIdentifier": ""}]}))
    assert judgement.outcome == "function_error"
    assert judgement.reason is not None
    assert "batchItemFailures[0].itemIdentifier" in judgement.reason
    assert [type(a) for a in judgement.actions] == [Retry]


@pytest.mark.parametrize(
    ("payload", "outcome"),
    [
        (None, "success"),
        ({"batchItemFailures": [{"itemIdentifier": "2"}]}, "partial_failure"),
        ({"batchItemFailures": [{"itemIdentifier": "1"}]}, "partial_failure"),
        ({"batchItemFailures": "2"}, "function_error"),
    ],
)
def test_judged_outcomes(payload: object, outcome: str) -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    assert policy.judge(first_segment([rec(1), rec(2)]), ok(payload)).outcome == outcome


def test_failed_invocations_keep_their_outcome() -> None:
    policy = StreamRetryPolicy()
    segment = first_segment([rec(1)])
    assert policy.judge(segment, TIMEOUT).outcome == "timeout"
    assert policy.judge(segment, THROTTLE).outcome == "throttle"


# -- KPL: the plain sequence number of an aggregate (issue 11, defect 12) --------------------


def user(seq: int, sub: int) -> StreamRecord:
    return StreamRecord(str(seq), f"k{seq}.{sub}", NOW, {}, 10, sub_sequence_number=sub)


def test_plain_sequence_of_an_aggregate_fails_from_its_first_user_record() -> None:
    """Powertools reports ``kinesis.sequenceNumber``: for a user record of an aggregate that is
    the aggregate's number, meaning "from its first user record in the batch"."""
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    batch = [user(100, 0), user(100, 1), user(200, 0), user(200, 1), user(200, 2), rec(300)]
    response = ok({"batchItemFailures": [{"itemIdentifier": "200"}]})
    settle, retry = policy.after_invoke(first_segment(batch), response)
    assert isinstance(settle, Settle)
    assert isinstance(retry, Retry)
    assert [r.position for r in settle.records] == ["100:0", "100:1"]
    assert [r.position for r in retry.segment.records] == ["200:0", "200:1", "200:2", "300"]


def test_plain_sequence_inside_a_retry_that_starts_mid_aggregate_retries_it_all() -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    batch = [user(200, 1), user(200, 2), rec(300)]
    response = ok({"batchItemFailures": [{"itemIdentifier": "200"}]})
    (retry,) = policy.after_invoke(first_segment(batch), response)
    assert isinstance(retry, Retry)
    assert len(retry.segment.records) == 3


def test_sub_record_identifiers_still_point_inside_an_aggregate() -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True)
    batch = [user(200, 0), user(200, 1), user(200, 2)]
    response = ok({"batchItemFailures": [{"itemIdentifier": "200:2"}]})
    settle, _ = policy.after_invoke(first_segment(batch), response)
    assert isinstance(settle, Settle)
    assert [r.position for r in settle.records] == ["200:0", "200:1"]


class MalformedAnswer:
    """A function that answers every batch with an identifier that is not in it."""

    function_arn = "arn:aws:lambda:us-east-1:123456789012:function:f"

    def __init__(self) -> None:
        self.calls = 0

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.calls += 1
        return ok({"batchItemFailures": [{"itemIdentifier": "nope"}]})

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_malformed_partial_response_is_logged_as_the_metrics_count_it() -> None:
    """Issue 11, defect 21a: the log line says function_error and why, never success."""
    metrics = RecordingMetrics()
    processor = ShardProcessor(
        mapping="m",
        shard_id="shardId-000000000000",
        target=MalformedAnswer(),
        store=MemoryCheckpointStore(),
        policy=BatchPolicy(
            batch_size=10,
            window_seconds=0,
            retry=StreamRetryPolicy(maximum_retry_attempts=0, report_batch_item_failures=True),
        ),
        routing=FailureRouting(kind="kinesis", stream_arn="arn:s", mapping_uuid="u"),
        stopping=anyio.Event(),
        metrics=metrics,
    )
    send, receive = anyio.create_memory_object_stream[Any](10)
    async with send:
        await send.send([rec(1), rec(2)])
        await send.send(ShardEnd())
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        await processor.run(receive)
    [line] = [e for e in logs if e["event"].startswith("batch.")]
    assert line["event"] == "batch.failed"
    assert line["outcome"] == "function_error"
    assert line["error"] == (
        'invalid partial batch response: batchItemFailures[0].itemIdentifier "nope" '
        "is not in the batch"
    )
    [invocation] = metrics.calls_to("invocation")
    assert invocation["outcome"] == line["outcome"]


# -- a destination that refuses for good (issue 11: permanent destination refusal) ----------


class AlwaysFails(MalformedAnswer):
    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.calls += 1
        return ERROR


class MissingQueue:
    """An on-failure destination whose queue does not exist, until ``exists`` is set."""

    arn = "arn:aws:sqs:us-east-1:123456789012:gone"

    def __init__(self) -> None:
        self.exists = False
        self.attempts = 0

    async def send(self, record: dict[str, Any], **context: Any) -> None:
        self.attempts += 1
        if not self.exists:
            raise DestinationError(
                f"on-failure destination {self.arn}: GetQueueUrl failed with "
                "AWS.SimpleQueueService.NonExistentQueue",
                permanent=True,
            )


def blocking_processor(
    destination: MissingQueue, metrics: RecordingMetrics, stopping: anyio.Event
) -> tuple[ShardProcessor, MemoryCheckpointStore]:
    store = MemoryCheckpointStore()
    processor = ShardProcessor(
        mapping="m",
        shard_id="shardId-000000000000",
        target=AlwaysFails(),
        store=store,
        policy=BatchPolicy(
            batch_size=10, window_seconds=0, retry=StreamRetryPolicy(maximum_retry_attempts=0)
        ),
        routing=FailureRouting(
            kind="kinesis", stream_arn="arn:s", mapping_uuid="u", destination=destination
        ),
        stopping=stopping,
        metrics=metrics,
    )
    return processor, store


@pytest.mark.anyio
async def test_a_permanent_refusal_blocks_loudly_until_fixed_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gauge goes up once and down once; the error log repeats (here every 0.1 s instead
    of every minute) while the batch waits; once the queue exists the records settle."""
    monkeypatch.setattr(pipeline, "BLOCKED_ALERT_SECONDS", 0.1)
    monkeypatch.setattr(pipeline, "DESTINATION_BACKOFF", Backoff(0.02, 0.05))
    destination, metrics = MissingQueue(), RecordingMetrics()
    processor, store = blocking_processor(destination, metrics, anyio.Event())
    send, receive = anyio.create_memory_object_stream[Any](10)
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run, receive)
            await send.send([rec(1)])
            await wait_until(
                lambda: len([e for e in logs if e["event"] == "destination.blocked"]) >= 3,
                5,
                "three alerts",
                interval=0.01,
            )
            assert store.writes == [], "nothing settled while the destination refuses"
            destination.exists = True
            await send.send(ShardEnd())
            await send.aclose()
    assert [c["blocked"] for c in metrics.calls_to("destination_blocked")] == [True, False]
    alerts = [e for e in logs if e["event"] == "destination.blocked"]
    assert {e["log_level"] for e in alerts} == {"error"}
    assert destination.attempts > len(alerts), "the alert is rate-limited, not per attempt"
    assert next(c for _, _, c in store.writes) == Checkpoint("1")


@pytest.mark.anyio
async def test_shutdown_does_not_wait_for_a_blocked_destination() -> None:
    """Waiting to send again is abandoned at once on shutdown: the records stay unsettled
    (re-delivered after the restart) and the gauge goes back down."""
    destination, metrics, stopping = MissingQueue(), RecordingMetrics(), anyio.Event()
    processor, store = blocking_processor(destination, metrics, stopping)
    send, receive = anyio.create_memory_object_stream[Any](10)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(processor.run, receive)
            await send.send([rec(1)])
            await wait_until(
                lambda: metrics.calls_to("destination_blocked"), 5, "blocked", interval=0.01
            )
            stopping.set()
            processor.interrupt()
            await send.aclose()
    assert store.writes == []
    assert [c["blocked"] for c in metrics.calls_to("destination_blocked")] == [True, False]


@pytest.mark.anyio
async def test_many_shards_blocked_on_one_destination_alert_once_a_period_not_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every shard logged its own error at once and then once a period, so 40 shards
    blocked on one missing queue logged 40 lines a minute. Now one line a period per
    destination, naming how many batches it blocks; the gauge still counts every batch."""
    monkeypatch.setattr(pipeline, "BLOCKED_ALERT_SECONDS", 5.0)
    monkeypatch.setattr(pipeline, "DESTINATION_BACKOFF", Backoff(0.02, 0.05))
    shards = 40
    destination, metrics = MissingQueue(), RecordingMetrics()
    processors = [blocking_processor(destination, metrics, anyio.Event())[0] for _ in range(shards)]
    sends = []
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for processor in processors:
                send, receive = anyio.create_memory_object_stream[Any](10)
                tg.start_soon(processor.run, receive)
                await send.send([rec(1)])
                sends.append(send)

            def blocked() -> int:
                return sum(1 for c in metrics.calls_to("destination_blocked") if c["blocked"])

            await wait_until(lambda: blocked() == shards, 5, "every shard blocked", interval=0.01)
            alerts = [e for e in logs if e["event"] == "destination.blocked"]
            assert len(alerts) <= 2, len(alerts)
            destination.exists = True
            for send in sends:
                await send.send(ShardEnd())
                await send.aclose()
    assert alerts[0]["log_level"] == "error"
    assert max(e["blocked_batches"] for e in alerts) >= 1
    calls = [c["blocked"] for c in metrics.calls_to("destination_blocked")]
    assert calls.count(True) == calls.count(False) == shards


class FlippingQueue(MissingQueue):
    """Refuses for good, then passingly, then for good again, then accepts."""

    async def send(self, record: dict[str, Any], **context: Any) -> None:
        self.attempts += 1
        if self.attempts == 5:
            return
        permanent = self.attempts != 2
        raise DestinationError(f"refusal {self.attempts}", permanent=permanent)


@pytest.mark.anyio
async def test_a_refusal_that_flips_between_permanent_and_passing_blocks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gauge goes up at the first permanent refusal and down once, when the record is
    accepted; the passing refusal in between is a warning; one failure record is sent."""
    monkeypatch.setattr(pipeline, "DESTINATION_BACKOFF", Backoff(0.01, 0.02))
    destination, metrics = FlippingQueue(), RecordingMetrics()
    processor, store = blocking_processor(destination, metrics, anyio.Event())
    send, receive = anyio.create_memory_object_stream[Any](10)
    with structlog.testing.capture_logs() as logs, anyio.fail_after(10):
        async with send:
            await send.send([rec(1)])
            await send.send(ShardEnd())
        await processor.run(receive)
    assert destination.attempts == 5
    assert [c["blocked"] for c in metrics.calls_to("destination_blocked")] == [True, False]
    assert [e["attempt"] for e in logs if e["event"] == "destination.refused"] == [2]
    assert [e["event"] for e in logs if e["event"].startswith("records.")] == [
        "records.sent_to_destination"
    ]
    assert store.writes[0][2] == Checkpoint("1")


def test_infinite_age_gives_up_a_bisected_half_past_the_retention() -> None:
    """Bisection uses no retry, so a half has failed (it was in the failed batch) with no
    failure counted yet. Before: such a half past the retention was invoked again, and again
    for each bisection level, as though it had never been tried."""
    policy = StreamRetryPolicy(bisect_on_function_error=True)
    segment = first_segment([rec(1, age=90_000), rec(2, age=90_000), rec(3, age=10)])
    (split,) = policy.after_invoke(segment, ERROR)
    assert isinstance(split, Split)
    expired, rest = policy.expire(split.first, NOW, retention_seconds=86_400)
    assert expired is not None
    assert seqs(expired.records) == ["1"]
    expired, rest = policy.expire(split.second, NOW, retention_seconds=86_400)
    assert expired is not None
    assert rest is not None
    assert (seqs(expired.records), seqs(rest.records)) == (["2"], ["3"])


@pytest.mark.parametrize(("age", "given_up"), [(86_400, False), (86_400.001, True)])
def test_infinite_age_at_the_retention_boundary(age: float, given_up: bool) -> None:
    """Exactly as old as the retention is still held; a millisecond older is not."""
    policy = StreamRetryPolicy()
    (action,) = policy.after_invoke(first_segment([rec(1, age=age)]), ERROR)
    assert isinstance(action, Retry)
    expired, _ = policy.expire(action.segment, NOW, retention_seconds=86_400)
    assert (expired is not None) is given_up
