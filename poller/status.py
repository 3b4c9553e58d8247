"""``poller status``: per mapping, its event source mapping ARN and tags, whether its source
answers and how many failure records wait in its destination; per shard, its checkpoint, the
checkpoint's age, its owner, and its iterator age. As aligned tables, or one JSON document
with ``--json``.

Data flow::

    settings --collect_report (poller.status_report)--> one report per mapping
        --render_report--> three tables (sources, failures waiting, shards) | --json--> JSON

Works with both checkpoint backends. SQLite is opened read-only, so it is safe while the
service runs (the database is in WAL mode: a reader sees the last committed checkpoints and
never blocks the writer); it has one replica and no leases, so the owner is ``-`` (null). The
lease table is read with one consistent Scan per mapping.

The figures:

* checkpoint age: now minus the wall clock of the checkpoint's last write, SQLite's
  ``updated_at`` or the lease's ``renewedAt`` (its last take or checkpoint, so an idle shard's
  age grows while its owner is healthy: owners heartbeat in the mapping's member item, not on
  leases). For people only: clocks of different hosts disagree, and it can even be negative.
* iterator age: how far the checkpoint is behind. An iterator is opened where the shard's
  reader would resume (``AFTER_SEQUENCE_NUMBER`` the checkpoint, else the mapping's start
  position) and one record is read: the age of that first unread record; when none comes back,
  Kinesis's ``MillisBehindLatest``, and 0 for DynamoDB Streams (caught up). A shard whose
  checkpoint is ``SHARD_END`` is finished and shows none.
* failures waiting: an SQS destination's ``ApproximateNumberOfMessages`` (and ``...NotVisible``,
  in flight); an S3 destination's objects under ``aws/lambda/<mapping UUID>/``, counted up to
  10,000 (``10000+``); SNS keeps nothing to count. An SQS source mapping shows its queue's
  dead-letter queue (``RedrivePolicy``), if it has one.

A disabled mapping is shown (``disabled``) with its stored checkpoints and waiting failures,
but its source is not probed (its shards' ``iterator_error`` says so; this is not "down").
When the checkpoints cannot be read, the shards the stream lists are shown with an unknown
iterator age: measured from the wrong position, it would mislead.

Every call is bounded (5 s each, 16 at once): a source, the lease table or a destination that is
down or does not answer shows its error in its place (``unknown`` for an iterator age) and the
rest is still printed.

JSON document (every key always present; ``null`` when unknown or not applicable)::

    {"backend": "sqlite" | "dynamodb",
     "mappings": [{
        "name": str, "source": "kinesis" | "dynamodb" | "sqs", "event_source_arn": str,
        "event_source_mapping_arn": str (the ARN AWS would give the mapping),
        "tags": {str: str} (the mapping's tags, as configured),
        "state": "up" | "down" | "disabled", "error": str | null,
        "checkpoints_error": str | null,
        "failures_waiting": {"destination": ARN | null,
                             "kind": "sqs" | "s3" | "sns" | "sqs-dlq" | null,
                             "count": int | null, "in_flight": int | null (SQS),
                             "capped": bool (S3: count stopped at 10000),
                             "note": str | null, "error": str | null},
        "shards": [{"shard_id": str, "owner": str | null, "pending_owner": str | null,
                    "checkpoint": str | null, "checkpoint_age_seconds": float | null,
                    "finished": bool (checkpoint at SHARD_END),
                    "closed": bool | null (as the stream lists it; null if not listed),
                    "iterator_age_seconds": float | null,
                    "millis_behind_latest": int | null (Kinesis),
                    "unread_record_age_seconds": float | null,
                    "iterator_error": str | null,
                    "counter": int | null, "owner_switches": int | null (lease backend),
                    "parent_ids": [str]}]}]}

Exit status: 0 when everything answered; 1 when anything was down (a source, the checkpoint
store, a destination, a shard's iterator probe) — the output then says what; 2 for a
configuration that does not load (:mod:`poller.cli`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import anyio

from poller.aws.clients import ClientFactory
from poller.aws.translate import source_call
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.config import AnyMapping, Settings, SqsMapping
from poller.config.arns import client_region
from poller.errors import SourceError
from poller.status_probes import PROBE_SECONDS, format_checkpoint
from poller.status_render import aligned_table, render_report
from poller.status_report import collect_report, report_is_healthy

__all__ = [
    "PROBE_SECONDS",
    "format_checkpoint",
    "lease_status",
    "print_status",
    "render_sources",
    "render_status",
    "source_status",
    "status_command",
    "status_row",
]

_COLUMNS = (
    ("MAPPING", "mapping"),
    ("SHARD", "shard_id"),
    ("OWNER", "owner"),
    ("CHECKPOINT", "checkpoint"),
    ("PENDING", "pending_owner"),
    ("AGE(s)", "age_seconds"),
    ("COUNTER", "counter"),
    ("SWITCHES", "owner_switches"),
)
#: Right-aligned columns.
_NUMERIC = frozenset({"age_seconds", "counter", "owner_switches"})


def status_row(lease: Lease, *, now: float) -> dict[str, Any]:
    """One lease as a JSON-friendly row. ``age_seconds`` is display only (see the module)."""
    return {
        "mapping": lease.mapping,
        "shard_id": lease.shard_id,
        "owner": lease.owner,
        "checkpoint": format_checkpoint(lease.checkpoint),
        "pending_owner": lease.pending_owner,
        "age_seconds": None if lease.renewed_at is None else now - lease.renewed_at,
        "counter": lease.counter,
        "owner_switches": lease.owner_switches,
        "parent_ids": list(lease.parent_ids),
    }


async def lease_status(
    table: DynamoDBLeaseTable, mappings: Sequence[str], *, now: float
) -> list[dict[str, Any]]:
    """Rows for every lease of ``mappings``, in the order given, then by shard id.

    Args:
        table: the lease table to read (one consistent Scan per mapping).
        mappings: the mappings to show.
        now: the current wall clock in epoch seconds, from which lease ages are computed.
            Ages are for display only; wall clocks of different hosts are never compared for
            decisions.
    """
    rows: list[dict[str, Any]] = []
    for mapping in mappings:
        rows.extend(status_row(lease, now=now) for lease in await table.list_leases(mapping))
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "age_seconds":
        return f"{value:.1f}"
    return str(value)


def render_status(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`lease_status` as an aligned plain-text table (``-`` for none)."""
    if not rows:
        return "no leases"
    cells = [[_cell(key, row.get(key)) for _, key in _COLUMNS] for row in rows]
    numeric = {i for i, (_, key) in enumerate(_COLUMNS) if key in _NUMERIC}
    return aligned_table([title for title, _ in _COLUMNS], cells, numeric)


