"""Hostile review 15r: the SQLite backend's rewind writes (a real database file, no AWS).

* A shard planned open can reach ``SHARD_END`` before its rewind is applied (the owner read it
  to its end meanwhile). Applying the request then must not turn the finished shard's
  ``SHARD_END`` back into an open position: the rewind plan promises that closed shards are
  never moved, and a re-opened parent is read again while its children run.
* Guards: a database made before rewinds existed gains the new tables when opened; a service
  row whose process is gone from this host does not hold the command back; a live one does.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poller.checkpoints.rewinds import RewindTarget
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.types import SHARD_END, Checkpoint

pytestmark = pytest.mark.anyio

MAPPING, SHARD = "m", "shardId-000000000000"
TRIM = {SHARD: RewindTarget("trim_horizon")}


async def _store(path: Path) -> SqliteCheckpointStore:
    return await SqliteCheckpointStore(path).open()


async def test_the_owners_apply_leaves_a_shard_that_ended_meanwhile_at_shard_end(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path / "c.db")
    try:
        await store.request_rewinds(MAPPING, TRIM, "r1")
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number=SHARD_END))
        start = await store.apply_rewind(MAPPING, SHARD, "host:1")
        assert start is not None
        assert start.is_shard_end
        stored = await store.get(MAPPING, SHARD)
        assert stored is not None
        assert stored.is_shard_end
    finally:
        await store.aclose()


async def test_the_commands_apply_leaves_a_shard_that_ended_meanwhile_at_shard_end(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path / "c.db")
    try:
        await store.request_rewinds(MAPPING, TRIM, "r1")
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number=SHARD_END))
        assert await store.apply_rewinds_unserved(MAPPING, "poller rewind")
        stored = await store.get(MAPPING, SHARD)
        assert stored is not None
        assert stored.is_shard_end
    finally:
        await store.aclose()


async def test_a_database_from_before_rewinds_gains_the_tables(tmp_path: Path) -> None:
    """Guard: the migration is the schema's CREATE IF NOT EXISTS on open."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE checkpoints (mapping TEXT NOT NULL, shard_id TEXT NOT NULL,"
            " sequence_number TEXT, start_timestamp REAL, sub_sequence_number INTEGER,"
            " window_state TEXT, updated_at REAL NOT NULL, PRIMARY KEY (mapping, shard_id))"
        )
        conn.execute(
            "INSERT INTO checkpoints VALUES (?, ?, '42', NULL, NULL, NULL, ?)",
            (MAPPING, SHARD, time.time()),
        )
    store = await _store(path)
    try:
        await store.request_rewinds(MAPPING, TRIM, "r1")
        assert await store.pending_rewinds(MAPPING) == {SHARD: "r1"}
        assert await store.apply_rewinds_unserved(MAPPING, "poller rewind")
        assert await store.get(MAPPING, SHARD) == Checkpoint(start_timestamp=0.0)
        (state,) = await store.rewind_states(MAPPING, "r1")
        assert state.applied
        assert state.applied_from == "AFTER_SEQUENCE_NUMBER 42"
    finally:
        await store.aclose()


def _a_dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    return dead.pid


async def test_a_dead_services_pid_does_not_hold_the_command_back(tmp_path: Path) -> None:
    """Guard: a fresh row whose process is gone from this host counts as no service."""
    dead_pid = _a_dead_pid()
    store = await _store(tmp_path / "c.db")
    try:
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="42"))
        await store.request_rewinds(MAPPING, TRIM, "r1")
        with sqlite3.connect(tmp_path / "c.db") as conn:
            conn.execute(
                "INSERT INTO services VALUES (?, 'gone', ?, ?, ?)",
                (MAPPING, socket.gethostname(), dead_pid, time.time()),
            )
        assert await store.server_of(MAPPING) is None
        assert await store.apply_rewinds_unserved(MAPPING, "poller rewind")
        assert await store.get(MAPPING, SHARD) == Checkpoint(start_timestamp=0.0)
    finally:
        await store.aclose()


async def test_a_live_service_holds_the_command_back(tmp_path: Path) -> None:
    """Guard: a fresh row of a live process: the command writes nothing."""
    store = await _store(tmp_path / "c.db")
    try:
        await store.put(MAPPING, SHARD, Checkpoint(sequence_number="42"))
        await store.request_rewinds(MAPPING, TRIM, "r1")
        await store.serve(MAPPING, f"{socket.gethostname()}:{os.getpid()}")
        assert await store.server_of(MAPPING) is not None
        assert not await store.apply_rewinds_unserved(MAPPING, "poller rewind")
        assert await store.get(MAPPING, SHARD) == Checkpoint(sequence_number="42")
        assert await store.pending_rewinds(MAPPING) == {SHARD: "r1"}
    finally:
        await store.aclose()
