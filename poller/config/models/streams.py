"""The stream mappings: Kinesis and DynamoDB Streams, with AWS's stream defaults and rules.

Where it sits in the data flow::

    mappings[i] with a kinesis or dynamodb event_source_arn (YAML)
        --KinesisMapping / DynamoDBStreamMapping--> the stream engine (poller.streams)

Both share their fields through ``_StreamMapping`` but are not subclasses of each
other, so ``isinstance`` tells them apart. The rules are AWS's (ranges, the hole in
MaximumRecordAgeInSeconds, no ``AT_TIMESTAMP`` for DynamoDB), plus one poller limitation:
tumbling windows need a parallelization factor of 1.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from poller.config.arns import CONSUMER_NAME, DYNAMODB_STREAM_ARN, IAM_ARN, KINESIS_ARN
from poller.config.models.base import Float, FrozenModel, Int, meta
from poller.config.models.destinations import DestinationConfig
from poller.config.models.mapping_base import FunctionResponseType, MappingBase
from poller.config.models.targets import TargetConfig
from poller.config.wording import own_error, show

# MaximumRecordAgeInSeconds: -1 (no limit), or 60 to 604800; AWS refuses 0 to 59.
_RECORD_AGE_MIN = 60
_RECORD_AGE_ALLOWED = "-1 or 60 to 604800"

# What separates a stream's ARN from its consumer's name in a consumer ARN.
_CONSUMER_PART = "/consumer/"

# AWS lists the values in this order in its enum error, so the messages do too.
StartingPosition = Literal["LATEST", "AT_TIMESTAMP", "TRIM_HORIZON"]


def _check_record_age(seconds: int) -> int:
    """Refuse 0 to 59, which lie inside MaximumRecordAgeInSeconds' -1 to 604800 but AWS forbids."""
    if -1 < seconds < _RECORD_AGE_MIN:
        raise own_error(
            "record_age",
            "{value} is out of range; allowed {allowed} (AWS MaximumRecordAgeInSeconds: the "
            "minimum valid value is 60 seconds; values less than 60 and greater than -1 fall "
            "within the parameter's absolute range but are not allowed)",
            value=seconds,
            allowed=_RECORD_AGE_ALLOWED,
        )
    return seconds


