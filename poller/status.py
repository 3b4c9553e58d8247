"""``poller status``: whether each mapping's source answers, then the lease table as a
plain-text table, one row per mapping and shard.

The source check makes, from where ``poller status`` runs and with its credentials, the first
call the service makes for each enabled mapping (DescribeStreamSummary, DescribeStream,
GetQueueUrl): a mapping whose stream or queue is missing or forbidden shows ``down`` with the
error, which is what keeps that mapping down in the service (``poller_mapping_up``). A source
that does not answer within :data:`PROBE_SECONDS` shows ``down`` too; the mappings are probed
at once.

Each row shows who owns the shard, where its checkpoint is, who asked for it in a graceful
handoff, how long ago it was last taken or checkpointed, its fencing counter and how often it
changed owner since its last checkpoint (a high number means leases ping-pong between replicas).

The age is ``now`` minus ``renewedAt``, the wall clock of whichever host last took or
checkpointed the lease. It is not a liveness signal: an owner proves it is alive by heartbeats
in the mapping's member item, not on its leases, so an idle shard's age grows while its owner
is healthy. It is for people only: clocks of different hosts disagree (the age can even be
negative), and poller never compares them to decide anything. Replicas judge expiry by watching
the owner's heartbeat stand still on their own monotonic clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from poller.aws.clients import ClientFactory
from poller.aws.translate import source_call
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.config import AnyMapping, Settings, SqsMapping
from poller.errors import SourceError
from poller.types import Checkpoint

#: Longest wait for one mapping's source to answer ``poller status``'s probe.
PROBE_SECONDS = 5.0

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
    header = [title for title, _ in _COLUMNS]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    numeric = {i for i, (_, key) in enumerate(_COLUMNS) if key in _NUMERIC}
    lines = []
    for line in [header, *cells]:
        padded = [
            text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])
            for i, text in enumerate(line)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


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
        streams = await factory.client("dynamodbstreams", purpose="status", region=mapping.region)
        async with source_call("DescribeStream"):
            await streams.describe_stream(StreamArn=mapping.stream_arn, Limit=1)


async def source_status(settings: Settings, factory: ClientFactory) -> list[dict[str, str]]:
    """One row per enabled mapping, in configuration order: its source kind, ``up`` or
    ``down``, and the error. The mappings are probed at once, each for at most
    :data:`PROBE_SECONDS`, so a source that never answers costs seconds, not botocore's
    timeouts and retries for every such mapping in turn."""
    enabled = [m for m in settings.mappings if m.enabled]
    rows: dict[str, dict[str, str]] = {}
    async with anyio.create_task_group() as tg:
        for mapping in enabled:
            tg.start_soon(_source_row, mapping, factory, rows)
    return [rows[m.name] for m in enabled]


async def _source_row(
    mapping: AnyMapping, factory: ClientFactory, rows: dict[str, dict[str, str]]
) -> None:
    state, error = "down", f"no answer within {PROBE_SECONDS:g} s"
    with anyio.move_on_after(PROBE_SECONDS):
        try:
            await _probe_source(mapping, factory)
        except SourceError as exc:
            error = str(exc)
        else:
            state, error = "up", ""
    rows[mapping.name] = {
        "mapping": mapping.name,
        "source": mapping.source,
        "state": state,
        "error": error,
    }


def render_sources(rows: Sequence[dict[str, str]]) -> str:
    """The rows of :func:`source_status` as aligned plain text."""
    header = {"mapping": "MAPPING", "source": "SOURCE", "state": "STATE", "error": "ERROR"}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in ("mapping", "source", "state")}
    return "\n".join(
        "  ".join([*(r[k].ljust(w) for k, w in widths.items()), r["error"]]).rstrip()
        for r in [header, *rows]
    )


async def print_status(settings: Settings) -> None:
    """``poller status``: check each mapping's source, then read the lease table named by
    ``settings``, and print both."""
    assert settings.checkpoints.table is not None
    aws = settings.aws
    factory = ClientFactory(
        region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints
    )
    try:
        sources = await source_status(settings, factory)
        table = DynamoDBLeaseTable(await factory.client("dynamodb"), settings.checkpoints.table)
        streams = [m.name for m in settings.mappings if m.source != "sqs"]
        rows = await lease_status(table, streams, now=time.time())
    finally:
        await factory.aclose()
    print(render_sources(sources) + "\n\n" + render_status(rows))  # noqa: T201 - CLI output


def status_command(settings: Settings, *, as_json: bool = False) -> int:
    """``poller status``: print, return the exit status (2 for a backend it cannot read)."""
    if settings.checkpoints.backend != "dynamodb":
        print(  # noqa: T201 - CLI output
            "poller: status reads the lease table; this configuration uses the"
            f" {settings.checkpoints.backend} backend (one replica, no leases)",
            file=sys.stderr,
        )
        return 2
    anyio.run(print_status, settings)
    return 0
