"""The SQS mapping's pure rules (poller.core.queue_rules): FIFO hold-back, the wait of a
receive within a batching window, the pollers scaler, the verdict on an invocation and the
settlement plan that follows from it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from poller.core.queue_rules import (
    MIN_POLLERS,
    SCALE_UP_STEP,
    START_POLLERS,
    Scaler,
    Verdict,
    carried_apart,
    held_back,
    judge,
    plan_settlement,
    wait_seconds,
)
from poller.types import InvokeResult, Outcome


@dataclass(frozen=True)
class Msg:
    """A message as the rules see it: an id and a FIFO group."""

    message_id: str
    group_id: str | None = None


def ids(messages: list[Msg]) -> list[str]:
    return [m.message_id for m in messages]


def fifo_batch() -> list[Msg]:
    """x1 y1 x2 y2 x3: two interleaved groups."""
    return [Msg("x1", "x"), Msg("y1", "y"), Msg("x2", "x"), Msg("y2", "y"), Msg("x3", "x")]


# --------------------------------------------------------------------------- held back


def test_standard_queue_holds_back_only_the_reported_messages() -> None:
    batch = [Msg(i) for i in "abcde"]
    assert held_back(batch, ["b", "d"], fifo=False) == {1, 3}


def test_fifo_holds_back_a_failed_message_and_the_rest_of_its_group() -> None:
    assert held_back(fifo_batch(), ["x2"], fifo=True) == {2, 4}


def test_fifo_without_failures_holds_back_nothing() -> None:
    assert held_back(fifo_batch(), [], fifo=True) == set()


def test_carried_messages_of_a_failed_fifo_group_wait_with_it() -> None:
    carry = [Msg("x4", "x"), Msg("y3", "y"), Msg("z1", "z")]
    go_on, behind = carried_apart(carry, [Msg("x2", "x")], fifo=True)
    assert (ids(go_on), ids(behind)) == (["y3", "z1"], ["x4"])


def test_carried_messages_go_on_on_a_standard_queue() -> None:
    carry = [Msg("a"), Msg("b")]
    assert carried_apart(carry, [Msg("c")], fifo=False) == (carry, [])


def test_carried_messages_go_on_when_nothing_stays() -> None:
    carry = [Msg("a", "g")]
    assert carried_apart(carry, [], fifo=True) == (carry, [])


# --------------------------------------------------------------------------- receive waits


def test_a_receive_before_the_first_message_long_polls() -> None:
    assert wait_seconds(None, 5, 20, now=100.0) == 20


def test_a_zero_window_ends_the_batch_at_the_first_messages() -> None:
    assert wait_seconds(100.0, 0, 20, now=100.0) is None


def test_a_window_that_has_passed_ends_the_batch() -> None:
    assert wait_seconds(100.0, 10, 20, now=100.5) is None


@pytest.mark.parametrize(
    ("left", "expected"),
    [(7.6, 7), (0.5, 0), (250.0, 20)],
    ids=["rounded down", "a short poll", "at most a long poll"],
)
def test_a_receive_waits_for_what_is_left_of_the_window(left: float, expected: int) -> None:
    assert wait_seconds(100.0 + left, 300, 20, now=100.0) == expected


# --------------------------------------------------------------------------- scaling


def running(cap: int) -> Scaler:
    """A scaler whose target number of pollers all run."""
    scaler = Scaler(cap)
    scaler.active = scaler.target
    return scaler


def test_a_mapping_starts_five_pollers_or_its_cap() -> None:
    assert (Scaler(1000).target, Scaler(3).target) == (START_POLLERS, 3)
    assert (Scaler(1000).floor, Scaler(1).floor) == (MIN_POLLERS, 1)


def test_full_batches_add_pollers_up_to_the_cap() -> None:
    scaler = running(7)
    scaler.batch(full=True)
    assert scaler.tick() == 2
    assert scaler.target == 7


def test_full_batches_add_a_step_at_a_time() -> None:
    scaler = running(100)
    scaler.batch(full=True)
    assert scaler.tick() == SCALE_UP_STEP


def test_no_growth_while_the_started_pollers_are_not_all_running() -> None:
    scaler = Scaler(100)
    scaler.active = 1
    scaler.batch(full=True)
    assert scaler.tick() == START_POLLERS - 1
    assert scaler.target == START_POLLERS


def test_a_partial_batch_in_the_interval_stops_the_growth() -> None:
    scaler = running(100)
    scaler.batch(full=True)
    scaler.batch(full=False)
    assert scaler.tick() == 0


def test_counts_start_again_each_interval() -> None:
    scaler = running(100)
    scaler.batch(full=False)
    scaler.tick()
    scaler.batch(full=True)
    assert scaler.tick() == SCALE_UP_STEP


def test_empty_polls_and_failures_retire_pollers_down_to_the_floor() -> None:
    scaler = running(100)
    scaler.idle()
    assert (scaler.target, scaler.surplus()) == (START_POLLERS - 1, True)
    for _ in range(10):
        scaler.failed()
    assert scaler.target == MIN_POLLERS
    scaler.active = MIN_POLLERS
    assert not scaler.surplus()
    scaler.batch(full=True)
    assert scaler.tick() == 0  # failures in the interval: no growth


# --------------------------------------------------------------------------- the verdict


def answered(payload: object, *, is_json: bool = True) -> InvokeResult:
    return InvokeResult(Outcome.SUCCESS, payload=payload, payload_is_json=is_json)


def failures(*item_ids: str) -> dict[str, object]:
    return {"batchItemFailures": [{"itemIdentifier": i} for i in item_ids]}


def test_a_failed_invocation_keeps_the_whole_batch_and_is_counted_already() -> None:
    result = InvokeResult(Outcome.TIMEOUT, error="timed out after 3s")
    verdict = judge(fifo_batch(), result, report_batch_item_failures=True, fifo=True)
    assert verdict == Verdict("timeout", frozenset(range(5)), "timed out after 3s")
    assert verdict.counted_as is None


def test_success_without_partial_responses_ignores_the_answer() -> None:
    verdict = judge(
        fifo_batch(), answered(failures("x1")), report_batch_item_failures=False, fifo=True
    )
    assert verdict == Verdict("success", frozenset(), counted_as="success")


@pytest.mark.parametrize("payload", [None, {}, {"batchItemFailures": []}, "ok"])
def test_an_empty_failure_report_is_success(payload: object) -> None:
    verdict = judge(fifo_batch(), answered(payload), report_batch_item_failures=True, fifo=True)
    assert verdict == Verdict("success", frozenset(), counted_as="success")


def test_an_invalid_report_fails_the_whole_batch_as_a_function_error() -> None:
    verdict = judge(
        fifo_batch(), answered(failures("nope")), report_batch_item_failures=True, fifo=True
    )
    assert (verdict.outcome, verdict.keep) == ("invalid_response", frozenset(range(5)))
    assert verdict.reason is not None
    assert "nope" in verdict.reason
    assert (verdict.counted_as, verdict.failed_records) == ("function_error", 5)


def test_a_non_json_answer_fails_the_whole_batch() -> None:
    verdict = judge(
        [Msg("a")], answered("<html>", is_json=False), report_batch_item_failures=True, fifo=False
    )
    assert verdict.outcome == "invalid_response"
    assert verdict.reason == "invalid JSON response"


def test_a_partial_failure_on_a_fifo_queue_holds_back_the_rest_of_the_group() -> None:
    verdict = judge(
        fifo_batch(), answered(failures("x2")), report_batch_item_failures=True, fifo=True
    )
    assert verdict == Verdict(
        "partial_failure",
        frozenset({2, 4}),
        "batchItemFailures",
        reported=1,
        counted_as="partial_failure",
        failed_records=5,  # the whole batch (Lambda's FailedInvokeEventCount)
    )


def test_a_partial_failure_on_a_standard_queue_keeps_only_the_reported() -> None:
    batch = [Msg(i) for i in "abc"]
    verdict = judge(
        batch, answered(failures("c", "a")), report_batch_item_failures=True, fifo=False
    )
    assert (verdict.keep, verdict.reported, verdict.failed_records) == (frozenset({0, 2}), 2, 3)


# --------------------------------------------------------------------------- settlement


def test_settlement_deletes_what_does_not_stay_and_the_filtered_messages() -> None:
    batch = fifo_batch()
    carry = [Msg("x4", "x"), Msg("z1", "z")]
    plan = plan_settlement(batch, {4, 2}, carry=carry, filtered=[Msg("f", "x")], fifo=True)
    assert ids(plan.delete) == ["x1", "y1", "y2", "f"]
    assert ids(plan.keep) == ["x2", "x3", "x4"]  # batch order, then the carried ones behind
    assert ids(plan.carry) == ["z1"]


def test_a_successful_batch_settles_everything_and_carries_everything_on() -> None:
    batch, carry = fifo_batch(), [Msg("x4", "x")]
    plan = plan_settlement(batch, frozenset(), carry=carry, filtered=[], fifo=True)
    assert (plan.delete, plan.keep, plan.carry) == (batch, [], carry)


def test_a_standard_queue_carries_everything_on_after_a_failure() -> None:
    batch, carry = [Msg("a"), Msg("b")], [Msg("c")]
    plan = plan_settlement(batch, {0, 1}, carry=carry, filtered=[], fifo=False)
    assert (plan.delete, plan.keep, plan.carry) == ([], batch, carry)
