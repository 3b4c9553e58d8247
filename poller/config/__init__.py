"""Typed configuration: the YAML file, ``${VAR}`` expansion and ``POLLER_*`` overrides.

Where it sits in the data flow::

    config/*.yaml --load_settings()--> Settings --(the CLI passes it down)--> app, sources,
                                                  targets, checkpoint store, logging

The CLI calls :func:`load_settings` once at start-up. Every other module gets the
:class:`Settings`, or the part of it that it needs, as an argument, and never reads a file or
the environment itself. The models are frozen, so no component can change what another sees.
Everything is imported from here (``from poller.config import Settings``); the modules below
are the package's inside.

Loading takes four steps (:mod:`~poller.config.loading` runs them):

1. Read the YAML file with the safe loader, within limits no real configuration reaches, so
   hostile input gets a one-line error and never a hang or a traceback: a regular file (not a
   FIFO or a device) of at most :data:`MAX_CONFIG_BYTES`, UTF-8 without control characters,
   at most :data:`MAX_YAML_DEPTH` levels and :data:`MAX_YAML_NODES` values once aliases are
   expanded (an alias bomb is measured on the node graph, before it is built). A key repeated
   in one mapping is an error, because YAML would otherwise keep the last value without a
   word; merge keys (``<<: *base``) work. (:mod:`~poller.config.yaml_loader`)
2. Expand ``${VAR}`` and ``${VAR:-default}`` in string values, from ``environ``
   (``os.environ`` by default). ``${VAR}`` with ``VAR`` unset is an error. As in the shell,
   ``:-default`` applies when ``VAR`` is unset or empty. ``$${`` is a literal ``${``; a
   ``${`` never closed and a reference inside a default are errors. All references together
   may add at most :data:`MAX_EXPANDED_CHARS`, so a small file cannot expand into gigabytes.
   (:mod:`~poller.config.expansion`)
3. Apply the environment overrides, ``POLLER_<SECTION>__<FIELD>=value``, for ECS task
   definitions and similar. (:mod:`~poller.config.overrides` describes them.)
4. Validate with pydantic (:mod:`~poller.config.models`). Each problem becomes one line of a
   :class:`~poller.errors.ConfigError` that names the field path, the bad value and what is
   allowed, for example ``mappings[0] (orders).batch_size: 20000 is out of range; allowed 1 to
   10000 (AWS BatchSize)``. (:mod:`~poller.config.messages`, :mod:`~poller.config.paths`)

Secrets: error messages, and :func:`redacted_settings` (``validate --print``), show HTTP header
values, URL userinfo and the values of environment variables with secret-looking names as
:data:`REDACTED`. (:mod:`~poller.config.redaction`)

Mapping kinds: the source type is not a field the user writes; it follows from the service in
``event_source_arn``, through the tagged union :data:`MappingConfig`
(:mod:`~poller.config.models.settings`).

The modules, each with one reason to change:

- ``models/``: the pydantic models and their field rules (``base``, ``service``, ``targets``,
  ``destinations``, ``mapping_base``, ``streams``, ``sqs``, ``settings``);
- ``arns``: the ARN patterns and what an ARN names;
- ``loading``: the entry points and the file checks;
- ``yaml_loader``: the bounded, duplicate-refusing YAML loader;
- ``expansion``: ``${VAR}``; ``overrides``: ``POLLER_*``;
- ``limits``: the size limits;
- ``paths``: field paths such as ``mappings[0] (orders).batch_size``;
- ``messages``: the wording of validation errors; ``wording``: how values are shown;
- ``redaction``: what output must not show.
"""

from __future__ import annotations

from poller.config.limits import (
    MAX_CONFIG_BYTES,
    MAX_EXPANDED_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
)
from poller.config.loading import load_settings, parse_settings
from poller.config.models import (
    AWS_SERVICES,
    DEFAULT_CONTROL_PORT,
    SQS_DEFAULT_MAXIMUM_CONCURRENCY,
    AnyMapping,
    AwsSettings,
    CheckpointSettings,
    ControlApiSettings,
    ControlCredentials,
    DestinationConfig,
    DynamoDBStreamMapping,
    EmbeddedSettings,
    FilterCriteria,
    FilterPattern,
    FunctionResponseType,
    HttpTargetConfig,
    KinesisMapping,
    LambdaTargetConfig,
    LogFormat,
    LoggingSettings,
    LogLevel,
    MappingConfig,
    ObservabilitySettings,
    OnFailureDestination,
    ProvisionedPollerConfig,
    PythonTargetConfig,
    ScalingConfig,
    ServiceName,
    Settings,
    ShutdownSettings,
    SqsMapping,
    StartingPosition,
    TargetConfig,
    TrafficSettings,
    VisibilityBackoff,
    is_loopback,
)
from poller.config.models.base import HttpUrl
from poller.config.overrides import ENV_PREFIX
from poller.config.paths import Loc
from poller.config.redaction import REDACTED, redacted_settings

__all__ = [
    "AWS_SERVICES",
    "DEFAULT_CONTROL_PORT",
    "ENV_PREFIX",
    "MAX_CONFIG_BYTES",
    "MAX_EXPANDED_CHARS",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "REDACTED",
    "SQS_DEFAULT_MAXIMUM_CONCURRENCY",
    "AnyMapping",
    "AwsSettings",
    "CheckpointSettings",
    "ControlApiSettings",
    "ControlCredentials",
    "DestinationConfig",
    "DynamoDBStreamMapping",
    "EmbeddedSettings",
    "FilterCriteria",
    "FilterPattern",
    "FunctionResponseType",
    "HttpTargetConfig",
    "HttpUrl",
    "KinesisMapping",
    "LambdaTargetConfig",
    "Loc",
    "LogFormat",
    "LogLevel",
    "LoggingSettings",
    "MappingConfig",
    "ObservabilitySettings",
    "OnFailureDestination",
    "ProvisionedPollerConfig",
    "PythonTargetConfig",
    "ScalingConfig",
    "ServiceName",
    "Settings",
    "ShutdownSettings",
    "SqsMapping",
    "StartingPosition",
    "TargetConfig",
    "TrafficSettings",
    "VisibilityBackoff",
    "is_loopback",
    "load_settings",
    "parse_settings",
    "redacted_settings",
]
