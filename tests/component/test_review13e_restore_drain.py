"""Review 13e: a drain reaches a shard that waits, before its intake, for the checkpoint store.

``_ShardControl.stop_with`` promises that a drain stops "what the shard waits on now: its
run's intake, or a restart's backoff". A shard with tumbling windows waits for one more thing
first: ``ShardProcessor.run_with`` reads the stored window (``TumblingWindows.restore``) and
retries that read for as long as the store fails, outside the scope the drain cancels. With
nothing read and nothing in flight, a drain there must end the run at once and release the
lease, not hold the shutdown until the drain deadline cancels the shard (which then keeps its
lease until it expires, so no peer may take it for a lease duration).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from poller.errors import CheckpointError
from poller.observability.metrics import NullMetrics
from poller.streams.ownership import SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget
from tests.component.harness import LIMIT, MAPPING, SHARD, mapping_config, puts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class Ownership(SoloOwnership):
    """Solo ownership that records releases."""

    def __init__(self, store: MemoryCheckpointStore) -> None:
        super().__init__(store, MAPPING)
        self.released: list[str] = []

    async def release(self, shard_id: str) -> None:
        self.released.append(shard_id)


class DownAfterFirstRead(MemoryCheckpointStore):
    """A store that answers the run's first checkpoint read, then is down (every read fails
    with the retriable error a DynamoDB outage gives)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, mapping: str, shard_id: str) -> Any:
        self.gets += 1
        if self.gets > 1:
            raise CheckpointError("checkpoint store unreachable")
        return await super().get(mapping, shard_id)


async def test_a_drain_while_the_window_restore_waits_for_the_store_ends_the_run() -> None:
    api, store, stopping = FakeStreamApi(), DownAfterFirstRead(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts("a"))
    target = RecordingTarget()
    ownership = Ownership(store)
    sup = ShardSupervisor(
        mapping_config(
            batch_size=10, maximum_batching_window_in_seconds=0, tumbling_window_in_seconds=60
        ),
        api=api,
        kind="kinesis",
        target=target,
        ownership=ownership,
        stopping=stopping,
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=lambda: None,
    )
    with anyio.fail_after(LIMIT * 3):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: store.gets >= 2, LIMIT, "the window restore retries")
            sup.stop(SHARD, lost=False)
            try:
                await wait_until(lambda: SHARD not in sup.running, LIMIT, "the drain ended it")
            finally:
                tg.cancel_scope.cancel()  # the drain deadline, for a run the drain missed
    assert ownership.released == [SHARD]
    assert target.events == []
