"""Typed configuration: the YAML file, ``${VAR}`` expansion and ``POLLER_*`` overrides.

Where it sits in the data flow::

    config/*.yaml --load_settings()--> Settings --(the CLI passes it down)--> app, sources,
                                                  targets, checkpoint store, logging

The CLI calls :func:`load_settings` once at start-up. Every other module gets the
:class:`Settings`, or the part of it that it needs, as an argument, and never reads a file or
the environment itself. The models are frozen, so no component can change what another sees.

Loading takes four steps:

1. Read the YAML file with the safe loader, within limits no real configuration reaches, so
   hostile input gets a one-line error and never a hang or a traceback: a regular file (not a
   FIFO or a device) of at most :data:`MAX_CONFIG_BYTES`, UTF-8 without control characters,
   at most :data:`MAX_YAML_DEPTH` levels and :data:`MAX_YAML_NODES` values once aliases are
   expanded (an alias bomb is measured on the node graph, before it is built). A key repeated
   in one mapping is an error, because YAML would otherwise keep the last value without a
   word; merge keys (``<<: *base``) work.
2. Expand ``${VAR}`` and ``${VAR:-default}`` in string values, from ``environ``
   (``os.environ`` by default). ``${VAR}`` with ``VAR`` unset is an error. As in the shell,
   ``:-default`` applies when ``VAR`` is unset or empty. ``$${`` is a literal ``${``; a
   ``${`` never closed and a reference inside a default are errors. All references together
   may add at most :data:`MAX_EXPANDED_CHARS`, so a small file cannot expand into gigabytes.
3. Apply the environment overrides described below.
4. Validate with pydantic. Each problem becomes one line of a :class:`~poller.errors.ConfigError`
   that names the field path, the bad value and what is allowed, for example
   ``mappings[0] (orders).batch_size: 20000 is out of range; allowed 1 to 10000 (AWS BatchSize)``.

Environment overrides, for ECS task definitions and similar: a variable
``POLLER_<SECTION>__<FIELD>`` sets one value. Segments are joined by a double underscore and
matched case-insensitively, and the value is parsed as a YAML scalar, so ``false``, ``500`` and
``1.5`` arrive as a bool, an int and a float, and an empty value is ``null``::

    POLLER_AWS__REGION=eu-west-1
    POLLER_AWS__ENDPOINT_URL=http://localhost:4566
    POLLER_CHECKPOINTS__PATH=/data/checkpoints.db
    POLLER_LOGGING__LEVEL=debug
    POLLER_SHUTDOWN__DRAIN_TIMEOUT_SECONDS=20
    POLLER_EMBEDDED__TRAFFIC__ENABLED=false

A mapping is addressed by its name, which must match exactly. Only the field part is
case-insensitive: ``POLLER_MAPPINGS__orders__BATCH_SIZE=500`` or
``POLLER_MAPPINGS__orders__TARGET__TIMEOUT_SECONDS=10``. An override that names no existing
mapping is an error that names the variable. Inside a list, a segment is an item number:
``0`` to ``len - 1`` replaces an item and ``len`` appends one. A ``POLLER_`` variable without
``__``, such as ``POLLER_CONFIG``, is not an override and is ignored: every setting is at least
two levels deep.

Secrets: error messages, and :func:`redacted_settings` (``validate --print``), show HTTP header
values, URL userinfo and the values of environment variables with secret-looking names as
:data:`REDACTED`.

Mapping kinds: the source type is not a field the user writes. It follows from the service in
``event_source_arn`` (``arn:aws:kinesis:...`` is a Kinesis mapping). :data:`MappingConfig` is a
pydantic tagged union keyed by that service through a callable ``Discriminator``:
:class:`KinesisMapping` (``kinesis``), :class:`DynamoDBStreamMapping` (``dynamodb``) and
:class:`SqsMapping` (``sqs``); each has a ``source`` property with its tag. The two stream
models share their fields through a base class but are not subclasses of each other, so
``isinstance`` tells them apart. Each model declares its own defaults. An ARN of a service with
no model is rejected with AWS's ``Unrecognized event source.`` and the list of supported kinds.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    Self,
    TypeAlias,
    Union,
    get_args,
    get_origin,
)
from urllib.parse import urlsplit
from uuid import NAMESPACE_URL, uuid5

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from yarl import URL

from poller.core.filtering import FilterError, FilterSet, compile_filters
from poller.errors import ConfigError

__all__ = [
    "AWS_SERVICES",
    "SQS_DEFAULT_MAXIMUM_CONCURRENCY",
    "AnyMapping",
    "AwsSettings",
    "CheckpointSettings",
    "DestinationConfig",
    "DynamoDBStreamMapping",
    "EmbeddedSettings",
    "HttpTargetConfig",
    "KinesisMapping",
    "LambdaTargetConfig",
    "LoggingSettings",
    "MappingConfig",
    "OnFailureDestination",
    "PythonTargetConfig",
    "ScalingConfig",
    "Settings",
    "ShutdownSettings",
    "SqsMapping",
    "TargetConfig",
    "TrafficSettings",
    "VisibilityBackoff",
    "load_settings",
    "parse_settings",
    "redacted_settings",
]

#: botocore service names that may have their own endpoint in ``aws.endpoints``.
AWS_SERVICES = ("kinesis", "dynamodb", "dynamodbstreams", "sqs", "sns", "s3", "lambda", "sts")

#: Environment variables with this prefix (any case) and a ``__`` are overrides.
ENV_PREFIX = "POLLER_"

_PARTITION = "(?:aws|aws-cn|aws-us-gov)"
_REGION = "[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}"
_KINESIS_ARN = f"^arn:{_PARTITION}:kinesis:{_REGION}:[0-9]{{12}}:stream/[A-Za-z0-9_.-]{{1,128}}$"
_IAM_ARN = f"^arn:{_PARTITION}:iam::[0-9]{{12}}:.+$"
_DYNAMODB_STREAM_ARN = (
    f"^arn:{_PARTITION}:dynamodb:{_REGION}:[0-9]{{12}}:table/[A-Za-z0-9_.-]{{3,255}}"
    "/stream/[A-Za-z0-9_.:-]{1,128}$"
)
# The FunctionName pattern of the botocore Lambda model, anchored.
_FUNCTION_NAME = (
    r"^(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?"
    r"([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?$"
)
_IDENTIFIER = "[A-Za-z_][A-Za-z0-9_]*"
_HANDLER = f"^{_IDENTIFIER}(?:\\.{_IDENTIFIER})*:{_IDENTIFIER}$"
# A name or address to bind: no spaces or control characters (a NUL made the bind raise).
_HOST = r"^[^\s\x00-\x1f\x7f]+$"
_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _queue_or_topic_arn(service: str, max_name: int) -> re.Pattern[str]:
    """An SQS queue or SNS topic ARN; the name, '.fifo' suffix included, is group ``name``."""
    name = f"(?P<name>(?=.{{1,{max_name}}}$)[A-Za-z0-9_-]+(?:\\.fifo)?)"
    return re.compile(f"^arn:{_PARTITION}:{service}:{_REGION}:[0-9]{{12}}:{name}$")


# On-failure destinations (AWS DestinationConfig.OnFailure.Destination). Queue names have up to
# 80 and topic names up to 256 characters; bucket names 3 to 63 of a-z, 0-9, '.' and '-'.
_SQS_QUEUE_ARN = _queue_or_topic_arn("sqs", 80)
# The same queue ARN as a source, without look-ahead (pydantic's regex engine has none): a
# name of up to 80 characters, '.fifo' included.
_SQS_SOURCE_ARN = (
    f"^arn:{_PARTITION}:sqs:{_REGION}:[0-9]{{12}}:"
    "(?:[A-Za-z0-9_-]{1,80}|[A-Za-z0-9_-]{1,75}\\.fifo)$"
)
_SNS_TOPIC_ARN = _queue_or_topic_arn("sns", 256)
_S3_BUCKET_ARN = re.compile(f"^arn:{_PARTITION}:s3:::[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]$")
_DESTINATION_FORMS = (
    "an SQS queue ARN arn:<partition>:sqs:<region>:<12-digit account>:<queue>, "
    "an SNS topic ARN arn:<partition>:sns:<region>:<12-digit account>:<topic> "
    "or an S3 bucket ARN arn:<partition>:s3:::<bucket>, with partition aws, aws-cn or aws-us-gov"
)
_DESTINATION_KINDS = {"sqs": "SQS queue ARN", "sns": "SNS topic ARN", "s3": "S3 bucket ARN"}

# MaximumRecordAgeInSeconds: -1 (no limit), or 60 to 604800; AWS refuses 0 to 59.
_RECORD_AGE_MIN = 60
_RECORD_AGE_ALLOWED = "-1 or 60 to 604800"

# Error types raised by this module's validators start with this; their text is complete.
_OWN_ERROR = "poller_"
_UNSUPPORTED_SOURCE = "poller_unsupported_event_source"

Loc: TypeAlias = tuple[int | str, ...]

#: The largest configuration file read; a bigger one is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024
#: The deepest nesting of YAML collections, aliases expanded (a real config needs about 7).
MAX_YAML_DEPTH = 64
#: The most YAML values (scalars and collections), aliases expanded: bounds an alias bomb.
MAX_YAML_NODES = 100_000
#: The most characters ``${VAR}`` references may add to the file's values, all together: a
#: 1 MiB file of ``${BIG}`` (or aliases of one) would otherwise build gigabytes.
MAX_EXPANDED_CHARS = 4 * MAX_CONFIG_BYTES


def _meta(
    *, aws: str | None = None, expected: str | None = None, allowed: str | None = None
) -> dict[str, JsonValue]:
    """Field metadata read by the error formatter (and shown in the JSON schema).

    Args:
        aws: the AWS ESM parameter this field mirrors, named in range errors.
        expected: a human description of the accepted form, for pattern errors.
        allowed: the accepted range in words, for a range with a hole that ``ge``/``le``
            cannot express; range errors show it instead of the bounds.
    """
    extra: dict[str, JsonValue] = {}
    if aws:
        extra["aws_name"] = aws
    if expected:
        extra["expected"] = expected
    if allowed:
        extra["allowed"] = allowed
    return extra


def _own_error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose message is already a complete, readable sentence."""
    return PydanticCustomError(_OWN_ERROR + kind, message, context)


