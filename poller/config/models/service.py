"""The service-wide sections: AWS, the embedded mode, checkpoints, shutdown, memory, logs, HTTP.

Where it sits in the data flow::

    aws:, embedded:, checkpoints:, shutdown:, memory:, logging:, observability: (YAML sections)
        --these models--> Settings --> the AWS clients, the emulator, the checkpoint store,
                                       the stop logic, the read budget, logging, the
                                       metrics/health server

Each model declares its own defaults, so a file may leave any of these sections out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from poller.config.arns import REGION
from poller.config.models.base import Float, FrozenModel, HttpUrl, Int, lower, meta, upper
from poller.config.models.mapping_base import check_tag_key
from poller.config.wording import own_error, show, suggestion

#: botocore service names that may have their own endpoint in ``aws.endpoints``.
AWS_SERVICES = (
    "kinesis",
    "dynamodb",
    "dynamodbstreams",
    "sqs",
    "sns",
    "s3",
    "lambda",
    "sts",
    "secretsmanager",
)

# A name or address to bind: no spaces or control characters (a NUL made the bind raise).
_HOST = r"^[^\s\x00-\x1f\x7f]+$"


def _check_service_name(name: str) -> str:
    """Accept the botocore service names that ``aws.endpoints`` may override."""
    if name in AWS_SERVICES:
        return name
    raise own_error(
        "service_name",
        "{value} is not a service name poller uses; allowed {allowed}{hint}",
        value=repr(name),
        allowed=", ".join(AWS_SERVICES),
        hint=suggestion(name, AWS_SERVICES),
    )


def _non_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise own_error("empty_path", "'' is empty; give a file path")
    if isinstance(value, str) and "\0" in value:
        raise own_error(
            "nul_path", "{value} holds a NUL character, which no file path can", value=show(value)
        )
    return value


ServiceName = Annotated[str, AfterValidator(_check_service_name)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["auto", "json", "console"]


class AwsSettings(FrozenModel):
    """Where poller reaches AWS.

    Attributes:
        region: the region of every client, e.g. ``us-east-1``.
        endpoint_url: one endpoint for every service (LocalStack, moto), or None for AWS.
        endpoints: per-service endpoints by botocore service name; they win over endpoint_url.
    """

    region: str = Field(
        default="us-east-1",
        pattern=f"^{REGION}$",
        json_schema_extra=meta(expected="a region name such as us-east-1 or eu-central-2"),
    )
    endpoint_url: HttpUrl | None = None
    endpoints: dict[ServiceName, HttpUrl] = Field(default_factory=dict)

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint for a botocore service: its override, else ``endpoint_url``."""
        return self.endpoints.get(service, self.endpoint_url)


class TrafficSettings(FrozenModel):
    """Synthetic records the embedded mode writes to every stream, so a demo has data.

    Attributes:
        enabled: whether to generate traffic at all.
        records_per_second: the total write rate per stream.
        partition_keys: how many distinct partition keys to spread the records over.
    """

    enabled: bool = True
    records_per_second: Float = Field(default=5.0, gt=0, le=1000)
    partition_keys: Int = Field(default=8, ge=1, le=10000)


class EmbeddedSettings(FrozenModel):
    """The zero-setup local mode: an in-process AWS emulator (moto).

    Attributes:
        enabled: run the emulator and point every client at it.
        host: the address the emulator listens on.
        port: its port; 0 picks a free one.
        shard_count: the shards of each stream it creates when the stream is missing.
        traffic: the synthetic traffic generator.
    """

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Int = Field(default=0, ge=0, le=65535)
    shard_count: Int = Field(default=2, ge=1, le=50)
    traffic: TrafficSettings = TrafficSettings()


