"""A shard's restart backoff grows over crashes in quick succession only: a crash after a run
that was healthy for a while (``HEALTHY_RUN_SECONDS``) counts as a first one again, so that
isolated crashes hours apart do not each wait out the longest backoff."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from poller.streams import supervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from tests.component.harness import LIMIT, SHARD, RecordingOwnership, make_supervisor, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: How long a run must last to count as healthy, in this test.
HEALTHY = 0.3


class RecordingBackoff:
    """A near-zero restart backoff (in place of ``READ_BACKOFF``) that records the attempt
    number of every restart."""

    def __init__(self) -> None:
        self.attempts: list[int] = []

    def delay(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return 0.001


class FlakyStore(MemoryCheckpointStore):
    """Checkpoint reads fail on the calls listed; a write fails once when ``fail_put`` is set."""

    def __init__(self, failing_gets: set[int]) -> None:
        super().__init__()
        self.gets = 0
        self.failing_gets = failing_gets
        self.fail_put = False

    async def get(self, mapping: str, shard_id: str) -> Any:
        self.gets += 1
        if self.gets in self.failing_gets:
            raise RuntimeError(f"checkpoint read {self.gets} failed")
        return await super().get(mapping, shard_id)

    async def put(self, mapping: str, shard_id: str, checkpoint: Any) -> None:
        if self.fail_put:
            self.fail_put = False
            raise RuntimeError("checkpoint write failed")
        await super().put(mapping, shard_id, checkpoint)


async def test_a_crash_after_a_healthy_run_restarts_the_backoff_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backoff = RecordingBackoff()
    monkeypatch.setattr(supervisor, "READ_BACKOFF", backoff)
    monkeypatch.setattr(supervisor, "HEALTHY_RUN_SECONDS", HEALTHY)
    # Reads 1 and 2 crash at once (a streak: attempts 1, 2); read 3 starts a run that stays up
    # past HEALTHY and then crashes on a checkpoint write (attempt 1 again); read 4 crashes at
    # once (attempt 2), read 5 runs.
    api, store, stopping = FakeStreamApi(), FlakyStore({1, 2, 4}), anyio.Event()
    api.add_shard(SHARD)
    target = RecordingTarget()
    sup = make_supervisor(
        api=api, target=target, ownership=RecordingOwnership(store), stopping=stopping
    )
    with anyio.fail_after(max(LIMIT, 20.0)):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: store.gets == 3, LIMIT, "the third run started")
            await anyio.sleep(HEALTHY * 2)  # the run under test must outlast HEALTHY
            store.fail_put = True
            api.add_page(SHARD, puts("a"))
            await wait_until(lambda: store.gets == 5, LIMIT, "the fifth run started")
            await wait_until(lambda: target.events, LIMIT, "the record delivered again")
            stopping.set()
            sup.stop(SHARD, lost=False)
    assert backoff.attempts == [1, 2, 1, 2]
