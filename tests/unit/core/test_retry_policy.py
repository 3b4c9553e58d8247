"""Lambda's stream error handling as pure decisions: retries, age, bisection, partial responses.

The invoke counts asserted here are the ones AWS recorded (tests/fixtures/aws-recorded):
4 for three retries after a partial failure, 3 for two retries, 1 for a record that expired
before its first invocation, n+1 for one that expired after n failed invocations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest

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
from poller.types import InvokeResult, Outcome, StreamRecord

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
