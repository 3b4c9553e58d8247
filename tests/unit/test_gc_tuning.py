"""The collector tuning of ``poller run`` (poller.app.tune_gc): done in the service's own
process only, it freezes what start-up made and raises the youngest generation's threshold.

Checked in a child interpreter: freezing the test runner's own objects would keep them for
the rest of the session.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from poller.app import GC_YOUNG_THRESHOLD, Service
from tests.support.service_config import service_config, stream_mapping

CHILD = """
import gc, json
from poller.app import tune_gc
before = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
tune_gc()
after = {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after}))
"""


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], check=True, capture_output=True, text=True, timeout=60
    )
    result = json.loads(out.stdout)
    assert result["before"]["frozen"] == 0
    assert result["after"]["frozen"] > 10_000  # the modules imported so far, at least
    assert result["after"]["threshold"][0] == GC_YOUNG_THRESHOLD
    # The older generations keep their thresholds.
    assert result["after"]["threshold"][1:] == result["before"]["threshold"][1:]


def test_a_service_in_someone_elses_process_leaves_the_collector_alone() -> None:
    from poller.config.loading import parse_settings

    settings = parse_settings(
        service_config(
            "http://127.0.0.1:1",
            stream_mapping("m", "arn:aws:kinesis:us-east-1:000000000000:stream/s", "a:b"),
            checkpoints={"path": ":memory:"},
        )
    )
    service = Service(settings)
    assert service._own_process is False
    assert gc.get_freeze_count() == 0
