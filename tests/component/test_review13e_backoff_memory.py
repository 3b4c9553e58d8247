"""Review 13e: a crashed shard holds none of its records during the restart backoff, with the
read budget on as well as off.

Commit 6e9cd93 moved the backoff out of the ``except`` block so that the failed run's records
(its lanes' buffers, the chunks queued in front of them) are let go of before the wait: they
are outside the read budget, since the run's end drops the account's bytes, and a backoff
lasts up to ten seconds. Its own test runs without a budget and with every record in the one
batch that crashed. Here the records read wait in a lane's buffer behind the batch that
crashed, and the shard reads within a :class:`~poller.streams.budget.ReadBudget`, as it always
does in the service (``app.py`` gives every mapping the process's budget).
"""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest
import structlog

from poller.observability.metrics import NullMetrics
from poller.retry import Backoff
from poller.streams import supervisor
from poller.streams.budget import ReadBudget
from poller.streams.ownership import SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from poller.types import StreamRecord
from tests.component.harness import MAPPING, SHARD, mapping_config, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Far longer than the test waits: the whole test runs inside the first backoff.
LONG_BACKOFF = Backoff(initial=60.0, maximum=60.0, jitter=0.0)
#: Room for a loaded machine, a third of the backoff.
WITHIN = 20.0
#: How long letting go may take: a collection, once the failed run's task has unwound.
LET_GO = 5.0
#: The service's default budget (memory.read_budget_mib: 64): never the limit here.
BUDGET_BYTES = 64 * 1024 * 1024


class BrokenTarget(RecordingTarget):
    """A target whose adapter has a bug: every invocation raises (not a function error)."""

    async def invoke(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        raise RuntimeError("a bug in the target adapter")


def live_records() -> int:
    """StreamRecords still reachable from anything (after a full collection)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is StreamRecord)


@pytest.mark.parametrize("with_budget", [False, True], ids=["no-budget", "read-budget"])
async def test_records_buffered_behind_a_crashed_batch_are_let_go_during_the_backoff(
    monkeypatch: pytest.MonkeyPatch, with_budget: bool
) -> None:
    """Ten records read, a batch of two invoked (the target's bug crashes the run), eight
    waiting in the lane's buffer: during the backoff none of the ten may stay alive."""
    monkeypatch.setattr(supervisor, "READ_BACKOFF", LONG_BACKOFF)
    api, store, stopping = FakeStreamApi(), MemoryCheckpointStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts(*"abcdefghij"))
    target = BrokenTarget()
    budget = ReadBudget(BUDGET_BYTES) if with_budget else None
    sup = ShardSupervisor(
        mapping_config(batch_size=2, maximum_batching_window_in_seconds=0),
        api=api,
        kind="kinesis",
        target=target,
        ownership=SoloOwnership(store, MAPPING),
        stopping=stopping,
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=lambda: None,
        budget=budget,
    )
    # Logs captured, not rendered (the development renderer snapshots frames' locals).
    with structlog.testing.capture_logs() as logs, anyio.fail_after(WITHIN * 2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.relay_stop)
            sup.start(tg, SHARD)
            await wait_until(lambda: len(target.events) == 1, WITHIN, "the run crashed")
            await wait_until(
                lambda: [e["event"] for e in logs].count("shard.crashed") == 1,
                WITHIN,
                "the crash was logged (the backoff begins)",
            )
            # In the backoff now (60 s): nothing of the failed run may stay alive meanwhile.
            await wait_until(lambda: live_records() == 0, LET_GO, "the crashed run let go")
            assert len(target.events) == 1, "the shard ran again within the backoff"
            if budget is not None:
                assert budget.used == 0, "the failed run's bytes are still counted"
            stopping.set()
            await wait_until(lambda: SHARD not in sup.running, WITHIN, "the shard stopped")
            tg.cancel_scope.cancel()
    assert len(target.events[0]["Records"]) == 2
