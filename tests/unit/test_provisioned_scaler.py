"""Provisioned mode's scaler and receive pace (poller.core.scaling), on a clock the tests move:
growth at AWS's pace (+1,000 concurrency, i.e. 100 pollers, a minute) and never faster, the
bounds, the busy and idle signals (in flight, full batches, empty receives, backlog, failures),
slow shedding after 30 idle seconds, and ten receives a second per poller."""

from __future__ import annotations

import itertools

import pytest

from poller.core.scaling import (
    BATCHES_PER_POLLER,
    IDLE_SECONDS,
    RECEIVES_PER_SECOND,
    Load,
    ProvisionedScaler,
    ReceivePace,
)

#: Batches come back full and the queue has a backlog: the pollers are busy.
BUSY = Load(full=5, backlog=10_000)
#: Nothing waits, nothing came back full, nothing in flight.
IDLE = Load(backlog=0)


def run(scaler: ProvisionedScaler, load: Load, *, start: float, seconds: int) -> list[int]:
    """Tick once a second for ``seconds``; the pollers after each tick."""
    return [scaler.tick(load, now=start + s) for s in range(1, seconds + 1)]


def test_it_starts_at_the_minimum() -> None:
    scaler = ProvisionedScaler(20, 200, now=0.0)
    assert scaler.pollers == 20
    assert scaler.capacity == 20 * BATCHES_PER_POLLER


def test_busy_pollers_grow_by_100_a_minute_and_never_faster() -> None:
    scaler = ProvisionedScaler(2, 10_000, now=0.0)
    after = run(scaler, BUSY, start=0.0, seconds=120)
    assert after[59] == 2 + 100  # one minute: +1,000 concurrency in pollers of ten
    assert after[119] == 2 + 200
    steps = [b - a for a, b in zip([2, *after], after, strict=False)]
    assert set(steps) <= {1, 2}  # about 1.67 a second, in whole pollers
    for start in range(60):  # no window of 60 ticks adds more than 100
        assert after[start + 59] - ([2, *after][start]) <= 100


def test_ticks_at_odd_intervals_earn_the_same_pace() -> None:
    scaler = ProvisionedScaler(2, 10_000, now=0.0)
    now = 0.0
    for gap in [0.3, 2.2, 0.5, 1.0] * 15:  # 60 seconds in all
        now += gap
        scaler.tick(BUSY, now=now)
    assert scaler.pollers == 2 + 100


def test_growth_stops_at_the_maximum() -> None:
    scaler = ProvisionedScaler(2, 10, now=0.0)
    after = run(scaler, BUSY, start=0.0, seconds=30)
    assert max(after) == 10
    assert after[-1] == 10


def test_batches_in_flight_at_80_percent_of_capacity_count_as_busy() -> None:
    scaler = ProvisionedScaler(10, 200, now=0.0)  # capacity 100 batches
    assert scaler.tick(Load(in_flight=79, backlog=0), now=1.0) == 10
    assert scaler.tick(Load(in_flight=80, backlog=0), now=2.0) == 11


def test_full_batches_grow_only_while_the_queue_has_a_backlog() -> None:
    scaler = ProvisionedScaler(2, 200, now=0.0)
    assert run(scaler, Load(full=5, backlog=0), start=0.0, seconds=5)[-1] == 2


def test_before_any_backlog_read_full_batches_alone_grow() -> None:
    scaler = ProvisionedScaler(2, 200, now=0.0)
    assert run(scaler, Load(full=5, backlog=None), start=0.0, seconds=3)[-1] > 2


def test_an_empty_receive_means_the_queue_is_keeping_up() -> None:
    scaler = ProvisionedScaler(2, 200, now=0.0)
    assert run(scaler, Load(full=5, empty=1, backlog=500), start=0.0, seconds=5)[-1] == 2


