"""The read budget's logic (poller.streams.budget): shares, limits, waiting, releasing."""

from __future__ import annotations

import anyio
import pytest
import structlog.testing

from poller.streams.budget import INITIAL_RECORD_BYTES, ReadBudget, ShardAccount
from poller.testing import RecordingMetrics
from poller.types import StreamRecord
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

KB = 1000


def records(count: int, size: int = KB, start: int = 0) -> list[StreamRecord]:
    return [StreamRecord(str(start + i), "k", 0.0, {}, size) for i in range(count)]


def account(budget: ReadBudget, shard: str = "s", floor: int = 10) -> ShardAccount:
    return budget.account("m", shard, floor_records=floor, max_records=10_000)


async def read(acc: ShardAccount, size: int = KB) -> list[StreamRecord]:
    """One read as the reader does it: reserve, the call returns ``limit`` records, charge."""
    limit = await acc.reserve()
    acc.unreserve()
    got = records(limit, size)
    acc.charge(got, len(got))
    return got


async def test_the_share_divides_the_budget_among_open_accounts() -> None:
    budget = ReadBudget(100 * KB)
    first = account(budget, "a")
    assert budget.share == 100 * KB
    second = account(budget, "b")
    assert budget.share == 50 * KB
    second.close()
    assert budget.share == 100 * KB
    first.close()


async def test_the_limit_fits_the_remaining_share_at_the_average_size() -> None:
    budget = ReadBudget(100 * KB)
    acc, _other = account(budget, "a"), account(budget, "b")
    acc.average = KB
    assert await acc.reserve() == 50  # 50 KB share / 1 KB
    acc.unreserve()
    acc.charge(records(20), 20)
    assert acc.next_limit() == 30


async def test_the_limit_is_at_most_the_service_maximum() -> None:
    budget = ReadBudget(1 << 30)
    acc = budget.account("m", "s", floor_records=100, max_records=10_000)
    assert await acc.reserve() == 10_000


async def test_a_first_read_assumes_large_records() -> None:
    budget = ReadBudget(400 * KB)
    acc = account(budget, floor=1)
    assert await acc.reserve() == 400 * KB // INITIAL_RECORD_BYTES


async def test_the_average_is_the_latest_reads() -> None:
    acc = account(ReadBudget(1 << 30))
    acc.charge(records(10, 2000), 10)
    assert acc.average == 2000
    acc.charge([], 0)  # an empty read tells nothing
    assert acc.average == 2000


async def test_a_holding_account_waits_for_half_its_share_or_a_floor() -> None:
    budget = ReadBudget(100 * KB)
    small_floor, big_floor = account(budget, "a", floor=5), account(budget, "b", floor=40)
    for acc in (small_floor, big_floor):
        acc.average = KB
        acc.charge(records(30), 30)
    assert small_floor.next_limit() is None  # 20 KB free < half of its 50 KB share
    assert big_floor.next_limit() is None
    small_floor.release(records(5))
    assert small_floor.next_limit() == 25
    big_floor.release(records(5))
    assert big_floor.next_limit() is None  # 25 KB free, but a floor of 40 records is more
    big_floor.release(records(15))
    assert big_floor.next_limit() == 40


async def test_a_kpl_aggregate_counts_once_in_the_average() -> None:
    acc = account(ReadBudget(1 << 30))
    acc.charge(records(5, 1000), 1)  # one raw record expanded into five user records
    assert acc.average == 5000


async def test_reserved_bytes_count_against_the_others() -> None:
    budget = ReadBudget(100 * KB)
    acc = account(budget)
    acc.average = KB
    limit = await acc.reserve()
    assert budget.used == limit * KB
    acc.unreserve()
    assert budget.used == 0


async def test_an_account_waits_while_its_share_is_used_then_reads_when_records_settle() -> None:
    budget = ReadBudget(100 * KB)
    acc, _other = account(budget, "a"), account(budget, "b")
    acc.average = KB
    got = await read(acc)
    assert acc.next_limit() is None  # its 50 KB share is held
    limits: list[int] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                limits.append(await acc.reserve())

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            assert limits == []
            acc.release(got[:10])  # 10 KB: below half its share, keeps waiting
            await anyio.wait_all_tasks_blocked()
            assert limits == []
            acc.release(got[10:25])
    assert limits == [25]


