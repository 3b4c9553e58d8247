"""Review 13e: the inline intake runs the filter, and with it the checkpoint write for records
no filter matches, inside the scope a drain cancels (``ShardProcessor.run_with``).

A checkpoint write in progress is never abandoned by a drain (``poller.streams.stopping``):
a drain that arrives while the write for filtered-out records waits on a slow store must let
that write finish, and the run must return only after it did.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from poller.core.filtering.filter_set import compile_filters
from poller.streams.processor import BatchPolicy, ChunkSink, FailureRouting, ShardProcessor
from poller.testing import STREAM_ARN, FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from poller.types import Checkpoint, StreamRecord
from tests.component.harness import FAST_BACKOFF, LIMIT, MAPPING, SHARD, puts, records, written
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class SlowStore(MemoryCheckpointStore):
    """A store whose writes wait for ``go``; ``started`` counts the writes begun."""

    def __init__(self) -> None:
        super().__init__()
        self.go = anyio.Event()
        self.started = 0

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        self.started += 1
        await self.go.wait()
        await super().put(mapping, shard_id, checkpoint)


def chunk_of(keys: Sequence[str]) -> list[StreamRecord]:
    return records(FakeStreamApi(), puts(*keys))


async def test_a_drain_during_the_filtered_records_checkpoint_lets_it_finish() -> None:
    target, store, stopping = RecordingTarget(), SlowStore(), anyio.Event()
    filters = compile_filters(['{"partitionKey": ["nothing-has-this-key"]}'], source="kinesis")
    processor = ShardProcessor(
        mapping=MAPPING,
        shard_id=SHARD,
        target=target,
        store=store,
        policy=BatchPolicy(batch_size=2, window_seconds=0.0, backoff=FAST_BACKOFF, filters=filters),
        routing=FailureRouting(kind="kinesis", stream_arn=STREAM_ARN, mapping_uuid="uuid"),
        stopping=stopping,
    )
    chunk = chunk_of(["a", "b", "c"])
    returned = anyio.Event()

    async def reader(sink: ChunkSink) -> None:
        await sink.send(chunk)
        await anyio.sleep_forever()  # reading on (an idle shard) until the drain

    async def run() -> None:
        await processor.run_with(reader)
        returned.set()

    with anyio.fail_after(LIMIT * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_until(lambda: store.started == 1, LIMIT, "the filtered records' write")
            stopping.set()
            processor.interrupt()
            for _ in range(100):  # let the drained run unwind as far as it will
                await anyio.lowlevel.checkpoint()
            assert not returned.is_set(), "the run returned with its checkpoint write pending"
            store.go.set()
            await wait_until(returned.is_set, LIMIT, "the drained run returned")
    assert target.events == []
    assert [c.sequence_number for c in written(store)] == [chunk[-1].sequence_number]
