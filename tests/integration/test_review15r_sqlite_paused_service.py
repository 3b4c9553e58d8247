"""Hostile review 15r: ``poller rewind`` on SQLite while the service is alive but paused.

The command writes the checkpoints itself only when no live service serves the mapping, and a
``services`` row not beaten for 60 s counts as a crashed service's, even when its pid is alive
on this very host (``poller.checkpoints.sqlite._served``). A service paused for 60 s (SIGSTOP,
a VM freeze, a swap storm) is then rewound behind its back: the command writes the new
checkpoint and marks the request applied, the service resumes with its old position in memory,
sees no pending request (so never restarts), and its next checkpoint silently undoes the rewind.
The records from the rewind's position are never re-delivered although the command said so.

A 60 s pause is too long for a test: the service is stopped with SIGSTOP and its row is set to
the age it would have after such a pause (the service, stopped, cannot beat meanwhile).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller.checkpoints.sqlite import SERVICE_STALE_SECONDS
from tests.integration.test_rewind import deliveries_since, put, rewind, sqlite_setup
from tests.support import file_sink
from tests.support.aws import moto_server_process
from tests.support.process import ServiceProcess
from tests.support.replicas import wait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


def _service_rows(db: Path) -> list[tuple[str, int, float]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute("SELECT replica, pid, seen_at FROM services").fetchall()


def _age_service_row(db: Path, seconds: float) -> None:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("UPDATE services SET seen_at = seen_at - ?", (seconds,))


def test_a_paused_live_service_is_not_rewound_behind_its_back(
    tmp_path: Path, moto_url: str
) -> None:
    """Once the service runs again, it re-delivers every shard from the trim horizon: the
    rewind is neither lost nor undone by the service's own next checkpoint."""
    config, stream, shards = sqlite_setup(tmp_path, moto_url)
    db = tmp_path / "solo.db"
    sink = tmp_path / "sink.jsonl"
    written = put(moto_url, stream, shards, 5)
    firsts = dict(reversed(written))  # shard -> its first sequence number
    service = ServiceProcess(config, tmp_path / "solo.log", file_sink.env(sink)).start()
    try:
        wait(lambda: set(file_sink.delivered(sink)) >= set(written), 30, "first delivery")
        wait(lambda: _service_rows(db), 10, "the services row")
        assert service.proc is not None
        assert _service_rows(db)[0][1] == service.proc.pid
        service.signal(signal.SIGSTOP)
        try:
            _age_service_row(db, SERVICE_STALE_SECONDS + 1)
            result = rewind(config, "--mapping", "solo", "--to-trim-horizon", "--timeout", "5")
        finally:
            service.signal(signal.SIGCONT)
        asked_at = time.time()
        # Applied (0), or left pending for the service while it was stopped (1): either way,
        # the service must re-deliver from the new position once it runs again.
        assert result.returncode in (0, 1), result.stdout + result.stderr
        more = put(moto_url, stream, shards, 1)  # something to checkpoint after the resume
        wait(lambda: set(file_sink.delivered(sink)) >= set(more), 20, "delivery after resume")
        wait(
            lambda: all(
                deliveries_since(file_sink.read(str(sink)), asked_at).get(s, [None])[0] == q
                for s, q in firsts.items()
            ),
            10,
            "re-delivery from the trim horizon after the applied rewind",
        )
    finally:
        service.stop()
