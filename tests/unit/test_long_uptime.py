"""Months of DynamoDB Streams shard rollovers, simulated: lineage, leases and checkpoints stay
bounded (defect 8 of issue 11).

A DynamoDB stream closes each shard and opens a child about every 4 hours, and lists a shard
for 24 hours. Each step here is one such rollover on every partition. The real lease
coordinator, the runner's own start and retirement steps and the real lineage planner run over
an in-memory fake of *our* lease table (``DynamoDBLeaseTable``'s interface; DynamoDB itself is
exercised by tests/integration/test_lease_table.py), which counts its calls. Before the fix a
retired parent lease was re-created without its checkpoint at the next discovery, one item per
rollover stayed forever, and the recursive lineage overflowed the stack after ~334 of them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import anyio
import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.config import parse_settings
from poller.core.lineage import ShardInfo, plan_shards
from poller.leases import LeaseCoordinator, LeasedCheckpointStore, LeaseSettings
from poller.ports import StreamApi
from poller.streams import StreamMappingRunner
from poller.streams.ownership import LeasedOwnership, SoloOwnership
from poller.types import SHARD_END, Checkpoint, CheckpointStore, Target
from tests.support.fake_members import FakeMemberItem
from tests.support.service_config import service_config, stream_mapping

pytestmark = pytest.mark.anyio

MAPPING = "orders"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2025-01-01T00:00:00.000"
#: Partitions of the table: each has one chain of shards, one generation per rollover.
PARTITIONS = 4
#: Generations listed at once: 24 h of retention over a 4 h rollover.
LISTED_GENERATIONS = 6
#: 3,000 rollovers of 4 h: about 500 days of uptime.
ROLLOVERS = 3000


class FakeLeaseTable(FakeMemberItem, DynamoDBLeaseTable):
    """The lease table's conditional semantics in a dict, counting every call by name."""

    def __init__(self) -> None:
        super().__init__(client=None, table="fake")
        self.items: dict[str, Lease] = {}
        self.starts: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        #: SHARD_END writes per shard: a shard read to its end twice was re-read.
        self.ends: Counter[str] = Counter()

    async def list_leases(self, mapping: str) -> list[Lease]:
        self.calls["list_leases"] += 1
        return sorted(
            (lease for lease in self.items.values() if lease.mapping == mapping),
            key=lambda lease: lease.shard_id,
        )

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        self.calls["get"] += 1
        return self.items.get(f"{mapping}#{shard_id}")

    async def create(
        self,
        mapping: str,
        shard_id: str,
        *,
        parent_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        self.calls["create"] += 1
        key = f"{mapping}#{shard_id}"
        if key in self.items:
            return False
        self.items[key] = Lease(
            mapping, shard_id, None, 0, checkpoint, tuple(sorted(parent_ids)), None, 0, None
        )
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        self.calls["take"] += 1
        current = self.items.get(lease.key)
        if current is None or current.counter != lease.counter:
            return None
        return self._store(current, owner=owner, pending_owner=None)

    async def renew(self, lease: Lease, owner: str) -> Lease:
        self.calls["renew"] += 1
        return self._store(self._fenced(lease, owner))

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        self.calls["checkpoint"] += 1
        if checkpoint.is_shard_end:
            self.ends[lease.shard_id] += 1
        return self._store(self._fenced(lease, owner), checkpoint=checkpoint)

    async def release(self, lease: Lease, owner: str) -> bool:
        self.calls["release"] += 1
        self._store(self._fenced(lease, owner), owner=None, pending_owner=None)
        return True

    async def delete(self, mapping: str, shard_id: str) -> None:
        self.calls["delete"] += 1
        self.items.pop(f"{mapping}#{shard_id}", None)

    async def mapping_start(self, mapping: str) -> float | None:
        self.calls["mapping_start"] += 1
        return self.starts.get(mapping)

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        self.calls["pin_mapping_start"] += 1
        return self.starts.setdefault(mapping, instant)

    def _fenced(self, lease: Lease, owner: str) -> Lease:
        current = self.items[lease.key]
        assert (current.owner, current.counter) == (owner, lease.counter), "fenced off"
        return current

    def _store(self, lease: Lease, **changes: Any) -> Lease:
        stored = dataclasses.replace(lease, counter=lease.counter + 1, **changes)
        self.items[lease.key] = stored
        return stored


class RollingStream:
    """A DynamoDB-like listing: every step closes each partition's newest shard and opens a
    child; a shard is listed for LISTED_GENERATIONS steps."""

    def __init__(self) -> None:
        self.generation = 0

    def shard(self, partition: int, generation: int) -> str:
        return f"shardId-{generation:08d}-{partition}"

    async def list_shards(self) -> list[ShardInfo]:
        oldest = max(0, self.generation - LISTED_GENERATIONS + 1)
        return [
            ShardInfo(
                self.shard(p, g),
                (self.shard(p, g - 1),) if g > 0 else (),
                closed=g < self.generation,
            )
            for g in range(oldest, self.generation + 1)
            for p in range(PARTITIONS)
        ]


def runner_for(
    stream: RollingStream, store: CheckpointStore, leases: LeaseCoordinator | None
) -> StreamMappingRunner:
    settings = parse_settings(
        service_config(
            "http://127.0.0.1:1",
            stream_mapping(
                MAPPING, STREAM_ARN, "tests.support.recorder:record", starting_position="LATEST"
            ),
            checkpoints={"path": "unused.db"},
        )
    )
    mapping = settings.mappings[0]
    assert mapping.source == "dynamodb"
    return StreamMappingRunner(
        mapping,
        api=cast(StreamApi, stream),  # only listing is used: no shard runs here
        kind="dynamodb",
        target=cast(Target, None),
        ownership=SoloOwnership(store, MAPPING) if leases is None else LeasedOwnership(leases),
        stopping=anyio.Event(),
    )


async def read_held_shards(
    coordinator: LeaseCoordinator, listing: list[ShardInfo], step: int
) -> None:
    """What the shard workers do with what they hold: a closed shard is read to its end
    (SHARD_END) and released; an open one settles a batch."""
    closed = {s.shard_id for s in listing if s.closed}
    for shard_id in sorted(coordinator.held):
        if shard_id in closed:
            await coordinator.checkpoint(shard_id, Checkpoint(SHARD_END))
            await coordinator.release(shard_id)
        else:
            await coordinator.checkpoint(shard_id, Checkpoint(f"{step:020d}"))


async def test_months_of_rollovers_keep_the_lease_table_and_balance_cost_bounded() -> None:
    """500 days of rollovers through discovery (sync), retirement and balancing: the table
    never holds more than the listed shards plus one generation, each step costs the same
    number of table calls, and every shard is read exactly once, parents first."""
    table, stream = FakeLeaseTable(), RollingStream()
    coordinator = LeaseCoordinator(
        table, mapping=MAPPING, owner="replica-a", settings=LeaseSettings()
    )
    runner = runner_for(stream, LeasedCheckpointStore(coordinator), coordinator)
    await runner._maybe_initialize()
    bound = PARTITIONS * (LISTED_GENERATIONS + 1)
    costs: list[int] = []
    for step in range(ROLLOVERS):
        stream.generation = step
        listing = await stream.list_shards()
        await coordinator.heartbeat()  # the upkeep loop's (protocol v2), outside the count
        before = sum(table.calls.values())
        await coordinator.sync(listing, runner._start.checkpoint_for)
        for _ in range(2):  # the parent ends, then its child becomes ready
            await coordinator.balance()
            await read_held_shards(coordinator, listing, step)
        costs.append(sum(table.calls.values()) - before)
        assert len(table.items) <= bound, f"step {step}: {len(table.items)} lease items"
    # Steady from the first retirement on (a shard goes at the second listing without it).
    steady = costs[LISTED_GENERATIONS + 1 :]
    assert max(steady) == min(steady), "cost grew"
    assert max(costs) <= 20 * PARTITIONS
    re_read = {shard: n for shard, n in table.ends.items() if n > 1}
    assert re_read == {}, f"{len(re_read)} shards read to their end more than once"
    assert len(table.ends) == (ROLLOVERS - 1) * PARTITIONS
    unread = [lease for lease in table.items.values() if lease.checkpoint is None]
    assert unread == []


async def test_rollovers_never_recreate_a_retired_lease_and_children_start_at_the_pin() -> None:
    """A lease retired after its shard left the listing is never created again, and every
    child created by a later discovery starts at the mapping's start instant."""
    table, stream = FakeLeaseTable(), RollingStream()
    coordinator = LeaseCoordinator(
        table, mapping=MAPPING, owner="replica-a", settings=LeaseSettings()
    )
    runner = runner_for(stream, LeasedCheckpointStore(coordinator), coordinator)
    await runner._maybe_initialize()
    [pin] = table.starts.values()
    for step in range(50):
        stream.generation = step
        listing = await stream.list_shards()
        await coordinator.sync(listing, runner._start.checkpoint_for)
        for shard_id in {s.shard_id for s in listing if not s.closed}:
            lease = table.items[f"{MAPPING}#{shard_id}"]
            if step > 0 and lease.owner is None:
                assert lease.checkpoint == Checkpoint(start_timestamp=pin)
        await coordinator.balance()
        await read_held_shards(coordinator, listing, step)
        await coordinator.balance()
        await read_held_shards(coordinator, listing, step)
    assert table.calls["create"] == table.calls["delete"] + len(table.items)
    assert table.calls["create"] == 50 * PARTITIONS


async def test_months_of_rollovers_and_restarts_without_leases_stay_bounded() -> None:
    """The single-node path over the memory store: checkpoints stay bounded, a finished shard
    is never planned again, half the partitions write nothing (children hold only their pinned
    start), and restarts every 100 rollovers never re-pin the mapping's start."""
    store, stream = MemoryCheckpointStore(), RollingStream()
    runner = runner_for(stream, store, None)
    await runner._maybe_initialize()
    [pin] = store.starts.values()
    finished: set[str] = set()
    idle = {p for p in range(PARTITIONS) if p % 2}
    for step in range(ROLLOVERS):
        stream.generation = step
        if step % 100 == 99:
            runner = runner_for(stream, store, None)  # a restart
            await runner._maybe_initialize()
            assert store.starts == {MAPPING: pin}
        listing = await stream.list_shards()
        await cast(SoloOwnership, runner._ownership).retire(listing, await store.get_all(MAPPING))
        for _ in range(2):
            checkpoints = await store.get_all(MAPPING)
            ready = plan_shards(listing, checkpoints).ready
            assert not finished & set(ready), "a finished shard was planned again"
            for info in listing:
                if info.shard_id not in ready:
                    continue
                if info.closed:
                    await store.put(MAPPING, info.shard_id, Checkpoint(SHARD_END))
                    finished.add(info.shard_id)
                elif int(info.shard_id[-1]) not in idle:
                    await store.put(MAPPING, info.shard_id, Checkpoint(f"{step:020d}"))
        assert len(store.checkpoints) <= PARTITIONS * (LISTED_GENERATIONS + 1)
