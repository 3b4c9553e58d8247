"""A shard that crashed holds none of its records while it waits out the restart backoff: the
failed run's records are let go of before the wait (they are outside the read budget, and a
backoff lasts up to ten seconds), not kept alive by the exception's traceback."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest
import structlog

from poller.retry import Backoff
from poller.streams import supervisor
from poller.streams.ownership import SoloOwnership
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from poller.types import StreamRecord
from tests.component.harness import MAPPING, SHARD, make_supervisor, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Far longer than the test waits: the whole test runs inside the first backoff.
LONG_BACKOFF = Backoff(initial=60.0, maximum=60.0, jitter=0.0)
#: Room for a loaded CI machine, a third of the backoff.
WITHIN = 20.0


class BrokenTarget(RecordingTarget):
    """A target whose adapter has a bug: every invocation raises (not a function error)."""

    async def invoke(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        raise RuntimeError("a bug in the target adapter")


def live_records() -> int:
    """StreamRecords still reachable from anything (after a full collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is StreamRecord)


async def test_a_crashed_run_holds_no_record_during_the_restart_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervisor, "READ_BACKOFF", LONG_BACKOFF)
    api, store, stopping = FakeStreamApi(), MemoryCheckpointStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts(*"abcdefghij"))
    target = BrokenTarget()
    ownership = SoloOwnership(store, MAPPING)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    # Logs captured, not rendered: the default development renderer prints the locals of each
    # frame of a traceback, and reading a frame's locals leaves a snapshot of them on the frame
    # (the exception included) that the service's own JSON logs never make.
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WITHIN * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.relay_stop)
            sup.start(tg, SHARD)
            await wait_until(lambda: len(target.events) == 1, WITHIN, "the run crashed")
            held_at_crash = len(target.events[0]["Records"])
            # In the backoff now (60 s): nothing of the failed run may stay alive meanwhile.
            await wait_until(lambda: live_records() == 0, WITHIN, "the crashed run let go")
            assert len(target.events) == 1, "the shard ran again within the backoff"
            stopping.set()
            await wait_until(lambda: SHARD not in sup.running, WITHIN, "the shard stopped")
            tg.cancel_scope.cancel()
    assert held_at_crash == 10
    assert [e["event"] for e in logs].count("shard.crashed") == 1
