"""Component tests of the read budget (poller.streams.budget) in the real stream engine: the
StreamMappingRunner's readers and processors over the scripted FakeStreamApi.

A backlogged multi-shard mapping stays within the budget while delivering everything, in
order; each read's ``Limit`` is sized from the share; and a drained or stopped mapping gives
every byte back (a leak would stall the process's other shards forever).
"""

from __future__ import annotations

import gc
import itertools
from collections import defaultdict
from typing import Any

import anyio
import pytest

from poller.ports import StartPosition
from poller.streams.budget import ReadBudget
from poller.testing import (
    FakeStreamApi,
    MemoryCheckpointStore,
    Put,
    RecordingTarget,
    Slow,
    success,
)
from poller.types import InvokeResult, StreamRecord
from tests.component.harness import LIMIT, MAPPING, make_runner, mapping_config, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARDS = [f"shardId-{i:012}" for i in range(4)]
PER_SHARD = 240
BATCH = 10
DATA = b"x" * 200


def _backlog(api: FakeStreamApi) -> dict[str, list[str]]:
    """Each shard's backlog in one page (the reader's Limit alone cuts it), per shard."""
    sent: dict[str, list[str]] = {}
    for shard in SHARDS:
        api.add_shard(shard)
        raws = api.add_page(shard, [Put(f"k{n % 10}", DATA) for n in range(PER_SHARD)])
        sent[shard] = [str(raw["SequenceNumber"]) for raw in raws]
    return sent


def _by_shard(target: RecordingTarget, sent: dict[str, list[str]]) -> dict[str, list[str]]:
    shard_of = {seq: shard for shard, seqs in sent.items() for seq in seqs}
    got: dict[str, list[str]] = defaultdict(list)
    for position in target.delivered():
        got[shard_of[position]].append(position)
    return dict(got)


