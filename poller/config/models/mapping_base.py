"""What every mapping has, whatever its source: a name, a source ARN, batch limits, filters,
its identity (UUID, event source mapping ARN), tags and metrics config.

Where it sits in the data flow::

    mappings[i] (YAML) --MappingBase's fields, shared by every source model-->
        name, ARN parts, batch limits and compiled filters read by the engines;
        UUID, ARN and tags read by failure records, metrics and ``poller status``

The filter patterns are compiled when the file is loaded (with :mod:`poller.core.filtering`),
so a bad pattern fails with AWS's message at start-up, not mid-run. Tags are checked against
AWS's rules for Lambda resource tags, so a tag poller accepts, AWS would accept too.
"""

from __future__ import annotations

import unicodedata
from functools import cached_property
from typing import Annotated, Any, Literal, Self
from uuid import NAMESPACE_URL, uuid5

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from poller.config.arns import is_dynamodb_local
from poller.config.models.base import FrozenModel, Int, lower, meta
from poller.config.wording import own_error, show
from poller.core.filtering import FilterError, FilterSet, compile_filters

#: The only value of AWS FunctionResponseTypes: honour ``batchItemFailures`` in responses.
FunctionResponseType = Literal["ReportBatchItemFailures"]

_UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

#: AWS's limits on a Lambda resource's tags (TagResource; the count is AWS's general rule).
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
#: Tag keys starting with this, in any case, are AWS's own.
RESERVED_TAG_PREFIX = "aws:"
# AWS's tag pattern is [\p{L}\p{Z}\p{N}_.:/=+\-@]*: Unicode letters, separators and numbers
# (the first letter of the general category), plus these. Python's re has no \p{...}.
_TAG_CATEGORIES = frozenset("LZN")
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
_TAG_ALLOWED = "Unicode letters, numbers and spaces, and _ . : / = + - @"

#: MetricsConfig values AWS accepts only for Kafka event sources (MSK, self-managed Kafka).
KAFKA_ONLY_METRICS = ("ErrorCount", "KafkaMetrics")


def _bad_tag_character(text: str) -> str | None:
    """The first character AWS's tag pattern refuses, or None."""
    for char in text:
        if char not in _TAG_PUNCTUATION and unicodedata.category(char)[0] not in _TAG_CATEGORIES:
            return char
    return None


def _check_tag_text(what: str, key: str, text: str, longest: int) -> None:
    if len(text) > longest:
        raise own_error(
            "tag_length",
            "tag {key}: the {what} is {length} characters long; allowed at most {longest}",
            key=show(key),
            what=what,
            length=len(text),
            longest=longest,
        )
    bad = _bad_tag_character(text)
    if bad is not None:
        raise own_error(
            "tag_character",
            "tag {key}: the {what} holds {char}, which AWS refuses in tags; allowed {allowed}",
            key=show(key),
            what=what,
            char=ascii(bad),
            allowed=_TAG_ALLOWED,
        )


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    """AWS's rules for Lambda resource tags: how many, how long, which characters, no
    ``aws:`` keys. Each error names the tag."""
    if len(tags) > MAX_TAGS:
        raise own_error(
            "tag_count",
            "{count} tags; allowed at most {most} per mapping",
            count=len(tags),
            most=MAX_TAGS,
        )
    for key, value in tags.items():
        check_tag_key(key)
        _check_tag_text("value", key, value, MAX_TAG_VALUE)
    return tags


def check_tag_key(key: str) -> None:
    """Raise the config error for a key AWS would refuse as a tag key."""
    if not key:
        raise own_error("tag_key_empty", "a tag key is empty; keys are 1 to 128 characters")
    if key.lower().startswith(RESERVED_TAG_PREFIX):
        raise own_error(
            "tag_reserved",
            "tag {key}: keys starting with 'aws:' (in any case) are reserved for AWS",
            key=show(key),
        )
    _check_tag_text("key", key, key, MAX_TAG_KEY)


def _not_kafka_only(value: Any) -> Any:
    """Refuse the MetricsConfig values that exist only for Kafka sources, saying so."""
    if value in KAFKA_ONLY_METRICS:
        raise own_error(
            "kafka_metric",
            "{value} is Kafka-only (AWS accepts it for Amazon MSK and self-managed Kafka event "
            "sources); allowed EventCount",
            value=show(value),
        )
    return value


class MetricsConfig(FrozenModel):
    """AWS MetricsConfig: which ESM metric groups to publish.

    Accepted so that a configuration carried over from AWS loads; poller always exports its
    event-count series (``poller_*_events_total``), whatever this says.

    Attributes:
        metrics: ``[]`` or ``[EventCount]``; the Kafka-only values are refused.
    """

    metrics: list[Annotated[Literal["EventCount"], BeforeValidator(_not_kafka_only)]] = Field(
        default_factory=list, max_length=1, json_schema_extra=meta(aws="Metrics")
    )