def _check_http_url(value: str) -> str:
    """Accept only absolute ``http://`` or ``https://`` URLs with a host."""
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise _own_error("url", "{value} is not an http:// or https:// URL", value=repr(value))
    return value


def _check_service_name(name: str) -> str:
    """Accept the botocore service names that ``aws.endpoints`` may override."""
    if name in AWS_SERVICES:
        return name
    raise _own_error(
        "service_name",
        "{value} is not a service name poller uses; allowed {allowed}{hint}",
        value=repr(name),
        allowed=", ".join(AWS_SERVICES),
        hint=_suggestion(name, AWS_SERVICES),
    )


def _check_destination_arn(arn: str) -> str:
    """Accept a standard SQS queue, a standard SNS topic or an S3 bucket ARN.

    AWS accepts a FIFO queue or topic when the mapping is created, then fails every delivery to
    it (``DestinationDeliveryFailures``); poller refuses it up front instead.
    """
    for kind, pattern in (("queue", _SQS_QUEUE_ARN), ("topic", _SNS_TOPIC_ARN)):
        match = pattern.match(arn)
        if match and match["name"].endswith(".fifo"):
            raise _own_error(
                "fifo_destination",
                "{value} is a FIFO {what}; AWS on-failure destinations must be standard "
                "queues or topics, not FIFO; expected {forms}",
                value=_show(arn),
                what=kind,
                forms=_DESTINATION_FORMS,
            )
        if match:
            return arn
    if _S3_BUCKET_ARN.match(arn):
        return arn
    service = _arn_service(arn)
    if service is None:
        head = "is not an ARN"
    elif service in _DESTINATION_KINDS:
        head = f"is not a valid {_DESTINATION_KINDS[service]}"
    else:
        head = f"is an ARN of service {service!r}, which cannot be an on-failure destination"
    raise _own_error(
        "destination_arn",
        "{value} {head}; expected {forms}",
        value=_show(arn),
        head=head,
        forms=_DESTINATION_FORMS,
    )


def _check_record_age(seconds: int) -> int:
    """Refuse 0 to 59, which lie inside MaximumRecordAgeInSeconds' -1 to 604800 but AWS forbids."""
    if -1 < seconds < _RECORD_AGE_MIN:
        raise _own_error(
            "record_age",
            "{value} is out of range; allowed {allowed} (AWS MaximumRecordAgeInSeconds: the "
            "minimum valid value is 60 seconds; values less than 60 and greater than -1 fall "
            "within the parameter's absolute range but are not allowed)",
            value=seconds,
            allowed=_RECORD_AGE_ALLOWED,
        )
    return seconds


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _non_empty_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise _own_error("empty_path", "'' is empty; give a file path")
    if isinstance(value, str) and "\0" in value:
        raise _own_error(
            "nul_path", "{value} holds a NUL character, which no file path can", value=_show(value)
        )
    return value


