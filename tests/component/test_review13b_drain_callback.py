"""Review 13b: the drain reaches a shard's run through ``_ShardControl.request_drain`` (a
callback) at every point of the run's life: before the run starts, while its batch is in
flight, between runs after a crash, raced by a lost lease, and twice (shutdown and handoff).
A drained shard finishes its batch in flight, checkpoints, is released and leaves ``running``;
a lost one is not released."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget, Slow
from tests.component.harness import (
    LIMIT,
    SHARD,
    RecordingOwnership,
    make_supervisor,
    puts,
    written,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class HeldStore(MemoryCheckpointStore):
    """A store whose ``get`` waits for ``go`` and fails ``failures`` times first."""

    def __init__(self) -> None:
        super().__init__()
        self.go = anyio.Event()
        self.go.set()
        self.failures = 0
        self.failed = 0
        self.gets = 0

    async def get(self, mapping: str, shard_id: str) -> Any:
        self.gets += 1
        await self.go.wait()
        if self.failures:
            self.failures -= 1
            self.failed += 1
            raise RuntimeError("checkpoint read failed")
        return await super().get(mapping, shard_id)


async def test_a_handoff_during_the_batch_in_flight_finishes_it_and_releases() -> None:
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a", "b"))
    release = anyio.Event()
    target = RecordingTarget()
    target.script(Slow(release))
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: target.in_flight == 1, LIMIT, "target.in_flight == 1")
            sup.stop(SHARD, lost=False)
            reads = len([c for c in api.calls if c[0] == "get_records"])
            api.add_page(SHARD, puts("c"))  # must not be read any more
            assert SHARD in sup.running
            release.set()
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "SHARD not in sup.running")
    assert ownership.released == [SHARD]
    assert len([c for c in api.calls if c[0] == "get_records"]) == reads  # no read after
    assert len(target.delivered()) == 2  # "c" was not read
    assert written(store)[-1].sequence_number == target.delivered()[-1]


async def test_a_drain_asked_before_the_run_starts_stops_it_at_once() -> None:
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    target = RecordingTarget()
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    store.go = anyio.Event()
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: store.gets == 1, LIMIT, "preparing")  # the run
            sup.stop(SHARD, lost=False)
            store.go.set()
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "SHARD not in sup.running")
    assert ownership.released == [SHARD]
    assert target.events == []


async def test_a_drain_between_runs_ends_the_shard_without_a_new_run() -> None:
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    target = RecordingTarget()
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    store.failures = 1  # the first run crashes, the next one comes after a backoff
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            # The crash goes straight to the backoff, with no checkpoint in between.
            await wait_until(lambda: store.failed == 1, LIMIT, "the first run crashed")
            sup.stop(SHARD, lost=False)
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "SHARD not in sup.running")
    assert store.gets == 1
    assert ownership.released == [SHARD]
    assert target.events == []


async def test_a_lost_lease_racing_the_drain_is_not_released() -> None:
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    release = anyio.Event()
    target = RecordingTarget()
    target.script(Slow(release))
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.relay_stop)
            sup.start(tg, SHARD)
            await wait_until(lambda: target.in_flight == 1, LIMIT, "target.in_flight == 1")
            sup.stop(SHARD, lost=False)  # handoff
            stopping.set()  # shutdown drains it again
            await anyio.lowlevel.checkpoint()
            sup.stop(SHARD, lost=True)  # then the lease is lost
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "SHARD not in sup.running")
    assert ownership.released == []
    assert written(store) == []


async def test_shutdown_and_a_handoff_drain_the_same_run_once() -> None:
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    release = anyio.Event()
    target = RecordingTarget()
    target.script(Slow(release))
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.relay_stop)
            sup.start(tg, SHARD)
            await wait_until(lambda: target.in_flight == 1, LIMIT, "target.in_flight == 1")
            stopping.set()
            await anyio.lowlevel.checkpoint()
            sup.stop(SHARD, lost=False)
            sup.stop(SHARD, lost=False)
            release.set()
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "SHARD not in sup.running")
    assert ownership.released == [SHARD]
    assert written(store)[-1].sequence_number == target.delivered()[-1]


@pytest.mark.parametrize("lost", [False, True])
async def test_a_stop_before_the_shard_task_first_runs_is_not_lost(lost: bool) -> None:
    """stop() right after start(), before the task has run a line: the handoff (or the lost
    lease) must still reach the shard, which was dropped when its control was made by the
    task itself."""
    api, store, stopping = FakeStreamApi(), HeldStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    target = RecordingTarget()
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            sup.stop(SHARD, lost=lost)  # no checkpoint between: the task has not run
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "the shard stopped")
    assert target.events == [], "the stopped shard was invoked"
    assert ownership.released == ([] if lost else [SHARD])
