"""The idle cadence of a shard reader: shards woken together on a shared grid, at the
service's rate (poller.streams.reader.idle_wake)."""

from __future__ import annotations

import pytest

from poller.streams.reader import IDLE_TICK, MIN_CALL_INTERVAL, idle_wake


def test_idle_shards_polled_at_different_instants_wake_on_the_same_tick() -> None:
    wakes = {
        round(idle_wake(100.0 + offset, 1.0, 100.02 + offset), 9)
        for offset in (0.0, 0.03, 0.06, 0.09)
    }
    assert wakes == {101.0}


@pytest.mark.parametrize("interval", [1.0, 0.25])
def test_the_cadence_is_the_interval_from_the_call_not_from_the_answer(interval: float) -> None:
    # A call on a tick whose answer came 40 ms late: the next call is due one interval
    # after the call began, not after the answer.
    assert idle_wake(50.0, interval, 50.04) == pytest.approx(50.0 + interval)


@pytest.mark.parametrize("interval", [1.0, 0.25])
def test_a_wake_is_never_more_than_half_a_tick_early_nor_under_the_call_interval(
    interval: float,
) -> None:
    tick = min(IDLE_TICK, interval / 5)
    for step in range(200):
        last_call = 7.0 + step * 0.0137
        wake = idle_wake(last_call, interval, last_call + 0.001)
        assert wake - last_call >= interval - tick / 2 - 1e-9
        assert wake - last_call >= MIN_CALL_INTERVAL


def test_an_answer_slower_than_the_interval_waits_the_interval_from_the_answer() -> None:
    assert idle_wake(10.0, 1.0, 10.95) == pytest.approx(12.0)


def test_no_grid_without_an_interval() -> None:
    assert idle_wake(3.0, 0.0, 3.5) == 3.5
