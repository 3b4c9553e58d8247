"""Input templates and partial batch responses, through the real engines on in-memory fakes.

The target sees only the transformed records; the engines build, judge and retry the original
batch. So the ids a handler reports from the transformed payload (an SQS ``messageId``, a
Kinesis ``sequenceNumber`` carried by the template) settle the original records: the others
are deleted or checkpointed, the reported ones are retried, and the retries are transformed
again from the original records.
"""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import pytest

from poller.core.retry_policy import StreamRetryPolicy
from poller.core.transform import PipeVariables, compile_template
from poller.targets.transform import TransformingTarget
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingTarget,
    partial_failure,
    success,
)
from poller.types import SHARD_END, Checkpoint, InvokeResult
from tests.component.harness import (
    LIMIT,
    fed_to_the_end,
    make_processor,
    positions,
    records,
    written,
)
from tests.component.sqs_fakes import FakeQueue, fake_mapping, runner_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

VARIABLES = PipeVariables(pipe_name="orders")


def fail_where_flagged(key: str, id_field: str) -> Any:
    """A handler of transformed records: reports the ``id_field`` of those whose ``key`` is
    true, and only the first time each one is seen."""
    seen: set[str] = set()

    def answer(event: Any) -> InvokeResult:
        items = event["Records"] if isinstance(event, dict) else event
        failed = [r[id_field] for r in items if r[key] and r[id_field] not in seen]
        seen.update(failed)
        return partial_failure(*failed) if failed else success()

    return answer


# -- SQS: message ids ---------------------------------------------------------------------------


async def test_sqs_ids_reported_from_transformed_records_settle_the_originals() -> None:
    queue = FakeQueue()
    for index, message_id in enumerate(["a", "b", "c", "d"]):
        queue.send(message_id, json.dumps({"order": index, "retry": message_id in "bd"}))
    inner = RecordingTarget(default=fail_where_flagged("retry", "id"))
    target = TransformingTarget(
        inner,
        compile_template('{"id": <$.messageId>, "order": <$.body.order>, "retry": <$.body.retry>}'),
        shape="records",
        variables=VARIABLES,
    )
    async with runner_running(fake_mapping(queue), queue, target, limit=LIMIT):
        await wait_until(lambda: set(queue.deleted) == {"a", "c"}, LIMIT, "a, c deleted", 0.002)
        assert sorted(queue.in_flight()) == ["b", "d"]
        queue.expire_visibility()
        await wait_until(lambda: len(queue.deleted) == 4, LIMIT, "all deleted", 0.002)
    first = inner.events[0]["Records"]
    assert first == [
        {"id": "a", "order": 0, "retry": False},
        {"id": "b", "order": 1, "retry": True},
        {"id": "c", "order": 2, "retry": False},
        {"id": "d", "order": 3, "retry": True},
    ]
    # The retry is rendered again from the original messages.
    assert [r["id"] for r in inner.events[1]["Records"]] == ["b", "d"]
    assert queue.remaining() == []


# -- Kinesis: sequence numbers ------------------------------------------------------------------


async def test_kinesis_sequence_numbers_reported_from_a_bare_array_checkpoint_the_originals(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    puts = [Put(f"k{i}", json.dumps({"order": i, "bad": i == 2}).encode()) for i in range(4)]
    chunk = records(api, puts)
    inner = RecordingTarget(default=fail_where_flagged("bad", "seq"))
    target = TransformingTarget(
        inner,
        compile_template(
            '{"seq": <$.kinesis.sequenceNumber>, "order": <$.kinesis.data.order>,'
            ' "bad": <$.kinesis.data.bad>}'
        ),
        shape="array",
        variables=VARIABLES,
    )
    processor = make_processor(
        target=target,
        store=store,
        stopping=stopping,
        retry=StreamRetryPolicy(report_batch_item_failures=True),
    )
    await fed_to_the_end(processor, stopping, chunk)
    sequence = positions(chunk)
    # The handler got bare arrays of transformed records: all four, then from the failed one.
    arrays = [cast("list[dict[str, Any]]", event) for event in inner.events]
    assert [[r["seq"] for r in array] for array in arrays] == [sequence, sequence[2:]]
    assert [r["order"] for r in arrays[0]] == [0, 1, 2, 3]
    assert written(store) == [
        Checkpoint(sequence_number=sequence[1]),
        Checkpoint(sequence_number=sequence[3]),
        Checkpoint(sequence_number=SHARD_END),
    ]
