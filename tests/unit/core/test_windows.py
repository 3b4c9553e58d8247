"""Tumbling windows: window arithmetic, the event, the answer, the state limit, and the
pieces around them (retry policy, config, checkpoint stores)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.dynamodb import WINDOW_STATE_LIMIT
from poller.checkpoints.dynamodb.items import _checkpoint_from, _checkpoint_update
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import parse_settings
from poller.core.retry_policy import GiveUp, Retry, Settle, StreamRetryPolicy, first_segment
from poller.core.windows import (
    CLOSE_GRACE_SECONDS,
    MAX_STATE_BYTES,
    Window,
    decode_window_state,
    encode_window_state,
    parse_window_response,
    state_size,
    state_too_large,
    window_event,
    window_of,
)
from poller.errors import ConfigError
from poller.leases import LeasedCheckpointStore
from poller.streams.processor import BatchPolicy, FailureRouting, ShardProcessor
from poller.types import Checkpoint, InvokeResult, Outcome, ShardEnd, StreamRecord

# 2020-12-09T07:04:00Z, the start of the window in AWS's documented example event.
T0 = 1607497440


def rec(seq: int, arrival: float) -> StreamRecord:
    return StreamRecord(str(seq), f"k{seq}", arrival, {"seq": seq}, 10)


# -- window arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrival", "seconds", "start"),
    [
        (T0, 120, T0),
        (T0 + 0.999, 120, T0),
        (T0 + 119.999, 120, T0),
        (T0 + 120, 120, T0 + 120),
        (T0 + 61.5, 60, T0 + 60),
        (T0 + 7.25, 1, T0 + 7),
        (T0 + 450, 900, T0 - 240),  # T0 is 240 s into a 900 s window
    ],
)
def test_window_of_a_record_is_floor_of_arrival(arrival: float, seconds: int, start: int) -> None:
    window = window_of(rec(1, arrival), seconds)
    assert window == Window(start, start + seconds)


def test_window_event_times_are_iso_utc_seconds() -> None:
    assert Window.of(T0 + 5, 120).as_event() == {
        "start": "2020-12-09T07:04:00Z",
        "end": "2020-12-09T07:06:00Z",
    }


def test_window_needs_a_positive_length() -> None:
    with pytest.raises(ValueError, match="positive"):
        Window.of(T0, 0)


def test_window_is_due_only_after_its_end_and_the_grace() -> None:
    window = Window(T0, T0 + 10)
    assert not window.is_due(T0 + 10)
    assert not window.is_due(T0 + 10 + CLOSE_GRACE_SECONDS - 0.01)
    assert window.is_due(T0 + 10 + CLOSE_GRACE_SECONDS)


# -- the event -----------------------------------------------------------------------------


def test_window_event_has_lambdas_shape() -> None:
    records = [rec(1, T0 + 1), rec(2, T0 + 2)]
    event = window_event(
        records,
        window=Window(T0, T0 + 120),
        state={"1": 282},
        shard_id="shardId-000000000006",
        event_source_arn="arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
    )
    assert event == {
        "Records": [{"seq": 1}, {"seq": 2}],
        "window": {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"},
        "state": {"1": 282},
        "shardId": "shardId-000000000006",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/lambda-stream",
        "isFinalInvokeForWindow": False,
        "isWindowTerminatedEarly": False,
    }


def test_final_event_has_no_records() -> None:
    event = window_event(
        [],
        window=Window(T0, T0 + 60),
        state={"n": 3},
        shard_id="s",
        event_source_arn="arn",
        final=True,
        terminated_early=True,
    )
    assert event["Records"] == []
    assert event["isFinalInvokeForWindow"] is True
    assert event["isWindowTerminatedEarly"] is True
    assert event["state"] == {"n": 3}


# -- the answer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "state"),
    [
        ({"state": {"count": 3}}, {"count": 3}),
        ({"state": {}, "batchItemFailures": []}, {}),
        ({"state": None}, {}),
    ],
)
def test_answer_with_a_state_is_ok(payload: Any, state: dict[str, Any]) -> None:
    answer = parse_window_response(payload, payload_is_json=True)
    assert answer.kind == "ok"
    assert answer.state == state


@pytest.mark.parametrize(
    ("payload", "is_json", "reason"),
    [
        (None, True, "null"),
        ({}, True, "no state"),
        ({"batchItemFailures": []}, True, "no state"),
        ([], True, "list"),
        ("ok", True, "str"),
        ({"state": [1]}, True, "not an object"),
        ({"state": 5}, True, "not an object"),
        ("<html>", False, "not JSON"),
    ],
)
def test_answer_without_a_state_object_is_invalid(payload: Any, is_json: bool, reason: str) -> None:
    answer = parse_window_response(payload, payload_is_json=is_json)
    assert answer.kind == "invalid"
    assert answer.reason is not None
    assert reason in answer.reason


# -- the state limit -----------------------------------------------------------------------


def test_state_size_is_compact_json_bytes() -> None:
    assert state_size({}) == 2
    assert state_size({"a": 1}) == len('{"a":1}')
    assert state_size({"é": "€"}) == len('{"é":"€"}'.encode())


def test_state_over_one_mb_is_too_large() -> None:
    overhead = len('{"x":""}')
    at_limit = {"x": "a" * (MAX_STATE_BYTES - overhead)}
    assert state_size(at_limit) == MAX_STATE_BYTES
    assert not state_too_large(at_limit)
    assert state_too_large({"x": "a" * (MAX_STATE_BYTES - overhead + 1)})


# -- stored with the checkpoint ------------------------------------------------------------


def test_window_state_round_trips() -> None:
    text = encode_window_state(Window(T0, T0 + 60), {"count": 7, "keys": ["a"]})
    assert decode_window_state(text) == (Window(T0, T0 + 60), {"count": 7, "keys": ["a"]})


@pytest.mark.parametrize(
    "text", ["", "[]", '{"start": 1}', '{"start": 1, "end": 2, "state": []}', '{"start": "x"}']
)
def test_corrupt_window_state_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="corrupt"):
        decode_window_state(text)


@pytest.mark.anyio
async def test_sqlite_stores_window_state_and_migrates_old_databases(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema before window_state existed
        conn.execute(
            "CREATE TABLE checkpoints (mapping TEXT NOT NULL, shard_id TEXT NOT NULL,"
            " sequence_number TEXT, start_timestamp REAL, sub_sequence_number INTEGER,"
            " updated_at REAL NOT NULL, PRIMARY KEY (mapping, shard_id))"
        )
        conn.execute("INSERT INTO checkpoints VALUES ('m', 's0', '1', NULL, NULL, 0)")
    store = await SqliteCheckpointStore(path).open()
    try:
        assert await store.get("m", "s0") == Checkpoint("1")
        state = encode_window_state(Window(T0, T0 + 60), {"count": 2})
        await store.put("m", "s1", Checkpoint("5", window_state=state))
        assert await store.get("m", "s1") == Checkpoint("5", window_state=state)
        assert (await store.get_all("m"))["s1"].window_state == state
        await store.put("m", "s1", Checkpoint("6"))
        assert (await store.get("m", "s1")) == Checkpoint("6")
    finally:
        await store.aclose()


def test_dynamodb_item_carries_window_state() -> None:
    state = encode_window_state(Window(T0, T0 + 60), {"count": 2})
    sets, removes, values = _checkpoint_update(Checkpoint("5", window_state=state))
    assert "#windowState = :window" in sets
    assert values[":window"] == {"S": state}
    item = {"checkpoint": {"S": "5"}, "windowState": {"S": state}}
    assert _checkpoint_from(item) == Checkpoint("5", window_state=state)
    _, removes, _ = _checkpoint_update(Checkpoint("6"))
    assert "#windowState" in removes


# -- the retry policy ----------------------------------------------------------------------


def ok(payload: Any) -> InvokeResult:
    return InvokeResult(Outcome.SUCCESS, payload=payload, status_code=200, request_id="r")


WINDOWED = StreamRetryPolicy(require_window_state=True)


def test_answer_with_state_settles_the_batch() -> None:
    segment = first_segment([rec(1, T0), rec(2, T0)])
    [action] = WINDOWED.after_invoke(segment, ok({"state": {"n": 2}}))
    assert isinstance(action, Settle)
    assert len(action.records) == 2


def test_answer_without_state_is_a_counted_retry_without_bisection() -> None:
    policy = StreamRetryPolicy(require_window_state=True, bisect_on_function_error=True)
    segment = first_segment([rec(1, T0), rec(2, T0)])
    [action] = policy.after_invoke(segment, ok({"batchItemFailures": []}))
    assert isinstance(action, Retry)
    assert action.segment.retries == 1
    assert len(action.segment.records) == 2


def test_answers_without_state_exhaust_retries_with_function_error_null() -> None:
    policy = StreamRetryPolicy(maximum_retry_attempts=1, require_window_state=True)
    segment = first_segment([rec(1, T0)])
    [retry] = policy.after_invoke(segment, ok(None))
    assert isinstance(retry, Retry)
    [give_up] = policy.after_invoke(retry.segment, ok(None))
    assert isinstance(give_up, GiveUp)
    assert give_up.condition == "RetryAttemptsExhausted"
    assert give_up.invoke_count == 2
    assert give_up.last_result is not None
    assert give_up.last_result.function_error is None


def test_partial_answer_with_state_settles_up_to_the_failure() -> None:
    policy = StreamRetryPolicy(report_batch_item_failures=True, require_window_state=True)
    segment = first_segment([rec(1, T0), rec(2, T0), rec(3, T0)])
    answer = {"state": {"n": 1}, "batchItemFailures": [{"itemIdentifier": "2"}]}
    settle, retry = policy.after_invoke(segment, ok(answer))
    assert isinstance(settle, Settle)
    assert [r.sequence_number for r in settle.records] == ["1"]
    assert isinstance(retry, Retry)


def test_without_a_window_a_missing_state_is_success() -> None:
    [action] = StreamRetryPolicy().after_invoke(first_segment([rec(1, T0)]), ok(None))
    assert isinstance(action, Settle)


# -- configuration -------------------------------------------------------------------------


def settings(**mapping: Any) -> Any:
    return parse_settings(
        {
            "mappings": [
                {
                    "name": "m",
                    "event_source_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
                    "starting_position": "TRIM_HORIZON",
                    "target": {"type": "python", "handler": "x:y"},
                    **mapping,
                }
            ]
        }
    )


def test_config_accepts_a_window_of_0_to_900_seconds() -> None:
    assert settings().mappings[0].tumbling_window_in_seconds == 0
    assert settings(tumbling_window_in_seconds=900).mappings[0].tumbling_window_in_seconds == 900
    windowed = settings(tumbling_window_in_seconds=60, deaggregate_records=True)
    assert windowed.mappings[0].tumbling_window_in_seconds == 60


@pytest.mark.parametrize("seconds", [-1, 901])
def test_config_rejects_a_window_out_of_range(seconds: int) -> None:
    with pytest.raises(ConfigError, match="TumblingWindowInSeconds"):
        settings(tumbling_window_in_seconds=seconds)


def test_config_rejects_a_window_with_a_parallelization_factor() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tumbling_window_in_seconds=60, parallelization_factor=2)
    assert "parallelization_factor 1" in str(caught.value)
    assert settings(parallelization_factor=2, tumbling_window_in_seconds=0)


def test_config_rejects_a_window_on_sqs() -> None:
    with pytest.raises(ConfigError, match="tumbling_window_in_seconds"):
        parse_settings(
            {
                "mappings": [
                    {
                        "name": "q",
                        "event_source_arn": "arn:aws:sqs:us-east-1:123456789012:q",
                        "tumbling_window_in_seconds": 60,
                        "target": {"type": "python", "handler": "x:y"},
                    }
                ]
            }
        )


# -- the shard processor, with a fake function -----------------------------------------------


class FakeFunction:
    """Counts records into the state; its first answer may be a state of ``big`` bytes."""

    function_arn = "arn:aws:lambda:us-east-1:123456789012:function:f"

    def __init__(self, big: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.big = big

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.events.append(event)
        state = {"count": event["state"].get("count", 0) + len(event["Records"])}
        if self.big and len(self.events) == 1:
            state["pad"] = "x" * self.big
        return ok({"state": state})

    async def aclose(self) -> None:
        pass


async def process(
    chunks: list[Any],
    function: FakeFunction,
    *,
    store_limit: int = MAX_STATE_BYTES,
    policy: BatchPolicy | None = None,
) -> MemoryCheckpointStore:
    """Run one shard processor over ``chunks`` (by default: windows of 60 s, batches of 2)."""
    store = MemoryCheckpointStore(window_state_limit=store_limit)
    processor = ShardProcessor(
        mapping="m",
        shard_id="shardId-000000000000",
        target=function,
        store=store,
        policy=policy or BatchPolicy(batch_size=2, window_seconds=0, tumbling_window_seconds=60),
        routing=FailureRouting(kind="kinesis", stream_arn="arn:s", mapping_uuid="u"),
        stopping=anyio.Event(),
    )
    send, receive = anyio.create_memory_object_stream[Any](10)
    async with send:
        for chunk in chunks:
            await send.send(chunk)
    with anyio.fail_after(10):
        await processor.run(receive)
    return store


@pytest.mark.anyio
async def test_shard_end_closes_the_window_before_shard_end_is_checkpointed() -> None:
    function = FakeFunction()
    chunks = [[rec(1, T0 + 1), rec(2, T0 + 2), rec(3, T0 + 3), rec(4, T0 + 61)], ShardEnd()]
    store = await process(chunks, function)
    shapes = [
        ([r["seq"] for r in e["Records"]], e["isFinalInvokeForWindow"]) for e in function.events
    ]
    # Cut at batch_size, then at the window boundary; each window closed by a final invoke.
    assert shapes == [([1, 2], False), ([3], False), ([], True), ([4], False), ([], True)]
    assert [e["state"] for e in function.events if e["isFinalInvokeForWindow"]] == [
        {"count": 3},
        {"count": 1},
    ]
    writes = [c for _, _, c in store.writes]
    assert writes[-1] == Checkpoint("SHARD_END")
    assert writes[-2] == Checkpoint("4")  # the window closed, its state dropped
    assert decode_window_state(writes[0].window_state or "") == (
        Window(T0, T0 + 60),
        {"count": 2},
    )


@pytest.mark.anyio
async def test_state_over_one_mb_terminates_the_window_early() -> None:
    function = FakeFunction(big=MAX_STATE_BYTES)
    await process([[rec(1, T0 + 1), rec(2, T0 + 2), rec(3, T0 + 3)], ShardEnd()], function)
    early = function.events[1]
    assert early["isFinalInvokeForWindow"] is True
    assert early["isWindowTerminatedEarly"] is True
    assert early["state"]["count"] == 2
    # The window goes on with a fresh state, and closes normally at the shard's end.
    assert function.events[2]["state"] == {}
    assert function.events[2]["isWindowTerminatedEarly"] is False
    last = function.events[3]
    assert (last["isFinalInvokeForWindow"], last["isWindowTerminatedEarly"]) == (True, False)
    assert last["state"] == {"count": 1}


@pytest.mark.anyio
async def test_state_past_the_stores_limit_terminates_the_window_early() -> None:
    """A store that holds less than 1 MB (DynamoDB's 400 KB item) lowers the limit: the
    window ends early instead of the shard stalling on a checkpoint it cannot write."""
    function = FakeFunction(big=2_000)
    store = await process(
        [[rec(1, T0 + 1), rec(2, T0 + 2), rec(3, T0 + 3)], ShardEnd()],
        function,
        store_limit=1_000,
    )
    early = function.events[1]
    assert (early["isFinalInvokeForWindow"], early["isWindowTerminatedEarly"]) == (True, True)
    assert len(early["state"]["pad"]) == 2_000
    assert function.events[2]["state"] == {}
    stored = [c.window_state for _, _, c in store.writes if c.window_state is not None]
    assert stored, "the window's state was never checkpointed"
    assert all(len(text.encode()) <= 1_000 for text in stored)


def test_stores_declare_their_window_state_limit(tmp_path: Path) -> None:
    """SQLite holds Lambda's full 1 MB; a DynamoDB lease must fit a 400 KB item."""
    assert SqliteCheckpointStore(tmp_path / "c.db").window_state_limit == MAX_STATE_BYTES
    assert LeasedCheckpointStore.window_state_limit == WINDOW_STATE_LIMIT
    assert MAX_STATE_BYTES > WINDOW_STATE_LIMIT > 390_000


# -- the 6 MB cut counts the whole window event (issue 11, defect 10) -------------------------


class StatefulFunction(FakeFunction):
    """Keeps a state of ``big`` bytes across the window, as an aggregating function may."""

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.events.append(event)
        count = event["state"].get("count", 0) + len(event["Records"])
        return ok({"state": {"count": count, "pad": "s" * self.big}})


def sized(seq: int, arrival: float, data: int) -> StreamRecord:
    """A record whose declared size is its exact compact JSON size, as the converters make."""
    event_record = {"seq": seq, "data": "d" * data}
    size = len(json.dumps(event_record, separators=(",", ":")))
    return StreamRecord(str(seq), f"k{seq}", arrival, event_record, size)


def event_sizes(events: list[dict[str, Any]]) -> list[int]:
    """Each event's size as sent: its compact UTF-8 JSON bytes."""
    return [len(json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode()) for e in events]


@pytest.mark.anyio
async def test_batches_with_a_large_state_stay_within_the_payload_limit() -> None:
    """With a 3 KB state and a 10 KB limit, each event as sent (records, window, state and
    the other fields) stays within the limit; before, only the records were counted."""
    limit = 10_000
    function = StatefulFunction(big=3_000)
    policy = BatchPolicy(
        batch_size=100, window_seconds=0, tumbling_window_seconds=60, max_bytes=limit
    )
    records = [sized(i, T0 + 1, 900) for i in range(40)]
    await process([records, ShardEnd()], function, policy=policy)
    sizes = event_sizes(function.events)
    assert max(sizes) <= limit, sizes
    delivered = [r["seq"] for e in function.events for r in e["Records"]]
    assert delivered == list(range(40))
    # Batches after the first carry the 3 KB state and so hold fewer records.
    counts = [len(e["Records"]) for e in function.events if e["Records"]]
    assert counts[0] > counts[1]


@pytest.mark.anyio
async def test_a_retry_whose_state_grew_leaves_what_no_longer_fits_for_later() -> None:
    """A partial failure settles part of a batch and adopts the returned (larger) state; the
    retry of the rest is cut again so that its event still fits."""
    limit = 10_000

    class GrowingState(FakeFunction):
        async def invoke(self, event: dict[str, Any]) -> InvokeResult:
            self.events.append(event)
            records = event["Records"]
            if len(self.events) == 1:
                failed = str(records[1]["seq"])
                return ok(
                    {
                        "state": {"pad": "s" * 4_000},
                        "batchItemFailures": [{"itemIdentifier": failed}],
                    }
                )
            return ok({"state": event["state"]})

    function = GrowingState()
    policy = BatchPolicy(
        batch_size=100,
        window_seconds=0,
        tumbling_window_seconds=60,
        max_bytes=limit,
        retry=StreamRetryPolicy(report_batch_item_failures=True),
    )
    records = [sized(i, T0 + 1, 900) for i in range(10)]
    await process([records, ShardEnd()], function, policy=policy)
    sizes = event_sizes(function.events)
    assert max(sizes) <= limit, sizes
    delivered = [r["seq"] for e in function.events[1:] for r in e["Records"]]
    assert delivered == list(range(1, 10))


# -- review attacks (issue 11 follow-up) -----------------------------------------------------


def test_a_state_holding_a_lone_surrogate_is_an_invalid_answer() -> None:
    """JSON may escape half a surrogate pair (``"\\ud800"``); such a state is not Unicode text
    and cannot be measured, stored or sent as UTF-8. It is a malformed answer, not a crash."""
    answer = parse_window_response({"state": {"x": "\ud800"}}, payload_is_json=True)
    assert answer.kind == "invalid"
    assert answer.reason is not None
    assert "surrogate" in answer.reason


@pytest.mark.anyio
async def test_a_lone_surrogate_state_is_retried_not_a_crash_of_the_shard() -> None:
    """Before: ``state_too_large`` raised UnicodeEncodeError out of the shard processor."""

    class SurrogateOnce(FakeFunction):
        async def invoke(self, event: dict[str, Any]) -> InvokeResult:
            self.events.append(event)
            if len(self.events) == 1:
                return ok({"state": {"x": "\ud800"}})
            return ok({"state": {"n": len(event["Records"])}})

    function = SurrogateOnce()
    store = await process([[rec(1, T0 + 1), rec(2, T0 + 2)], ShardEnd()], function)
    batches = [[r["seq"] for r in e["Records"]] for e in function.events]
    # The malformed answer is retried with the same (empty) state, then the window closes.
    assert batches == [[1, 2], [1, 2], []]
    assert function.events[1]["state"] == {}
    assert store.writes[-1][2] == Checkpoint("SHARD_END")
