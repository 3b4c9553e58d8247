"""A rewind applied by the shard's owner at a batch boundary (solo ownership over SQLite, the
shard supervisor, a real ShardReader over ``FakeStreamApi``).

* a rewind asked while a batch is in flight waits for that batch to finish and checkpoint,
  then the shard runs again from the new position: the named record comes again, then every
  later one, in order, and the request is marked applied by this process;
* the store applies a request once, whoever applies it: a shard starting with a pending request
  applies it (the supervisor's start), and the command's direct apply is refused while a live
  service serves the mapping, and applies only the command's own request;
* a rewind written behind a running shard (the service's row looked gone) is not undone by the
  run's next checkpoint: that write is refused and the run starts again from the rewind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.rewinds import RewindTarget
from poller.checkpoints.sqlite import RewoundMeanwhile, SqliteCheckpointStore
from poller.observability.metrics import NullMetrics
from poller.streams.ownership import SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import FakeStreamApi, RecordingTarget, Slow, success
from poller.types import Checkpoint
from tests.component.harness import LIMIT, MAPPING, SHARD, mapping_config, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def supervisor(api: FakeStreamApi, target: Any, ownership: SoloOwnership) -> ShardSupervisor:
    return ShardSupervisor(
        mapping_config(batch_size=2, maximum_batching_window_in_seconds=0),
        api=api,
        kind="kinesis",
        target=target,
        ownership=ownership,
        stopping=anyio.Event(),
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=lambda: None,
    )


async def test_a_rewind_waits_for_the_batch_in_flight_then_redelivers_from_the_target(
    tmp_path: Path,
) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    api = FakeStreamApi()
    api.add_shard(SHARD)
    sequences = [raw["SequenceNumber"] for raw in api.add_page(SHARD, puts(*"abcdef"))]
    release = anyio.Event()
    target = RecordingTarget()
    target.script(success(), success(), Slow(release))  # the third batch waits in flight
    ownership = SoloOwnership(store, MAPPING)
    sup = supervisor(api, target, ownership)
    try:
        with anyio.fail_after(LIMIT * 2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ownership.upkeep, sup)
                sup.start(tg, SHARD)
                await wait_until(lambda: target.in_flight, LIMIT, "the third batch in flight")
                await store.request_rewinds(
                    MAPPING, {SHARD: RewindTarget("sequence", sequence_number=sequences[1])}, "r1"
                )
                await anyio.sleep(1.5)  # the poll has seen it: the run is draining
                assert (await store.pending_rewinds(MAPPING)) == {SHARD: "r1"}, (
                    "applied while a batch was in flight"
                )
                release.set()
                await wait_until(
                    lambda: target.delivered().count(sequences[-1]) == 2,
                    LIMIT,
                    "the shard re-delivered from b to its end",
                )
                tg.cancel_scope.cancel()
        delivered = target.delivered()
        assert delivered == sequences + sequences[1:]
        (state,) = await store.rewind_states(MAPPING, "r1")
        assert state.applied
        assert state.applied_from == f"AFTER_SEQUENCE_NUMBER {sequences[-1]}"
        assert state.applied_to == f"AT_SEQUENCE_NUMBER {sequences[1]}"
        assert state.applied_by is not None
        assert ":" in state.applied_by  # host:pid of this process
    finally:
        await store.aclose()


async def test_a_request_is_applied_once_and_the_command_defers_to_a_live_service(
    tmp_path: Path,
) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    try:
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="5"))
        await store.put(MAPPING, "other", Checkpoint(sequence_number="7"))
        await store.request_rewinds(MAPPING, {SHARD: RewindTarget("trim_horizon")}, "r1")
        await store.serve(MAPPING, "svc")
        assert await store.server_of(MAPPING) == "svc"
        assert not await store.apply_rewinds_unserved(MAPPING, "cmd")
        assert await store.get(MAPPING, SHARD) == Checkpoint(sequence_number="5")
        # The service applies it when the shard starts; a second start finds nothing pending.
        assert await store.apply_rewind(MAPPING, SHARD, "svc") == Checkpoint(start_timestamp=0.0)
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="1"))
        assert await store.apply_rewind(MAPPING, SHARD, "svc") == Checkpoint(sequence_number="1")
        await store.unserve(MAPPING, "svc")
        await store.request_rewinds(MAPPING, {SHARD: RewindTarget("latest")}, "r2")
        assert await store.apply_rewinds_unserved(MAPPING, "cmd")
        (state,) = await store.rewind_states(MAPPING, "r2")
        assert (state.applied, state.applied_by) == (True, "cmd")
        assert await store.get(MAPPING, "other") == Checkpoint(sequence_number="7")  # untouched
    finally:
        await store.aclose()


async def test_the_commands_apply_moves_only_its_own_request(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    try:
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="5"))
        await store.put(MAPPING, "other", Checkpoint(sequence_number="7"))
        await store.request_rewinds(MAPPING, {SHARD: RewindTarget("trim_horizon")}, "r1")
        await store.request_rewinds(MAPPING, {"other": RewindTarget("trim_horizon")}, "r2")
        assert await store.apply_rewinds_unserved(MAPPING, "cmd", "r1")
        assert await store.get(MAPPING, SHARD) == Checkpoint(start_timestamp=0.0)
        assert await store.get(MAPPING, "other") == Checkpoint(sequence_number="7")
        assert await store.pending_rewinds(MAPPING) == {"other": "r2"}
    finally:
        await store.aclose()


async def test_a_runs_checkpoint_never_undoes_a_rewind_applied_behind_it(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    try:
        start = await store.apply_rewind(MAPPING, SHARD, "svc")  # the run reads its start
        assert start is None
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="5"))
        await store.request_rewinds(MAPPING, {SHARD: RewindTarget("trim_horizon")}, "r1")
        assert await store.apply_rewinds_unserved(MAPPING, "cmd", "r1")  # no service row
        with pytest.raises(RewoundMeanwhile):
            await store.put(MAPPING, SHARD, Checkpoint(sequence_number="6"))
        assert await store.get(MAPPING, SHARD) == Checkpoint(start_timestamp=0.0)
        # The next run reads the rewound start, and checkpoints again.
        assert await store.apply_rewind(MAPPING, SHARD, "svc") == Checkpoint(start_timestamp=0.0)
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="1"))
        assert await store.get(MAPPING, SHARD) == Checkpoint(sequence_number="1")
    finally:
        await store.aclose()


async def test_a_rewind_written_behind_a_running_shard_restarts_it_from_there(
    tmp_path: Path,
) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    api = FakeStreamApi()
    api.add_shard(SHARD)
    sequences = [raw["SequenceNumber"] for raw in api.add_page(SHARD, puts(*"abcdef"))]
    release = anyio.Event()
    target = RecordingTarget()
    target.script(success(), success(), Slow(release))  # the third batch waits in flight
    ownership = SoloOwnership(store, MAPPING)
    sup = supervisor(api, target, ownership)  # no upkeep: nothing polls for requests
    try:
        with anyio.fail_after(LIMIT * 2):
            async with anyio.create_task_group() as tg:
                sup.start(tg, SHARD)
                await wait_until(lambda: target.in_flight, LIMIT, "the third batch in flight")
                # The service's row looks gone (another host's, not beaten): the command
                # writes the rewind itself, behind the running shard.
                await store.unserve(MAPPING, ownership._replica)
                rewind = {SHARD: RewindTarget("sequence", sequence_number=sequences[1])}
                await store.request_rewinds(MAPPING, rewind, "r1")
                assert await store.apply_rewinds_unserved(MAPPING, "cmd", "r1")
                release.set()
                await wait_until(
                    lambda: target.delivered().count(sequences[-1]) == 2,
                    LIMIT,
                    "the shard re-delivered from b to its end",
                )
                tg.cancel_scope.cancel()
        assert target.delivered() == sequences + sequences[1:]
        assert await store.get(MAPPING, SHARD) == Checkpoint(sequence_number=sequences[-1])
        (state,) = await store.rewind_states(MAPPING, "r1")
        assert (state.applied, state.applied_by) == (True, "cmd")
    finally:
        await store.aclose()
