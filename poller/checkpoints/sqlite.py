"""SQLite checkpoint store: the durable single-node default.

Shard processors write a checkpoint after every settled batch and before taking the next one; a
restart reads them back to resume after the last settled record. The ``mapping_starts`` table
holds one row per mapping that has started: the instant a LATEST mapping pinned at its first
start, kept apart from the shard checkpoints so that retiring them all never makes the mapping
look new (a database made by an older version gets the table when opened). The database runs in WAL
mode, and with ``synchronous=FULL`` (the default) a checkpoint is on disk when ``put``
returns, so neither a crash nor a power loss re-delivers more than the batch in flight.

sqlite3 is blocking, so every call runs in a worker thread. One connection serves all calls,
serialised by a lock: checkpoint writes are tiny and one writer is what SQLite wants anyway.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import anyio.to_thread

from poller.core.windows import MAX_STATE_BYTES
from poller.errors import CheckpointError
from poller.types import Checkpoint

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    mapping TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT,
    start_timestamp REAL,
    sub_sequence_number INTEGER,
    window_state TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (mapping, shard_id)
);
CREATE TABLE IF NOT EXISTS mapping_starts (
    mapping TEXT PRIMARY KEY,
    start_timestamp REAL NOT NULL,
    pinned_at REAL NOT NULL
);
"""


def _migrate(conn: sqlite3.Connection) -> None:
    """Add columns that newer versions store, to a database an older version created."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
    if "sub_sequence_number" not in columns:
        conn.execute("ALTER TABLE checkpoints ADD COLUMN sub_sequence_number INTEGER")
    if "window_state" not in columns:
        conn.execute("ALTER TABLE checkpoints ADD COLUMN window_state TEXT")


class SqliteCheckpointStore:
    """Checkpoints in one SQLite file. Implements ``poller.types.CheckpointStore``."""

    #: SQLite holds values of up to 1 GB; Lambda's 1 MB state limit is the only one.
    window_state_limit = MAX_STATE_BYTES

    def __init__(self, path: Path, *, synchronous: Literal["full", "normal"] = "full") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._synchronous = synchronous.upper()

    async def open(self) -> SqliteCheckpointStore:
        """Create the file and schema if missing. Returns self for chaining."""
        await anyio.to_thread.run_sync(self._open_sync)
        return self

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            _migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise CheckpointError(f"cannot open checkpoint database {self.path}: {exc}") from exc
        self._conn = conn

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def locked() -> _T:
            if self._conn is None:
                raise CheckpointError(f"checkpoint database {self.path} is not open")
            with self._lock:
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    raise CheckpointError(f"checkpoint database {self.path}: {exc}") from exc

        return await anyio.to_thread.run_sync(locked)

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's checkpoint, or None."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT sequence_number, start_timestamp, sub_sequence_number, window_state"
                " FROM checkpoints WHERE mapping = ? AND shard_id = ?",
                (mapping, shard_id),
            ).fetchone()
        )
        return None if row is None else Checkpoint(row[0], row[1], row[2], row[3])

    async def get_all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every checkpoint of ``mapping``, by shard id."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT shard_id, sequence_number, start_timestamp, sub_sequence_number,"
                " window_state FROM checkpoints WHERE mapping = ?",
                (mapping,),
            ).fetchall()
        )
        return {r[0]: Checkpoint(r[1], r[2], r[3], r[4]) for r in rows}

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        """Durably replace the shard's checkpoint."""
        params = (
            mapping,
            shard_id,
            checkpoint.sequence_number,
            checkpoint.start_timestamp,
            checkpoint.sub_sequence_number,
            checkpoint.window_state,
        )
        await self._run(
            lambda c: c.execute(
                "INSERT INTO checkpoints"
                " (mapping, shard_id, sequence_number, start_timestamp, sub_sequence_number,"
                " window_state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (mapping, shard_id) DO UPDATE SET"
                " sequence_number = excluded.sequence_number,"
                " start_timestamp = excluded.start_timestamp,"
                " sub_sequence_number = excluded.sub_sequence_number,"
                " window_state = excluded.window_state,"
                " updated_at = excluded.updated_at",
                (*params, time.time()),
            )
        )

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Forget the shard's checkpoint."""
        await self._run(
            lambda c: c.execute(
                "DELETE FROM checkpoints WHERE mapping = ? AND shard_id = ?", (mapping, shard_id)
            )
        )

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping's pinned start instant, or None before its first start."""
        row = await self._run(
            lambda c: c.execute(
                "SELECT start_timestamp FROM mapping_starts WHERE mapping = ?", (mapping,)
            ).fetchone()
        )
        return None if row is None else float(row[0])

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Durably record ``instant`` unless a start is recorded; return the recorded one."""

        def pin(c: sqlite3.Connection) -> float:
            c.execute(
                "INSERT INTO mapping_starts (mapping, start_timestamp, pinned_at)"
                " VALUES (?, ?, ?) ON CONFLICT (mapping) DO NOTHING",
                (mapping, instant, time.time()),
            )
            row = c.execute(
                "SELECT start_timestamp FROM mapping_starts WHERE mapping = ?", (mapping,)
            ).fetchone()
            return float(row[0])

        return await self._run(pin)

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                await anyio.to_thread.run_sync(conn.close)
