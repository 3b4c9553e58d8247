"""A hostile review of input templates through the real engines on in-memory fakes: bisection,
tumbling windows and KPL aggregates with a template, and a template that fails to render.

The engines build, judge and retry the original records; the target sees only what the
template made of them. These tests check that every way a batch is split, windowed or failed
still settles the original records, and that a failed render loses nothing and logs no data.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, cast

import anyio
import pytest
from structlog.testing import capture_logs

from poller.core.retry_policy import StreamRetryPolicy
from poller.core.transform import PipeVariables, Template, compile_template
from poller.targets.transform import TransformingTarget
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingTarget,
    function_error,
    kpl_aggregate,
    partial_failure,
    success,
)
from poller.types import SHARD_END, Checkpoint, InvokeResult
from tests.component.harness import (
    LIMIT,
    fed_to_the_end,
    feeding,
    make_processor,
    positions,
    records,
    written,
)
from tests.component.sqs_fakes import FakeQueue, fake_mapping, runner_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

VARIABLES = PipeVariables(pipe_name="review")
#: What each transformed stream record carries: its position and its decoded payload.
STREAM_TEMPLATE = (
    '{"seq": <$.kinesis.sequenceNumber>, "sub": <$.kinesis.subSequenceNumber>,'
    ' "data": <$.kinesis.data>}'
)


def transforming(inner: RecordingTarget, template: str, shape: Any = "array") -> TransformingTarget:
    return TransformingTarget(inner, compile_template(template), shape=shape, variables=VARIABLES)


def items(event: Any) -> list[dict[str, Any]]:
    """The transformed records of an event of either shape."""
    return cast("list[dict[str, Any]]", event["Records"] if isinstance(event, dict) else event)


# -- bisection --------------------------------------------------------------------------------


async def test_bisection_splits_the_original_batch_and_renders_each_half_again(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    def fail_poison(event: Any) -> InvokeResult:
        poisoned = any(r["data"] == {"poison": True} for r in items(event))
        return function_error() if poisoned else success()

    inner = RecordingTarget(default=fail_poison)
    bodies = [{"poison": False, "n": 0}, {"poison": False, "n": 1}, {"poison": True}, {"n": 3}]
    chunk = records(api, [Put(f"k{i}", json.dumps(b).encode()) for i, b in enumerate(bodies)])
    processor = make_processor(
        target=transforming(inner, STREAM_TEMPLATE),
        store=store,
        stopping=stopping,
        retry=StreamRetryPolicy(maximum_retry_attempts=1, bisect_on_function_error=True),
    )
    await fed_to_the_end(processor, stopping, chunk)
    sequence = positions(chunk)
    seen = [[r["seq"] for r in items(e)] for e in inner.events]
    # Every invocation is a run of the original records in order, rendered from them.
    for batch in seen:
        start = sequence.index(batch[0])
        assert batch == sequence[start : start + len(batch)]
    assert [sequence[2]] in seen  # narrowed down to the poison record alone
    delivered = {
        r["seq"]
        for e in inner.events
        if fail_poison(e).outcome.value == "success"
        for r in items(e)
    }
    assert delivered == {sequence[0], sequence[1], sequence[3]}
    assert written(store)[-2:] == [
        Checkpoint(sequence_number=sequence[3]),
        Checkpoint(sequence_number=SHARD_END),
    ]


# -- tumbling windows -------------------------------------------------------------------------


def _counting_window(event: Any) -> InvokeResult:
    """A windowed function of transformed records: sums their ``n`` in its state."""
    assert isinstance(event, dict)
    total = event["state"].get("total", 0) + sum(r["data"]["n"] for r in event["Records"])
    return success({"state": {"total": total}})


async def test_a_tumbling_window_keeps_its_state_and_fields_through_a_records_template(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    inner = RecordingTarget(default=_counting_window)
    first = math.floor(time.time() / 60) * 60 - 600  # a window long closed by the wall clock
    chunk = records(
        api,
        [Put(f"k{n}", json.dumps({"n": n}).encode(), arrival=first + 1) for n in (1, 2, 3)],
    )
    processor = make_processor(
        target=transforming(inner, STREAM_TEMPLATE, shape="records"),
        store=store,
        stopping=stopping,
        batch_size=2,
        tumbling_window_seconds=60,
    )
    async with feeding(processor, stopping) as feed:
        await feed.send(chunk)
        await wait_until(lambda: len(inner.events) >= 3, LIMIT, "the window closed")
        await feed.end()
    summary = [
        ([r["data"]["n"] for r in e["Records"]], e["state"], e["isFinalInvokeForWindow"])
        for e in inner.events
    ]
    assert summary == [([1, 2], {}, False), ([3], {"total": 3}, False), ([], {"total": 6}, True)]
    assert all(e["window"] == inner.events[0]["window"] for e in inner.events)


# -- KPL aggregates ---------------------------------------------------------------------------


async def test_a_kpl_user_record_reported_as_seq_colon_sub_from_the_template_settles_the_rest(
    store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    api = FakeStreamApi(deaggregate=True)
    users = [(f"k{n}", json.dumps({"n": n}).encode()) for n in range(3)]
    chunk = records(api, [kpl_aggregate(users), Put("k9", json.dumps({"n": 9}).encode())])
    reported: list[str] = []

    def fail_second_once(event: Any) -> InvokeResult:
        second = [r for r in items(event) if r["data"]["n"] == 1]
        if second and not reported:
            reported.append(f"{second[0]['seq']}:{second[0]['sub']}")
            return partial_failure(reported[0])
        return success()

    inner = RecordingTarget(default=fail_second_once)
    processor = make_processor(
        target=transforming(inner, STREAM_TEMPLATE),
        store=store,
        stopping=stopping,
        retry=StreamRetryPolicy(report_batch_item_failures=True),
    )
    await fed_to_the_end(processor, stopping, chunk)
    assert reported == [positions(chunk)[1]]
    assert [[r["data"]["n"] for r in items(e)] for e in inner.events] == [[0, 1, 2, 9], [1, 2, 9]]
    assert written(store)[-1] == Checkpoint(sequence_number=SHARD_END)


# -- a render that fails ----------------------------------------------------------------------


class _FailingOn:
    """A template whose render raises on records whose body holds ``marker`` (the wrapper's
    last line of defence: the real renderer is meant never to raise)."""

    def __init__(self, marker: str) -> None:
        self._marker = marker
        self._real = compile_template("<$.body>")
        self.renders = 0

    def render(self, record: Any, variables: PipeVariables) -> Any:
        self.renders += 1
        if self._marker in record["body"]:
            raise RuntimeError(f"cannot render {record['body']}")
        return self._real.render(record, variables)

    def render_sized(self, record: Any, variables: PipeVariables) -> tuple[Any, int]:
        """The same, with a size (for a wrapper that measures what it renders)."""
        value = self.render(record, variables)
        return value, len(json.dumps(value))


async def test_a_failed_render_returns_the_sqs_batch_to_the_queue_and_logs_no_record_data() -> None:
    secret = "card 4111-1111-1111-1111"
    queue = FakeQueue()
    queue.send("a", json.dumps({"ok": 1}))
    queue.send("b", json.dumps({"note": secret}))
    template = _FailingOn("4111")
    inner = RecordingTarget()
    target = TransformingTarget(
        inner, cast("Template", template), shape="records", variables=VARIABLES
    )
    mapping = fake_mapping(queue, name="review")
    with capture_logs() as logs:
        async with runner_running(mapping, queue, target, limit=LIMIT * 2):
            await wait_until(lambda: template.renders >= 2, LIMIT, "a render failed", 0.002)
            await wait_until(lambda: sorted(queue.in_flight()) == ["a", "b"], LIMIT, "held", 0.002)
            queue.expire_visibility()
            await wait_until(lambda: template.renders >= 4, LIMIT, "tried again", 0.002)
    # Nothing was delivered nor deleted: both messages stay in the queue to be retried.
    assert inner.events == []
    assert queue.deleted == []
    failures = [entry for entry in logs if entry.get("event") == "input_template.failed"]
    assert failures
    assert all(entry.get("error_type") == "RuntimeError" for entry in failures)
    assert not [entry for entry in logs if "4111" in repr(entry)]
