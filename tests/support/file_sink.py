"""A Python handler for service subprocess tests: appends each batch to a JSON-lines file.

The service runs in its own process in these tests, so deliveries are recorded in the file
named by ``POLLER_TEST_SINK``: one line per batch, written and flushed before the handler
returns, so a SIGKILL after the write still leaves the batch in the file (that batch is then
delivered again after restart: the duplicate the tests allow). ``POLLER_TEST_SLEEP`` makes
each batch take that many seconds, to catch the service with a batch in flight, and
``POLLER_TEST_STARTED`` names a file that gets a line when a batch starts. While the file named
by ``POLLER_TEST_FAIL_FLAG`` exists, a batch holding a record with partition key ``poison``
raises (and is not written). While the file named by ``POLLER_TEST_SLOW_FLAG`` exists, each
batch also sleeps the number of seconds it holds (the nemesis makes slow batches on demand).
``POLLER_TEST_BEGUN`` names a JSON-lines file that gets the batch's identity when it starts, so
a batch whose handler never returned (its process was killed) still has a start for the
exclusivity checker (``tests/support/checker.py``). Each sink line names the process (``pid``)
and the replica (``replica``, from ``POLLER_CHECKPOINTS__REPLICA_ID``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def env(
    sink: Path,
    *,
    sleep: float | None = None,
    started: Path | None = None,
    fail_flag: Path | None = None,
    slow_flag: Path | None = None,
    begun: Path | None = None,
) -> dict[str, str]:
    """The environment that steers :func:`handler` (and ``tests.support.sqs:sink_handler``,
    which reads the same variables) in a service subprocess."""
    variables = {"POLLER_TEST_SINK": sink, "POLLER_TEST_SLEEP": sleep}
    variables |= {"POLLER_TEST_STARTED": started, "POLLER_TEST_FAIL_FLAG": fail_flag}
    variables |= {"POLLER_TEST_SLOW_FLAG": slow_flag, "POLLER_TEST_BEGUN": begun}
    return {name: str(value) for name, value in variables.items() if value is not None}


def handler(event: dict[str, Any], context: Any) -> None:
    delay = float(os.environ.get("POLLER_TEST_SLEEP", "0"))
    started = time.time()
    marker = os.environ.get("POLLER_TEST_STARTED")
    if marker:
        with open(marker, "a", encoding="utf-8") as out:
            out.write(f"{len(event['Records'])}\n")
    begun = os.environ.get("POLLER_TEST_BEGUN")
    if begun:
        _append(begun, {**_identity(event), "started": started})
    delay += _slow_seconds(os.environ.get("POLLER_TEST_SLOW_FLAG"))
    if delay:
        time.sleep(delay)
    flag = os.environ.get("POLLER_TEST_FAIL_FLAG")
    keys = [r["kinesis"]["partitionKey"] for r in event["Records"]]
    if flag and os.path.exists(flag) and "poison" in keys:
        raise RuntimeError("poison record")
    line = {
        **_identity(event),
        "started": started,
        "finished": time.time(),
        "records": [
            [
                r["eventID"].split(":", 1)[0],
                r["kinesis"]["sequenceNumber"],
                r["kinesis"]["partitionKey"],
            ]
            for r in event["Records"]
        ],
    }
    _append(os.environ["POLLER_TEST_SINK"], line)


def _identity(event: dict[str, Any]) -> dict[str, Any]:
    """Who runs the batch, and on which shard."""
    shard = event["Records"][0]["eventID"].split(":", 1)[0] if event["Records"] else ""
    replica = os.environ.get("POLLER_CHECKPOINTS__REPLICA_ID", "")
    return {"pid": os.getpid(), "replica": replica, "shard": shard}


def _slow_seconds(flag: str | None) -> float:
    """The extra seconds a batch sleeps: what the slow flag file holds, while it exists."""
    if not flag:
        return 0.0
    try:
        with open(flag, encoding="utf-8") as held:
            return float(held.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def _append(path: str, line: dict[str, Any]) -> None:
    """One JSON line, written and flushed in one call (several processes append at once)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
        out.flush()


def read(path: str) -> list[dict[str, Any]]:
    """Every batch line written so far."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as sink:
        return [json.loads(line) for line in sink if line.strip()]


def delivered(path: str | Path) -> list[tuple[str, str]]:
    """(shard, sequence number) of every record of every batch written so far, in order."""
    return [(shard, seq) for batch in read(str(path)) for shard, seq, _ in batch["records"]]