def test_failures_stop_growth_and_never_shed_pollers() -> None:
    scaler = ProvisionedScaler(5, 200, now=0.0)
    failing = Load(in_flight=50, full=5, failures=3, backlog=10_000)
    assert run(scaler, failing, start=0.0, seconds=60) == [5] * 60


def test_no_burst_after_a_lull() -> None:
    """Credit is earned only while busy: a busy tick after a long quiet one adds what one
    second earns, not what the quiet seconds would have."""
    scaler = ProvisionedScaler(2, 200, now=0.0)
    scaler.tick(BUSY, now=0.5)  # 0.83 of a poller earned, none added yet
    scaler.tick(Load(backlog=5, empty=1), now=10.0)  # neither busy nor idle
    assert scaler.tick(BUSY, now=11.0) == 3  # 1.67, not 0.83 + 1.67


def test_idle_pollers_are_shed_one_a_tick_after_30_seconds_down_to_the_minimum() -> None:
    scaler = ProvisionedScaler(3, 200, now=0.0)
    run(scaler, BUSY, start=0.0, seconds=6)
    grown = scaler.pollers
    after = run(scaler, IDLE, start=6.0, seconds=60)
    quiet_for = IDLE_SECONDS
    assert after[: int(quiet_for)] == [grown] * int(quiet_for)  # idle since 7 s, shed from 37 s
    assert after[int(quiet_for)] == grown - 1
    assert after[-1] == 3  # never below the minimum
    assert min(after) == 3


def test_a_busy_or_unquiet_tick_restarts_the_idle_count() -> None:
    scaler = ProvisionedScaler(2, 200, now=0.0)
    run(scaler, BUSY, start=0.0, seconds=6)
    grown = scaler.pollers
    run(scaler, IDLE, start=6.0, seconds=25)
    scaler.tick(Load(backlog=3), now=32.0)  # messages wait: not idle
    assert run(scaler, IDLE, start=32.0, seconds=25) == [grown] * 25


def test_without_a_backlog_reading_no_full_batch_means_idle() -> None:
    """Most ticks of an idle queue see no receive at all (its long polls last 20 s)."""
    scaler = ProvisionedScaler(2, 200, now=0.0)
    run(scaler, BUSY, start=0.0, seconds=3)
    grown = scaler.pollers
    after = run(scaler, Load(), start=3.0, seconds=int(IDLE_SECONDS) + 3)
    assert after[-1] == grown - 3  # idle from the first tick; shed on the last three
    assert run(scaler, Load(full=1, empty=1), start=36.0, seconds=40)[-1] == grown - 3


def test_batches_in_flight_for_all_but_one_poller_keep_the_pollers() -> None:
    """Shedding one poller must leave in-flight work below half the remaining capacity."""
    scaler = ProvisionedScaler(2, 200, now=0.0)
    run(scaler, BUSY, start=0.0, seconds=3)
    grown = scaler.pollers
    fewer = (grown - 1) * BATCHES_PER_POLLER
    busy_half = Load(in_flight=fewer // 2, backlog=0)
    assert run(scaler, busy_half, start=3.0, seconds=40) == [grown] * 40


@pytest.mark.parametrize("start", [0.0, 1234.5])
def test_a_poller_receives_at_most_ten_times_a_second(start: float) -> None:
    pace = ReceivePace(now=start)
    waits = [pace.wait(now=start) for _ in range(RECEIVES_PER_SECOND * 2)]
    starts = [start + w for w in waits]
    assert waits[0] == 0.0
    first_second = [s for s in starts if s < start + 1.0 - 1e-6]
    assert len(first_second) == RECEIVES_PER_SECOND
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g == pytest.approx(1 / RECEIVES_PER_SECOND) for g in gaps)


def test_a_slow_receive_is_not_followed_by_a_burst() -> None:
    pace = ReceivePace(now=0.0)
    assert pace.wait(now=0.0) == 0.0
    assert pace.wait(now=5.0) == 0.0  # the receive took 5 s: the next may start at once
    assert pace.wait(now=5.0) == pytest.approx(0.1)  # and the one after waits its turn
