"""The nemesis schedule: a seed replays it exactly, and the seeds cover every kind of fault."""

from __future__ import annotations

from tests.nemesis.harness import KINDS, make_schedule


def test_a_seed_replays_its_schedule() -> None:
    assert make_schedule(42, 600) == make_schedule(42, 600)
    assert make_schedule(42, 600) != make_schedule(43, 600)


def test_steps_stay_within_the_schedule_in_time_order() -> None:
    for seed in range(50):
        steps = make_schedule(seed, 40)
        assert steps, seed
        assert [s.at for s in steps] == sorted(s.at for s in steps)
        assert all(0 < s.at < 40 for s in steps)


def test_a_long_schedule_holds_every_kind_of_fault() -> None:
    assert {step.kind for step in make_schedule(2026, 30 * 60)} == set(KINDS)