def _to_epoch_seconds(value: Any) -> Any:
    """Turn an ISO-8601 string or a datetime into epoch seconds; naive times are UTC."""
    if isinstance(value, bool):
        raise own_error(
            "timestamp_bool",
            "{value} is not a time; give epoch seconds or an ISO-8601 datetime",
            value=show(value),
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
        raise own_error(
            "timestamp",
            "{value} is neither epoch seconds nor an ISO-8601 datetime "
            "(for example 2024-05-01T12:00:00Z)",
            value=repr(text),
        ) from None


class _StreamMapping(MappingBase):
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
        target: where batches go.
    """

    starting_position: StartingPosition = Field(json_schema_extra=meta(aws="StartingPosition"))
    invoke_identity_arn: str | None = Field(
        default=None,
        pattern=IAM_ARN,
        json_schema_extra=meta(expected="an IAM ARN such as arn:aws:iam::123456789012:role/x"),
    )
    shard_discovery_interval_seconds: Float = Field(default=30.0, ge=1, le=3600)
    # Counts function-error retries only; throttles and service errors retry until expiry.
    maximum_retry_attempts: Int = Field(
        default=-1, ge=-1, le=10000, json_schema_extra=meta(aws="MaximumRetryAttempts")
    )
    # -1 or 60 to 604800: AWS refuses 0 to 59 although they lie inside -1 to 604800.
    maximum_record_age_in_seconds: Annotated[Int, AfterValidator(_check_record_age)] = Field(
        default=-1,
        ge=-1,
        le=604800,
        json_schema_extra=meta(aws="MaximumRecordAgeInSeconds", allowed=_RECORD_AGE_ALLOWED),
    )
    # Halves a failing batch on each function error, to isolate a poison record.
    bisect_batch_on_function_error: bool = Field(
        default=False, json_schema_extra=meta(aws="BisectBatchOnFunctionError")
    )
    # At most one entry, ReportBatchItemFailures, which turns on partial batch responses.
    function_response_types: list[FunctionResponseType] = Field(
        default_factory=list, max_length=1, json_schema_extra=meta(aws="FunctionResponseTypes")
    )
    # Only OnFailure: a standard SQS queue, standard SNS topic or S3 bucket for dropped batches.
    destination_config: DestinationConfig | None = Field(
        default=None, json_schema_extra=meta(aws="DestinationConfig")
    )
    # Batches in flight per shard at once; records of one partition key stay in order.
    parallelization_factor: Int = Field(
        default=1, ge=1, le=10, json_schema_extra=meta(aws="ParallelizationFactor")
    )
    # Windows by arrival time; each invocation carries the window's state (poller.core.windows).
    tumbling_window_in_seconds: Int = Field(
        default=0, ge=0, le=900, json_schema_extra=meta(aws="TumblingWindowInSeconds")
    )
    target: TargetConfig

    @field_validator("tumbling_window_in_seconds")
    @classmethod
    def _check_window_lanes(cls, value: int, info: ValidationInfo) -> int:
        """A poller limitation: one window state per shard needs one lane per shard."""
        factor = info.data.get("parallelization_factor")
        if value > 0 and isinstance(factor, int) and factor > 1:
            raise own_error(
                "window_parallelization",
                "{value} is not allowed with parallelization_factor {factor}; poller keeps one "
                "window state per shard, so tumbling windows need parallelization_factor 1 "
                "(or set tumbling_window_in_seconds to 0)",
                value=value,
                factor=factor,
            )
        return value

    @model_validator(mode="after")
    def _check_window_shape(self) -> Self:
        """A bare array cannot carry a window's state: aggregation would silently reset."""
        if self.tumbling_window_in_seconds and getattr(self.target, "batch_shape", "") == "array":
            raise own_error(
                "window_batch_shape",
                "target.batch_shape: array drops the tumbling window's state and window "
                "fields; use batch_shape: records with tumbling_window_in_seconds",
            )
        return self

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
    def identity_arn(self) -> str:
        """``invokeIdentityArn`` for events: the configured ARN, else a role in the account."""
        return (
            self.invoke_identity_arn or f"arn:{self.partition}:iam::{self.account_id}:role/poller"
        )

    @property
    def stream_arn(self) -> str:
        """The stream's ARN: what events, failure records and stream calls name."""
        return self.event_source_arn


class EnhancedFanOut(FrozenModel):
    """Read a Kinesis stream through an enhanced fan-out consumer that poller registers.

    Attributes:
        consumer_name: the consumer's name (RegisterStreamConsumer ``ConsumerName``). poller
            registers it on the stream when it does not exist, waits until it is ``ACTIVE``,
            and never deregisters it.
    """

    consumer_name: str = Field(
        pattern=CONSUMER_NAME,
        json_schema_extra=meta(
            aws="ConsumerName", expected="1 to 128 letters, digits, '_', '.' and '-'"
        ),
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
        pattern=KINESIS_ARN,
        json_schema_extra=meta(
            aws="EventSourceArn",
            expected="arn:<partition>:kinesis:<region>:<12-digit account>:stream/<name>, or a "
            "consumer's arn:<partition>:kinesis:<region>:<12-digit account>:stream/<name>/"
            "consumer/<consumer>:<creation epoch>, with partition aws, aws-cn or aws-us-gov",
        ),
    )
    starting_position_timestamp: Annotated[float | None, BeforeValidator(_to_epoch_seconds)] = (
        Field(
            default=None,
            validate_default=True,
            json_schema_extra=meta(aws="StartingPositionTimestamp"),
        )
    )
    #: Beyond Lambda: unpack KPL aggregated records into their user records, as KCL does.
    deaggregate_records: bool = False
    #: Beyond Lambda (which needs a consumer ARN): register a consumer and read through it.
    enhanced_fan_out: EnhancedFanOut | None = None

    @field_validator("enhanced_fan_out")
    @classmethod
    def _check_fan_out(
        cls, value: EnhancedFanOut | None, info: ValidationInfo
    ) -> EnhancedFanOut | None:
        """Only with a stream ARN: a consumer ARN already names the consumer to read through."""
        arn = info.data.get("event_source_arn")
        if value is not None and isinstance(arn, str) and _CONSUMER_PART in arn:
            raise own_error(
                "fan_out_twice",
                "is set but event_source_arn {arn} is already a consumer ARN; give either a "
                "stream ARN with enhanced_fan_out, or a consumer ARN alone",
                arn=show(arn),
            )
        return value

    @field_validator("starting_position_timestamp")
    @classmethod
    def _check_timestamp(cls, value: float | None, info: ValidationInfo) -> float | None:
        """Required with AT_TIMESTAMP, refused otherwise, never in the future."""
        position = info.data.get("starting_position")
        if position is None:  # starting_position itself is invalid and reported on its own
            return value
        if position == "AT_TIMESTAMP" and value is None:
            raise own_error(
                "timestamp_missing",
                "required field is missing when starting_position is AT_TIMESTAMP; "
                "give epoch seconds or an ISO-8601 datetime",
            )
        if position != "AT_TIMESTAMP" and value is not None:
            raise own_error(
                "timestamp_forbidden",
                "{value} is set but starting_position is {position}; "
                "allowed only with starting_position AT_TIMESTAMP",
                value=show(value),
                position=position,
            )
        if value is not None and value > time.time():
            raise own_error(
                "timestamp_future",
                "{value} ({when}) is in the future; allowed up to now "
                "(AWS: StartingPositionTimestamp cannot be in the future)",
                value=show(value),
                when=_epoch_text(value),
            )
        return value

    @property
    def source(self) -> Literal["kinesis"]:
        """The kind of source: ``kinesis``."""
        return "kinesis"

    @property
    def stream_arn(self) -> str:
        """The stream's ARN, also when ``event_source_arn`` is a consumer's: events, failure
        records and stream calls name the stream, as Lambda's do."""
        return self.event_source_arn.split(_CONSUMER_PART, 1)[0]

    @property
    def consumer_arn(self) -> str | None:
        """The enhanced fan-out consumer named by ``event_source_arn``, if it names one."""
        return self.event_source_arn if _CONSUMER_PART in self.event_source_arn else None

    @property
    def consumer_key(self) -> tuple[str, str] | None:
        """(stream ARN, consumer name) of the enhanced fan-out consumer read through, if any."""
        if self.enhanced_fan_out is not None:
            return self.stream_arn, self.enhanced_fan_out.consumer_name
        if self.consumer_arn is not None:
            name = self.consumer_arn.split(_CONSUMER_PART, 1)[1].rsplit(":", 1)[0]
            return self.stream_arn, name
        return None

    @property
    def reads_pushed(self) -> bool:
        """Whether shards are read through enhanced fan-out (SubscribeToShard), not polled."""
        return self.consumer_arn is not None or self.enhanced_fan_out is not None

    @property
    def stream_name(self) -> str:
        """The stream's name, from its ARN."""
        return self.stream_arn.split(":", 5)[5].removeprefix("stream/")


class DynamoDBStreamMapping(_StreamMapping):
    """One DynamoDB table stream read into one target, with AWS's DynamoDB Streams defaults.

    The fields are those of a Kinesis mapping except that ``starting_position`` is
    ``TRIM_HORIZON`` or ``LATEST`` (AWS refuses ``AT_TIMESTAMP`` for DynamoDB Streams) and
    there is no ``starting_position_timestamp``.
    """

    event_source_arn: str = Field(
        pattern=DYNAMODB_STREAM_ARN,
        json_schema_extra=meta(
            aws="EventSourceArn",
            expected="arn:<partition>:dynamodb:<region>:<12-digit account>:table/<table>/"
            "stream/<label> with partition aws, aws-cn or aws-us-gov; <region> may be "
            "ddblocal, DynamoDB Local's",
        ),
    )

    @field_validator("starting_position")
    @classmethod
    def _check_position(cls, value: str, info: ValidationInfo) -> str:
        """Refuse AT_TIMESTAMP with AWS's message."""
        if value == "AT_TIMESTAMP":
            arn = info.data.get("event_source_arn", "<the stream ARN>")
            raise own_error(
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
