"""The settings models: the typed, frozen tree a configuration file is validated into.

Where it sits in the data flow::

    validated YAML tree --Settings (models.settings)--> aws, embedded, checkpoints, shutdown,
        logging, observability (models.service) and mappings: KinesisMapping,
        DynamoDBStreamMapping (models.streams) or SqsMapping (models.sqs), each with a target
        (models.targets) and, for streams, an on-failure destination (models.destinations)

The modules hold models and their field rules only; reading files, the environment and error
wording live beside them in :mod:`poller.config`. The shared pieces are in
:mod:`~poller.config.models.base` (the frozen base, field types) and
:mod:`~poller.config.models.mapping_base` (what every mapping has).
"""

from __future__ import annotations

from poller.config.models.control import (
    DEFAULT_CONTROL_PORT,
    ControlApiSettings,
    ControlCredentials,
    is_loopback,
)
from poller.config.models.destinations import DestinationConfig, OnFailureDestination
from poller.config.models.mapping_base import FilterCriteria, FilterPattern, FunctionResponseType
from poller.config.models.service import (
    AWS_SERVICES,
    AwsSettings,
    CheckpointSettings,
    EmbeddedSettings,
    LogFormat,
    LoggingSettings,
    LogLevel,
    ObservabilitySettings,
    ServiceName,
    ShutdownSettings,
    TrafficSettings,
)
from poller.config.models.settings import AnyMapping, MappingConfig, Settings
from poller.config.models.sqs import (
    SQS_DEFAULT_MAXIMUM_CONCURRENCY,
    ProvisionedPollerConfig,
    ScalingConfig,
    SqsMapping,
    VisibilityBackoff,
)
from poller.config.models.streams import DynamoDBStreamMapping, KinesisMapping, StartingPosition
from poller.config.models.targets import (
    HttpTargetConfig,
    LambdaTargetConfig,
    PythonTargetConfig,
    TargetConfig,
)

__all__ = [
    "AWS_SERVICES",
    "DEFAULT_CONTROL_PORT",
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
    "KinesisMapping",
    "LambdaTargetConfig",
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
]
