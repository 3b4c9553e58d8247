"""``poller status``'s report: every mapping's source state, shards and waiting failures.

Data flow (one call of :func:`collect_report`; the mappings are examined at once)::

    settings --checkpoint reader--> SQLite database (read-only) or lease table
    per mapping, concurrently:
        source probe (the service's first call)   -> state, error
        checkpoints of the mapping's shards       -> checkpoint, age, owner
        on-failure destination / DLQ              -> failures_waiting
    then, for a stream whose source answered: ListShards, and per shard (bounded concurrency)
        GetShardIterator + GetRecords(Limit=1)    -> iterator age

The report is plain JSON-ready dicts whose keys are documented in :mod:`poller.status`. Every
call is bounded (:func:`poller.status_probes.bounded`), and a failure is written where its
answer would have been, so one source or store down never hides the rest.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from poller.aws.clients import ClientFactory
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.config import AnyMapping, Settings, SqsMapping
from poller.core.lineage import ShardInfo
from poller.ports import StreamApi
from poller.status_failures import failures_row, failures_waiting
from poller.status_probes import (
    PROBE_CONCURRENCY,
    StoredShard,
    StreamMapping,
    bounded,
    describe,
    format_checkpoint,
    iterator_age,
    lease_shards,
    read_sqlite_checkpoints,
    source_api,
)
from poller.types import SHARD_END, Checkpoint

#: Reads one mapping's stored shards and its pinned start instant (None: not pinned).
CheckpointReader = Callable[[str], Awaitable[tuple[list[StoredShard], float | None]]]
#: Probes a mapping's source: None when it answers, else the error.
SourceProbe = Callable[[AnyMapping], Awaitable[str | None]]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def checkpoint_reader(
    settings: Settings, factory: ClientFactory, limiter: anyio.CapacityLimiter
) -> CheckpointReader:
    """The reader of the configured backend. SQLite is read once, here; an unreadable
    database makes every mapping's read fail with its error."""
    if settings.checkpoints.backend == "dynamodb":
        assert settings.checkpoints.table is not None
        client = await factory.client("dynamodb", purpose="status")
        table = DynamoDBLeaseTable(client, settings.checkpoints.table)

        async def from_table(mapping: str) -> tuple[list[StoredShard], float | None]:
            shards = await bounded(limiter, lambda: lease_shards(table, mapping))
            return shards, await bounded(limiter, lambda: table.mapping_start(mapping))

        return from_table
    path = settings.checkpoints.path
    try:
        stored, pins = await bounded(limiter, lambda: read_sqlite_checkpoints(path))
    except Exception as exc:  # noqa: BLE001 - reported per mapping, in its place
        error = f"checkpoint database {path}: {describe(exc)}"

        async def unreadable(mapping: str) -> tuple[list[StoredShard], float | None]:
            raise RuntimeError(error)

        return unreadable

    async def from_sqlite(mapping: str) -> tuple[list[StoredShard], float | None]:
        return stored.get(mapping, []), pins.get(mapping)

    return from_sqlite


async def collect_report(
    settings: Settings,
    factory: ClientFactory,
    probe_source: SourceProbe,
) -> list[dict[str, Any]]:
    """One report per configured mapping, in configuration order (see :mod:`poller.status`)."""
    limiter = anyio.CapacityLimiter(PROBE_CONCURRENCY)
    read = await checkpoint_reader(settings, factory, limiter)
    reports: dict[str, dict[str, Any]] = {}
    async with anyio.create_task_group() as tg:
        for mapping in settings.mappings:
            reports[mapping.name] = _blank_report(mapping, settings.aws.region)
            tg.start_soon(_mapping_report, mapping, factory, limiter, read, probe_source, reports)
    return [reports[m.name] for m in settings.mappings]


def _blank_report(mapping: AnyMapping, aws_region: str) -> dict[str, Any]:
    """A mapping's report before anything is probed: what the configuration says."""
    return {
        "name": mapping.name,
        "source": mapping.source,
        "event_source_arn": mapping.event_source_arn,
        "event_source_mapping_arn": mapping.event_source_mapping_arn(aws_region),
        "tags": dict(mapping.tags),
        "state": "disabled",
        "error": None,
        "checkpoints_error": None,
        "failures_waiting": failures_row(None, None),
        "shards": [],
    }


