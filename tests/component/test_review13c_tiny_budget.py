"""Hostile review 13c: a read budget far below one record (memory.read_budget_mib at its
smallest legal value) and records larger than the whole budget must still all be delivered,
once each, in order, with every byte given back."""

from __future__ import annotations

import anyio
import pytest

from poller.streams.budget import ReadBudget
from poller.testing import FakeStreamApi, MemoryCheckpointStore, Put, RecordingTarget
from tests.component.harness import LIMIT, make_runner, mapping_config, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARDS = [f"shardId-{i:012}" for i in range(3)]


@pytest.mark.parametrize("size", [1, 300_000])
async def test_a_budget_smaller_than_one_record_still_delivers_everything_in_order(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event, size: int
) -> None:
    """A 1-byte budget (records of 1 byte and of 300 kB): each read still takes at least one
    record, so every shard is delivered in full and the budget ends empty."""
    sent: dict[str, list[str]] = {}
    for shard in SHARDS:
        api.add_shard(shard)
        raws = api.add_page(shard, [Put(f"k{n}", b"x" * size) for n in range(12)])
        sent[shard] = [str(raw["SequenceNumber"]) for raw in raws]
    budget = ReadBudget(1)  # read_budget_bytes of a tiny read_budget_mib
    target = RecordingTarget()
    runner = make_runner(
        mapping_config(batch_size=5, maximum_batching_window_in_seconds=1),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    total = sum(map(len, sent.values()))
    async with running(runner, stopping):
        await wait_until(lambda: len(target.delivered()) >= total, 4 * LIMIT, "all delivered")
    got = target.delivered()
    for seqs in sent.values():
        mine = set(seqs)
        assert [seq for seq in got if seq in mine] == seqs
    assert len(got) == total
    assert budget.used == 0
