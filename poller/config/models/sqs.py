"""The SQS mapping: a standard or FIFO queue, with AWS's SQS defaults, rules and scaling.

Where it sits in the data flow::

    mappings[i] with an sqs event_source_arn (YAML) --SqsMapping--> the queue engine
                                                                     (poller.queues)

The stream-only fields (``destination_config``, ``starting_position``,
``starting_position_timestamp``) are accepted as keys only to be refused with a message that
says why they mean nothing for a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from poller.config.arns import SQS_SOURCE_ARN
from poller.config.models.base import FrozenModel, Int, meta
from poller.config.models.mapping_base import FunctionResponseType, MappingBase
from poller.config.models.targets import TargetConfig
from poller.config.wording import own_error, show


class ScalingConfig(FrozenModel):
    """How far an SQS mapping may scale (AWS ScalingConfig).

    Attributes:
        maximum_concurrency: the most batches in flight at once; None (``{}``) leaves the
            default cap, :data:`SQS_DEFAULT_MAXIMUM_CONCURRENCY`.
    """

    maximum_concurrency: Int | None = Field(
        default=None, ge=2, le=1000, json_schema_extra=meta(aws="MaximumConcurrency")
    )


class ProvisionedPollerConfig(FrozenModel):
    """Provisioned mode: how many event pollers an SQS mapping runs (AWS ProvisionedPollerConfig).

    A poller is one receive loop with up to ten batches in flight and at most ten receives a
    second; between the bounds the runner scales on backlog and batches in flight, by up to
    1,000 concurrency (100 pollers) a minute. ``{}`` gives both defaults.

    Attributes:
        minimum_pollers: pollers that always run, even on an idle queue (AWS MinimumPollers).
        maximum_pollers: the most pollers (AWS MaximumPollers).
    """

    minimum_pollers: Int = Field(
        default=2, ge=2, le=200, json_schema_extra=meta(aws="MinimumPollers")
    )
    maximum_pollers: Int = Field(
        default=200, ge=2, le=10000, json_schema_extra=meta(aws="MaximumPollers")
    )

    @field_validator("maximum_pollers")
    @classmethod
    def _check_order(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("minimum_pollers")
        if minimum is not None and value < minimum:
            raise own_error(
                "pollers_order",
                "{value} is less than minimum_pollers ({minimum}); allowed {minimum} to 10000 "
                "(AWS MaximumPollers)",
                value=value,
                minimum=minimum,
            )
        return value


class VisibilityBackoff(FrozenModel):
    """Visibility given to messages of a failed batch, by how often they were received.

    A message received for the n-th time (``ApproximateReceiveCount`` n) becomes visible again
    after ``min(max_seconds, base_seconds * 2**(n-1))`` seconds instead of after the queue's
    visibility timeout. Beyond Lambda, which always waits for the visibility timeout.

    Attributes:
        base_seconds: the delay after the first failed receive.
        max_seconds: the longest delay.
    """

    base_seconds: Int = Field(default=5, ge=0, le=43200)
    max_seconds: Int = Field(default=900, ge=0, le=43200)

    @field_validator("max_seconds")
    @classmethod
    def _check_order(cls, value: int, info: ValidationInfo) -> int:
        base = info.data.get("base_seconds")
        if base is not None and value < base:
            raise own_error(
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
            raise own_error(
                "sqs_not_applicable",
                "{value} is set, but {field} does not apply to SQS queues: a queue has no "
                "positions; messages are received as they become visible",
                value=show(value),
                field=field,
            )
        return value

    return check


def _no_sqs_destination(value: Any) -> Any:
    if value is not None:
        raise own_error(
            "sqs_destination",
            "an SQS mapping has no on-failure destination; give the queue a redrive policy "
            "(a dead-letter queue and maxReceiveCount) instead. AWS says: Unsupported "
            "DestinationConfig parameter for given event source mapping type.",
        )
    return value


class SqsMapping(MappingBase):
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
        provisioned_poller_config: provisioned mode, a range of event pollers instead of the
            default scaling (AWS ProvisionedPollerConfig); not with
            ``scaling_config.maximum_concurrency``.
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
        pattern=SQS_SOURCE_ARN,
        json_schema_extra=meta(
            aws="EventSourceArn",
            expected="arn:<partition>:sqs:<region>:<12-digit account>:<queue> with partition "
            "aws, aws-cn or aws-us-gov (a FIFO queue's name ends in .fifo)",
        ),
    )
    batch_size: Int = Field(default=10, ge=1, le=10000, json_schema_extra=meta(aws="BatchSize"))
    maximum_batching_window_in_seconds: Int = Field(
        default=0,
        ge=0,
        le=300,
        validate_default=True,
        json_schema_extra=meta(aws="MaximumBatchingWindowInSeconds"),
    )
    scaling_config: ScalingConfig | None = Field(
        default=None, json_schema_extra=meta(aws="ScalingConfig")
    )
    provisioned_poller_config: ProvisionedPollerConfig | None = Field(
        default=None, json_schema_extra=meta(aws="ProvisionedPollerConfig")
    )
    function_response_types: list[FunctionResponseType] = Field(
        default_factory=list, max_length=1, json_schema_extra=meta(aws="FunctionResponseTypes")
    )
    visibility_timeout_on_failure: VisibilityBackoff | None = None
    receive_wait_time_seconds: Int = Field(default=20, ge=1, le=20)
    destination_config: Annotated[Any, AfterValidator(_no_sqs_destination)] = Field(
        default=None, exclude=True, json_schema_extra=meta(aws="DestinationConfig")
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
            raise own_error(
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
            raise own_error(
                "sqs_window",
                "{value} is not allowed with batch_size {size}; allowed 1 to 300 when "
                "batch_size is greater than 10. AWS says: {rule}",
                value=value,
                size=size,
                rule=_SQS_WINDOW_RULE,
            )
        return value

    @model_validator(mode="after")
    def _check_one_scaling_mode(self) -> Self:
        """Provisioned mode and a concurrency cap are two scaling modes; AWS refuses them
        together (its exact message is not recorded anywhere we hold, so this one is ours)."""
        capped = self.scaling_config is not None and (
            self.scaling_config.maximum_concurrency is not None
        )
        if capped and self.provisioned_poller_config is not None:
            raise own_error(
                "sqs_scaling_modes",
                "provisioned_poller_config and scaling_config.maximum_concurrency are both set; "
                "they are two scaling modes and AWS refuses them together: remove one (in "
                "provisioned mode, maximum_pollers bounds the concurrency)",
            )
        return self

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
