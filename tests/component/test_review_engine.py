"""Review of the stream engine's carve (issue 12): the shutdown and ownership paths, pinned.

The carve moved lease renewal, self-fencing, release and handoff behind the
``ShardOwnership`` seam (:mod:`poller.streams.ownership`) and gave the checkpoint write and
the lease release shields of their own. Each test here pins one behaviour the engine had
before the carve (checked against commit 68d573c), through the real runner, supervisor,
processor and :class:`~poller.leases.LeaseCoordinator`, over in-memory fakes: the scripted
stream of :mod:`poller.testing` and the lease table fake of the unit tier.

* during the drain a held lease is renewed until its last batch settled, then checkpointed,
  then released, in that order;
* a release that hangs is abandoned after one lease duration (the exit is not held);
* a lease gone stale cancels the invocation in flight, writes no checkpoint and is not
  released (a peer may own the shard);
* a checkpoint write already under way when the drain deadline cancels the work completes;
* a handed-off shard finishes its batch, checkpoints, and only then goes to the asker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog

from poller.checkpoints.dynamodb import Lease
from poller.leases import LeaseCoordinator, LeaseSettings
from poller.streams import StreamMappingRunner
from poller.streams.ownership import LeasedOwnership
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingMetrics,
    RecordingTarget,
    Slow,
)
from poller.types import Checkpoint
from tests.component.harness import LIMIT, MAPPING, make_runner, mapping_config
from tests.support.waiting import wait_until
from tests.unit.test_lease_runtime import FakeLeaseTable

pytestmark = pytest.mark.anyio

#: Renewed every 0.5 s, stale after 1.35 s without a renewal: room for a loaded machine.
SETTINGS = LeaseSettings(lease_duration=1.5, balance_interval=0.3)
S0, S1 = "shardId-000000000000", "shardId-000000000001"


class RecordingLeaseTable(FakeLeaseTable):
    """The lease table fake, recording every call's name in order; its release can hang."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.release_hangs = False

    def _call(self, operation: str) -> None:
        self.ops.append(operation)
        super()._call(operation)

    async def release(self, lease: Lease, owner: str) -> bool:
        if self.release_hangs:
            self.ops.append("release")
            # Past every deadline of the test, yet bounded: if the release were shielded
            # with no deadline, the test fails by name instead of hanging.
            await anyio.sleep(2 * LIMIT)
        return await super().release(lease, owner)

    def since(self, mark: int, *wanted: str) -> list[str]:
        """The calls named ``wanted`` made after the first ``mark`` calls."""
        return [op for op in self.ops[mark:] if op in wanted]


def leased_runner(
    api: FakeStreamApi,
    target: RecordingTarget,
    coordinator: LeaseCoordinator,
    stopping: anyio.Event,
    metrics: RecordingMetrics | None = None,
) -> StreamMappingRunner:
    """A runner whose shards are owned through leases (``harness.make_runner`` is solo)."""
    return StreamMappingRunner(
        mapping_config(),
        api=api,
        kind="kinesis",
        target=target,
        ownership=LeasedOwnership(coordinator, metrics=metrics),
        stopping=stopping,
        metrics=metrics,
    )


def coordinator_of(table: RecordingLeaseTable, owner: str = "a") -> LeaseCoordinator:
    return LeaseCoordinator(
        table,  # type: ignore[arg-type]  # a fake of our own interface
        mapping=MAPPING,
        owner=owner,
        settings=SETTINGS,
    )


def one_record_per_shard(api: FakeStreamApi, *shard_ids: str) -> None:
    for shard_id in shard_ids:
        api.add_shard(shard_id)
        api.add_page(shard_id, [Put("key", b"x")])


@asynccontextmanager
async def run_in_background(runner: StreamMappingRunner) -> AsyncIterator[anyio.Event]:
    """Start ``runner``; yield an event set once it returned; on exit wait for it (bounded)."""
    returned = anyio.Event()

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await runner.run(task_status=task_status)
        finally:
            returned.set()

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(LIMIT):
            await tg.start(run)
        yield returned
        with anyio.fail_after(LIMIT):
            await returned.wait()


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_lease_is_renewed_while_its_last_batch_drains_then_checkpointed_then_released(
    api: FakeStreamApi, target: RecordingTarget, stopping: anyio.Event
) -> None:
    one_record_per_shard(api, S0)
    table = RecordingLeaseTable()
    gate = anyio.Event()
    target.script(Slow(gate))
    async with run_in_background(
        leased_runner(api, target, coordinator_of(table), stopping)
    ) as returned:
        await wait_until(lambda: target.in_flight == 1, LIMIT, "the invocation in flight")
        mark = len(table.ops)
        stopping.set()
        await wait_until(
            # v2: the lease is kept alive by the replica's heartbeats (v1: per-lease renewals)
            lambda: len(table.since(mark, "heartbeat")) >= 2,
            LIMIT,
            "heartbeats during the drain",
        )
        assert not returned.is_set(), "the runner returned before its batch settled"
        assert table.since(mark, "checkpoint", "release") == []
        gate.set()
    assert table.since(mark, "checkpoint", "release") == ["checkpoint", "release"]
    lease = table.items[S0]
    assert lease.owner is None, "the drained shard's lease was not released"
    assert lease.checkpoint == Checkpoint(target.delivered()[-1])


