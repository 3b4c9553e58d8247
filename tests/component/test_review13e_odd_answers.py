"""Review 13e: odd handler answers while the inline intake holds chunks read ahead of the lanes.

The first batch is answered with something Lambda does not take as it is (``batchItemFailures``
naming an id that is not in the batch, which is a function error; a function error with no
retry left and no destination, which drops the batch) while the rest of the shard waits in
the lane's buffer and in the intake's queue. Whatever the answer, every later record must be
invoked once, in read order after the first batch's fate, and the checkpoint must end at the
last record: nothing read ahead is lost, repeated or reordered behind the odd answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from poller.core.retry_policy import StreamRetryPolicy
from poller.streams.processor import BatchPolicy, ChunkSink, FailureRouting, ShardProcessor
from poller.testing import (
    STREAM_ARN,
    FakeStreamApi,
    MemoryCheckpointStore,
    RecordingTarget,
    function_error,
    partial_failure,
    success,
)
from poller.types import InvokeResult, ShardEnd, StreamRecord
from tests.component.harness import FAST_BACKOFF, LIMIT, MAPPING, SHARD, puts, records, written

pytestmark = pytest.mark.anyio

KEYS = [f"k{i}" for i in range(12)]


def chunks_of(keys: Sequence[str], size: int) -> list[list[StreamRecord]]:
    read = records(FakeStreamApi(), puts(*keys))
    return [read[i : i + size] for i in range(0, len(read), size)]


def processor_for(target: RecordingTarget, store: MemoryCheckpointStore) -> ShardProcessor:
    return ShardProcessor(
        mapping=MAPPING,
        shard_id=SHARD,
        target=target,
        store=store,
        policy=BatchPolicy(
            batch_size=2,
            window_seconds=0.0,
            backoff=FAST_BACKOFF,
            retry=StreamRetryPolicy(maximum_retry_attempts=0, report_batch_item_failures=True),
        ),
        routing=FailureRouting(kind="kinesis", stream_arn=STREAM_ARN, mapping_uuid="uuid"),
        stopping=anyio.Event(),
    )


@pytest.mark.parametrize(
    "first_answer",
    [
        partial_failure("49999999999999999999999999999999999999999999999999999999"),
        partial_failure(""),
        success({"batchItemFailures": [{"itemIdentifier": {"not": "a string"}}]}),
        success({"batchItemFailures": "garbage"}),
        function_error("the handler raised"),
    ],
    ids=["unknown-id", "empty-id", "object-id", "not-a-list", "raised"],
)
async def test_an_odd_first_answer_loses_nothing_read_ahead(first_answer: InvokeResult) -> None:
    target, store = RecordingTarget(), MemoryCheckpointStore()
    target.script(first_answer)
    processor = processor_for(target, store)
    chunks = chunks_of(KEYS, 3)
    positions = [r.sequence_number for chunk in chunks for r in chunk]

    async def reader(sink: ChunkSink) -> None:
        for chunk in chunks:
            await sink.send(chunk)
        await sink.send(ShardEnd(()))

    with anyio.fail_after(LIMIT):
        ended = await processor.run_with(reader)
    delivered = target.delivered()
    # The first batch was tried once and given up on (no retry left, no destination): its
    # two records, then every other record once, in read order.
    assert delivered == positions, delivered
    assert ended == ShardEnd(())
    assert written(store)[-1].sequence_number == "SHARD_END"
    assert [c.sequence_number for c in written(store)][-2] == positions[-1]