async def _mapping_report(
    mapping: AnyMapping,
    factory: ClientFactory,
    limiter: anyio.CapacityLimiter,
    read: CheckpointReader,
    probe_source: SourceProbe,
    reports: dict[str, dict[str, Any]],
) -> None:
    report = reports[mapping.name]
    stored: list[StoredShard] = []
    pin: float | None = None

    async def source() -> None:
        if mapping.enabled:
            report["error"] = await probe_source(mapping)
            report["state"] = "up" if report["error"] is None else "down"

    async def checkpoints() -> None:
        nonlocal stored, pin
        try:
            stored, pin = await read(mapping.name)
        except Exception as exc:  # noqa: BLE001 - status reports any failure in its place
            report["checkpoints_error"] = describe(exc)

    async def failures() -> None:
        report["failures_waiting"] = await failures_waiting(mapping, factory, limiter)

    async with anyio.create_task_group() as tg:
        tg.start_soon(source)
        tg.start_soon(failures)
        if not isinstance(mapping, SqsMapping):
            tg.start_soon(checkpoints)
    if not isinstance(mapping, SqsMapping):
        await _shards_report(mapping, factory, limiter, stored, pin, report)


async def _shards_report(
    mapping: StreamMapping,
    factory: ClientFactory,
    limiter: anyio.CapacityLimiter,
    stored: list[StoredShard],
    pin: float | None,
    report: dict[str, Any],
) -> None:
    """The shard rows: every stored shard and every shard the stream lists, each with its
    iterator age (only when the source answered: a source down makes every age unknown)."""
    listed: dict[str, ShardInfo] = {}
    api = None
    if report["state"] == "up":
        try:
            api = await source_api(mapping, factory)
            listed = {s.shard_id: s for s in await bounded(limiter, api.list_shards)}
        except Exception as exc:  # noqa: BLE001 - status reports any failure in its place
            report["state"], report["error"] = "down", f"listing shards: {describe(exc)}"
            api = None
    by_id = {s.shard_id: s for s in stored}
    rows = [
        _shard_row(shard_id, by_id.get(shard_id), listed.get(shard_id))
        for shard_id in sorted(by_id.keys() | listed.keys())
    ]
    report["shards"] = rows
    why = _no_probe_because(report, api is not None)
    async with anyio.create_task_group() as tg:
        for row in rows:
            if row["finished"]:
                continue
            if why is not None or api is None:
                row["iterator_error"] = why
                continue
            checkpoint = by_id[row["shard_id"]].checkpoint if row["shard_id"] in by_id else None
            tg.start_soon(_probe_shard, api, mapping, checkpoint, pin, limiter, row)


def _no_probe_because(report: dict[str, Any], source_up: bool) -> str | None:
    """Why the shards' iterators are not probed, or None to probe them. Without its
    checkpoint a shard's age would be measured from the wrong position, so it is unknown."""
    if report["state"] == "disabled":
        return "mapping disabled"
    if not source_up:
        return f"source down: {report['error']}"
    if report["checkpoints_error"]:
        return f"checkpoint unknown: {report['checkpoints_error']}"
    return None


async def _probe_shard(
    api: StreamApi,
    mapping: StreamMapping,
    checkpoint: Checkpoint | None,
    pin: float | None,
    limiter: anyio.CapacityLimiter,
    row: dict[str, Any],
) -> None:
    try:
        age = await bounded(
            limiter, lambda: iterator_age(api, mapping, row["shard_id"], checkpoint, pin)
        )
    except Exception as exc:  # noqa: BLE001 - status reports any failure in its place
        row["iterator_error"] = describe(exc)
        return
    row["iterator_age_seconds"] = _rounded(age.seconds)
    row["millis_behind_latest"] = age.millis_behind_latest
    row["unread_record_age_seconds"] = _rounded(age.unread_record_age_seconds)


def _shard_row(
    shard_id: str, stored: StoredShard | None, listed: ShardInfo | None
) -> dict[str, Any]:
    """A shard's row before its iterator is probed (every key always present)."""
    checkpoint = None if stored is None else stored.checkpoint
    written_at = None if stored is None else stored.written_at
    parents = stored.parent_ids if stored and stored.parent_ids else ()
    if listed is not None and not parents:
        parents = listed.parent_ids
    return {
        "shard_id": shard_id,
        "owner": None if stored is None else stored.owner,
        "pending_owner": None if stored is None else stored.pending_owner,
        "checkpoint": format_checkpoint(checkpoint),
        "checkpoint_age_seconds": None
        if written_at is None
        else _rounded(time.time() - written_at),
        "finished": checkpoint is not None and checkpoint.sequence_number == SHARD_END,
        "closed": None if listed is None else listed.closed,
        "iterator_age_seconds": None,
        "millis_behind_latest": None,
        "unread_record_age_seconds": None,
        "iterator_error": None,
        "counter": None if stored is None else stored.counter,
        "owner_switches": None if stored is None else stored.owner_switches,
        "parent_ids": list(parents),
    }


def report_is_healthy(reports: list[dict[str, Any]]) -> bool:
    """True when nothing was down: every enabled source, store, destination and shard probe
    answered."""
    for report in reports:
        if report["state"] == "down" or report["checkpoints_error"]:
            return False
        if report["failures_waiting"]["error"]:
            return False
        if report["state"] == "up" and any(row["iterator_error"] for row in report["shards"]):
            return False
    return True
