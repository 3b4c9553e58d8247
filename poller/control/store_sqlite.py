"""The mapping store in the SQLite checkpoint database: one replica, durable across restarts.

Data flow::

    poller.control.operations / poller.reconcile --MappingStore--> SqliteMappingStore
        --run_in_transaction / query--> SqliteCheckpointStore's connection (its lock, its file)

Three tables beside the checkpoints, created when the store opens (``IF NOT EXISTS``: opening
an older database adds them, opening a newer one changes nothing)::

    esm_head      one row (id 0): revision, the head every mutation moves
    esm_mappings  one row per record: uuid, pair_key (UNIQUE), revision, written, desired,
                  the record as JSON, last_processing_result (apart, so that it never races
                  a user change)
    esm_acks      one row per replica: applied, beat_at

Each mutation is one write transaction on the checkpoint store's connection, taken at once
(``BEGIN IMMEDIATE``): the read, the caller's change function and the write see no other
writer, this process's or another's (``poller status``, ``poller rewind``), so nothing needs
retrying and no change is lost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from poller.control.store import (
    ACK_RETENTION_SECONDS,
    ChangeFn,
    MappingRecord,
    PairTaken,
    ReplicaAck,
    TooManyMappings,
)
from poller.errors import CheckpointError

if TYPE_CHECKING:
    from poller.checkpoints.sqlite import SqliteCheckpointStore

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS esm_head (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        revision INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS esm_mappings (
        uuid TEXT PRIMARY KEY,
        pair_key TEXT NOT NULL UNIQUE,
        revision INTEGER NOT NULL,
        written INTEGER NOT NULL,
        desired TEXT NOT NULL,
        record TEXT NOT NULL,
        last_processing_result TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS esm_acks (
        replica TEXT PRIMARY KEY,
        applied INTEGER NOT NULL,
        beat_at REAL NOT NULL
    )""",
    "INSERT INTO esm_head (id, revision) VALUES (0, 0) ON CONFLICT (id) DO NOTHING",
)

_T = TypeVar("_T")

_SELECT_RECORD = "SELECT record, last_processing_result FROM esm_mappings"


