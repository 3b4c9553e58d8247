"""A shard waiting out its crash-restart backoff drains at once: a shutdown or a handoff that
arrives during the backoff (up to ten seconds in production) ends the shard without waiting
for the backoff to pass and without a new run; the shard is then released."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from poller.retry import Backoff
from poller.streams import supervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from tests.component.harness import LIMIT, SHARD, RecordingOwnership, make_supervisor, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Far longer than the test may take (WITHIN): only a drain that wakes the backoff passes.
LONG_BACKOFF = Backoff(initial=60.0, maximum=60.0, jitter=0.0)
#: Room for a loaded CI machine (the coverage tiers run in parallel), still a third of the
#: backoff: a drain that waited the backoff out cannot pass.
WITHIN = max(LIMIT, 20.0)


class CrashingStore(MemoryCheckpointStore):
    """A store whose first checkpoint read fails: the shard's first run crashes."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, mapping: str, shard_id: str) -> Any:
        self.gets += 1
        if self.gets == 1:
            raise RuntimeError("checkpoint read failed")
        return await super().get(mapping, shard_id)


@pytest.mark.parametrize("drain", ["shutdown", "handoff"])
async def test_a_drain_during_the_restart_backoff_ends_the_shard_at_once(
    drain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "READ_BACKOFF", LONG_BACKOFF)
    api, store, stopping = FakeStreamApi(), CrashingStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    target = RecordingTarget()
    ownership = RecordingOwnership(store)
    sup = make_supervisor(api=api, target=target, ownership=ownership, stopping=stopping)
    with anyio.fail_after(WITHIN):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.relay_stop)
            sup.start(tg, SHARD)
            # The crash goes straight to the backoff: once the read failed, it waits there.
            await wait_until(lambda: store.gets == 1, WITHIN, "the first run crashed")
            if drain == "shutdown":
                stopping.set()
            else:
                sup.stop(SHARD, lost=False)
            await wait_until(lambda: SHARD not in sup.running, WITHIN, "the shard stopped")
            tg.cancel_scope.cancel()  # relay_stop, still waiting in the handoff case
    assert store.gets == 1, "the shard ran again after the drain"
    assert ownership.released == [SHARD]
    assert target.events == []
