"""What ``poller status`` asks AWS and the checkpoint store, one bounded call at a time.

Data flow (driven by :mod:`poller.status`, every call under :func:`bounded`)::

    SQLite database (read-only) --read_sqlite_checkpoints--> StoredShard per shard
    lease table --lease_shards--> StoredShard per lease
    stream --list_shards--> ShardInfo; --iterator_age--> how far a shard's checkpoint is behind

Nothing here writes anything: the SQLite file is opened read-only (it is in WAL mode, so a
reader never blocks the running service nor sees half a write), and the only stream calls are
GetShardIterator and one GetRecords of one record. Every call is bounded by
:data:`PROBE_SECONDS` and by :data:`PROBE_CONCURRENCY` calls at once, so that a source or a
destination that does not answer costs seconds and cannot hang the command; its failure is
returned as text where its answer would have been. Failure records waiting are counted by
:mod:`poller.status_failures`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio

from poller.aws.clients import ClientFactory
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.config import DynamoDBStreamMapping, KinesisMapping
from poller.config.arns import client_region
from poller.ports import StreamApi
from poller.sources.dynamodb_streams import DynamoDBStreamApi
from poller.sources.kinesis import KinesisStreamApi
from poller.streams.start import start_position
from poller.types import Checkpoint

StreamMapping = KinesisMapping | DynamoDBStreamMapping
_T = TypeVar("_T")

#: Longest wait for any one call of ``poller status`` (a probe, a read, a count).
PROBE_SECONDS = 5.0
#: Calls in flight at once across all mappings and shards: enough to finish a few hundred
#: shards in seconds, few enough not to be throttled by a stream's 5 reads per second per shard.
PROBE_CONCURRENCY = 16
#: How long to wait for a busy SQLite database (the service is writing a checkpoint).
_SQLITE_BUSY_MS = 2000


@dataclass(frozen=True, slots=True)
class StoredShard:
    """A shard as the checkpoint store holds it; the lease fields are None with SQLite."""

    shard_id: str
    checkpoint: Checkpoint | None
    #: Wall clock (epoch seconds) of the last write: SQLite's ``updated_at``, the lease's
    #: ``renewedAt`` (its last take or checkpoint). For display only.
    written_at: float | None
    owner: str | None = None
    pending_owner: str | None = None
    counter: int | None = None
    owner_switches: int | None = None
    parent_ids: tuple[str, ...] = ()


def format_checkpoint(checkpoint: Checkpoint | None) -> str | None:
    """A checkpoint for display: its sequence number, ``SHARD_END`` or ``start@<iso time>``."""
    if checkpoint is None:
        return None
    if checkpoint.sequence_number is not None:
        return checkpoint.sequence_number
    if checkpoint.start_timestamp is not None:
        when = datetime.fromtimestamp(checkpoint.start_timestamp, tz=UTC)
        return "start@" + when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return None


def describe(exc: BaseException) -> str:
    """An error for display: a timeout says how long was waited; else the error's text."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_SECONDS:g} s"
    return str(exc) or type(exc).__name__


async def bounded(limiter: anyio.CapacityLimiter, call: Callable[[], Awaitable[_T]]) -> _T:
    """``call()`` within :data:`PROBE_SECONDS`, one of ``limiter``'s slots held meanwhile.

    Raises:
        TimeoutError: no answer in time.
    """
    async with limiter:
        with anyio.fail_after(PROBE_SECONDS):
            return await call()


# -- checkpoints ------------------------------------------------------------------------------


async def read_sqlite_checkpoints(
    path: Path,
) -> tuple[dict[str, list[StoredShard]], dict[str, float]]:
    """Every checkpoint in the SQLite database at ``path``, by mapping, and the mappings'
    pinned start instants. A missing file holds none (the service has not run yet).

    Raises:
        sqlite3.Error: the database cannot be read.
    """
    return await anyio.to_thread.run_sync(_read_sqlite, path)