async def test_no_read_is_admitted_while_the_budget_is_used_by_others() -> None:
    budget = ReadBudget(100 * KB)
    a, b = account(budget, "a", floor=1), account(budget, "b", floor=1)
    a.average = b.average = KB
    await read(a)
    b.charge(records(10), 10)  # b holds some; the budget has 40 KB left
    assert b.next_limit() == 40
    a_more = records(40, KB, 100)
    a.held += 40 * KB  # a went over its share (the previous share before b opened)
    budget.used += 40 * KB
    assert b.next_limit() is None
    a.release(a_more)
    assert b.next_limit() == 40


async def test_an_account_holding_nothing_reads_even_when_the_budget_is_used() -> None:
    """No shard starves another: a stuck shard holding the budget cannot stop a new one."""
    budget = ReadBudget(100 * KB)
    stuck = account(budget, "stuck")
    stuck.average = KB
    await read(stuck)  # alone: its share was the whole budget
    assert budget.room == 0
    new = account(budget, "new", floor=10)
    new.average = KB
    assert new.next_limit() == 25  # half its share: over the budget by that one response


async def test_the_budget_is_exceeded_by_at_most_one_response_per_estimate_error() -> None:
    budget = ReadBudget(100 * KB)
    shards = [account(budget, str(i), floor=1) for i in range(4)]
    for acc in shards:
        acc.average = KB
    for acc in shards:
        await read(acc)
    assert budget.used == 100 * KB
    # Records twice the estimate: one response over the share, then no more reads.
    big = shards[0]
    big.release(records(25))
    limit = await big.reserve()
    big.unreserve()
    big.charge(records(limit, 2 * KB), limit)
    assert budget.used <= 100 * KB + limit * 2 * KB
    assert big.next_limit() is None


async def test_release_never_frees_more_than_the_account_holds() -> None:
    budget = ReadBudget(100 * KB)
    a, b = account(budget, "a"), account(budget, "b")
    a.average = b.average = KB
    got = await read(a)
    await read(b)
    a.release(got)
    a.release(got)  # settled twice: must not free b's bytes
    assert budget.used == b.held == 50 * KB


async def test_close_releases_what_is_held_and_reserved() -> None:
    budget = ReadBudget(100 * KB)
    acc = account(budget)
    await read(acc)
    await acc.reserve()
    acc.close()
    acc.close()
    assert budget.used == 0
    assert budget.accounts == 0
    assert budget.buffered("m") == (0, 0)


async def test_close_wakes_a_waiting_account() -> None:
    budget = ReadBudget(100 * KB)
    first, second = account(budget, "a"), account(budget, "b")
    first.average = second.average = KB
    await read(first)
    await read(second)
    second.held += 60 * KB  # over its share: waits
    budget.used += 60 * KB
    limits: list[int] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                limits.append(await second.reserve())

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            assert limits == []
            first.close()  # its share goes back; second's share is the whole budget again
            await anyio.wait_all_tasks_blocked()
            assert limits == []  # still 110 KB held > 100 KB
            second.release(records(60))
    assert limits == [50]


async def test_a_cancelled_wait_leaks_nothing() -> None:
    budget = ReadBudget(10 * KB)
    acc = account(budget, floor=1)
    acc.average = KB
    await read(acc)
    with anyio.move_on_after(0.05):
        await acc.reserve()
    acc.close()
    assert budget.used == 0
    fresh = account(budget, floor=1)
    fresh.average = KB
    assert await fresh.reserve() == 10


async def test_a_charge_after_close_is_not_held() -> None:
    budget = ReadBudget(10 * KB)
    acc = account(budget)
    acc.close()
    acc.charge(records(3), 3)
    assert budget.used == 0


async def test_the_gauges_follow_the_bytes_and_records() -> None:
    metrics = RecordingMetrics()
    budget = ReadBudget(100 * KB, metrics=metrics)
    acc = account(budget)
    acc.average = KB
    got = await read(acc)
    acc.release(got[:10])
    calls = [args for name, args in metrics.calls if name == "read_buffered"]
    assert calls[-1] == ("m", len(got) - 10, (len(got) - 10) * KB)
    budgets = [args for name, args in metrics.calls if name == "read_budget"]
    assert budgets[0] == (100 * KB, 0)
    assert budgets[-1] == (100 * KB, (len(got) - 10) * KB)


def test_a_budget_must_hold_a_byte() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        ReadBudget(0)


async def test_with_a_large_share_a_holding_account_reads_once_half_a_largest_read_fits() -> None:
    budget = ReadBudget(300 * KB)
    acc = budget.account("m", "s", floor_records=10, max_records=100)
    acc.average = KB
    acc.charge(records(200), 200)
    # 100 KB free: less than half the share (150 KB), but a full read of 100 records fits.
    assert acc.next_limit() == 100


