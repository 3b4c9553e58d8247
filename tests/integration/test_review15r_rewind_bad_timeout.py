"""Hostile review 15r: ``poller rewind --timeout`` with a negative value.

A negative wait is not a wait: the command writes the request, looks once, and exits 1 saying
the rewind was not applied, leaving it pending for whenever the shard next (re)starts. Bad
input must be refused before anything is written (issue 15: a clear error, a non-zero exit,
nothing changed). The service is represented by a fresh ``services`` row of a live process
(this test's), so the command defers the apply to it and the request would stay pending.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.types import Checkpoint
from tests.integration.test_rewind import rewind, sqlite_setup
from tests.support.aws import moto_server_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


def _seed(db: Path, shards: list[str]) -> None:
    async def write() -> None:
        store = await SqliteCheckpointStore(db).open()
        try:
            for shard in shards:
                await store.put("solo", shard, Checkpoint(sequence_number="1"))
            await store.serve("solo", f"{socket.gethostname()}:{os.getpid()}")
        finally:
            await store.aclose()

    anyio.run(write)


def test_a_negative_timeout_is_refused_before_anything_is_written(
    tmp_path: Path, moto_url: str
) -> None:
    config, _stream, shards = sqlite_setup(tmp_path, moto_url)
    db = tmp_path / "solo.db"
    _seed(db, [s["ShardId"] for s in shards])
    started = time.monotonic()
    result = rewind(config, "--mapping", "solo", "--to-trim-horizon", "--timeout", "-5")
    assert time.monotonic() - started < 15
    with sqlite3.connect(db) as conn:
        requests = conn.execute("SELECT COUNT(*) FROM rewinds").fetchone()[0]
    assert (result.returncode, requests) == (2, 0), result.stdout + result.stderr
    assert "--timeout" in result.stderr