async def test_a_backlogged_mapping_stays_within_the_budget_and_delivers_all_in_order(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    sent = _backlog(api)
    record_size = _record_size()
    budget = ReadBudget(len(SHARDS) * 30 * record_size)  # a share of 30 records per shard
    highest = 0

    async def slow_success(event: dict[str, Any]) -> InvokeResult:
        nonlocal highest
        highest = max(highest, budget.used)
        await anyio.sleep(0.002)  # a target slower than the reads: the budget fills
        return success()

    target = RecordingTarget(default=slow_success)
    runner = make_runner(
        mapping_config(batch_size=BATCH),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    async with running(runner, stopping):
        await wait_until(
            lambda: len(target.delivered()) == len(SHARDS) * PER_SHARD,
            4 * LIMIT,
            "every record delivered",
        )
    assert _by_shard(target, sent) == sent  # everything, once, in order per shard
    assert highest >= budget.total // 2  # the backlog did fill the budget
    assert highest <= budget.total + max(_read_sizes(api)) * record_size  # one response over
    assert budget.used == 0
    assert budget.accounts == 0
    assert budget.buffered(MAPPING) == (0, 0)


async def test_each_read_asks_for_what_fits_in_the_share(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    _backlog(api)
    record_size = _record_size()
    budget = ReadBudget(len(SHARDS) * 30 * record_size)
    target = RecordingTarget()
    runner = make_runner(
        mapping_config(batch_size=BATCH),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    async with running(runner, stopping):
        await wait_until(
            lambda: len(target.delivered()) == len(SHARDS) * PER_SHARD,
            4 * LIMIT,
            "every record delivered",
        )
    reads = _read_sizes(api)
    assert reads, "no records read"
    assert max(reads) <= 30  # never past the share, though each page held 240 records
    assert budget.used == 0


async def test_stopping_with_a_backlog_and_an_invocation_in_flight_frees_every_byte(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    _backlog(api)
    budget = ReadBudget(1 << 20)
    release = anyio.Event()
    target = RecordingTarget(default=Slow(release))
    runner = make_runner(
        mapping_config(batch_size=BATCH),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    async with running(runner, stopping):
        await wait_until(lambda: target.in_flight == len(SHARDS), LIMIT, "every shard invoking")
        assert budget.used > 0
        stopping.set()
        release.set()
    assert budget.used == 0
    assert budget.accounts == 0
    # The process's other shards can read again: a fresh account gets the whole budget.
    fresh = budget.account("other", "s", floor_records=1, max_records=10_000)
    fresh.average = 1000
    with anyio.fail_after(1):
        assert await fresh.reserve() == (1 << 20) // 1000


def _record_size() -> int:
    """The event bytes of one record of the backlog (the same on every shard)."""
    probe = FakeStreamApi()
    probe.add_shard("probe")
    raws = probe.add_page("probe", [Put("k0", DATA)])
    return probe.converter("probe", StartPosition("TRIM_HORIZON"))(raws)[0].size


def _read_sizes(api: FakeStreamApi) -> list[int]:
    """Records returned per GetRecords, from the fake's call log (offsets per shard)."""
    offsets: dict[str, list[int]] = defaultdict(list)
    for name, shard, detail in api.calls:
        if name == "get_records" and shard in SHARDS:
            offsets[shard].append(int(detail))
    sizes: list[int] = []
    for steps in offsets.values():
        sizes.extend(b - a for a, b in itertools.pairwise(steps) if b > a)
    return sizes


@pytest.mark.parametrize("parallelization", [1, 10])
async def test_a_batching_window_does_not_wait_for_records_the_budget_will_not_read(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event, parallelization: int
) -> None:
    """A share smaller than one batch: the reader waits for the budget while the lane waits
    for a full batch. The lane must send what it has, not sit out the batching window
    (a 60 s window here: 240 records of 30 a read would take minutes)."""
    sent = _backlog(api)
    budget = ReadBudget(len(SHARDS) * 30 * _record_size())  # 30 records a shard
    target = RecordingTarget()
    runner = make_runner(
        mapping_config(
            batch_size=1000,
            maximum_batching_window_in_seconds=60,
            parallelization_factor=parallelization,
        ),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    async with running(runner, stopping):
        await wait_until(
            lambda: len(target.delivered()) == len(SHARDS) * PER_SHARD,
            4 * LIMIT,
            "every record delivered",
        )
    for shard, got in _by_shard(target, sent).items():
        index = {seq: n for n, seq in enumerate(sent[shard])}
        assert sorted(got, key=index.__getitem__) == sent[shard]  # all, once
        for key in range(10):  # in order per partition key (k0..k9: n % 10)
            mine = [index[seq] for seq in got if index[seq] % 10 == key]
            assert mine == sorted(mine)
    assert budget.used == 0


async def test_a_stuck_shard_never_starves_the_others_on_a_tiny_budget(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """One shard's target never answers while its records fill the budget: the other shards
    still read and deliver everything (an account holding nothing always reads)."""
    sent = _backlog(api)
    stuck = SHARDS[0]
    budget = ReadBudget(2 * 30 * _record_size())  # less than the four shards' shares
    never = anyio.Event()

    async def stuck_on_one_shard(event: dict[str, Any]) -> InvokeResult:
        if event["Records"][0]["eventID"].startswith(stuck):
            await never.wait()
        return success()

    target = RecordingTarget(default=stuck_on_one_shard)
    runner = make_runner(
        mapping_config(batch_size=BATCH),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=budget,
    )
    others = {shard: seqs for shard, seqs in sent.items() if shard != stuck}
    async with running(runner, stopping):
        await wait_until(
            lambda: {s: v for s, v in _by_shard(target, sent).items() if s != stuck} == others,
            4 * LIMIT,
            "every record of the other shards delivered",
        )
        stopping.set()
        never.set()
    assert budget.used == 0


def _records_alive() -> int:
    """StreamRecord objects anything still refers to."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is StreamRecord)


async def test_settled_records_are_not_kept_in_memory_while_the_shard_waits(
    api: FakeStreamApi, store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """The budget frees a record's bytes when it settles; the engine must also let go of the
    record itself. A reader's last chunk, the dispatcher's last chunk (``async for`` keeps it
    while waiting for the next) and a lane's last batch stayed alive after settling, so at
    256 shards more settled records were held than buffered ones."""
    api.add_shard(SHARDS[0])
    api.add_page(SHARDS[0], [Put(f"k{n}", DATA) for n in range(250)])
    target = RecordingTarget()
    runner = make_runner(
        mapping_config(batch_size=100),
        api=api,
        target=target,
        store=store,
        stopping=stopping,
        budget=ReadBudget(1 << 20),
    )
    assert _records_alive() == 0
    async with running(runner, stopping):
        await wait_until(lambda: len(target.delivered()) == 250, LIMIT, "every record delivered")
        # Caught up: the reader idles, the dispatcher waits for a chunk, the lane for records.
        reads = [call for call in api.calls if call[0] == "get_records"]
        await wait_until(
            lambda: sum(1 for call in api.calls if call[0] == "get_records") > len(reads),
            LIMIT,
            "a read after the last delivery",
        )
        assert _records_alive() == 0
