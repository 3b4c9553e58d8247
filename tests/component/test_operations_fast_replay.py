"""``poller replay`` driven through its core with in-memory fakes (``poller redrive``'s:
test_operations_fast.py).

Data flow under test::

    FakeStreamApi (a parent shard and its children) --> _Run --deliver_shard--> RecordingTarget
        --settled--> SqliteCheckpointStore in tmp_path (the replay's own state)

The public ``main`` only adds the AWS clients around this core (the integration tier runs it
against the emulators); here everything is hermetic and fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.errors import OperationError, Throttled
from poller.operations.common import operation_policy
from poller.operations.replay import (
    Summary,
    _forget,
    _open_state,
    _pinned_end,
    _plan,
    _Run,
    state_lock,
)
from poller.testing import FakeStreamApi, Put, RecordingTarget, function_error, success
from poller.types import SHARD_END, Checkpoint, InvokeResult
from tests.component.harness import mapping_config

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
#: The longest a replay of a handful of records may take here.
LIMIT = 10.0


def sequences(raws: list[dict[str, Any]]) -> list[str]:
    return [raw["SequenceNumber"] for raw in raws]


# -- replay -------------------------------------------------------------------------------------

PARENT, LEFT, RIGHT = "shardId-parent", "shardId-left", "shardId-right"


def split_stream(api: FakeStreamApi, start: float) -> dict[str, list[str]]:
    """A parent split into two children; per shard, the sequence numbers inside
    [start, start + 100] (each shard also holds one record before and one after)."""
    inside: dict[str, list[str]] = {}
    api.add_shard(PARENT)
    api.add_shard(LEFT, parents=[PARENT])
    api.add_shard(RIGHT, parents=[PARENT])
    for offset, shard in ((0, PARENT), (40, LEFT), (40, RIGHT)):
        before = Put("k", b"before", start - 50 + offset)
        within = [Put("k", f"{shard}{i}".encode(), start + offset + i) for i in range(3)]
        after = Put("k", b"after", start + 500)
        raws = api.add_page(shard, [before, *within] + ([after] if shard != PARENT else []))
        inside[shard] = sequences(raws[1:4])
    api.close_shard(PARENT, children=[LEFT, RIGHT])
    return inside


def summary_of(state: Path, start: float, *, dry_run: bool = False) -> Summary:
    return Summary("replay-test", "orders", "target", start, start + 100, state, dry_run)


async def replay(api: FakeStreamApi, target: RecordingTarget, state: Path, start: float) -> Summary:
    """One run of the replay ``replay-test`` over [start, start + 100]."""
    mapping = mapping_config(batch_size=1)
    summary = summary_of(state, start)
    store = await SqliteCheckpointStore(state).open()
    try:
        run = _Run(
            mapping,
            api,
            target,
            store,
            "replay-test",
            (start, start + 100),
            summary,
            operation_policy(mapping, 0),
        )
        with anyio.fail_after(LIMIT):
            await run.all(await api.list_shards())
    finally:
        await store.aclose()
    return summary


async def interrupted_replay(api: FakeStreamApi, state: Path, start: float) -> RecordingTarget:
    """A replay stopped (as Ctrl-C stops it) while its second invocation is in flight; its
    target."""
    reached = anyio.Event()

    async def hang(event: dict[str, Any]) -> InvokeResult:
        reached.set()
        await anyio.Event().wait()  # never answered
        return success()

    target = RecordingTarget()
    target.script(success(), hang)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(replay, api, target, state, start)
        with anyio.fail_after(LIMIT):
            await reached.wait()
        tasks.cancel_scope.cancel()
    return target


async def test_replay_delivers_the_range_parent_before_children(tmp_path: Path) -> None:
    api, target, start = FakeStreamApi(), RecordingTarget(), time.time() - 600
    inside = split_stream(api, start)
    summary = await replay(api, target, tmp_path / "state.db", start)
    delivered = target.delivered()
    assert sorted(delivered) == sorted(s for shard in inside.values() for s in shard)
    assert delivered[:3] == inside[PARENT]  # the children only once the parent is done
    for child in (LEFT, RIGHT):
        assert [s for s in delivered if s in inside[child]] == inside[child]
    assert (summary.delivered, summary.failed, summary.shards_done) == (9, 0, 3)
    assert summary.ok
    assert summary.unreadable == 0
    assert any(line.startswith(f"  {PARENT}: 3 record(s)") for line in summary.lines)
    assert "delivered: 9, failed: 0" in summary.render()


async def test_an_interrupted_replay_resumes_after_its_checkpoint(tmp_path: Path) -> None:
    api, start, state = FakeStreamApi(), time.time() - 600, tmp_path / "state.db"
    inside = split_stream(api, start)
    everything = inside[PARENT] + inside[LEFT] + inside[RIGHT]
    first = await interrupted_replay(api, state, start)
    assert first.delivered() == inside[PARENT][:2]

    second = RecordingTarget()
    summary = await replay(api, second, state, start)
    # Only what the first run settled is skipped; the unanswered one is delivered again.
    assert second.delivered()[:2] == inside[PARENT][1:]
    assert sorted(second.delivered()) == sorted(everything[1:])
    assert (summary.delivered, summary.shards_done, summary.already_done) == (8, 3, 0)

    third = RecordingTarget()
    again = await replay(api, third, state, start)
    assert third.events == []
    assert (again.delivered, again.shards_done, again.already_done) == (0, 0, 3)
    assert any("finished in an earlier run" in line for line in again.lines)


async def test_records_given_up_on_are_reported_and_fail_the_replay(tmp_path: Path) -> None:
    api, start = FakeStreamApi(), time.time() - 600
    inside = split_stream(api, start)
    target = RecordingTarget(default=function_error())
    summary = await replay(api, target, tmp_path / "state.db", start)
    assert (summary.delivered, summary.failed, summary.shards_done) == (0, 9, 3)
    assert not summary.ok
    first = inside[PARENT][0]
    assert f"    given up: {first}..{first} (1 record(s))" in summary.lines


async def test_an_unreadable_shard_holds_back_its_children_only(tmp_path: Path) -> None:
    api, start = FakeStreamApi(), time.time() - 600
    api.add_shard(PARENT)
    api.add_shard(LEFT, parents=[PARENT])
    api.add_shard(SHARD)
    api.add_page(SHARD, [Put("k", b"x", start + 1)])
    api.close_shard(SHARD)
    for _ in range(6):  # every read fails, until the range read gives up
        api.add_error(PARENT, Throttled("slow down"))
    target = RecordingTarget()
    summary = await replay(api, target, tmp_path / "state.db", start)
    assert len(target.delivered()) == 1
    assert (summary.unreadable, summary.shards_done, summary.delivered) == (1, 1, 1)
    assert not summary.ok
    assert any(line.startswith(f"  {PARENT}: NOT REPLAYED") for line in summary.lines)
    assert all(LEFT not in line for line in summary.lines)


async def test_a_dry_run_plans_from_the_saved_state_in_lineage_order(tmp_path: Path) -> None:
    api, start, state = FakeStreamApi(), time.time() - 600, tmp_path / "state.db"
    inside = split_stream(api, start)
    await interrupted_replay(api, state, start)
    summary = summary_of(state, start, dry_run=True)
    store = await SqliteCheckpointStore(state).open()
    try:
        await _plan(store, "replay-test", await api.list_shards(), summary)
        saved = await store.get_all("replay-test")
    finally:
        await store.aclose()
    assert [line.split(":")[0].strip() for line in summary.lines] == [PARENT, LEFT, RIGHT]
    assert f"would resume after {inside[PARENT][0]}" in summary.lines[0]
    assert summary.lines[1].endswith(f"after parents {PARENT}")
    assert all(c.sequence_number != SHARD_END for c in saved.values())
    assert summary.render().startswith("replay (dry run: nothing delivered)")


async def test_an_open_ended_replay_keeps_its_first_end_until_restarted(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore(tmp_path / "state.db").open()
    try:
        assert await _pinned_end(store, "replay-test", 1000.0) == 1000.0
        # A resumed run ends where the first would have, not at its own "now".
        assert await _pinned_end(store, "replay-test", 2000.0) == 1000.0
        await store.put("replay-test", SHARD, Checkpoint(sequence_number=SHARD_END))
        await _forget(store, "replay-test")
        assert await store.get_all("replay-test") == {}
        assert await _pinned_end(store, "replay-test", 3000.0) == 3000.0
    finally:
        await store.aclose()


async def test_a_state_file_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "plain-file"
    not_a_directory.write_text("")
    with pytest.raises(OperationError, match="cannot open the replay state file"):
        await _open_state(not_a_directory / "state.db")


def test_one_state_file_is_held_by_one_replay_at_a_time(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with state_lock(state):
        assert Path(f"{state}.lock").read_text() == str(os.getpid())
        refused = rf"another replay holds .* \(pid {os.getpid()}\)"
        with pytest.raises(OperationError, match=refused), state_lock(state):
            pass
    with state_lock(state):  # released when the first run ended
        pass