async def _probe_source(mapping: AnyMapping, factory: ClientFactory) -> None:
    """The first call the service makes to the mapping's source; raises SourceError."""
    if isinstance(mapping, SqsMapping):
        sqs = await factory.client("sqs", purpose="status", region=mapping.region)
        async with source_call("GetQueueUrl"):
            await sqs.get_queue_url(
                QueueName=mapping.queue_name, QueueOwnerAWSAccountId=mapping.account_id
            )
    elif mapping.source == "kinesis":
        kinesis = await factory.client("kinesis", purpose="status", region=mapping.region)
        async with source_call("DescribeStreamSummary"):
            await kinesis.describe_stream_summary(StreamARN=mapping.stream_arn)
        if mapping.consumer_arn is not None:  # enhanced fan-out through a named consumer
            async with source_call("DescribeStreamConsumer"):
                await kinesis.describe_stream_consumer(ConsumerARN=mapping.consumer_arn)
    else:
        region = client_region(mapping.event_source_arn, factory.region)  # ddblocal: aws.region
        streams = await factory.client("dynamodbstreams", purpose="status", region=region)
        async with source_call("DescribeStream"):
            await streams.describe_stream(StreamArn=mapping.stream_arn, Limit=1)


async def source_error(mapping: AnyMapping, factory: ClientFactory) -> str | None:
    """The source probe's error, None when the source answered within :data:`PROBE_SECONDS`.

    The probe makes, from where ``poller status`` runs and with its credentials, the first
    call the service makes for the mapping (DescribeStreamSummary, DescribeStream,
    GetQueueUrl): a source missing or forbidden here keeps the mapping down in the service
    too (``poller_mapping_up``)."""
    error = f"no answer within {PROBE_SECONDS:g} s"
    with anyio.move_on_after(PROBE_SECONDS):
        try:
            await _probe_source(mapping, factory)
        except SourceError as exc:
            error = str(exc)
        else:
            return None
    return error


async def source_status(settings: Settings, factory: ClientFactory) -> list[dict[str, str]]:
    """One row per enabled mapping, in configuration order: its source kind, ``up`` or
    ``down``, and the error. The mappings are probed at once, each for at most
    :data:`PROBE_SECONDS`, so a source that never answers costs seconds, not botocore's
    timeouts and retries for every such mapping in turn."""
    enabled = [m for m in settings.mappings if m.enabled]
    errors: dict[str, str | None] = {}

    async def probe(mapping: AnyMapping) -> None:
        errors[mapping.name] = await source_error(mapping, factory)

    async with anyio.create_task_group() as tg:
        for mapping in enabled:
            tg.start_soon(probe, mapping)
    return [
        {
            "mapping": m.name,
            "source": m.source,
            "state": "up" if errors[m.name] is None else "down",
            "error": errors[m.name] or "",
        }
        for m in enabled
    ]


def render_sources(rows: Sequence[dict[str, str]]) -> str:
    """The rows of :func:`source_status` as aligned plain text."""
    header = ["MAPPING", "SOURCE", "STATE", "ERROR"]
    cells = [[r["mapping"], r["source"], r["state"], r["error"]] for r in rows]
    return aligned_table(header, cells, set())


async def print_status(settings: Settings, *, as_json: bool = False) -> int:
    """``poller status``: examine every mapping (see the module), print the report as tables
    or JSON, and return the exit status: 0 when everything answered, 1 when anything was down."""
    aws = settings.aws
    factory = ClientFactory(
        region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints
    )
    try:
        reports = await collect_report(
            settings, factory, functools.partial(source_error, factory=factory)
        )
    finally:
        await factory.aclose()
    if as_json:
        document = {"backend": settings.checkpoints.backend, "mappings": reports}
        print(json.dumps(document, indent=2))  # noqa: T201 - CLI output
    else:
        print(render_report(reports))  # noqa: T201 - CLI output
    return 0 if report_is_healthy(reports) else 1


def status_command(settings: Settings, *, as_json: bool = False) -> int:
    """``poller status``: print the report, return the exit status (see the module)."""
    return anyio.run(functools.partial(print_status, settings, as_json=as_json))
