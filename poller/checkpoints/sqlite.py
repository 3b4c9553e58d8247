"""SQLite checkpoint store: the durable single-node default.

Shard processors write a checkpoint after every settled batch and before taking the next one; a
restart reads them back to resume after the last settled record. The ``mapping_starts`` table
holds one row per mapping that has started: the instant a LATEST mapping pinned at its first
start, kept apart from the shard checkpoints so that retiring them all never makes the mapping
look new (a database made by an older version gets the table when opened). The database runs in WAL
mode, and with ``synchronous=FULL`` (the default) a checkpoint is on disk when ``put``
returns, so neither a crash nor a power loss re-delivers more than the batch in flight.

Rewinds (``poller rewind``, :mod:`poller.checkpoints.rewinds`): the ``rewinds`` table holds one
request per (mapping, shard), pending until applied; ``services`` has a row per mapping that a
running service serves (written when its ownership starts, beaten every
:data:`SERVICE_BEAT_SECONDS`, deleted on a clean stop). A request is applied in one transaction
with the checkpoint write, so it is applied exactly once, whoever does it: the service when the
shard (re)starts (:meth:`SqliteCheckpointStore.apply_rewind`), or the command itself when no
service serves the mapping (:meth:`SqliteCheckpointStore.apply_rewinds_unserved`, which
checks the ``services`` row in the same transaction, so a service starting meanwhile reads
either the old checkpoint and the pending request, or the new checkpoint).

Whether a service serves the mapping: a row of a process on this host counts while that
process is alive, however old the row (a service paused by SIGSTOP, a VM freeze or a swap
storm beats late but is not gone); a row of another host counts while it was beaten within
:data:`SERVICE_STALE_SECONDS`. A row whose pid is gone from this host never counts.

A finished shard is never re-opened: a request applied to a shard at ``SHARD_END`` leaves the
checkpoint alone and is marked done with ``applied_to``
:data:`~poller.checkpoints.rewinds.SKIPPED_AT_SHARD_END`.

And should the command still write behind a running shard (a service on another host that
looked gone), the service never undoes the rewind: when a shard's run reads its start
(:meth:`SqliteCheckpointStore.apply_rewind`), the store notes the ``applied_at`` of the shard's
rewind row then; each later :meth:`~SqliteCheckpointStore.put` of that shard checks it in the
write statement itself, and when a rewind was applied since, writes nothing and raises
:class:`RewoundMeanwhile`: the supervisor starts the run again, from the rewound checkpoint
(like a lost lease, but a restart, not a stop). Writers that never read a start through
``apply_rewind`` (the first start's ``prepare``, tests) write unconditionally.

sqlite3 is blocking, so every call runs in a worker thread. One connection serves all calls,
serialised by a lock: checkpoint writes are tiny and one writer is what SQLite wants anyway.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import anyio.to_thread

from poller.checkpoints.rewinds import (
    SKIPPED_AT_SHARD_END,
    RewindState,
    RewindTarget,
    describe_checkpoint,
)
from poller.core.windows import MAX_STATE_BYTES
from poller.errors import CheckpointError
from poller.types import Checkpoint


class RewoundMeanwhile(CheckpointError):
    """A checkpoint write refused: a rewind was applied to the shard after its run read its
    start. Not retriable: the run must start again, from the rewound checkpoint."""

    retriable = False


#: How often a running service re-writes its ``services`` row (one UPDATE per mapping).
SERVICE_BEAT_SECONDS = 15.0
#: A ``services`` row not beaten for this long is a crashed service's: ignored.
SERVICE_STALE_SECONDS = 4 * SERVICE_BEAT_SECONDS

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
CREATE TABLE IF NOT EXISTS rewinds (
    mapping TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    rewind_id TEXT NOT NULL,
    target TEXT NOT NULL,
    requested_at REAL NOT NULL,
    applied_at REAL,
    applied_by TEXT,
    applied_from TEXT,
    applied_to TEXT,
    PRIMARY KEY (mapping, shard_id)
);
CREATE TABLE IF NOT EXISTS services (
    mapping TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    seen_at REAL NOT NULL
);
"""

