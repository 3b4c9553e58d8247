"""Review 13d: the inline intake (8304eb7) under the shard supervisor, reading a
``FakeStreamApi`` with a real ``ShardReader`` in the shard's own task.

* a closed shard whose last page is still queued behind a slow batch is reported ended (the
  runner then starts its children) only once every record was invoked and SHARD_END written;
* a target that raises (a bug) while chunks are queued crashes the run; the restart reads
  again from the checkpoint, which never passed a record not invoked, and every record is
  invoked in the end, each key in order.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.observability.metrics import NullMetrics
from poller.streams.ownership import SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget, Slow, success
from poller.types import InvokeResult
from tests.component.harness import LIMIT, MAPPING, SHARD, mapping_config, puts, written
from tests.support.waiting import wait_until

#: The deadline of a run that crashes and restarts (see its test).
CRASH_RUN_LIMIT = max(LIMIT, 30.0)

pytestmark = pytest.mark.anyio


def supervisor(
    api: FakeStreamApi,
    target: Any,
    store: MemoryCheckpointStore,
    on_shard_end: Any,
    **fields: Any,
) -> ShardSupervisor:
    return ShardSupervisor(
        mapping_config(batch_size=2, maximum_batching_window_in_seconds=0, **fields),
        api=api,
        kind="kinesis",
        target=target,
        ownership=SoloOwnership(store, MAPPING),
        stopping=anyio.Event(),
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=on_shard_end,
    )


async def test_a_closed_shard_ends_only_after_its_queued_last_page_is_invoked() -> None:
    api, store = FakeStreamApi(), MemoryCheckpointStore()
    api.add_shard(SHARD)
    for page in (("a", "b"), ("c", "d"), ("e", "f")):
        api.add_page(SHARD, puts(*page))
    api.close_shard(SHARD, children=["shardId-000000000009"])
    release = anyio.Event()
    target = RecordingTarget()
    target.script(Slow(release))
    at_end: list[tuple[list[str], list[str]]] = []

    def ended() -> None:
        at_end.append((target.delivered(), [str(c.sequence_number) for c in written(store)]))

    sup = supervisor(api, target, store, ended)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(
                lambda: api.calls.count(("get_records", SHARD, 4)) == 1 and target.in_flight,
                LIMIT,
                "the last page read while the first batch is in flight",
            )
            for _ in range(50):  # let the reader send its ShardEnd, if it can
                await anyio.lowlevel.checkpoint()
            assert not at_end, "the shard was reported ended while its records were in flight"
            release.set()
            await wait_until(lambda: at_end, LIMIT, "the shard reported ended")
    delivered, checkpoints = at_end[0]
    assert len(delivered) == 6
    assert len(set(delivered)) == 6
    assert checkpoints[-1] == "SHARD_END"


async def test_a_target_bug_with_chunks_queued_restarts_without_skipping_a_record() -> None:
    api, store = FakeStreamApi(), MemoryCheckpointStore()
    api.add_shard(SHARD)
    keys = ["k1", "k2", "k1", "k2", "k1", "k2", "k1", "k2", "k1", "k2"]
    read: list[str] = []
    for i in range(0, len(keys), 2):
        read += [raw["SequenceNumber"] for raw in api.add_page(SHARD, puts(*keys[i : i + 2]))]
    api.close_shard(SHARD)
    release = anyio.Event()
    calls: list[int] = []

    async def answer(event: dict[str, Any]) -> InvokeResult:
        calls.append(len(calls))
        if len(calls) == 2:
            await release.wait()
            raise RuntimeError("a bug in the target")
        return success()

    target = RecordingTarget(answer)
    ended = anyio.Event()
    sup = supervisor(api, target, store, ended.set)
    # The whole run holds a crash, its logged traceback (rendered with locals on a console:
    # seconds under coverage on a loaded machine) and the restart backoff: more than LIMIT.
    with anyio.fail_after(CRASH_RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: len(calls) == 2, LIMIT, "the second batch in flight")
            await wait_until(
                lambda: sum(1 for c in api.calls if c[0] == "get_records") >= 4,
                LIMIT,
                "pages queued behind it",
            )
            checkpoint = [str(c.sequence_number) for c in written(store)]
            release.set()
            await ended.wait()
    invoked = target.delivered()
    # Before the crash, the checkpoint named only records invoked by then.
    assert not checkpoint or set(read[: read.index(checkpoint[-1]) + 1]) <= set(invoked)
    assert set(invoked) == set(read), "a record was skipped across the restart"
    assert written(store)[-1].sequence_number == "SHARD_END"
    # Each key in order within each run (a restart re-delivers from the checkpoint).
    seen: dict[str, list[str]] = {}
    for event in target.events[2:]:
        for record in event.get("Records", []):
            kinesis = record["kinesis"]
            seen.setdefault(kinesis["partitionKey"], []).append(kinesis["sequenceNumber"])
    for sequences in seen.values():
        assert sequences == sorted(sequences, key=int)
