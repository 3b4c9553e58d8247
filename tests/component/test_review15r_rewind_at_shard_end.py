"""Hostile review 15r: a rewind asked while a shard is finishing its last batch.

Solo ownership over SQLite, the shard supervisor, a real reader over ``FakeStreamApi``. The
shard is closed after its four records; the rewind (to the trim horizon) is asked while the
last batch is in flight, so the restart's drain and the shard's end coincide. Whichever comes
first, a shard read to ``SHARD_END`` is finished: the rewind must not be applied over its
``SHARD_END`` (that re-opens a finished parent while its children run), and the shard must
end at ``SHARD_END``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from poller.checkpoints.rewinds import RewindTarget
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.streams.ownership import SoloOwnership
from poller.testing import FakeStreamApi, RecordingTarget, Slow, success
from tests.component.harness import LIMIT, MAPPING, SHARD, puts
from tests.component.test_rewind_restart import supervisor
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_a_rewind_meeting_the_shards_end_never_reopens_it(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    api = FakeStreamApi()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts(*"abcd"))
    api.close_shard(SHARD)
    release = anyio.Event()
    target = RecordingTarget()
    target.script(success(), Slow(release))  # the last batch waits in flight
    ownership = SoloOwnership(store, MAPPING)
    sup = supervisor(api, target, ownership)
    try:
        with anyio.fail_after(LIMIT * 2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ownership.upkeep, sup)
                sup.start(tg, SHARD)
                await wait_until(lambda: target.in_flight, LIMIT, "the last batch in flight")
                await store.request_rewinds(MAPPING, {SHARD: RewindTarget("trim_horizon")}, "r1")
                await wait_until(
                    lambda: ownership._restarted_for.get(SHARD) == "r1",
                    LIMIT,
                    "the upkeep's poll asking the shard to restart",
                )
                release.set()

                async def settled() -> bool:
                    stored = await store.get(MAPPING, SHARD)
                    return SHARD not in sup.running and stored is not None and stored.is_shard_end

                await wait_until(settled, LIMIT, "the shard ended at SHARD_END")
                tg.cancel_scope.cancel()
        states = await store.rewind_states(MAPPING, "r1")
        applied_from = [s.applied_from for s in states if s.applied]
        assert "SHARD_END" not in applied_from, (
            f"the rewind was applied over SHARD_END; delivered {target.delivered()}"
        )
        stored = await store.get(MAPPING, SHARD)
        assert stored is not None
        assert stored.is_shard_end
    finally:
        await store.aclose()
