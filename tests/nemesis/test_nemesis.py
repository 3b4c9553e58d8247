"""The nemesis, short schedule (CI): three replicas on the lease backend under a seeded random
schedule of SIGKILLs, SIGTERMs during slow batches, replicas starting together, lease-table
outages, lost lease-table answers and Kinesis faults; then the exclusivity and order checker.

The seed and the schedule are printed (``-s`` shows them; a failure repeats them); replay a run
with ``NEMESIS_SEED=<seed>``. ``scripts/nemesis --minutes 30`` runs the long schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nemesis.harness import Nemesis, seed_from_env

pytestmark = [pytest.mark.nemesis, pytest.mark.slow]

#: The CI schedule's length: with start-up, settling and shutdown, about 90 s of wall time.
SCHEDULE_SECONDS = 40.0


def test_no_loss_no_disorder_no_concurrent_invocation_under_a_random_schedule(
    tmp_path: Path, moto_process_url: str, lease_store: str
) -> None:
    seed = seed_from_env()
    nemesis = Nemesis(
        tmp_path, moto_process_url, lease_store, seed, SCHEDULE_SECONDS, settle_seconds=90
    )
    result = nemesis.run()
    print(result.describe())  # noqa: T201 - the run's figures, shown with -s
    assert result.problems() == [], result.describe()