class FilterPattern(FrozenModel):
    """One event filter: an EventBridge-syntax JSON pattern, as a string (AWS's form)."""

    pattern: str = Field(min_length=1, max_length=4096, json_schema_extra=meta(aws="Pattern"))


class FilterCriteria(FrozenModel):
    """Lambda's FilterCriteria: a record passes when any filter matches."""

    filters: list[FilterPattern] = Field(
        default_factory=list, max_length=5, json_schema_extra=meta(aws="Filters")
    )


class MappingBase(FrozenModel):
    """What every mapping has, whatever its source: a name, a source ARN, batch limits.

    Attributes:
        uuid: the mapping's UUID, as AWS assigns one to each ESM; see :attr:`mapping_uuid`.
        tags: AWS-style resource tags (AWS Tags); shown by ``poller status`` and exported
            as metric labels for the keys ``observability.metric_tag_labels`` names.
        metrics_config: AWS MetricsConfig, accepted for compatibility; the event-count
            series are always exported.

    Each source overrides ``event_source_arn`` with its ARN form, and may override the batch
    fields with its own defaults; an overridden field keeps its place in the field order.
    """

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        json_schema_extra=meta(
            expected="letters, digits, '_', '.' and '-', starting with a letter or digit"
        ),
    )
    event_source_arn: str = Field(json_schema_extra=meta(aws="EventSourceArn"))
    enabled: bool = Field(default=True, json_schema_extra=meta(aws="Enabled"))
    batch_size: Int = Field(default=100, ge=1, le=10000, json_schema_extra=meta(aws="BatchSize"))
    maximum_batching_window_in_seconds: Int = Field(
        default=0, ge=0, le=300, json_schema_extra=meta(aws="MaximumBatchingWindowInSeconds")
    )
    filter_criteria: FilterCriteria | None = Field(
        default=None, json_schema_extra=meta(aws="FilterCriteria")
    )
    # The ESM UUID AWS would assign; None derives a stable one from name and source ARN.
    uuid: Annotated[str | None, AfterValidator(lower)] = Field(
        default=None,
        pattern=_UUID,
        json_schema_extra=meta(
            aws="UUID",
            expected="a UUID: 32 hex digits in groups of 8-4-4-4-12 "
            "(for example 14e0db71-5d35-4eb5-b481-8945cf9d10c2)",
        ),
    )
    # Shown by `poller status`, and exported as metric labels when observability names them.
    tags: Annotated[dict[str, str], AfterValidator(_check_tags)] = Field(
        default_factory=dict, json_schema_extra=meta(aws="Tags")
    )
    # Accepted for compatibility only: the event-count series are always exported.
    metrics_config: MetricsConfig | None = Field(
        default=None, json_schema_extra=meta(aws="MetricsConfig")
    )

    @model_validator(mode="after")
    def _check_filters(self) -> Self:
        """Compile the patterns at load, so a bad one fails with AWS's message, not mid-run."""
        if self.filter_criteria is not None and self.filter_criteria.filters:
            try:
                self._compiled_filters()
            except FilterError as exc:
                raise own_error("filter_pattern", f"filter_criteria: {exc}") from exc
        return self

    def _compiled_filters(self) -> FilterSet:
        patterns = [f.pattern for f in self.filter_criteria.filters] if self.filter_criteria else []
        source: Any = getattr(self, "source", "kinesis")
        return compile_filters(patterns, source=source)

    @property
    def mapping_uuid(self) -> str:
        """The configured :attr:`uuid`, else one derived from the name and the source ARN.

        The derived UUID is stable across restarts and differs between mappings; it stands
        where AWS puts the ESM's UUID: S3 failure-record keys ``aws/lambda/<uuid>/...`` and
        the event source mapping ARN. Never change the derivation: stored keys depend on it.
        """
        if self.uuid is not None:
            return self.uuid
        return str(uuid5(NAMESPACE_URL, f"poller:{self.name}:{self.event_source_arn}"))

    def event_source_mapping_arn(self, aws_region: str) -> str:
        """The ARN AWS would give this mapping (``EventSourceMappingArn``):
        ``arn:<partition>:lambda:<region>:<account>:event-source-mapping:<uuid>``.

        Partition, region and account come from the source ARN, except a DynamoDB Local
        source's region (``ddblocal``, no AWS region), which is ``aws_region`` (the
        configured ``aws.region``).
        """
        region = aws_region if is_dynamodb_local(self.event_source_arn) else self.region
        return (
            f"arn:{self.partition}:lambda:{region}:{self.account_id}:"
            f"event-source-mapping:{self.mapping_uuid}"
        )

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