async def test_a_release_that_hangs_is_abandoned_after_one_lease_duration(
    api: FakeStreamApi, target: RecordingTarget, stopping: anyio.Event
) -> None:
    one_record_per_shard(api, S0)
    table = RecordingLeaseTable()
    table.release_hangs = True
    metrics = RecordingMetrics()
    runner = leased_runner(api, target, coordinator_of(table), stopping, metrics)
    with structlog.testing.capture_logs() as logs:
        async with run_in_background(runner):
            await wait_until(lambda: target.delivered(), LIMIT, "the record delivered")
            await wait_until(lambda: table.items[S0].checkpoint, LIMIT, "its checkpoint")
            stopping.set()
            started = anyio.current_time()
        took = anyio.current_time() - started
    assert table.ops.count("release") == 1
    [timed_out] = events(logs, "lease.release_timed_out")
    assert timed_out["waited_s"] == SETTINGS.lease_duration
    assert SETTINGS.lease_duration <= took < SETTINGS.lease_duration + 2
    assert metrics.count("dependency_error", MAPPING, operation="release") == 1


async def test_a_stale_lease_cancels_the_invocation_in_flight_and_is_neither_checkpointed_nor_released(  # noqa: E501
    api: FakeStreamApi, target: RecordingTarget, stopping: anyio.Event
) -> None:
    one_record_per_shard(api, S0)
    table = RecordingLeaseTable()
    target.script(Slow(anyio.Event()))  # never answers by itself
    with structlog.testing.capture_logs() as logs:
        async with run_in_background(leased_runner(api, target, coordinator_of(table), stopping)):
            await wait_until(lambda: target.in_flight == 1, LIMIT, "the invocation in flight")
            mark = len(table.ops)
            table.down = True  # renewals fail from now on: the lease ages
            await wait_until(lambda: target.in_flight == 0, LIMIT, "the invocation fenced")
            table.down = False
            stopping.set()
    assert [e["stale_shard"] for e in events(logs, "lease.stale")] == [S0]
    assert table.since(mark, "checkpoint", "release") == []
    assert table.items[S0].checkpoint is None


async def test_a_checkpoint_write_under_way_completes_when_the_drain_deadline_cancels(
    api: FakeStreamApi, target: RecordingTarget, stopping: anyio.Event
) -> None:
    one_record_per_shard(api, S0)
    writing = anyio.Event()

    class SlowStore(MemoryCheckpointStore):
        async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
            writing.set()
            await anyio.sleep(0.3)
            await super().put(mapping, shard_id, checkpoint)

    store = SlowStore()
    runner = make_runner(mapping_config(), api=api, target=target, store=store, stopping=stopping)
    with anyio.fail_after(LIMIT), anyio.CancelScope() as work:  # the service's work scope
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await writing.wait()
            stopping.set()
            work.cancel()  # the drain deadline, while the write is under way
    assert store.checkpoints[(MAPPING, S0)] == Checkpoint(target.delivered()[-1])


async def test_a_handed_off_shard_finishes_its_batch_and_checkpoints_before_the_asker_gets_it(
    api: FakeStreamApi, target: RecordingTarget, stopping: anyio.Event
) -> None:
    one_record_per_shard(api, S0, S1)
    table = RecordingLeaseTable()
    gate = anyio.Event()
    target.script(Slow(gate), Slow(gate))
    peer = coordinator_of(table, "b")
    with structlog.testing.capture_logs() as logs:
        async with run_in_background(leased_runner(api, target, coordinator_of(table), stopping)):
            await wait_until(lambda: target.in_flight == 2, LIMIT, "both shards in flight")

            async def granted() -> bool:
                await peer.balance()  # b asks for its share, a grants one lease
                return bool(events(logs, "lease.handing_off"))

            await wait_until(granted, LIMIT, "a handoff granted")
            handed = events(logs, "lease.handing_off")[0]["handoff_shard"]
            kept = S1 if handed == S0 else S0
            assert table.items[handed].owner == "a", "handed over before its batch settled"
            assert table.items[handed].checkpoint is None
            gate.set()
            await wait_until(lambda: table.items[handed].owner == "b", LIMIT, "the handover")
            assert table.items[handed].checkpoint is not None, "handed over unsettled"
            assert table.items[kept].owner == "a"
            stopping.set()