async def test_an_account_waiting_for_the_budgets_room_wakes_when_another_releases() -> None:
    budget = ReadBudget(100 * KB)
    first = account(budget, "a", floor=1)
    first.average = KB
    held = await read(first)  # alone: the whole budget
    second = account(budget, "b", floor=1)
    second.average = KB
    second.charge(records(10), 10)  # its share has room (40 KB); the budget has none
    limits: list[int] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                limits.append(await second.reserve())

            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            assert limits == []
            first.release(held[:50])
    assert limits == [40]


async def test_an_idle_poll_updates_no_gauge_and_a_read_in_flight_is_not_buffered() -> None:
    metrics = RecordingMetrics()
    budget = ReadBudget(100 * KB, metrics=metrics)
    acc = account(budget)
    acc.average = KB
    got = await read(acc)
    acc.release(got[:60])
    held = len(got) - 60
    before = len(metrics.calls)
    with anyio.fail_after(5):
        await acc.reserve()  # an idle poll: a read that returns nothing
    acc.unreserve()
    acc.charge([], 0)
    assert len(metrics.calls) == before
    with anyio.fail_after(5):
        await acc.reserve()
    acc.release(got[60:61])  # the gauges report buffered records, not the read in flight
    assert [args for name, args in metrics.calls if name == "read_buffered"][-1] == (
        "m",
        held - 1,
        (held - 1) * KB,
    )
    acc.unreserve()
    assert budget.used == (held - 1) * KB


async def test_a_waiting_read_is_reported_blocked_until_a_release_makes_room() -> None:
    """The processor cuts its batches short while the reader waits for its records to settle
    (a batching window must not wait for records the budget holds back); the moment a
    release lets the reader read, it is told so, before the reader even runs."""
    budget = ReadBudget(100 * KB)
    acc = account(budget)
    acc.average = KB
    seen: list[bool] = []
    acc.on_blocked(seen.append)
    got = await read(acc)  # the whole share: the next read waits
    assert seen == []
    async with anyio.create_task_group() as tg:
        tg.start_soon(acc.reserve)
        await wait_until(lambda: seen == [True], 1.0, "the reader reported blocked")
        acc.release(got[:60])
        assert seen[-1] is False  # at once, with the release
    assert acc.reserved > 0
    acc.unreserve()


async def test_a_record_larger_than_the_whole_budget_is_read_one_at_a_time() -> None:
    budget = ReadBudget(1 << 20)  # 1 MiB, records of 1 MB
    acc = account(budget, floor=100)
    with anyio.fail_after(1):
        for _ in range(3):
            got = await read(acc, size=1_000_000)
            assert len(got) >= 1
            acc.release(got)
    assert await acc.reserve() == 1  # the average is known now: one record a read
    acc.unreserve()
    assert budget.used == 0


async def test_256_shards_on_a_tiny_budget_each_read_at_least_one_record() -> None:
    budget = ReadBudget(10 * KB)  # a share of 40 bytes
    accounts = [account(budget, shard=f"s{n}", floor=100) for n in range(256)]
    with anyio.fail_after(1):
        held = [await read(acc) for acc in accounts]
    assert all(len(got) >= 1 for got in held)
    assert all(acc.next_limit() is None for acc in accounts)  # wait for their records
    for acc, got in zip(accounts, held, strict=True):
        acc.release(got)
    assert all(acc.next_limit() == 1 for acc in accounts)  # never 0
    for acc in accounts:
        acc.close()
    assert budget.used == 0
    assert budget.accounts == 0


async def test_a_share_below_one_batch_is_warned_once_per_mapping() -> None:
    budget = ReadBudget(50 * KB)
    small = [account(budget, f"s{i}", floor=10) for i in range(10)]  # 5 KB each: half a batch
    with structlog.testing.capture_logs() as logs:
        for acc in small[:3]:
            await read(acc)
    warnings = [e for e in logs if e["event"] == "read_budget.share_below_batch"]
    assert len(warnings) == 1
    assert warnings[0]["mapping"] == "m"
    assert warnings[0]["share_bytes"] == 5 * KB
    assert warnings[0]["batch_bytes"] == 10 * KB


async def test_a_share_of_a_batch_or_more_is_not_warned() -> None:
    budget = ReadBudget(100 * KB)
    fits = [account(budget, f"s{i}", floor=10) for i in range(10)]  # 10 KB each: one batch
    with structlog.testing.capture_logs() as logs:
        await read(fits[0])
    assert not [e for e in logs if e["event"] == "read_budget.share_below_batch"]
