"""The root model, :class:`Settings`, and the union that picks a mapping's model by its ARN.

Where it sits in the data flow::

    the validated YAML tree --Settings.model_validate--> Settings --(the CLI passes it down)-->
        app, sources, targets, checkpoint store, logging

Mapping kinds: the source type is not a field the user writes. It follows from the service in
``event_source_arn`` (``arn:aws:kinesis:...`` is a Kinesis mapping). :data:`MappingConfig` is a
pydantic tagged union keyed by that service through a callable ``Discriminator``:
:class:`KinesisMapping` (``kinesis``), :class:`DynamoDBStreamMapping` (``dynamodb``) and
:class:`SqsMapping` (``sqs``); each has a ``source`` property with its tag. An ARN of a service
with no model is rejected with AWS's ``Unrecognized event source.`` and the list of supported
kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeAlias

from pydantic import Discriminator, Field, Tag, field_validator

from poller.config.arns import arn_service
from poller.config.models.base import FrozenModel
from poller.config.models.service import (
    AwsSettings,
    CheckpointSettings,
    EmbeddedSettings,
    LoggingSettings,
    MemorySettings,
    ObservabilitySettings,
    ShutdownSettings,
)
from poller.config.models.sqs import SqsMapping
from poller.config.models.streams import DynamoDBStreamMapping, KinesisMapping
from poller.config.wording import UNSUPPORTED_SOURCE, own_error


def _event_source_kind(value: Any) -> str | None:
    """The union tag of a mapping: the service in its ``event_source_arn``."""
    if isinstance(value, Mapping):
        arn = value.get("event_source_arn")
    else:
        arn = getattr(value, "event_source_arn", None)
    return arn_service(arn) if isinstance(arn, str) else None


#: Any mapping model; what ``Settings.mappings`` holds.
AnyMapping: TypeAlias = KinesisMapping | DynamoDBStreamMapping | SqsMapping

#: A mapping of any supported source, chosen by the service in ``event_source_arn``.
MappingConfig = Annotated[
    Annotated[KinesisMapping, Tag("kinesis")]
    | Annotated[DynamoDBStreamMapping, Tag("dynamodb")]
    | Annotated[SqsMapping, Tag("sqs")],
    Discriminator(
        _event_source_kind,
        custom_error_type=UNSUPPORTED_SOURCE,
        custom_error_message="Unrecognized event source.",
    ),
]


class Settings(FrozenModel):
    """Everything poller is configured with; loaded once and passed down.

    Attributes:
        aws: region and endpoints.
        embedded: the local emulator mode.
        checkpoints: the checkpoint store.
        shutdown: graceful stop.
        memory: the read budget of stream mappings.
        logging: log level and format.
        observability: the metrics and health endpoint.
        mappings: the event source mappings to run; at least one, names unique.
    """

    aws: AwsSettings = AwsSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    memory: MemorySettings = MemorySettings()
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
                raise own_error(
                    "duplicate_name",
                    "name {name} is used by mappings[{first}] and mappings[{index}]; "
                    "mapping names must be unique",
                    name=repr(mapping.name),
                    first=first[mapping.name],
                    index=index,
                )
            first[mapping.name] = index
        return mappings

    @field_validator("mappings")
    @classmethod
    def _check_one_mapping_per_consumer(cls, mappings: list[AnyMapping]) -> list[AnyMapping]:
        """Refuse two enabled mappings reading through one enhanced fan-out consumer: a
        consumer has one subscription per shard, so each would keep taking the other's over
        (AWS ends the older one), and both would fall behind for good."""
        first: dict[tuple[str, str], int] = {}
        for index, mapping in enumerate(mappings):
            key = getattr(mapping, "consumer_key", None) if mapping.enabled else None
            if key is None:
                continue
            if key in first:
                raise own_error(
                    "shared_consumer",
                    "mappings[{first}] and mappings[{index}] both read stream {stream} through "
                    "consumer {consumer}; a consumer has one subscription per shard, so give "
                    "each mapping a consumer of its own",
                    first=first[key],
                    index=index,
                    stream=key[0],
                    consumer=repr(key[1]),
                )
            first[key] = index
        return mappings