#: The tables keyed by mapping: what :meth:`SqliteCheckpointStore.forget_mapping` empties.
_MAPPING_TABLES = ("checkpoints", "mapping_starts", "rewinds", "services")


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
        #: (mapping, shard) -> ``applied_at`` of its rewind row when its run read its start
        #: (None: no rewind applied yet); its ``put`` is refused once that changed.
        self._run_marks: dict[tuple[str, str], float | None] = {}

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

    async def query(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the store's connection, under its lock, in a worker thread: for
        readers that share this database (the control API's mapping store). An SQLite error
        becomes CheckpointError naming the file."""
        return await self._run(fn)

    async def run_in_transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Like :meth:`query`, inside one write transaction (taken at once): all of ``fn``'s
        writes or none. An exception from ``fn`` rolls back and propagates unchanged."""
        return await self._run(lambda c: _in_transaction(c, lambda: fn(c)))

    async def forget_mapping(self, mapping: str) -> None:
        """Remove every row of ``mapping`` from every table (a deleted mapping: its name is a
        UUID no new mapping gets). One transaction; removing nothing is fine."""
        for key in [key for key in self._run_marks if key[0] == mapping]:
            del self._run_marks[key]

        def forget(c: sqlite3.Connection) -> None:
            for table in _MAPPING_TABLES:
                c.execute(f"DELETE FROM {table} WHERE mapping = ?", (mapping,))  # noqa: S608

        await self.run_in_transaction(forget)

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
        """Durably replace the shard's checkpoint. Raises :class:`RewoundMeanwhile`, writing
        nothing, when a rewind was applied to the shard since its run read its start (checked
        by the write statement itself: one statement, as short a write lock as ever)."""
        key = (mapping, shard_id)
        fenced = key in self._run_marks
        mark = self._run_marks.get(key)
        written = await self._run(
            lambda c: _write_checkpoint(c, mapping, shard_id, checkpoint, fenced=fenced, mark=mark)
        )
        if not written:
            raise RewoundMeanwhile(
                f"checkpoint of {mapping}/{shard_id} not written: a rewind was applied since"
                " its run started"
            )

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Forget the shard's checkpoint (a retired shard: its run's mark goes too, so that
        weeks of resharding do not grow the marks)."""
        self._run_marks.pop((mapping, shard_id), None)
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

    # -- rewinds (poller rewind) ---------------------------------------------------------------

    async def request_rewinds(
        self, mapping: str, targets: dict[str, RewindTarget], rewind_id: str
    ) -> None:
        """Record a pending rewind of each shard in ``targets`` (replacing an older request)."""
        now = time.time()
        rows = [(mapping, shard, rewind_id, t.encode(), now) for shard, t in targets.items()]

        def write(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO rewinds (mapping, shard_id, rewind_id, target, requested_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (mapping, shard_id) DO UPDATE SET"
                " rewind_id = excluded.rewind_id, target = excluded.target,"
                " requested_at = excluded.requested_at, applied_at = NULL, applied_by = NULL,"
                " applied_from = NULL, applied_to = NULL",
                rows,
            )

        await self._run(write)

    async def pending_rewinds(self, mapping: str) -> dict[str, str]:
        """The mapping's pending rewinds: shard id -> rewind id (one query, for the service's
        poll; none pending is the usual answer)."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT shard_id, rewind_id FROM rewinds WHERE mapping = ? AND applied_at IS NULL",
                (mapping,),
            ).fetchall()
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def apply_rewind(self, mapping: str, shard_id: str, applied_by: str) -> Checkpoint | None:
        """The shard's checkpoint, after applying its pending rewind if it has one: how a
        shard (re)starting reads where to start. One transaction, so a request is applied once
        whoever applies it."""

        def apply(c: sqlite3.Connection) -> tuple[Checkpoint | None, float | None]:
            start = _apply_one(c, mapping, shard_id, applied_by)
            return start, _applied_at(c, mapping, shard_id)

        start, mark = await self._run(lambda c: _in_transaction(c, lambda: apply(c)))
        self._run_marks[(mapping, shard_id)] = mark
        return start

    async def apply_rewinds_unserved(
        self, mapping: str, applied_by: str, rewind_id: str | None = None
    ) -> bool:
        """Apply the pending rewinds of ``mapping`` (only those of ``rewind_id`` when given:
        the command applies its own request, never another's) unless a live service serves it
        (see :func:`_served`); then False and nothing is written. One transaction."""

        def apply(c: sqlite3.Connection) -> bool:
            if _served(c, mapping):
                return False
            pending = c.execute(
                "SELECT shard_id, rewind_id FROM rewinds WHERE mapping = ? AND applied_at IS NULL",
                (mapping,),
            ).fetchall()
            for shard_id, pending_id in pending:
                if rewind_id is None or pending_id == rewind_id:
                    _apply_one(c, mapping, str(shard_id), applied_by)
            return True

        return await self._run(lambda c: _in_transaction(c, lambda: apply(c)))

    async def rewind_states(self, mapping: str, rewind_id: str) -> list[RewindState]:
        """The shards of rewind ``rewind_id``, applied or not, by shard id."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT shard_id, target, applied_at, applied_by, applied_from, applied_to"
                " FROM rewinds WHERE mapping = ? AND rewind_id = ? ORDER BY shard_id",
                (mapping, rewind_id),
            ).fetchall()
        )
        return [
            RewindState(str(r[0]), rewind_id, RewindTarget.decode(r[1]), r[2] is not None, *r[3:])
            for r in rows
        ]

    async def shard_rewinds(self, mapping: str, shard_ids: set[str]) -> list[RewindState]:
        """The latest rewind request of each of ``shard_ids`` that has one, whatever its id
        (a newer rewind replaces an older one's row), by shard id."""
        rows = await self._run(
            lambda c: c.execute(
                "SELECT shard_id, rewind_id, target, applied_at, applied_by, applied_from,"
                " applied_to FROM rewinds WHERE mapping = ? ORDER BY shard_id",
                (mapping,),
            ).fetchall()
        )
        return [
            RewindState(str(r[0]), str(r[1]), RewindTarget.decode(r[2]), r[3] is not None, *r[4:])
            for r in rows
            if r[0] in shard_ids
        ]

    async def serve(self, mapping: str, replica: str) -> None:
        """Record (or beat) that this process serves ``mapping``: rewinds wait for it."""
        await self._run(
            lambda c: c.execute(
                "INSERT INTO services (mapping, replica, host, pid, seen_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (mapping) DO UPDATE SET replica = excluded.replica,"
                " host = excluded.host, pid = excluded.pid, seen_at = excluded.seen_at",
                (mapping, replica, socket.gethostname(), os.getpid(), time.time()),
            )
        )

    async def unserve(self, mapping: str, replica: str) -> None:
        """This process no longer serves ``mapping`` (a clean stop)."""
        await self._run(
            lambda c: c.execute(
                "DELETE FROM services WHERE mapping = ? AND replica = ?", (mapping, replica)
            )
        )

    async def server_of(self, mapping: str) -> str | None:
        """The replica serving ``mapping`` now (a fresh ``services`` row), or None."""
        return await self._run(lambda c: _served(c, mapping))

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with self._lock:
                await anyio.to_thread.run_sync(conn.close)


def _in_transaction(c: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    """Run ``work`` in one write transaction (taken at once: no upgrade deadlock)."""
    c.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        c.execute("ROLLBACK")
        raise
    try:
        c.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (SQLITE_BUSY, a full disk) may leave the transaction open: end it,
        # or the connection's next BEGIN fails.
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return result


def _write_checkpoint(
    c: sqlite3.Connection,
    mapping: str,
    shard_id: str,
    checkpoint: Checkpoint,
    *,
    fenced: bool = False,
    mark: float | None = None,
) -> bool:
    """Upsert the checkpoint; when ``fenced``, only while the shard's rewind row was applied
    at ``mark`` (None: no applied rewind), in the same statement. Whether it was written."""
    unless_rewound = (
        " WHERE (SELECT applied_at FROM rewinds WHERE mapping = ? AND shard_id = ?) IS ?"
        if fenced
        else " WHERE 1"  # a WHERE keeps SQLite's upsert parser unambiguous
    )
    params: tuple[object, ...] = (
        mapping,
        shard_id,
        checkpoint.sequence_number,
        checkpoint.start_timestamp,
        checkpoint.sub_sequence_number,
        checkpoint.window_state,
        time.time(),
    )
    if fenced:
        params += (mapping, shard_id, mark)
    cursor = c.execute(
        "INSERT INTO checkpoints"
        " (mapping, shard_id, sequence_number, start_timestamp, sub_sequence_number,"
        " window_state, updated_at) SELECT ?, ?, ?, ?, ?, ?, ?"
        f"{unless_rewound}"
        " ON CONFLICT (mapping, shard_id) DO UPDATE SET"
        " sequence_number = excluded.sequence_number,"
        " start_timestamp = excluded.start_timestamp,"
        " sub_sequence_number = excluded.sub_sequence_number,"
        " window_state = excluded.window_state,"
        " updated_at = excluded.updated_at",
        params,
    )
    return cursor.rowcount > 0


def _applied_at(c: sqlite3.Connection, mapping: str, shard_id: str) -> float | None:
    """When the shard's latest rewind was applied (None: none was, or it is pending)."""
    row = c.execute(
        "SELECT applied_at FROM rewinds WHERE mapping = ? AND shard_id = ?", (mapping, shard_id)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _read_checkpoint(c: sqlite3.Connection, mapping: str, shard_id: str) -> Checkpoint | None:
    row = c.execute(
        "SELECT sequence_number, start_timestamp, sub_sequence_number, window_state"
        " FROM checkpoints WHERE mapping = ? AND shard_id = ?",
        (mapping, shard_id),
    ).fetchone()
    return None if row is None else Checkpoint(row[0], row[1], row[2], row[3])


def _apply_one(
    c: sqlite3.Connection, mapping: str, shard_id: str, applied_by: str
) -> Checkpoint | None:
    """Inside a transaction: write the shard's pending rewind as its checkpoint, mark it
    applied; the shard's checkpoint afterwards."""
    current = _read_checkpoint(c, mapping, shard_id)
    row = c.execute(
        "SELECT target FROM rewinds WHERE mapping = ? AND shard_id = ? AND applied_at IS NULL",
        (mapping, shard_id),
    ).fetchone()
    if row is None:
        return current
    now = time.time()
    if current is not None and current.is_shard_end:
        # A finished shard is never re-opened: the request is done, the shard not moved.
        _mark_applied(c, mapping, shard_id, now, applied_by, "SHARD_END", SKIPPED_AT_SHARD_END)
        return current
    new = RewindTarget.decode(row[0]).checkpoint(now)
    c.execute(
        "INSERT INTO checkpoints (mapping, shard_id, sequence_number, start_timestamp,"
        " sub_sequence_number, window_state, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?)"
        " ON CONFLICT (mapping, shard_id) DO UPDATE SET sequence_number = excluded.sequence_number,"
        " start_timestamp = excluded.start_timestamp,"
        " sub_sequence_number = excluded.sub_sequence_number, window_state = NULL,"
        " updated_at = excluded.updated_at",
        (mapping, shard_id, new.sequence_number, new.start_timestamp, new.sub_sequence_number, now),
    )
    before, after = describe_checkpoint(current), describe_checkpoint(new)
    _mark_applied(c, mapping, shard_id, now, applied_by, before, after)
    return new


def _mark_applied(
    c: sqlite3.Connection,
    mapping: str,
    shard_id: str,
    now: float,
    applied_by: str,
    applied_from: str,
    applied_to: str,
) -> None:
    c.execute(
        "UPDATE rewinds SET applied_at = ?, applied_by = ?, applied_from = ?, applied_to = ?"
        " WHERE mapping = ? AND shard_id = ?",
        (now, applied_by, applied_from, applied_to, mapping, shard_id),
    )


def _served(c: sqlite3.Connection, mapping: str) -> str | None:
    """The replica in ``mapping``'s ``services`` row if it serves the mapping now: on this
    host, while its process is alive, however old the row (a paused service is not a gone
    one; a reused pid only makes the command wait, never write behind a service); on another
    host, while the row was beaten within :data:`SERVICE_STALE_SECONDS`."""
    row = c.execute(
        "SELECT replica, host, pid, seen_at FROM services WHERE mapping = ?", (mapping,)
    ).fetchone()
    if row is None:
        return None
    if row[1] == socket.gethostname():
        return str(row[0]) if _alive(int(row[2])) else None
    if time.time() - float(row[3]) > SERVICE_STALE_SECONDS:
        return None
    return str(row[0])


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