def _to_epoch_seconds(value: Any) -> Any:
    """Turn an ISO-8601 string or a datetime into epoch seconds; naive times are UTC."""
    if isinstance(value, bool):
        raise _own_error(
            "timestamp_bool",
            "{value} is not a time; give epoch seconds or an ISO-8601 datetime",
            value=_show(value),
        )
    if isinstance(value, str):
        value = _parse_time_text(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    return value


def _epoch_text(seconds: float) -> str:
    """Epoch seconds as an ISO-8601 UTC time, for messages; past year 9999 (1e300, say)
    ``fromtimestamp`` raises, and the time is then only "far in the future"."""
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return "past the year 9999"


def _parse_time_text(text: str) -> float | datetime:
    """Parse epoch seconds or an ISO-8601 datetime written as text."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise _own_error(
            "timestamp",
            "{value} is neither epoch seconds nor an ISO-8601 datetime "
            "(for example 2024-05-01T12:00:00Z)",
            value=repr(text),
        ) from None


def _no_bool(value: Any) -> Any:
    """Refuse ``true``/``false`` where a number belongs: pydantic would read them as 1 and 0."""
    if isinstance(value, bool):
        raise _own_error(
            "bool_number",
            "{value} is not a number; write a number, not true or false",
            value=_show(value),
        )
    return value


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
#: A whole number or a number, never a boolean (numeric text, as from ${VAR}, still parses).
_Int = Annotated[int, BeforeValidator(_no_bool)]
_Float = Annotated[float, BeforeValidator(_no_bool)]
ServiceName = Annotated[str, AfterValidator(_check_service_name)]
# AWS lists the values in this order in its enum error, so the messages do too.
StartingPosition = Literal["LATEST", "AT_TIMESTAMP", "TRIM_HORIZON"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["auto", "json", "console"]


class _FrozenModel(BaseModel):
    """Base of every settings model: immutable, unknown keys rejected, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AwsSettings(_FrozenModel):
    """Where poller reaches AWS.

    Attributes:
        region: the region of every client, e.g. ``us-east-1``.
        endpoint_url: one endpoint for every service (LocalStack, moto), or None for AWS.
        endpoints: per-service endpoints by botocore service name; they win over endpoint_url.
    """

    region: str = Field(
        default="us-east-1",
        pattern=f"^{_REGION}$",
        json_schema_extra=_meta(expected="a region name such as us-east-1 or eu-central-2"),
    )
    endpoint_url: HttpUrl | None = None
    endpoints: dict[ServiceName, HttpUrl] = Field(default_factory=dict)

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint for a botocore service: its override, else ``endpoint_url``."""
        return self.endpoints.get(service, self.endpoint_url)


class TrafficSettings(_FrozenModel):
    """Synthetic records the embedded mode writes to every stream, so a demo has data.

    Attributes:
        enabled: whether to generate traffic at all.
        records_per_second: the total write rate per stream.
        partition_keys: how many distinct partition keys to spread the records over.
    """

    enabled: bool = True
    records_per_second: _Float = Field(default=5.0, gt=0, le=1000)
    partition_keys: _Int = Field(default=8, ge=1, le=10000)


class EmbeddedSettings(_FrozenModel):
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
    port: _Int = Field(default=0, ge=0, le=65535)
    shard_count: _Int = Field(default=2, ge=1, le=50)
    traffic: TrafficSettings = TrafficSettings()


class CheckpointSettings(_FrozenModel):
    """Where shard positions are stored, and how replicas share shards.

    Attributes:
        backend: ``sqlite`` (one replica, the default) or ``dynamodb`` (a lease table shared by
            several replicas: one replica per shard at a time, fenced checkpoints, failover).
        path: sqlite: the database file; a relative path is relative to the working directory.
        synchronous: sqlite: ``PRAGMA synchronous``; ``full`` survives power loss.
        table: dynamodb: the lease table's name (required with that backend).
        create_table: dynamodb: create the table (on-demand billing) when it is missing.
        lease_duration_seconds: dynamodb: a lease whose counter has not moved for this long,
            on the observer's own clock, is expired and may be taken.
        balance_interval_seconds: dynamodb: how often a replica takes and balances leases.
        max_leases_per_replica: dynamodb: an optional cap on the leases one replica holds.
        replica_id: dynamodb: this replica's identity; default: the ECS task id, else
            host-pid-random.
        takeover_grace_seconds: dynamodb: how much longer than the lease duration a replica
            waits before taking a lease whose owner stopped renewing it, so that an invocation
            the owner started in time has ended. Default: the mapping's target timeout
            (``timeout_seconds``; 0 for Lambda targets, whose function timeout is not known
            here: set it to the function's timeout for strict exclusivity).
    """

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    path: Annotated[Path, BeforeValidator(_non_empty_path)] = Path("poller-checkpoints.db")
    synchronous: Literal["full", "normal"] = "full"
    table: str | None = Field(
        default=None, min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    create_table: bool = True
    lease_duration_seconds: _Float = Field(default=10.0, ge=1, le=600)
    balance_interval_seconds: _Float = Field(default=5.0, ge=0.5, le=600)
    max_leases_per_replica: _Int | None = Field(default=None, ge=1, le=100_000)
    replica_id: str | None = Field(default=None, min_length=1, max_length=256)
    takeover_grace_seconds: _Float | None = Field(default=None, ge=0, le=900)

    @model_validator(mode="after")
    def _table_for_dynamodb(self) -> CheckpointSettings:
        """The lease table is named explicitly: replicas must agree on it."""
        if self.backend == "dynamodb" and not self.table:
            raise _own_error(
                "table_required",
                "the dynamodb backend needs checkpoints.table, the lease table's name",
            )
        return self


class ShutdownSettings(_FrozenModel):
    """Graceful stop.

    Attributes:
        drain_timeout_seconds: how long in-flight batches may finish after SIGTERM.
    """

    drain_timeout_seconds: _Float = Field(default=30.0, gt=0, le=3600)


class ObservabilitySettings(_FrozenModel):
    """The HTTP endpoint for Prometheus metrics and health checks.

    Attributes:
        enabled: serve ``/metrics``, ``/healthz`` and ``/readyz``.
        host: the address to bind; ``0.0.0.0`` so that Prometheus and ECS reach the task.
        port: the port; 0 picks a free one (tests).
        liveness_timeout_seconds: ``/healthz`` fails once the event loop has not ticked for
            this long.
    """

    enabled: bool = True
    host: str = Field(
        default="0.0.0.0",
        min_length=1,
        pattern=_HOST,
        json_schema_extra=_meta(expected="a host name or IP address, such as 0.0.0.0 or ::"),
    )
    port: _Int = Field(default=9100, ge=0, le=65535)
    liveness_timeout_seconds: _Float = Field(default=10.0, gt=0, le=600)


class LoggingSettings(_FrozenModel):
    """Log output.

    Attributes:
        level: the minimum level; any case is accepted and stored in upper case.
        format: ``json``, ``console``, or ``auto`` (console on a terminal, else JSON).
    """

    level: Annotated[LogLevel, BeforeValidator(_upper)] = "INFO"
    format: Annotated[LogFormat, BeforeValidator(_lower)] = "auto"


class LambdaTargetConfig(_FrozenModel):
    """Deliver batches by invoking an AWS Lambda function.

    Attributes:
        type: always ``lambda``.
        function_name: a function name, or a full or partial ARN, optionally with
            ``:version`` or ``:alias``.
        qualifier: a version or alias to invoke, when the name does not carry one.
    """

    type: Literal["lambda"]
    function_name: str = Field(
        min_length=1,
        max_length=256,
        pattern=_FUNCTION_NAME,
        json_schema_extra=_meta(
            aws="FunctionName",
            expected="a function name, or a full or partial Lambda ARN, optionally with "
            ":version or :alias (for example my-function or "
            "arn:aws:lambda:us-east-1:123456789012:function:my-function:live)",
        ),
    )
    qualifier: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9$_-]+$",
        json_schema_extra=_meta(expected="a version number, $LATEST or an alias name"),
    )


def _is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (with an IPv6 zone, as in ``fe80::1%eth0``)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class HttpTargetConfig(_FrozenModel):
    """Deliver batches as an HTTP POST of the Lambda event JSON.

    Attributes:
        type: always ``http``.
        url: the endpoint that receives the event.
        headers: extra request headers.
        timeout_seconds: the invocation timeout; running past it counts as a function error.
    """

    type: Literal["http"]
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: _Float = Field(default=30.0, gt=0, le=900)

    # What no HTTP request can carry is refused here, in one line, rather than failing every
    # invocation. Messages name headers but never quote their values, which may be secrets.

    @field_validator("url")
    @classmethod
    def _url_without_control_characters(cls, url: str) -> str:
        """A URL never holds a control character or a space (CR/LF would inject headers)."""
        for position, char in enumerate(url):
            if char <= " " or char == "\x7f":
                raise _own_error(
                    "url_character",
                    "the URL holds {char} at position {position}; a URL cannot contain control "
                    "characters or spaces (percent-encode them)",
                    char=repr(char),
                    position=position,
                )
        return url

    @field_validator("url")
    @classmethod
    def _url_host_resolvable(cls, url: str) -> str:
        """The host must survive the IDNA encoding aiohttp and the resolver apply to it: an
        empty or 64-character label, a character IDNA forbids, or a space (U+00A0 becomes
        one) would fail every request, or crash the target's start."""
        try:
            host = URL(url).raw_host or ""
            if not _is_ip_address(host):
                host.encode("idna")
        except (UnicodeError, ValueError):
            host = ""
        if not host or not (_is_ip_address(host) or re.fullmatch(r"[A-Za-z0-9._-]+", host)):
            raise _own_error(
                "url_host",
                "the URL's host {host} is not a host name a request can be sent to (labels of "
                "1 to 63 letters, digits or hyphens, or an IP address)",
                host=repr(urlsplit(url).hostname),
            )
        return url

    @field_validator("headers")
    @classmethod
    def _headers_http_can_send(cls, headers: dict[str, str]) -> dict[str, str]:
        """Names are HTTP tokens, values hold no control characters, framing is poller's."""
        seen: set[str] = set()
        for name, value in headers.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise _own_error(
                    "header_name",
                    "{name} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                    name=repr(name),
                )
            if any((c < " " and c != "\t") or c == "\x7f" for c in value):
                raise _own_error(
                    "header_value",
                    "header {name}: the value holds a control character (CR, LF, NUL...), "
                    "which HTTP cannot send",
                    name=repr(name),
                )
            if name.lower() in ("content-length", "transfer-encoding"):
                raise _own_error(
                    "header_framing",
                    "header {name} is set by poller, which frames the request body; remove it",
                    name=repr(name),
                )
            if name.lower() in seen:
                raise _own_error(
                    "header_duplicate",
                    "header {name} is given twice (header names ignore case)",
                    name=repr(name),
                )
            seen.add(name.lower())
        return headers

    @model_validator(mode="after")
    def _one_kind_of_credentials(self) -> HttpTargetConfig:
        """Credentials in the URL become an Authorization header, so both cannot be sent."""
        parts = urlsplit(self.url)
        in_url = parts.username is not None or parts.password is not None
        if in_url and any(name.lower() == "authorization" for name in self.headers):
            raise _own_error(
                "url_and_authorization",
                "the URL carries credentials (user:password@) and headers has Authorization; "
                "a request sends one or the other, so keep only one",
            )
        return self


class PythonTargetConfig(_FrozenModel):
    """Deliver batches by calling a Python function in this process.

    Attributes:
        type: always ``python``.
        handler: ``package.module:function``; the function takes ``(event, context)``.
        timeout_seconds: the invocation timeout; running past it counts as a function error.
    """

    type: Literal["python"]
    handler: str = Field(
        pattern=_HANDLER,
        json_schema_extra=_meta(
            expected="package.module:function, dotted identifiers and exactly one colon "
            "(for example examples.handlers:log_batch)"
        ),
    )
    timeout_seconds: _Float = Field(default=60.0, gt=0, le=900)


#: Where a mapping delivers its batches, chosen by ``type``.
TargetConfig = Annotated[
    Annotated[LambdaTargetConfig, Tag("lambda")]
    | Annotated[HttpTargetConfig, Tag("http")]
    | Annotated[PythonTargetConfig, Tag("python")],
    Field(discriminator="type"),
]


#: The only value of AWS FunctionResponseTypes: honour ``batchItemFailures`` in responses.
FunctionResponseType = Literal["ReportBatchItemFailures"]


class OnFailureDestination(_FrozenModel):
    """Where a batch that ran out of retries or record age is reported (AWS OnFailure).

    Attributes:
        destination_arn: a standard SQS queue, a standard SNS topic or an S3 bucket. SQS and
            SNS get the failure record; S3 gets it with the batch's records as ``payload``.
    """

    destination_arn: Annotated[str, AfterValidator(_check_destination_arn)] = Field(
        max_length=350,
        json_schema_extra=_meta(expected=_DESTINATION_FORMS),
    )


class DestinationConfig(_FrozenModel):
    """Destinations of a stream mapping (AWS DestinationConfig; only OnFailure exists for ESMs).

    Attributes:
        on_failure: where discarded batches are reported; None drops them silently, as AWS does.
    """

    on_failure: OnFailureDestination | None = None


class FilterPattern(_FrozenModel):
    """One event filter: an EventBridge-syntax JSON pattern, as a string (AWS's form)."""

    pattern: str = Field(min_length=1, max_length=4096, json_schema_extra=_meta(aws="Pattern"))


class FilterCriteria(_FrozenModel):
    """Lambda's FilterCriteria: a record passes when any filter matches."""

    filters: list[FilterPattern] = Field(
        default_factory=list, max_length=5, json_schema_extra=_meta(aws="Filters")
    )


class _MappingBase(_FrozenModel):
    """What every mapping has, whatever its source: a name, a source ARN, batch limits.

    Each source overrides ``event_source_arn`` with its ARN form, and may override the batch
    fields with its own defaults; an overridden field keeps its place in the field order.
    """

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        json_schema_extra=_meta(
            expected="letters, digits, '_', '.' and '-', starting with a letter or digit"
        ),
    )
    event_source_arn: str = Field(json_schema_extra=_meta(aws="EventSourceArn"))
    enabled: bool = Field(default=True, json_schema_extra=_meta(aws="Enabled"))
    batch_size: _Int = Field(default=100, ge=1, le=10000, json_schema_extra=_meta(aws="BatchSize"))
    maximum_batching_window_in_seconds: _Int = Field(
        default=0, ge=0, le=300, json_schema_extra=_meta(aws="MaximumBatchingWindowInSeconds")
    )
    filter_criteria: FilterCriteria | None = Field(
        default=None, json_schema_extra=_meta(aws="FilterCriteria")
    )

    @model_validator(mode="after")
    def _check_filters(self) -> Self:
        """Compile the patterns at load, so a bad one fails with AWS's message, not mid-run."""
        if self.filter_criteria is not None and self.filter_criteria.filters:
            try:
                self._compiled_filters()
            except FilterError as exc:
                raise _own_error("filter_pattern", f"filter_criteria: {exc}") from exc
        return self

    def _compiled_filters(self) -> FilterSet:
        patterns = [f.pattern for f in self.filter_criteria.filters] if self.filter_criteria else []
        source: Any = getattr(self, "source", "kinesis")
        return compile_filters(patterns, source=source)

    @cached_property
    def filters(self) -> FilterSet | None:
        """The compiled filters, or None when the mapping has none."""
        if self.filter_criteria is None or not self.filter_criteria.filters:
            return None
        return self._compiled_filters()

    @property
    def partition(self) -> str:
        """The ARN partition: ``aws``, ``aws-cn`` or ``aws-us-gov``."""
        return self.event_source_arn.split(":")[1]

    @property
    def region(self) -> str:
        """The source's region, from its ARN."""
        return self.event_source_arn.split(":")[3]

    @property
    def account_id(self) -> str:
        """The source's 12-digit account id, from its ARN."""
        return self.event_source_arn.split(":")[4]


class _StreamMapping(_MappingBase):
    """The fields Kinesis and DynamoDB Streams mappings share, with AWS's stream defaults.

    Attributes:
        starting_position: where to start reading a shard that has no checkpoint.
        invoke_identity_arn: the ``invokeIdentityArn`` put in events; see :attr:`identity_arn`.
        shard_discovery_interval_seconds: how often shards are listed to follow resharding.
        maximum_retry_attempts: retries after a function error before the batch is discarded;
            -1 retries until the records expire (AWS MaximumRetryAttempts).
        maximum_record_age_in_seconds: discard records older than this instead of invoking;
            -1 keeps them until the stream drops them (AWS MaximumRecordAgeInSeconds).
        bisect_batch_on_function_error: on a function error, split the batch in two and retry
            each half; splits do not count as retries (AWS BisectBatchOnFunctionError).
        function_response_types: ``[ReportBatchItemFailures]`` honours ``batchItemFailures``
            in responses; without it they are ignored (AWS FunctionResponseTypes).
        destination_config: where discarded batches are reported (AWS DestinationConfig).
        parallelization_factor: concurrent batches per shard, ordered per partition key
            (AWS ParallelizationFactor).
        tumbling_window_in_seconds: aggregate records in windows of this many seconds, with a
            state carried from one invocation to the next; 0 turns windows off (AWS
            TumblingWindowInSeconds). Not with a parallelization factor above 1.
        uuid: the mapping's UUID, as AWS assigns one to each ESM; see :attr:`mapping_uuid`.
        target: where batches go.
    """

    starting_position: StartingPosition = Field(json_schema_extra=_meta(aws="StartingPosition"))
    invoke_identity_arn: str | None = Field(
        default=None,
        pattern=_IAM_ARN,
        json_schema_extra=_meta(expected="an IAM ARN such as arn:aws:iam::123456789012:role/x"),
    )
    shard_discovery_interval_seconds: _Float = Field(default=30.0, ge=1, le=3600)
    # Counts function-error retries only; throttles and service errors retry until expiry.
    maximum_retry_attempts: _Int = Field(
        default=-1, ge=-1, le=10000, json_schema_extra=_meta(aws="MaximumRetryAttempts")
    )
    # -1 or 60 to 604800: AWS refuses 0 to 59 although they lie inside -1 to 604800.
    maximum_record_age_in_seconds: Annotated[_Int, AfterValidator(_check_record_age)] = Field(
        default=-1,
        ge=-1,
        le=604800,
        json_schema_extra=_meta(aws="MaximumRecordAgeInSeconds", allowed=_RECORD_AGE_ALLOWED),
    )
    # Halves a failing batch on each function error, to isolate a poison record.
    bisect_batch_on_function_error: bool = Field(
        default=False, json_schema_extra=_meta(aws="BisectBatchOnFunctionError")
    )
    # At most one entry, ReportBatchItemFailures, which turns on partial batch responses.
    function_response_types: list[FunctionResponseType] = Field(
        default_factory=list, max_length=1, json_schema_extra=_meta(aws="FunctionResponseTypes")
    )
    # Only OnFailure: a standard SQS queue, standard SNS topic or S3 bucket for dropped batches.
    destination_config: DestinationConfig | None = Field(
        default=None, json_schema_extra=_meta(aws="DestinationConfig")
    )
    # Batches in flight per shard at once; records of one partition key stay in order.
    parallelization_factor: _Int = Field(
        default=1, ge=1, le=10, json_schema_extra=_meta(aws="ParallelizationFactor")
    )
    # Windows by arrival time; each invocation carries the window's state (poller.core.windows).
    tumbling_window_in_seconds: _Int = Field(
        default=0, ge=0, le=900, json_schema_extra=_meta(aws="TumblingWindowInSeconds")
    )
    # The ESM UUID AWS would assign; None derives a stable one from name and stream ARN.
    uuid: Annotated[str | None, AfterValidator(_lower)] = Field(
        default=None,
        pattern=_UUID,
        json_schema_extra=_meta(
            aws="UUID",
            expected="a UUID: 32 hex digits in groups of 8-4-4-4-12 "
            "(for example 14e0db71-5d35-4eb5-b481-8945cf9d10c2)",
        ),
    )
    target: TargetConfig

    @field_validator("tumbling_window_in_seconds")
    @classmethod
    def _check_window_lanes(cls, value: int, info: ValidationInfo) -> int:
        """A poller limitation: one window state per shard needs one lane per shard."""
        factor = info.data.get("parallelization_factor")
        if value > 0 and isinstance(factor, int) and factor > 1:
            raise _own_error(
                "window_parallelization",
                "{value} is not allowed with parallelization_factor {factor}; poller keeps one "
                "window state per shard, so tumbling windows need parallelization_factor 1 "
                "(or set tumbling_window_in_seconds to 0)",
                value=value,
                factor=factor,
            )
        return value

    @property
    def report_batch_item_failures(self) -> bool:
        """Whether ``batchItemFailures`` in responses is honoured (partial batch responses)."""
        return "ReportBatchItemFailures" in self.function_response_types

    @property
    def on_failure_arn(self) -> str | None:
        """The on-failure destination's ARN, or None when discarded batches are not reported."""
        config = self.destination_config
        return config.on_failure.destination_arn if config and config.on_failure else None

    @property
    def mapping_uuid(self) -> str:
        """The configured :attr:`uuid`, else one derived from the name and the stream ARN.

        The derived UUID is stable across restarts and differs between mappings; it stands
        where AWS puts the ESM's UUID, e.g. in S3 failure-record keys ``aws/lambda/<uuid>/...``.
        """
        if self.uuid is not None:
            return self.uuid
        return str(uuid5(NAMESPACE_URL, f"poller:{self.name}:{self.event_source_arn}"))

    @property
    def identity_arn(self) -> str:
        """``invokeIdentityArn`` for events: the configured ARN, else a role in the account."""
        return (
            self.invoke_identity_arn or f"arn:{self.partition}:iam::{self.account_id}:role/poller"
        )


class KinesisMapping(_StreamMapping):
    """One Kinesis stream read into one target, with AWS's Kinesis defaults.

    Attributes:
        name: a unique name, used in logs, metrics, checkpoints and overrides.
        event_source_arn: the stream's ARN.
        enabled: False keeps the mapping configured but does not read the stream.
        batch_size: the most records per invocation (AWS BatchSize).
        maximum_batching_window_in_seconds: how long to gather records before invoking.
        starting_position_timestamp: epoch seconds to start at, with ``AT_TIMESTAMP`` only.

    The other fields are those of every stream mapping (``_StreamMapping``).
    """

    event_source_arn: str = Field(
        pattern=_KINESIS_ARN,
        json_schema_extra=_meta(
            aws="EventSourceArn",
            expected="arn:<partition>:kinesis:<region>:<12-digit account>:stream/<name> "
            "with partition aws, aws-cn or aws-us-gov",
        ),
    )
    starting_position_timestamp: Annotated[float | None, BeforeValidator(_to_epoch_seconds)] = (
        Field(
            default=None,
            validate_default=True,
            json_schema_extra=_meta(aws="StartingPositionTimestamp"),
        )
    )
    #: Beyond Lambda: unpack KPL aggregated records into their user records, as KCL does.
    deaggregate_records: bool = False

    @field_validator("starting_position_timestamp")
    @classmethod
    def _check_timestamp(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Required with AT_TIMESTAMP, refused otherwise, never in the future."""
        position = info.data.get("starting_position")
        if position is None:  # starting_position itself is invalid and reported on its own
            return value
        if position == "AT_TIMESTAMP" and value is None:
            raise _own_error(
                "timestamp_missing",
                "required field is missing when starting_position is AT_TIMESTAMP; "
                "give epoch seconds or an ISO-8601 datetime",
            )
        if position != "AT_TIMESTAMP" and value is not None:
            raise _own_error(
                "timestamp_forbidden",
                "{value} is set but starting_position is {position}; "
                "allowed only with starting_position AT_TIMESTAMP",
                value=_show(value),
                position=position,
            )
        if value is not None and value > time.time():
            raise _own_error(
                "timestamp_future",
                "{value} ({when}) is in the future; allowed up to now "
                "(AWS: StartingPositionTimestamp cannot be in the future)",
                value=_show(value),
                when=_epoch_text(value),
            )
        return value

    @property
    def source(self) -> Literal["kinesis"]:
        """The kind of source: ``kinesis``."""
        return "kinesis"

    @property
    def stream_name(self) -> str:
        """The stream's name, from its ARN."""
        return self.event_source_arn.split(":", 5)[5].removeprefix("stream/")


class DynamoDBStreamMapping(_StreamMapping):
    """One DynamoDB table stream read into one target, with AWS's DynamoDB Streams defaults.

    The fields are those of a Kinesis mapping except that ``starting_position`` is
    ``TRIM_HORIZON`` or ``LATEST`` (AWS refuses ``AT_TIMESTAMP`` for DynamoDB Streams) and
    there is no ``starting_position_timestamp``.
    """

    event_source_arn: str = Field(
        pattern=_DYNAMODB_STREAM_ARN,
        json_schema_extra=_meta(
            aws="EventSourceArn",
            expected="arn:<partition>:dynamodb:<region>:<12-digit account>:table/<table>/"
            "stream/<label> with partition aws, aws-cn or aws-us-gov",
        ),
    )

    @field_validator("starting_position")
    @classmethod
    def _check_position(cls, value: str, info: ValidationInfo) -> str:
        """Refuse AT_TIMESTAMP with AWS's message."""
        if value == "AT_TIMESTAMP":
            arn = info.data.get("event_source_arn", "<the stream ARN>")
            raise _own_error(
                "ddb_starting_position",
                "'AT_TIMESTAMP' is not allowed for a DynamoDB stream; allowed TRIM_HORIZON, "
                "LATEST. AWS says: Unsupported starting position for arn type: {arn}",
                arn=arn,
            )
        return value

    @property
    def source(self) -> Literal["dynamodb"]:
        """The kind of source: ``dynamodb``."""
        return "dynamodb"

    @property
    def table_name(self) -> str:
        """The table's name, from the stream ARN."""
        return self.event_source_arn.split(":", 5)[5].split("/")[1]


class ScalingConfig(_FrozenModel):
    """How far an SQS mapping may scale (AWS ScalingConfig).

    Attributes:
        maximum_concurrency: the most batches in flight at once; None (``{}``) leaves the
            default cap, :data:`SQS_DEFAULT_MAXIMUM_CONCURRENCY`.
    """

    maximum_concurrency: _Int | None = Field(
        default=None, ge=2, le=1000, json_schema_extra=_meta(aws="MaximumConcurrency")
    )


class VisibilityBackoff(_FrozenModel):
    """Visibility given to messages of a failed batch, by how often they were received.

    A message received for the n-th time (``ApproximateReceiveCount`` n) becomes visible again
    after ``min(max_seconds, base_seconds * 2**(n-1))`` seconds instead of after the queue's
    visibility timeout. Beyond Lambda, which always waits for the visibility timeout.

    Attributes:
        base_seconds: the delay after the first failed receive.
        max_seconds: the longest delay.
    """

    base_seconds: _Int = Field(default=5, ge=0, le=43200)
    max_seconds: _Int = Field(default=900, ge=0, le=43200)

    @field_validator("max_seconds")
    @classmethod
    def _check_order(cls, value: int, info: ValidationInfo) -> int:
        base = info.data.get("base_seconds")
        if base is not None and value < base:
            raise _own_error(
                "backoff_order",
                "{value} is less than base_seconds ({base}); allowed {base} to 43200",
                value=value,
                base=base,
            )
        return value

    def delay(self, receive_count: int) -> int:
        """Seconds of visibility for a message received ``receive_count`` times."""
        exponent = min(max(receive_count - 1, 0), 30)
        return int(min(self.max_seconds, self.base_seconds * 2**exponent))


#: The most SQS batches in flight when ``scaling_config.maximum_concurrency`` is not set: the
#: top of AWS's MaximumConcurrency range (Lambda itself allows 1,250 per mapping).
SQS_DEFAULT_MAXIMUM_CONCURRENCY = 1000
#: SQS FIFO queues allow at most ten messages per batch.
_SQS_FIFO_MAX_BATCH = 10
_SQS_WINDOW_RULE = (
    "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater "
    "than 10"
)


def _not_for_sqs(field: str) -> Callable[[Any], Any]:
    """A validator refusing a stream-only field on an SQS mapping."""

    def check(value: Any) -> Any:
        if value is not None:
            raise _own_error(
                "sqs_not_applicable",
                "{value} is set, but {field} does not apply to SQS queues: a queue has no "
                "positions; messages are received as they become visible",
                value=_show(value),
                field=field,
            )
        return value

    return check


def _no_sqs_destination(value: Any) -> Any:
    if value is not None:
        raise _own_error(
            "sqs_destination",
            "an SQS mapping has no on-failure destination; give the queue a redrive policy "
            "(a dead-letter queue and maxReceiveCount) instead. AWS says: Unsupported "
            "DestinationConfig parameter for given event source mapping type.",
        )
    return value


class SqsMapping(_MappingBase):
    """One SQS queue (standard or FIFO) read into one target, with AWS's SQS defaults.

    Attributes:
        name: a unique name, used in logs, metrics and overrides.
        event_source_arn: the queue's ARN; a name ending in ``.fifo`` is a FIFO queue.
        enabled: False keeps the mapping configured but does not poll the queue.
        batch_size: the most messages per invocation: 1 to 10,000, at most 10 for FIFO
            queues; above 10 it needs a batching window of 1 second or more (AWS BatchSize).
        maximum_batching_window_in_seconds: how long to gather messages, from the first
            message of a batch.
        scaling_config: the cap on batches in flight (AWS ScalingConfig).
        function_response_types: ``[ReportBatchItemFailures]`` keeps only the messages a
            response lists in the queue and deletes the rest (AWS FunctionResponseTypes).
        visibility_timeout_on_failure: beyond Lambda: after a failure, make messages visible
            again after a backoff by receive count instead of the queue's visibility timeout.
        receive_wait_time_seconds: beyond Lambda, which always long-polls for 20 seconds: the
            WaitTimeSeconds of each receive. Shutdown waits for receives in flight, so a
            shorter wait stops faster, at the cost of more empty receives on an idle queue.
        target: where batches go.

    ``destination_config``, ``starting_position`` and ``starting_position_timestamp`` are
    refused with a message (AWS refuses the first; the others mean nothing for a queue).
    """

    event_source_arn: str = Field(
        pattern=_SQS_SOURCE_ARN,
        json_schema_extra=_meta(
            aws="EventSourceArn",
            expected="arn:<partition>:sqs:<region>:<12-digit account>:<queue> with partition "
            "aws, aws-cn or aws-us-gov (a FIFO queue's name ends in .fifo)",
        ),
    )
    batch_size: _Int = Field(default=10, ge=1, le=10000, json_schema_extra=_meta(aws="BatchSize"))
    maximum_batching_window_in_seconds: _Int = Field(
        default=0,
        ge=0,
        le=300,
        validate_default=True,
        json_schema_extra=_meta(aws="MaximumBatchingWindowInSeconds"),
    )
    scaling_config: ScalingConfig | None = Field(
        default=None, json_schema_extra=_meta(aws="ScalingConfig")
    )
    function_response_types: list[FunctionResponseType] = Field(
        default_factory=list, max_length=1, json_schema_extra=_meta(aws="FunctionResponseTypes")
    )
    visibility_timeout_on_failure: VisibilityBackoff | None = None
    receive_wait_time_seconds: _Int = Field(default=20, ge=1, le=20)
    destination_config: Annotated[Any, AfterValidator(_no_sqs_destination)] = Field(
        default=None, exclude=True, json_schema_extra=_meta(aws="DestinationConfig")
    )
    starting_position: Annotated[Any, AfterValidator(_not_for_sqs("starting_position"))] = Field(
        default=None, exclude=True
    )
    starting_position_timestamp: Annotated[
        Any, AfterValidator(_not_for_sqs("starting_position_timestamp"))
    ] = Field(default=None, exclude=True)
    target: TargetConfig

    @field_validator("batch_size")
    @classmethod
    def _check_fifo_batch(cls, value: int, info: ValidationInfo) -> int:
        """FIFO queues: at most 10 messages per batch."""
        arn = info.data.get("event_source_arn")
        if isinstance(arn, str) and arn.endswith(".fifo") and value > _SQS_FIFO_MAX_BATCH:
            raise _own_error(
                "sqs_fifo_batch",
                "{value} is out of range for a FIFO queue; allowed 1 to 10 (AWS BatchSize: "
                "FIFO queues take at most 10 messages per batch)",
                value=value,
            )
        return value

    @field_validator("maximum_batching_window_in_seconds")
    @classmethod
    def _check_window(cls, value: int, info: ValidationInfo) -> int:
        """A batch of more than 10 messages needs a window of at least one second."""
        size = info.data.get("batch_size")
        if isinstance(size, int) and size > _SQS_FIFO_MAX_BATCH and value < 1:
            raise _own_error(
                "sqs_window",
                "{value} is not allowed with batch_size {size}; allowed 1 to 300 when "
                "batch_size is greater than 10. AWS says: {rule}",
                value=value,
                size=size,
                rule=_SQS_WINDOW_RULE,
            )
        return value

    @property
    def source(self) -> Literal["sqs"]:
        """The kind of source: ``sqs``."""
        return "sqs"

    @property
    def queue_name(self) -> str:
        """The queue's name, from its ARN."""
        return self.event_source_arn.split(":", 5)[5]

    @property
    def is_fifo(self) -> bool:
        """Whether the queue is a FIFO queue (its name ends in ``.fifo``)."""
        return self.queue_name.endswith(".fifo")

    @property
    def report_batch_item_failures(self) -> bool:
        """Whether ``batchItemFailures`` in responses is honoured (partial batch responses)."""
        return "ReportBatchItemFailures" in self.function_response_types

    @property
    def maximum_concurrency(self) -> int:
        """The most batches in flight: the configured cap, else the default one."""
        config = self.scaling_config
        if config is not None and config.maximum_concurrency is not None:
            return config.maximum_concurrency
        return SQS_DEFAULT_MAXIMUM_CONCURRENCY


def _arn_service(arn: str) -> str | None:
    """The service field of an ARN (``kinesis``, ``dynamodb``, ``sqs``), or None."""
    parts = arn.split(":")
    return parts[2] if len(parts) >= 3 and parts[0] == "arn" and parts[2] else None


def _event_source_kind(value: Any) -> str | None:
    """The union tag of a mapping: the service in its ``event_source_arn``."""
    if isinstance(value, Mapping):
        arn = value.get("event_source_arn")
    else:
        arn = getattr(value, "event_source_arn", None)
    return _arn_service(arn) if isinstance(arn, str) else None


#: Any mapping model; what ``Settings.mappings`` holds.
AnyMapping: TypeAlias = KinesisMapping | DynamoDBStreamMapping | SqsMapping

#: A mapping of any supported source, chosen by the service in ``event_source_arn``.
MappingConfig = Annotated[
    Annotated[KinesisMapping, Tag("kinesis")]
    | Annotated[DynamoDBStreamMapping, Tag("dynamodb")]
    | Annotated[SqsMapping, Tag("sqs")],
    Discriminator(
        _event_source_kind,
        custom_error_type=_UNSUPPORTED_SOURCE,
        custom_error_message="Unrecognized event source.",
    ),
]


class Settings(_FrozenModel):
    """Everything poller is configured with; loaded once and passed down.

    Attributes:
        aws: region and endpoints.
        embedded: the local emulator mode.
        checkpoints: the checkpoint store.
        shutdown: graceful stop.
        logging: log level and format.
        observability: the metrics and health endpoint.
        mappings: the event source mappings to run; at least one, names unique.
    """

    aws: AwsSettings = AwsSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    logging: LoggingSettings = LoggingSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    mappings: list[MappingConfig] = Field(min_length=1)

    @field_validator("mappings")
    @classmethod
    def _check_unique_names(cls, mappings: list[AnyMapping]) -> list[AnyMapping]:
        """Refuse two mappings with the same name: checkpoints and overrides key on it."""
        first: dict[str, int] = {}
        for index, mapping in enumerate(mappings):
            if mapping.name in first:
                raise _own_error(
                    "duplicate_name",
                    "name {name} is used by mappings[{first}] and mappings[{index}]; "
                    "mapping names must be unique",
                    name=repr(mapping.name),
                    first=first[mapping.name],
                    index=index,
                )
            first[mapping.name] = index
        return mappings


# --------------------------------------------------------------------------- loading


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand, override and validate a YAML configuration file.

    Args:
        path: the YAML file.
        environ: the environment for ``${VAR}`` and ``POLLER_*`` overrides; default
            ``os.environ``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML, or any value is invalid;
            ``problems`` lists every problem found.
    """
    source = str(path)
    env = os.environ if environ is None else environ
    raw = _parse_yaml(_read_text(Path(path), source), source)
    data, problems = _expand_tree(raw, env)
    override_problems, origins = _apply_overrides(data, env)
    problems += override_problems
    secrets = _secrets_in(data, env)
    if problems:
        raise ConfigError([_redact(_one_line(p), secrets) for p in problems], source=source)
    try:
        return _validate(data, source, origins)
    except ConfigError as exc:
        lines = [_redact(_one_line(p), secrets) for p in exc.problems]
        raise ConfigError(lines, source=source) from None


def parse_settings(data: Mapping[str, Any], *, source: str | None = None) -> Settings:
    """Validate configuration that is already loaded (no expansion, no overrides).

    Args:
        data: the configuration as a mapping of sections.
        source: where it came from, for the error message.

    Raises:
        ConfigError: any value is invalid; ``problems`` lists every problem found.
    """
    return _validate(dict(data) if isinstance(data, Mapping) else data, source, {})


def _validate(data: Any, source: str | None, origins: Mapping[str, str]) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_format_error(error, data, origins) for error in exc.errors()]
        raise ConfigError(problems, source=source) from None
    return settings


def _read_text(path: Path, source: str) -> str:
    """The file's text, refusing what is not a regular UTF-8 file of at most 1 MiB.

    The file is opened non-blocking and checked with ``fstat`` before it is read, so a FIFO
    (which would block until a writer came), a device such as ``/dev/zero`` (which never ends)
    or a directory is refused at once, without a race between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(["file not found"], source=source) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([f"cannot read the file: {reason}"], source=source) from None
    try:
        _require_regular_file(os.fstat(fd).st_mode, source)
        with os.fdopen(fd, "rb", closefd=False) as file:
            content = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], source=source) from None
    finally:
        os.close(fd)
    if len(content) > MAX_CONFIG_BYTES:
        limit = MAX_CONFIG_BYTES / 1024 / 1024
        raise ConfigError(
            [f"the file is larger than {limit:g} MiB; a configuration is far smaller"],
            source=source,
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}"], source=source
        ) from None


