"""The benchmark's no-op handler: counts records and reports when it has seen them all.

Its clocks start when the service imports it (while building targets, before the first
ListShards); when the count reaches POLLER_BENCH_RECORDS it writes wall time, process CPU time
and peak RSS to POLLER_BENCH_OUT.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from typing import Any

_WALL0, _CPU0 = time.perf_counter(), time.process_time()
_EXPECTED = int(os.environ.get("POLLER_BENCH_RECORDS", "0"))
_lock = threading.Lock()
_seen = 0


def sleepy(event: dict[str, Any], context: Any) -> None:
    """Like ``handler``, after sleeping POLLER_BENCH_SLEEP seconds (a slow function)."""
    time.sleep(float(os.environ.get("POLLER_BENCH_SLEEP", "0.05")))
    handler(event, context)


def handler(event: dict[str, Any], context: Any) -> None:
    global _seen
    with _lock:
        _seen += len(event["Records"])
        done = _seen == _EXPECTED
    if done:
        result = {
            "wall_s": time.perf_counter() - _WALL0,
            "cpu_s": time.process_time() - _CPU0,
            "records": _seen,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        tmp = os.environ["POLLER_BENCH_OUT"] + ".tmp"
        with open(tmp, "w") as out:
            json.dump(result, out)
        os.replace(tmp, os.environ["POLLER_BENCH_OUT"])
