"""Component tests of the StreamMappingRunner over the scripted FakeStreamApi: the real reader,
processor and runner, with shards, pages and read errors scripted in memory.

Covers what only the runner decides: shard lineage (children after their parents), where a
shard resumes after a restart (its checkpoint, inside a KPL aggregate too), recovery from
read errors, and the drain of a whole mapping. Each test takes well under a second or two
(the reader keeps its production pace of at most five reads a second per shard).
"""

from __future__ import annotations

import anyio
import pytest

from poller.errors import IteratorExpired, Throttled
from poller.ports import StartPosition
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingMetrics,
    RecordingTarget,
    Slow,
    function_error,
    kpl_aggregate,
    partial_failure,
)
from poller.types import SHARD_END, Checkpoint
from tests.component.harness import (
    LIMIT,
    MAPPING,
    SHARD,
    make_runner,
    mapping_config,
    puts,
    running,
    written,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

PARENT, LEFT, RIGHT = "shardId-000000000001", "shardId-000000000002", "shardId-000000000003"


def _sequences(raws: list[dict[str, object]]) -> list[str]:
    return [str(raw["SequenceNumber"]) for raw in raws]


def _checkpoint_is(store: MemoryCheckpointStore, shard_id: str, sequence: str) -> bool:
    checkpoint = store.checkpoints.get((MAPPING, shard_id))
    return checkpoint is not None and checkpoint.sequence_number == sequence


async def test_child_shards_start_only_after_their_parent_has_finished(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    api.add_shard(PARENT)
    parent = api.add_page(PARENT, puts("a", "b")) + api.add_page(PARENT, puts("c"))
    api.add_shard(LEFT, parents=[PARENT])
    api.add_shard(RIGHT, parents=[PARENT])
    left = api.add_page(LEFT, puts("d", "e"))
    right = api.add_page(RIGHT, puts("f"))
    api.close_shard(PARENT, children=[LEFT, RIGHT])
    runner = make_runner(mapping_config(), api=api, target=target, store=store, stopping=stopping)
    async with running(runner, stopping):
        await wait_until(
            lambda: (
                _checkpoint_is(store, LEFT, _sequences(left)[-1])
                and _checkpoint_is(store, RIGHT, _sequences(right)[-1])
            ),
            LIMIT,
            "both children read to their last record",
        )
    shards_in_order = [shard for _, shard, _ in store.writes]
    first_child_write = min(shards_in_order.index(LEFT), shards_in_order.index(RIGHT))
    assert store.writes[first_child_write - 1][1:] == (PARENT, Checkpoint(SHARD_END))
    delivered = target.delivered()
    assert delivered[:3] == _sequences(parent)
    assert sorted(delivered[3:]) == sorted(_sequences(left) + _sequences(right))
    # The children's readers were created only once the parent was read to its end.
    first_child_call = next(i for i, c in enumerate(api.calls) if c[1] in (LEFT, RIGHT))
    last_parent_call = max(i for i, c in enumerate(api.calls) if c[1] == PARENT)
    assert last_parent_call < first_child_call


async def test_a_restarted_mapping_resumes_after_its_checkpoint(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    api.add_shard(SHARD)
    before = _sequences(api.add_page(SHARD, puts("a", "b", "c")))
    first = RecordingTarget()
    runner = make_runner(mapping_config(), api=api, target=first, store=store, stopping=stopping)
    async with running(runner, stopping):
        await wait_until(lambda: _checkpoint_is(store, SHARD, before[-1]), LIMIT, "page 1 done")
    after = _sequences(api.add_page(SHARD, puts("d", "e")))
    second, stopping_again = RecordingTarget(), anyio.Event()
    runner = make_runner(
        mapping_config(), api=api, target=second, store=store, stopping=stopping_again
    )
    async with running(runner, stopping_again):
        await wait_until(lambda: _checkpoint_is(store, SHARD, after[-1]), LIMIT, "page 2 done")
    assert first.delivered() == before
    assert second.delivered() == after
    assert api.iterator_starts(SHARD)[-1] == StartPosition("AFTER_SEQUENCE_NUMBER", before[-1])


@pytest.mark.parametrize("settled_through", [1, 0])
async def test_a_restart_resumes_inside_a_partly_settled_kpl_aggregate(
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    settled_through: int,
) -> None:
    api = FakeStreamApi(deaggregate=True)
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [kpl_aggregate([("k1", b"1"), ("k2", b"2"), ("k3", b"3")])])
    plain = _sequences(api.add_page(SHARD, [Put("k4", b"4")]))[0]
    aggregate = _sequences(raws)[0]
    users = [f"{aggregate}:{sub}" for sub in range(3)]
    mapping = mapping_config(
        deaggregate_records=True, function_response_types=["ReportBatchItemFailures"]
    )
    # First run: the function settles the user records up to ``settled_through``, then fails.
    first = RecordingTarget(default=function_error())
    first.script(partial_failure(users[settled_through + 1]))
    runner = make_runner(mapping, api=api, target=first, store=store, stopping=stopping)
    async with running(runner, stopping):
        await wait_until(
            lambda: store.checkpoints.get((MAPPING, SHARD)), LIMIT, "a sub-sequence checkpoint"
        )
    assert written(store) == [
        Checkpoint(sequence_number=aggregate, sub_sequence_number=settled_through)
    ]
    # Restart: the aggregate is read again and its settled user records skipped.
    second, stopping_again = RecordingTarget(), anyio.Event()
    runner = make_runner(mapping, api=api, target=second, store=store, stopping=stopping_again)
    async with running(runner, stopping_again):
        await wait_until(lambda: _checkpoint_is(store, SHARD, plain), LIMIT, "the plain record")
    assert api.iterator_starts(SHARD)[-1] == StartPosition(
        "AT_SEQUENCE_NUMBER", aggregate, settled_through=settled_through
    )
    assert second.delivered() == [*users[settled_through + 1 :], plain]


async def test_read_errors_resume_after_the_last_record_read_losing_and_repeating_nothing(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    api.add_shard(SHARD)
    sent = _sequences(api.add_page(SHARD, puts("a", "b")))
    api.add_error(SHARD, IteratorExpired("iterator expired"))
    sent += _sequences(api.add_page(SHARD, puts("c")))
    api.add_error(SHARD, Throttled("rate exceeded"))
    sent += _sequences(api.add_page(SHARD, puts("d", "e")))
    api.close_shard(SHARD)
    runner = make_runner(mapping_config(), api=api, target=target, store=store, stopping=stopping)
    async with running(runner, stopping):
        await wait_until(lambda: _checkpoint_is(store, SHARD, SHARD_END), LIMIT, "shard end")
    assert target.delivered() == sent
    assert [p.type for p in api.iterator_starts(SHARD)] == [
        "TRIM_HORIZON",
        "AFTER_SEQUENCE_NUMBER",
        "AFTER_SEQUENCE_NUMBER",
    ]


async def test_a_trimmed_checkpoint_resumes_from_the_oldest_record_held_and_reports_the_gap(
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    metrics: RecordingMetrics,
) -> None:
    api = FakeStreamApi(reports_trims=True)
    api.add_shard(SHARD)
    old = _sequences(api.add_page(SHARD, puts("a", "b", "c")))
    held = _sequences(api.add_page(SHARD, puts("d")))
    await store.put(MAPPING, SHARD, Checkpoint(sequence_number=old[0]))
    api.trim(SHARD, 3)
    runner = make_runner(
        mapping_config(), api=api, target=target, store=store, stopping=stopping, metrics=metrics
    )
    async with running(runner, stopping):
        await wait_until(lambda: _checkpoint_is(store, SHARD, held[-1]), LIMIT, "record d")
    assert target.delivered() == held
    assert metrics.count("retention_gap", mapping=MAPPING) == 1
    # The reader was refused the trimmed position, then went to the trim horizon.
    assert [p.type for p in api.iterator_starts(SHARD)] == ["AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON"]


async def test_stopping_a_mapping_drains_the_invocation_in_flight_and_checkpoints_it(
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
) -> None:
    api.add_shard(SHARD)
    sent = _sequences(api.add_page(SHARD, puts("a", "b", "c", "d")))
    release = anyio.Event()
    target.script(Slow(release))
    runner = make_runner(
        mapping_config(batch_size=2), api=api, target=target, store=store, stopping=stopping
    )
    async with running(runner, stopping):
        await wait_until(lambda: target.in_flight == 1, LIMIT, "a batch in flight")
        stopping.set()
        release.set()
    assert target.delivered() == sent[:2]
    assert written(store) == [Checkpoint(sequence_number=sent[1])]