def _require_regular_file(mode: int, source: str) -> None:
    if stat.S_ISDIR(mode):
        raise ConfigError(["is a directory, not a file"], source=source)
    if not stat.S_ISREG(mode):
        raise ConfigError(
            [f"is {_file_kind(mode)}, not a regular file; give the path of a YAML file"],
            source=source,
        )


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader, with the limits and checks a configuration needs.

    * A key that appears twice in one mapping is an error (YAML keeps the last one silently).
      Merge keys (``<<: *base``) are supported, and a key written beside a merge overrides the
      merged one, as YAML specifies.
    * Nesting deeper than :data:`MAX_YAML_DEPTH` is refused while composing, before the
      recursive composer could exhaust the interpreter's stack.
    * A scalar its tag cannot read (``2024-13-45``, ``!!int abc``, an integer of 5000 digits)
      is a YAML error at its line, not the ValueError the safe constructors raise.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _ExpansionError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep; a configuration is flatter",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTOR_FAILURES as exc:
            value = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{_show(value)} cannot be read as {node.tag}: {_one_line(str(exc))[:200]}",
                node.start_mark,
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        pairs = node.value if isinstance(node, yaml.MappingNode) else []  # super() reports it
        for key_node, _ in pairs:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # super() reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"
# What the safe constructors raise for a value their tag cannot read (PyYAML lets it escape).
_CONSTRUCTOR_FAILURES = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    data = _load_yaml(text, source)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_yaml_kind(data)}"
        sections = ", ".join(Settings.model_fields)
        problem = f"the top level must be a mapping of sections ({sections}); got {got}"
        raise ConfigError([problem], source=source)
    return data