class SqliteMappingStore:
    """Implements :class:`~poller.control.store.MappingStore` in the checkpoint database.

    Args:
        checkpoints: the open checkpoint store, whose connection and lock this shares (its
            owner closes it).
        clock: the wall clock of acks (epoch seconds).
    """

    def __init__(
        self, checkpoints: SqliteCheckpointStore, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = checkpoints
        self._clock = clock

    async def open(self) -> SqliteMappingStore:
        """Create the tables when missing. Returns self for chaining."""
        await self._transaction("open", _create_schema)
        return self

    async def head(self) -> int:
        """The current head revision."""
        return await self._query("head", _head)

    async def records(self) -> dict[str, MappingRecord]:
        """Every stored record, by UUID."""
        rows = await self._query("records", lambda c: c.execute(_SELECT_RECORD).fetchall())
        return {record.uuid: record for record in map(_record_from_row, rows)}

    async def get(self, uuid: str) -> MappingRecord | None:
        """One record, or None."""
        return await self._query("get", lambda c: _read(c, uuid))

    async def create(self, record: MappingRecord, *, limit: int) -> MappingRecord:
        """Store a new record at the next head revision (one transaction)."""

        def create(c: sqlite3.Connection) -> MappingRecord:
            _refuse_taken_pair(c, record)
            (count,) = c.execute("SELECT COUNT(*) FROM esm_mappings").fetchone()
            if count >= limit:
                raise TooManyMappings(limit)
            revision = _move_head(c)
            stored = replace(record, revision=revision, created_revision=revision, written=revision)
            c.execute(
                "INSERT INTO esm_mappings (uuid, pair_key, revision, written, desired, record,"
                " last_processing_result) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stored.uuid, *_row_values(stored)),
            )
            return stored

        return await self._transaction("create", create)

    async def update(self, uuid: str, change: ChangeFn) -> MappingRecord | None:
        """Apply ``change`` to the record and write it, in one transaction. Raises PairTaken
        when the change moves the record to a function and source another record has."""

        def update(c: sqlite3.Connection) -> MappingRecord | None:
            current = _read(c, uuid)
            if current is None:
                return None
            new = change(current, _head(c) + 1)
            if new is None:
                return current
            if new.pair_key != current.pair_key:
                _refuse_taken_pair(c, new)
            stored = replace(new, written=_move_head(c))
            c.execute(
                "UPDATE esm_mappings SET pair_key = ?, revision = ?, written = ?, desired = ?,"
                " record = ?, last_processing_result = ? WHERE uuid = ?",
                (*_row_values(stored), uuid),
            )
            return stored

        return await self._transaction("update", update)

    async def finalize_delete(self, uuid: str, revision: int) -> bool:
        """Remove a deleted record still at ``revision``, moving the head."""

        def finalize(c: sqlite3.Connection) -> bool:
            removed = c.execute(
                "DELETE FROM esm_mappings WHERE uuid = ? AND revision = ? AND desired = 'Deleted'",
                (uuid, revision),
            ).rowcount
            if removed:
                _move_head(c)
            return removed > 0

        return await self._transaction("finalize_delete", finalize)

    async def set_processing_result(self, uuid: str, result: str) -> None:
        """Record ``LastProcessingResult``; the head and ``written`` stay."""
        await self._query(
            "set_processing_result",
            lambda c: c.execute(
                "UPDATE esm_mappings SET last_processing_result = ? WHERE uuid = ?",
                (result, uuid),
            ),
        )

    async def ack(self, replica: str, applied: int) -> None:
        """``replica`` applied ``applied``, now; acks too old are forgotten (one transaction)."""
        now = self._clock()

        def ack(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM esm_acks WHERE beat_at < ?", (now - ACK_RETENTION_SECONDS,))
            c.execute(
                "INSERT INTO esm_acks (replica, applied, beat_at) VALUES (?, ?, ?)"
                " ON CONFLICT (replica) DO UPDATE SET applied = excluded.applied,"
                " beat_at = excluded.beat_at",
                (replica, applied, now),
            )

        await self._transaction("ack", ack)

    async def acks(self) -> dict[str, ReplicaAck]:
        """Every replica's last ack, but those too old."""
        oldest = self._clock() - ACK_RETENTION_SECONDS
        rows = await self._query(
            "acks",
            lambda c: c.execute(
                "SELECT replica, applied, beat_at FROM esm_acks WHERE beat_at >= ?", (oldest,)
            ).fetchall(),
        )
        return {str(r[0]): ReplicaAck(applied=int(r[1]), beat_at=float(r[2])) for r in rows}

    async def forget_replica(self, replica: str) -> None:
        """Drop ``replica``'s ack."""
        await self._query(
            "forget_replica",
            lambda c: c.execute("DELETE FROM esm_acks WHERE replica = ?", (replica,)),
        )

    async def aclose(self) -> None:
        """Nothing of its own: the connection is the checkpoint store's."""

    async def _query(self, call: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return await self._db.query(fn)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (mapping store {call})") from exc

    async def _transaction(self, call: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn`` in one write transaction; the caller's own exceptions pass unchanged."""
        try:
            return await self._db.run_in_transaction(fn)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (mapping store {call})") from exc


def _create_schema(c: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        c.execute(statement)


def _head(c: sqlite3.Connection) -> int:
    row = c.execute("SELECT revision FROM esm_head WHERE id = 0").fetchone()
    return 0 if row is None else int(row[0])


def _move_head(c: sqlite3.Connection) -> int:
    """Inside a transaction: the head plus one, written; returned."""
    revision = _head(c) + 1
    c.execute(
        "INSERT INTO esm_head (id, revision) VALUES (0, ?)"
        " ON CONFLICT (id) DO UPDATE SET revision = excluded.revision",
        (revision,),
    )
    return revision


def _refuse_taken_pair(c: sqlite3.Connection, record: MappingRecord) -> None:
    taken = c.execute(
        "SELECT uuid FROM esm_mappings WHERE pair_key = ? AND uuid != ?",
        (record.pair_key, record.uuid),
    ).fetchone()
    if taken is not None:
        raise PairTaken(str(taken[0]))


def _read(c: sqlite3.Connection, uuid: str) -> MappingRecord | None:
    row = c.execute(f"{_SELECT_RECORD} WHERE uuid = ?", (uuid,)).fetchone()
    return None if row is None else _record_from_row(row)


def _record_from_row(row: tuple[str, str | None]) -> MappingRecord:
    """A record from its JSON, with the processing result kept apart from it."""
    return replace(MappingRecord.from_json(row[0]), last_processing_result=row[1])


def _row_values(record: MappingRecord) -> tuple[object, ...]:
    """The columns of ``esm_mappings`` after ``uuid``, in the table's order."""
    return (
        record.pair_key,
        record.revision,
        record.written,
        record.desired,
        record.to_json(),
        record.last_processing_result,
    )