class CheckpointSettings(FrozenModel):
    """Where shard positions are stored, and how replicas share shards.

    Attributes:
        backend: ``sqlite`` (one replica, the default) or ``dynamodb`` (a lease table shared by
            several replicas: one replica per shard at a time, fenced checkpoints, failover).
        path: sqlite: the database file; a relative path is relative to the working directory.
        synchronous: sqlite: ``PRAGMA synchronous``; ``full`` survives power loss.
        table: dynamodb: the lease table's name (required with that backend).
        create_table: dynamodb: create the table (on-demand billing) when it is missing.
        lease_duration_seconds: dynamodb: a lease whose owner's heartbeat (one per replica
            and mapping, every third of this) has not moved for this long, on the observer's
            own clock, is expired and may be taken (after the takeover grace); an owner that
            cannot heartbeat stops its shards at 90 % of it.
        balance_interval_seconds: dynamodb: how often a replica takes and balances leases.
        max_leases_per_replica: dynamodb: an optional cap on the leases one replica holds.
        replica_id: dynamodb: this replica's identity; default: the ECS task id, else
            host-pid-random.
        takeover_grace_seconds: dynamodb: how much longer than the lease duration a replica
            waits before taking a lease whose owner stopped heartbeating, so that an invocation
            the owner started in time has ended. Default: the mapping's target timeout
            (``timeout_seconds``) less a heartbeat interval (a third of the lease), plus 0.5 s,
            never below 0 (the owner starts nothing later than that interval before its lease
            goes stale); 0 for Lambda targets, whose function timeout is not known here: set
            it to the function's timeout for strict exclusivity.
    """

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    path: Annotated[Path, BeforeValidator(_non_empty_path)] = Path("poller-checkpoints.db")
    synchronous: Literal["full", "normal"] = "full"
    table: str | None = Field(
        default=None, min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    create_table: bool = True
    lease_duration_seconds: Float = Field(default=10.0, ge=1, le=600)
    balance_interval_seconds: Float = Field(default=5.0, ge=0.5, le=600)
    max_leases_per_replica: Int | None = Field(default=None, ge=1, le=100_000)
    replica_id: str | None = Field(default=None, min_length=1, max_length=256)
    takeover_grace_seconds: Float | None = Field(default=None, ge=0, le=900)

    @model_validator(mode="after")
    def _table_for_dynamodb(self) -> CheckpointSettings:
        """The lease table is named explicitly: replicas must agree on it."""
        if self.backend == "dynamodb" and not self.table:
            raise own_error(
                "table_required",
                "the dynamodb backend needs checkpoints.table, the lease table's name",
            )
        return self


class ShutdownSettings(FrozenModel):
    """Graceful stop.

    Attributes:
        drain_timeout_seconds: how long in-flight batches may finish after SIGTERM.
    """

    drain_timeout_seconds: Float = Field(default=30.0, gt=0, le=3600)


class MemorySettings(FrozenModel):
    """How much memory stream reads may hold (:mod:`poller.streams.budget`).

    Attributes:
        read_budget_mib: MiB of records read and not yet settled, for the whole process,
            shared equally by the running shards of every Kinesis and DynamoDB Streams mapping.
            Counted in event bytes (what a record adds to the JSON event); Python's objects
            for them take about as much again. SQS is bounded by its batch size and
            concurrency instead. The default, 64 MiB, keeps a replica near 200 MB of RSS
            however many shards it reads (benchmarks/memory.py); raise it for large records
            or many shards with large batches: reads stay at most half a share each, so give
            each shard room for about two batches.
    """

    read_budget_mib: Float = Field(default=64.0, gt=0, le=1_048_576)

    @property
    def read_budget_bytes(self) -> int:
        """The budget in bytes."""
        return max(1, int(self.read_budget_mib * 1024 * 1024))


#: The most tag keys exported as metric labels: each adds a label to every mapping series.
MAX_METRIC_TAG_LABELS = 5
# Characters a Prometheus label name may not hold (it must match [a-zA-Z_][a-zA-Z0-9_]*).
_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9_]")


def tag_label_name(key: str) -> str:
    """The metric label a tag key is exported as: ``tag_<key>``, every character outside
    ``[A-Za-z0-9_]`` replaced by ``_``."""
    return "tag_" + _NOT_IN_LABEL.sub("_", key)


def _check_tag_labels(keys: list[str]) -> list[str]:
    """Valid tag keys, each exported under a label name of its own."""
    first: dict[str, str] = {}
    for key in keys:
        check_tag_key(key)
        label = tag_label_name(key)
        if first.get(label) == key:
            raise own_error("tag_label_twice", "tag {key} is listed twice", key=show(key))
        if label in first:
            raise own_error(
                "tag_label_collision",
                "tags {first} and {key} would both be exported as label {label}; keep one, "
                "or rename a tag",
                first=show(first[label]),
                key=show(key),
                label=label,
            )
        first[label] = key
    return keys


#: The default port of /metrics, /healthz and /readyz: after the entries of Prometheus's default
#: port allocations (9100, the old default, is node_exporter's). The Dockerfile and deploy/
#: name it too; tests/unit/test_metrics_port.py keeps them equal.
DEFAULT_METRICS_PORT = 10027


class ObservabilitySettings(FrozenModel):
    """The HTTP endpoint for Prometheus metrics and health checks.

    Attributes:
        enabled: serve ``/metrics``, ``/healthz`` and ``/readyz``.
        host: the address to bind; ``0.0.0.0`` so that Prometheus and ECS reach the task.
        port: the port; 0 picks a free one (tests).
        liveness_timeout_seconds: ``/healthz`` fails once the event loop has not ticked for
            this long.
        metric_tag_labels: mapping tag keys (at most 5) exported as labels ``tag_<key>`` on
            every series labelled by ``mapping``, with the mapping's value ("" when unset).
    """

    enabled: bool = True
    host: str = Field(
        default="0.0.0.0",
        min_length=1,
        pattern=_HOST,
        json_schema_extra=meta(expected="a host name or IP address, such as 0.0.0.0 or ::"),
    )
    port: Int = Field(default=DEFAULT_METRICS_PORT, ge=0, le=65535)
    liveness_timeout_seconds: Float = Field(default=10.0, gt=0, le=600)
    # Tag values are constant per mapping, so these labels add no series, only columns.
    metric_tag_labels: Annotated[list[str], AfterValidator(_check_tag_labels)] = Field(
        default_factory=list, max_length=MAX_METRIC_TAG_LABELS
    )

    @property
    def tag_label_names(self) -> dict[str, str]:
        """Each of :attr:`metric_tag_labels` with its label name, in the configured order."""
        return {key: tag_label_name(key) for key in self.metric_tag_labels}


class LoggingSettings(FrozenModel):
    """Log output.

    Attributes:
        level: the minimum level; any case is accepted and stored in upper case.
        format: ``json``, ``console``, or ``auto`` (console on a terminal, else JSON).
    """

    level: Annotated[LogLevel, BeforeValidator(upper)] = "INFO"
    format: Annotated[LogFormat, BeforeValidator(lower)] = "auto"