def _load_yaml(text: str, source: str) -> Any:
    """The document in ``text``; its size once aliases are expanded is checked before it is
    built, so an alias bomb is refused in time linear in the text."""
    try:
        loader = _ConfigLoader(text)  # the reader refuses control characters here already
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(exc, text)], source=source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(exc, text)], source=source) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(exc)], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {_one_line(str(exc))}"], source=source) from None
    except _CONSTRUCTOR_FAILURES as exc:  # raised where PyYAML builds collections, unmarked
        problem = f"invalid YAML: a value cannot be read: {_one_line(str(exc))[:200]}"
        raise ConfigError([problem], source=source) from None
    finally:
        loader.dispose()


class _ExpansionError(yaml.MarkedYAMLError):
    """The document is too large or too deep once aliases are expanded, or refers to itself."""


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose tree, aliases expanded, is too big, too deep or infinite.

    Each node is measured once (aliases share nodes, so the graph stays small even when the
    tree it stands for is exponential): its size is its node count in the expanded tree, its
    height the depth below it. Recursion follows the expanded tree but stops at
    :data:`MAX_YAML_DEPTH`, so it cannot exhaust the stack.
    """
    measured: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:
            raise _too_deep(node)
        known = measured.get(id(node))
        if known is None:
            if id(node) in active:
                raise _ExpansionError(
                    None, None, "an alias refers to a node that contains it", node.start_mark
                )
            active.add(id(node))
            known = measured[id(node)] = _measure_children(node, depth, measure)
            active.discard(id(node))
        size, height = known
        if depth + height > MAX_YAML_DEPTH:
            raise _too_deep(node)
        if size > MAX_YAML_NODES:
            raise _ExpansionError(
                None,
                None,
                f"the document holds more than {MAX_YAML_NODES:,} values once aliases (*name) "
                "are expanded; a configuration needs far fewer",
                node.start_mark,
            )
        return known

    measure(root, 1)


def _too_deep(node: yaml.Node) -> _ExpansionError:
    return _ExpansionError(
        None,
        None,
        f"nested more than {MAX_YAML_DEPTH} levels deep once aliases (*name) are expanded",
        node.start_mark,
    )


def _measure_children(
    node: yaml.Node, depth: int, measure: Callable[[yaml.Node, int], tuple[int, int]]
) -> tuple[int, int]:
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        return 1, 0
    size, height = 1, 0
    for child in children:
        child_size, child_height = measure(child, depth + 1)
        size += child_size
        height = max(height, child_height + 1)
        if size > MAX_YAML_NODES:
            break  # the caller reports it; adding more would only take longer
    return size, height


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> str:
    """A control character (a NUL byte, say) that YAML refuses, with its line and column."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    character = exc.character if isinstance(exc.character, int) else 0
    return (
        f"the file contains U+{character:04X}, a control character YAML does not allow, at "
        f"line {line}, column {column}; a configuration is text"
    )


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    context = f" ({exc.context})" if exc.context else ""
    # Limits and values are not syntax: say plainly which rule the document broke.
    if isinstance(exc, _ExpansionError):
        kind = "YAML refused"
    elif isinstance(exc, yaml.constructor.ConstructorError):
        kind = "invalid YAML"
    else:
        kind = "YAML syntax error"
    return _one_line(f"{kind}{where}: {exc.problem}{context}")


