"""Review 13e: a drain that finds the shard's reader waiting for the read budget, with records
buffered in a lane behind the batch in flight (the inline intake: the reader runs in the
shard's task, under the scope the drain cancels).

The drain must end the budget wait at once, let the batch in flight finish and checkpoint it,
invoke nothing that was buffered, and leave the budget as it found it (every byte given back,
the account closed): a run that ends with bytes still counted would shrink every other shard's
room for good.
"""

from __future__ import annotations

import anyio
import pytest

from poller.observability.metrics import NullMetrics
from poller.streams.budget import ReadBudget
from poller.streams.ownership import SoloOwnership
from poller.streams.supervisor import ShardSupervisor
from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingTarget, Slow
from tests.component.harness import LIMIT, MAPPING, SHARD, mapping_config, puts, written
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Records of about 1.4 kB (event bytes): a few of them fill the budget below.
DATA = b"x" * 1000
#: Room for four such records with a batch size of 2: the reader reads one (its first read is
#: small), then three, then waits for the budget with all four held.
BUDGET_BYTES = 7200


class Ownership(SoloOwnership):
    """Solo ownership that records releases."""

    def __init__(self, store: MemoryCheckpointStore) -> None:
        super().__init__(store, MAPPING)
        self.released: list[str] = []

    async def release(self, shard_id: str) -> None:
        self.released.append(shard_id)


def reads(api: FakeStreamApi) -> int:
    return sum(1 for name, _, _ in api.calls if name == "get_records")


async def test_a_drain_ends_the_budget_wait_and_gives_every_byte_back() -> None:
    api, store, stopping = FakeStreamApi(), MemoryCheckpointStore(), anyio.Event()
    api.add_shard(SHARD)
    api.add_page(SHARD, puts(*"abcdefgh", data=DATA))
    release = anyio.Event()
    target = RecordingTarget(Slow(release))
    budget = ReadBudget(BUDGET_BYTES)
    ownership = Ownership(store)
    sup = ShardSupervisor(
        mapping_config(batch_size=2, maximum_batching_window_in_seconds=0),
        api=api,
        kind="kinesis",
        target=target,
        ownership=ownership,
        stopping=stopping,
        metrics=NullMetrics(),
        destination=None,
        on_shard_end=lambda: None,
        budget=budget,
    )
    with anyio.fail_after(LIMIT * 2):
        async with anyio.create_task_group() as tg:
            sup.start(tg, SHARD)
            await wait_until(lambda: len(target.events) == 1, LIMIT, "the first batch is sent")
            # The reader reads on while the batch is held, until the budget holds it back.
            await wait_until(
                lambda: budget.buffered(MAPPING)[1] == 4 and len(budget._waiting) == 1,
                LIMIT,
                "the reader waits for the budget",
            )
            read_before_drain = reads(api)
            first = [r["kinesis"]["partitionKey"] for r in target.events[0]["Records"]]
            sup.stop(SHARD, lost=False)
            await wait_until(lambda: not budget._waiting, LIMIT, "the drain ended the wait")
            release.set()
            await wait_until(lambda: SHARD not in sup.running, LIMIT, "the shard drained")
    assert reads(api) == read_before_drain, "the drained reader read again"
    assert len(target.events) == 1, "a record buffered behind the batch was invoked"
    delivered = target.events[0]["Records"]
    assert [r["kinesis"]["partitionKey"] for r in delivered] == first
    assert [c.sequence_number for c in written(store)][-1] == (
        delivered[-1]["kinesis"]["sequenceNumber"]
    )
    assert ownership.released == [SHARD]
    assert (budget.used, budget.accounts) == (0, 0)
    assert budget.buffered(MAPPING) == (0, 0)