def _read_sqlite(path: Path) -> tuple[dict[str, list[StoredShard]], dict[str, float]]:
    if not path.exists():
        return {}, {}
    # mode=ro: status must never write, not even the schema the service adds on open.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
        # An older database may lack the KPL column; it then holds no sub-sequence checkpoints.
        sub = "sub_sequence_number" if "sub_sequence_number" in columns else "NULL"
        rows = conn.execute(
            f"SELECT mapping, shard_id, sequence_number, start_timestamp, {sub}, updated_at"  # noqa: S608 - a column name or NULL, never input
            " FROM checkpoints ORDER BY mapping, shard_id"
        ).fetchall()
        pins: dict[str, float] = {}
        if "mapping_starts" in tables:
            pins = {
                str(m): float(t)
                for m, t in conn.execute("SELECT mapping, start_timestamp FROM mapping_starts")
            }
    finally:
        conn.close()
    shards: dict[str, list[StoredShard]] = {}
    for mapping, shard_id, sequence, start, sub_sequence, updated in rows:
        checkpoint = Checkpoint(sequence, start, sub_sequence)
        shards.setdefault(mapping, []).append(StoredShard(shard_id, checkpoint, updated))
    return shards, pins


async def lease_shards(table: DynamoDBLeaseTable, mapping: str) -> list[StoredShard]:
    """Every lease of ``mapping`` (one consistent Scan)."""
    return [
        StoredShard(
            shard_id=lease.shard_id,
            checkpoint=lease.checkpoint,
            written_at=lease.renewed_at,
            owner=lease.owner,
            pending_owner=lease.pending_owner,
            counter=lease.counter,
            owner_switches=lease.owner_switches,
            parent_ids=lease.parent_ids,
        )
        for lease in await table.list_leases(mapping)
    ]


# -- iterator age -----------------------------------------------------------------------------


async def source_api(mapping: StreamMapping, factory: ClientFactory) -> StreamApi:
    """The service's adapter for the mapping's stream, on a source client (records parsed as
    the adapters expect). Unlike :func:`poller.mappings.stream_api`, it never creates the
    embedded mode's streams: status only looks."""
    kind = "kinesis" if isinstance(mapping, KinesisMapping) else "dynamodbstreams"
    region = client_region(mapping.event_source_arn, factory.region)  # ddblocal: aws.region
    client = await factory.client(kind, purpose="source", region=region)
    if isinstance(mapping, KinesisMapping):
        return KinesisStreamApi(
            client,
            stream_arn=mapping.stream_arn,
            region=mapping.region,
            identity_arn=mapping.identity_arn,
        )
    return DynamoDBStreamApi(client, stream_arn=mapping.stream_arn, region=mapping.region)


@dataclass(frozen=True, slots=True)
class IteratorAge:
    """How far a shard's checkpoint is behind, from one read of the first unread record."""

    #: Age of the first unread record; without one, Kinesis's MillisBehindLatest, else 0.
    seconds: float
    #: Kinesis's MillisBehindLatest for that read (None for DynamoDB Streams).
    millis_behind_latest: int | None
    #: Age of the first unread record, None when it has none (caught up).
    unread_record_age_seconds: float | None


async def iterator_age(
    api: StreamApi,
    mapping: StreamMapping,
    shard_id: str,
    checkpoint: Checkpoint | None,
    pinned_start: float | None,
) -> IteratorAge:
    """Open an iterator where the shard's reader would resume and read one record.

    ``pinned_start`` is a LATEST mapping's recorded start instant, which a shard without a
    checkpoint starts from; a LATEST mapping that never started reads from the tip (age 0).

    Raises:
        SourceError: a stream call failed.
    """
    if checkpoint is None and mapping.starting_position == "LATEST":
        checkpoint = None if pinned_start is None else Checkpoint(start_timestamp=pinned_start)
        if checkpoint is None:
            return IteratorAge(0.0, None, None)
    iterator = await api.get_iterator(shard_id, start_position(mapping, checkpoint))
    page = await api.get_records(iterator, limit=1)
    behind = page.millis_behind_latest
    if page.records:
        unread = max(0.0, time.time() - api.arrival_of(page.records[0]))
        return IteratorAge(unread, behind, unread)
    # No record: caught up, or an empty page of a sparse shard, where Kinesis still says how
    # far the tip is.
    return IteratorAge(0.0 if behind is None else behind / 1000, behind, None)