def _one_line(text: str) -> str:
    """``text`` with line breaks escaped, so each problem stays on its own line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


# --------------------------------------------------------------------------- secrets

#: Environment variables whose values are secrets, by name (the rule of Spring Boot's
#: sanitizer, roughly): their values are hidden wherever they appear in output.
_SECRET_VARIABLE = re.compile(
    r"SECRET|TOKEN|PASSW|PWD|CREDENTIAL|AUTH|API_?KEY|ACCESS_KEY|PRIVATE|SESSION|COOKIE",
    re.IGNORECASE,
)
#: Shorter values are not searched for: hiding "true" or "1" would garble every message.
_MIN_SECRET_CHARS = 6
#: What stands for a hidden value.
REDACTED = "***"
# The userinfo of a URL (``https://user:password@host``): up to the last '@' of the authority.
# The scheme starts where no scheme character precedes it and its run is taken whole
# (possessive), so a long word without "://" costs linear time, not quadratic backtracking.
_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*+://)(?P<userinfo>[^/?#\s]*)@"
)


def redacted_settings(
    settings: Settings, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings as JSON-ready data with secrets hidden, for ``validate --print``.

    Hidden: every HTTP header value (names stay), the userinfo of every URL, and the value of
    every environment variable whose name looks secret (``*TOKEN*``, ``*PASSWORD*``,
    ``*SECRET*``, ``*AUTH*``, ``*API_KEY*``...) wherever it appears, e.g. expanded from
    ``${VAR}``.
    """
    env = os.environ if environ is None else environ
    secrets = _secret_variables(env)

    def hide(node: Any, key: Any = None) -> Any:
        if isinstance(node, dict):
            if key == "headers":
                return dict.fromkeys(node, REDACTED)
            return {k: hide(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [hide(item) for item in node]
        return _redact(node, secrets) if isinstance(node, str) else node

    dumped: dict[str, Any] = hide(settings.model_dump(mode="json"))
    return dumped


def _secrets_in(data: Any, environ: Mapping[str, str]) -> list[str]:
    """The secret strings of a loaded tree: header values, URL userinfo, secret variables."""
    found = set(_secret_variables(environ))
    stack: list[tuple[Any, Any]] = [(data, None)]
    seen: set[int] = set()  # an alias is one object: search it once, not at every use
    while stack:
        node, key = stack.pop()
        if id(node) in seen and not (isinstance(key, str) and key.lower() == "headers"):
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            if isinstance(key, str) and key.lower() == "headers":
                found.update(v for v in node.values() if isinstance(v, str))
            stack.extend((value, k) for k, value in node.items())
        elif isinstance(node, list):
            stack.extend((item, None) for item in node)
        elif isinstance(node, str):
            for match in _USERINFO.finditer(node):
                found.update((match["userinfo"], *match["userinfo"].split(":", 1)))
    return sorted((s for s in found if len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def _secret_variables(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if _SECRET_VARIABLE.search(k)}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    """``text`` with URL userinfo, secret query parameters and each secret (as written, or as
    repr/JSON escape it) replaced by :data:`REDACTED`; ``secrets`` longest first, so none
    hides part of another. A secret that a message cut short (``'abc...``) is hidden too."""
    text = _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _SECRET_QUERY.sub(rf"\g<name>{REDACTED}", text)
    for secret in secrets:
        for form in {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}:
            text = _hide(text, form)
    return text


#: A query parameter whose name looks secret (``?token=``, ``&X-Amz-Signature=``, ``&api_key=``):
#: its value is hidden, as a URL's userinfo is.
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&#\s]*?(?:token|secret|passw|pwd|auth|key|sig|credential|session)"
    r"[^=&#\s]*=)[^&#\s'\"]*",
    re.IGNORECASE,
)
#: The start of a secret that marks where it may appear cut short (``_show`` cuts long values
#: and ends them with "...").
_SECRET_ANCHOR_CHARS = 16


def _hide(text: str, secret: str) -> str:
    """``text`` with ``secret``, whole or cut short and followed by "...", hidden."""
    text = text.replace(secret, REDACTED)
    if len(secret) <= _SECRET_ANCHOR_CHARS or "..." not in text:
        return text
    # A cut is at most _SHOW_CHARS long, so each candidate costs a bounded comparison.
    anchor, head = secret[:_SECRET_ANCHOR_CHARS], secret[:_SHOW_CHARS]
    parts, start = [], 0
    found = text.find(anchor)
    while found != -1:
        window = text[found : found + len(head)]
        common = len(os.path.commonprefix([window, head]))  # noqa: RUF071 - text, not paths
        if text.startswith("...", found + common):
            parts += [text[start:found], REDACTED]
            start = found + common + 3
        found = text.find(anchor, max(found + 1, start))
    return "".join([*parts, text[start:]])


# --------------------------------------------------------------------------- ${VAR} expansion

# ``$${`` is a literal ``${``; ``${...}`` is a reference; a ``${`` never closed is matched
# too, so that it is an error instead of text that silently stays as written.
# The body is taken whole (possessive) up to a '}' or the end of the text: a '${' never closed
# then swallows the rest in one match, so many of them cost linear time, not quadratic.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*+)(\}|\Z)")
_LITERAL = "$${"
_REFERENCE_FORMS = "use ${NAME} or ${NAME:-default}, or $${ for a literal ${"
_REFERENCE_SYNTAX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _expand_tree(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """Expand ``${VAR}`` references in every string value; return a new tree and problems."""
    problems: list[str] = []
    budget = [MAX_EXPANDED_CHARS]
    # An aliased string is one object however often it is used: expand it once and share the
    # result, so an alias of a large value is not copied (and its problems said) 100,000 times.
    expanded: dict[int, tuple[str, str]] = {}

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, str):
            if id(node) in expanded:
                return expanded[id(node)][1]
            text, errors = _expand_string(node, environ, budget)
            expanded[id(node)] = (node, text)  # node kept alive, so its id is not reused
            problems.extend(f"{_locate(loc, raw).path}: {error}" for error in errors)
            return text
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value, (*loc, index)) for index, value in enumerate(node)]
        return node

    try:
        return walk(raw, ()), problems
    except _ExpansionTooLarge:
        limit = MAX_EXPANDED_CHARS / 1024 / 1024
        problem = (
            f"${{VAR}} references add more than {limit:g} MiB to the values; a configuration "
            "needs far less (is a variable used many times, or much larger than meant?)"
        )
        return raw, [problem]


class _ExpansionTooLarge(Exception):
    """``${VAR}`` references together added more than :data:`MAX_EXPANDED_CHARS`."""


def _expand_string(
    text: str, environ: Mapping[str, str], budget: list[int] | None = None
) -> tuple[str, list[str]]:
    """``text`` with its references expanded, and the problems found; ``budget`` (one
    mutable count shared by every value) is what expansion may still add."""
    errors: list[str] = []
    left = budget if budget is not None else [MAX_EXPANDED_CHARS]

    def replace(match: re.Match[str]) -> str:
        value = _replacement(match)
        left[0] -= len(value)
        if left[0] < 0:
            raise _ExpansionTooLarge
        return value

    def _replacement(match: re.Match[str]) -> str:
        reference = match.group(0)
        if reference == _LITERAL:
            return "${"
        if not match.group(2):
            errors.append(f"{_show(text)}: '${{' is never closed by '}}'; {_REFERENCE_FORMS}")
            return reference
        syntax = _REFERENCE_SYNTAX.fullmatch(match.group(1))
        if syntax is None:
            errors.append(f"{_show(reference)} is not a valid reference; {_REFERENCE_FORMS}")
            return reference
        name, default = syntax.groups()
        if default is not None and "${" in default:
            errors.append(
                f"{_show(text)}: a default cannot hold another reference (nested ${{...}} is "
                f"not supported); give {name}'s default as plain text"
            )
            return reference
        value = environ.get(name)
        if default is not None and not value:
            return str(default)
        if value is None:
            errors.append(
                f"environment variable {name} is not set (used as {reference}); "
                f"set it or give a default: ${{{name}:-default}}"
            )
            return reference
        return value

    return _REFERENCE.sub(replace, text), errors


# --------------------------------------------------------------------------- POLLER_* overrides


def _apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Apply ``POLLER_*`` variables to ``data`` in place.

    Every variable is resolved to a location before any is applied, so an override of a
    mapping's ``name`` does not hide that mapping from the other overrides.

    Returns:
        The problems found, and the readable path each override set mapped to its variable.
    """
    problems: list[str] = []
    targets: list[tuple[str, Loc]] = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX) :]:
            continue
        try:
            targets.append((var, _override_loc(var, data)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    origins: dict[str, str] = {}
    for var, loc in targets:
        try:
            origin = _assign(data, loc, _parse_scalar(environ[var]), var)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            origins[_locate(origin, data).path] = var
    return problems, origins


def _override_loc(var: str, data: dict[str, Any]) -> Loc:
    segments = var[len(ENV_PREFIX) :].split("__")
    if not all(segments):
        raise ConfigError([f"{var}: empty segment; write POLLER_<SECTION>__<FIELD>"])
    if segments[0].lower() != "mappings":
        return tuple(segment.lower() for segment in segments)
    return _mapping_override_loc(var, segments[1:], data)


def _mapping_override_loc(var: str, rest: list[str], data: dict[str, Any]) -> Loc:
    names = _mapping_names(data)
    if len(rest) < 2:
        raise ConfigError([f"{var}: expected POLLER_MAPPINGS__<name>__<FIELD>"])
    for cut in range(len(rest) - 1, 0, -1):  # a name may itself contain "__"
        name = "__".join(rest[:cut])
        if name in names:
            return ("mappings", names.index(name), *(s.lower() for s in rest[cut:]))
    known = _cut(", ".join(_show(n) for n in names if n), 500) or "none"
    hint = _suggestion(rest[0], [n for n in names if n])
    raise ConfigError(
        [f"{var}: no mapping is named {rest[0]!r} (names match exactly); mappings: {known}{hint}"]
    )


def _mapping_names(data: dict[str, Any]) -> list[str | None]:
    mappings = data.get("mappings")
    if not isinstance(mappings, list):
        return []
    return [m.get("name") if isinstance(m, dict) else None for m in mappings]


def _assign(data: dict[str, Any], loc: Loc, value: Any, var: str) -> Loc:
    """Set ``value`` at ``loc``, creating missing sections.

    A segment into a list is an item number: ``0`` to ``len - 1`` replaces that item, ``len``
    appends one (``POLLER_MAPPINGS__orders__FUNCTION_RESPONSE_TYPES__0``).

    Returns:
        The loc of the outermost part the override created or replaced: everything below it
        came from the variable.
    """
    node: Any = data
    origin: Loc | None = None
    done: Loc = ()
    for depth, segment in enumerate(loc):
        part = _list_index(node, segment, var, done, data) if isinstance(node, list) else segment
        done = (*done, part)
        if depth == len(loc) - 1:
            break
        if _absent(node, part):
            origin = origin or done
            _put(node, part, [] if _is_index(loc[depth + 1]) else {})
        node = node[part]
        if not isinstance(node, dict | list):
            where = _locate(done, data).path
            raise ConfigError([f"{var}: cannot set a field inside {where}, which is {_show(node)}"])
    if _absent(node, part):
        origin = origin or done
    _put(node, part, value)
    return origin or done


def _is_index(segment: int | str) -> bool:
    return isinstance(segment, int) or (segment.isascii() and segment.isdigit())


def _list_index(node: list[Any], segment: int | str, var: str, done: Loc, data: Any) -> int:
    """The item number a segment names in a list; ``len(node)`` means a new last item."""
    if isinstance(segment, int):
        return segment  # a mapping's index, resolved from its name
    if _is_index(segment) and len(segment) <= len(str(len(node))) and int(segment) <= len(node):
        return int(segment)
    where = _locate(done, data).path
    size = len(node)
    numbers = f"0 to {size - 1}, or {size} to add one" if size else "0 to add the first"
    raise ConfigError(
        [
            f"{var}: {where} is a list of {size} item(s); address an item by its number, "
            f"{numbers}, not {segment!r}"
        ]
    )


def _absent(node: dict[Any, Any] | list[Any], part: int | str) -> bool:
    return part == len(node) if isinstance(node, list) else part not in node


def _put(node: dict[Any, Any] | list[Any], part: int | str, value: Any) -> None:
    if isinstance(node, list) and part == len(node):
        node.append(value)
    else:
        node[part] = value  # type: ignore[index]


def _parse_scalar(text: str) -> Any:
    """Parse an override like a YAML scalar; anything else stays the literal text.

    The value goes through the file's own bounded loader: plain ``yaml.safe_load`` let a
    variable of 100,000 '[' raise RecursionError and a 5000-digit number raise ValueError.
    """
    try:
        value = _load_yaml(text, "an environment variable")
    except ConfigError:
        return text
    scalar = value is None or isinstance(value, str | int | float | date)
    return value if scalar else text


# --------------------------------------------------------------------------- error messages


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a loc points: its readable path, and the model field there, if any.

    ``annotation`` is the type expected there, also inside a list or dict, where ``field`` is
    None and ``container`` is the model field holding the list or dict.
    """

    path: str
    owner: type[BaseModel] | None
    field: FieldInfo | None
    annotation: Any = None
    container: FieldInfo | None = None


def _locate(loc: Loc, data: Any) -> _Where:
    """Follow a pydantic loc through the Settings types and the raw data.

    Union tags that pydantic inserts (``kinesis``, ``python``) are skipped, and list items
    that have a ``name`` are shown with it: ``mappings[0] (orders).batch_size``.
    """
    path, raw = "", data
    node: Any = Settings
    owner: type[BaseModel] | None = None
    field: FieldInfo | None = None
    container: FieldInfo | None = None
    for part in loc:
        members = _tagged_members(node)
        if isinstance(part, str) and part in members:
            node = members[part]
            continue
        if part == "[key]":
            continue
        owner, field = _field(node, part)
        container = field or container
        path += _segment(part, raw)
        node = field.annotation if field else _item_type(node, part)
        raw = _child(raw, part)
    where = path.removeprefix(".") or "(top level)"
    return _Where(where, owner, field, node, None if field else container)


def _strip_annotated(tp: Any) -> Any:
    """The type without ``Annotated`` wrappers and, for ``X | None``, without the ``None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _tagged_members(tp: Any) -> dict[str, Any]:
    """The members of a tagged union by tag; empty for any other type."""
    if get_origin(tp) is Annotated and get_origin(get_args(tp)[0]) in (Union, UnionType):
        tp = get_args(tp)[0]  # Annotated[A | B, Discriminator(...)]: the union inside
    args = get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)
    members: dict[str, Any] = {}
    for arg in args:
        if get_origin(arg) is Annotated:
            base, *metadata = get_args(arg)
            members.update({m.tag: base for m in metadata if isinstance(m, Tag)})
    return members


def _field(tp: Any, part: int | str) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    model = _strip_annotated(tp)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None, None
    return model, model.model_fields.get(str(part))


def _item_type(tp: Any, part: int | str) -> Any:
    tp = _strip_annotated(tp)
    args = get_args(tp)
    if get_origin(tp) is list and isinstance(part, int):
        return args[0]
    if get_origin(tp) is dict:
        return args[1]
    return None


def _segment(part: int | str, raw: Any) -> str:
    if not isinstance(part, int):
        return f".{_cut(str(part), _LOC_PART_CHARS)}"
    item = _child(raw, part)
    name = item.get("name") if isinstance(item, dict) else None
    shown = _cut(name, _LOC_PART_CHARS) if isinstance(name, str) else None
    return f"[{part}] ({shown})" if shown else f"[{part}]"


#: The longest key or mapping name shown in a field path: a hostile 1 MB key or name would
#: otherwise be repeated whole in every problem line about that mapping.
_LOC_PART_CHARS = 80


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _child(raw: Any, part: int | str) -> Any:
    if isinstance(raw, dict):
        return raw.get(part)
    if isinstance(raw, list) and isinstance(part, int) and -len(raw) <= part < len(raw):
        return raw[part]
    return None


def _format_error(error: ErrorDetails, data: Any, origins: Mapping[str, str]) -> str:
    """One readable line for one pydantic error: path, bad value, what is allowed."""
    where = _locate(error["loc"], data)
    path = where.path + _path_suffix(error)
    line = f"{path}: {_detail(error, where)}"
    covering = [p for p in origins if path == p or path.startswith((p + ".", p + "["))]
    return f"{line} (set by {origins[max(covering, key=len)]})" if covering else line


def _path_suffix(error: ErrorDetails) -> str:
    """The field a union-level error is really about."""
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return "." + str(error.get("ctx", {}).get("discriminator", "type")).strip("'")
    if error["type"] == _UNSUPPORTED_SOURCE and isinstance(error["input"], Mapping):
        return ".event_source_arn"
    return ""


_PLAIN: dict[str, str] = {
    "int_type": "is not a whole number",
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_type": "is not a number",
    "float_parsing": "is not a number",
    "finite_number": "is not a finite number",
    "bool_type": "is not true or false",
    "bool_parsing": "is not true or false",
    "string_type": "is not a string (quote it in YAML)",
    "path_type": "is not a file path",
    "dict_type": "is not a mapping of key: value pairs",
    "model_type": "is not a mapping of key: value pairs",
    "model_attributes_type": "is not a mapping of key: value pairs",
    "list_type": "is not a list",
}


def _detail(error: ErrorDetails, where: _Where) -> str:
    kind = error["type"]
    if kind.startswith(_OWN_ERROR) and kind != _UNSUPPORTED_SOURCE:
        return error["msg"]
    special = _DETAILS.get(kind)
    if special is not None:
        return special(error, where)
    plain = _PLAIN.get(kind)
    if plain is not None:
        return f"{_show(error['input'])} {plain}"
    return f"{_show(error['input'])} is not valid: {error['msg']}"


def _missing(error: ErrorDetails, where: _Where) -> str:
    allowed = _allowed(where.field)
    expected = _extra(where.field, "expected")
    text = "required field is missing"
    if allowed or expected:
        text += f"; allowed {allowed}" if allowed else f"; expected {expected}"
    aws = _aws_name(where.field)
    if aws:
        text += (
            f". AWS says: 1 validation error detected: Value null at '{_camel(aws)}' "
            "failed to satisfy constraint: Member must not be null."
        )
    return text


def _unknown_field(error: ErrorDetails, where: _Where) -> str:
    key = str(error["loc"][-1])
    fields = list(where.owner.model_fields) if where.owner else []
    hint = _suggestion(key, fields)
    return "unknown field" + (hint or f"; allowed fields: {', '.join(fields)}")


def _not_allowed(error: ErrorDetails, where: _Where) -> str:
    value = error.get("ctx", {}).get("tag", error["input"])
    choices = _choices(where.field.annotation if where.field else where.annotation)
    if where.field is None and where.container is not None:  # an item of a list field
        aws = _aws_name(where.container)
        return f"{_show(value)} is not allowed; allowed items [{', '.join(choices)}]" + (
            f" (AWS {aws})" if aws else ""
        )
    text = f"{_show(value)} is not allowed; allowed {', '.join(choices)}"
    aws = _aws_name(where.field)
    if aws and error["type"] == "literal_error":
        text += (
            f". AWS says: 1 validation error detected: Value '{value}' at '{_camel(aws)}' "
            f"failed to satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(choices)}]"
        )
    return text


def _tag_missing(error: ErrorDetails, where: _Where) -> str:
    return f"required field is missing; allowed {_allowed(where.field)}"


def _out_of_range(error: ErrorDetails, where: _Where) -> str:
    bounds = _extra(where.field, "allowed") or _range(
        where.field.metadata if where.field else [], error.get("ctx", {})
    )
    aws = _aws_name(where.field)
    return f"{_show(error['input'])} is out of range; allowed {bounds}" + (
        f" (AWS {aws})" if aws else ""
    )


def _bad_length(error: ErrorDetails, where: _Where) -> str:
    value = error["input"]
    size = len(value) if isinstance(value, str | list | dict) else 0
    bounds = _length_range(where.field.metadata if where.field else [], error.get("ctx", {}))
    if isinstance(value, str):
        return f"{_show(value)} has {size} characters; allowed {bounds} characters"
    aws = _aws_name(where.field)
    return f"{_show(value)} has {size} items; allowed {bounds}" + (f" (AWS {aws})" if aws else "")


def _bad_pattern(error: ErrorDetails, where: _Where) -> str:
    expected = _extra(where.field, "expected")
    if expected is None:
        expected = "text matching " + str(error.get("ctx", {}).get("pattern", "the pattern"))
    return f"{_show(error['input'])} is not valid; expected {expected}"


def _unsupported_source(error: ErrorDetails, where: _Where) -> str:
    value = error["input"]
    if not isinstance(value, Mapping):
        return f"{_show(value)} {_PLAIN['model_type']}"
    arn = value.get("event_source_arn")
    service = _arn_service(arn) if isinstance(arn, str) else None
    if arn is None:
        head = "required field is missing"
    elif service is None:
        head = f"{_show(arn)} is not an ARN"
    else:
        label = _SERVICE_LABELS.get(service, f"an ARN of service {service!r}")
        head = f"{_show(arn)} is {label}, a source poller does not support yet"
    return f"{head}. Unrecognized event source. Supported source types: {_supported_sources()}"


_SERVICE_LABELS = {"dynamodb": "a DynamoDB ARN", "sqs": "an SQS queue ARN"}

_DETAILS: dict[str, Callable[[ErrorDetails, _Where], str]] = {
    "missing": _missing,
    "extra_forbidden": _unknown_field,
    "literal_error": _not_allowed,
    "union_tag_invalid": _not_allowed,
    "union_tag_not_found": _tag_missing,
    "greater_than": _out_of_range,
    "greater_than_equal": _out_of_range,
    "less_than": _out_of_range,
    "less_than_equal": _out_of_range,
    "string_too_short": _bad_length,
    "string_too_long": _bad_length,
    "too_short": _bad_length,
    "too_long": _bad_length,
    "string_pattern_mismatch": _bad_pattern,
    _UNSUPPORTED_SOURCE: _unsupported_source,
}


def _supported_sources() -> str:
    kinds = []
    for tag, model in _tagged_members(MappingConfig).items():
        expected = _extra(model.model_fields["event_source_arn"], "expected")
        kinds.append(f"{tag} ({expected})" if expected else tag)
    return ", ".join(kinds)


def _choices(annotation: Any) -> list[str]:
    """The values a Literal (or the tags a tagged union) allows."""
    tp = _strip_annotated(annotation)
    if get_origin(tp) is Literal:
        return [str(arg) for arg in get_args(tp)]
    return list(_tagged_members(tp))


def _allowed(field: FieldInfo | None) -> str | None:
    if field is None:
        return None
    choices = _choices(field.annotation)
    return ", ".join(choices) if choices else None


def _range(metadata: list[Any], ctx: Mapping[str, Any]) -> str:
    """``1 to 10000``, ``more than 0 up to 900``: both bounds, from the field metadata."""
    lower = upper = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower = _number(item.ge)
        elif isinstance(item, annotated_types.Gt):
            lower = f"more than {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            upper = _number(item.le)
        elif isinstance(item, annotated_types.Lt):
            upper = f"less than {_number(item.lt)}"
    if lower is None and upper is None:
        return ", ".join(f"{key} {_number(value)}" for key, value in ctx.items())
    if lower is None:
        return f"up to {upper}"
    if upper is None:
        return f"{lower} or more"
    return f"{lower} {'up ' if lower.startswith('more') else ''}to {upper}"


def _length_range(metadata: list[Any], ctx: Mapping[str, Any]) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    low = ctx.get("min_length", low) if low is None else low
    high = ctx.get("max_length", high) if high is None else high
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _extra(field: FieldInfo | None, key: str) -> str | None:
    extra = field.json_schema_extra if field else None
    value = extra.get(key) if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


def _aws_name(field: FieldInfo | None) -> str | None:
    return _extra(field, "aws_name")


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _suggestion(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """``; did you mean 'x'?`` for the closest candidate, or an empty string."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


#: The longest quoted value a message shows; longer ones are cut and end with "...".
_SHOW_CHARS = 300


def _show(value: Any) -> str:
    """A value as a user wrote it: strings quoted, null/true/false as in YAML, long ones cut."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return repr(value.isoformat())
    text = repr(value)
    limit = _SHOW_CHARS if isinstance(value, str) else 80
    return text if len(text) <= limit else text[: limit - 3] + "..."
