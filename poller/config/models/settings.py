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

A DynamoDB Local stream (region ``ddblocal`` in its ARN) is served by no AWS endpoint and names
no region to sign for: a configuration with one must name both, ``aws.endpoints.dynamodbstreams``
(or ``aws.endpoint_url``) and ``aws.region``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeAlias

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator

from poller.config.arns import DYNAMODB_LOCAL_REGION, arn_service, is_dynamodb_local
from poller.config.models.base import FrozenModel
from poller.config.models.control import ControlApiSettings
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
from poller.config.wording import UNSUPPORTED_SOURCE, own_error, show


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
        control_api: the Lambda-compatible API that manages mappings at run time.
        mappings: the event source mappings to run; names unique. At least one, unless the
            control API is on (mappings then come through it too).
    """

    aws: AwsSettings = AwsSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    memory: MemorySettings = MemorySettings()
    logging: LoggingSettings = LoggingSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    control_api: ControlApiSettings = ControlApiSettings()
    mappings: list[MappingConfig] = Field(default_factory=list, validate_default=True)

    @field_validator("mappings")
    @classmethod
    def _some_mapping_or_the_api(
        cls, mappings: list[AnyMapping], info: ValidationInfo
    ) -> list[AnyMapping]:
        """A service with nothing to run and no way to be given something is a mistake."""
        if "control_api" not in info.data:
            return mappings  # its own error is reported already, and it decides this one
        if not mappings and not info.data["control_api"].enabled:
            raise own_error(
                "no_mappings",
                "no mapping is configured; give at least one, or turn on control_api "
                "(enabled: true) to create mappings through the API",
            )
        return mappings

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
    def _check_unique_uuids(cls, mappings: list[AnyMapping]) -> list[AnyMapping]:
        """Refuse two mappings with one UUID: AWS never gives two mappings one, and the event
        source mapping ARN and the S3 failure-record keys (aws/lambda/<uuid>/) derive from it."""
        first: dict[str, int] = {}
        for index, mapping in enumerate(mappings):
            uuid = mapping.mapping_uuid
            if uuid in first:
                raise own_error(
                    "duplicate_uuid",
                    "uuid {uuid} is used by mappings[{first}] and mappings[{index}]; "
                    "mapping UUIDs must be unique",
                    uuid=uuid,
                    first=first[uuid],
                    index=index,
                )
            first[uuid] = index
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

    @field_validator("mappings")
    @classmethod
    def _check_dynamodb_local_sources(
        cls, mappings: list[AnyMapping], info: ValidationInfo
    ) -> list[AnyMapping]:
        """Refuse a DynamoDB Local stream unless ``aws`` says where DynamoDB Local listens
        and which region to sign for (its ARN names neither), and in the embedded mode."""
        aws, embedded = info.data.get("aws"), info.data.get("embedded")
        if aws is None or embedded is None:
            return mappings  # their own errors are reported already
        for index, mapping in enumerate(mappings):
            if is_dynamodb_local(mapping.event_source_arn):
                _check_dynamodb_local(index, mapping.event_source_arn, aws, embedded)
        return mappings


def _check_dynamodb_local(
    index: int, arn: str, aws: AwsSettings, embedded: EmbeddedSettings
) -> None:
    """The settings a DynamoDB Local stream needs; each error names the fields to set."""
    where = {"index": index, "arn": show(arn), "local": DYNAMODB_LOCAL_REGION}
    if embedded.enabled:
        # The embedded mode points every client at its own moto, which holds no such stream.
        raise own_error(
            "dynamodb_local_embedded",
            "mappings[{index}].event_source_arn {arn} is a DynamoDB Local stream, but "
            "embedded.enabled sends every client to the embedded emulator; turn the embedded "
            "mode off and set aws.endpoints.dynamodbstreams to DynamoDB Local's URL",
            **where,
        )
    if aws.endpoint_for("dynamodbstreams") is None:
        raise own_error(
            "dynamodb_local_endpoint",
            "mappings[{index}].event_source_arn {arn} is a DynamoDB Local stream (region "
            "{local}), which AWS does not serve; set aws.endpoints.dynamodbstreams (or "
            "aws.endpoint_url) to DynamoDB Local's URL, such as http://127.0.0.1:8000",
            **where,
        )
    if "region" not in aws.model_fields_set:
        # The default region would do for the request, but DynamoDB Local keeps a database
        # per region: a silent default could read an empty one. So the user names it.
        raise own_error(
            "dynamodb_local_region",
            "mappings[{index}].event_source_arn {arn} is a DynamoDB Local stream, whose ARN "
            "names no region ({local}); set aws.region to the region its table was created "
            "in (DynamoDB Local keeps a database per region unless started with -sharedDb)",
            **where,
        )
