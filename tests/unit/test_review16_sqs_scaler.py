"""Review 16 (hostile) of provisioned mode's scaler (poller.core.scaling): its pace promise,
"no minute ever adds more [than 100 pollers], however the ticks fall"."""

from __future__ import annotations

from poller.core.scaling import BATCHES_PER_POLLER, CONCURRENCY_PER_MINUTE, Load, ProvisionedScaler

BUSY = Load(in_flight=10**6, full=1, backlog=10**6)


def test_no_sixty_seconds_add_more_than_a_hundred_pollers_when_ticks_fall_late() -> None:
    """Ticks delayed (an event loop stalled under load): a busy tick at 30 s, the next at 89 s.
    The credit earned for 0-30 s and for 30-89 s is spent at those two ticks, both inside the
    minute (29 s, 89 s], which then adds far more than 100 pollers."""
    scaler = ProvisionedScaler(2, 10_000, now=0.0)
    at_30 = scaler.tick(BUSY, now=30.0)
    at_89 = scaler.tick(BUSY, now=89.0)
    added_in_one_minute = at_89 - 2  # everything was added at 30 s and 89 s
    assert at_30 > 2
    assert added_in_one_minute <= CONCURRENCY_PER_MINUTE // BATCHES_PER_POLLER
