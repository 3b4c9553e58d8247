"""What every mapping has, whatever its source: a name, a source ARN, batch limits, filters.

Where it sits in the data flow::

    mappings[i] (YAML) --MappingBase's fields, shared by every source model-->
        name, ARN parts, batch limits and compiled filters read by the engines

The filter patterns are compiled when the file is loaded (with :mod:`poller.core.filtering`),
so a bad pattern fails with AWS's message at start-up, not mid-run.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from poller.config.models.base import FrozenModel, Int, meta
from poller.config.wording import own_error
from poller.core.filtering import FilterError, FilterSet, compile_filters

#: The only value of AWS FunctionResponseTypes: honour ``batchItemFailures`` in responses.
FunctionResponseType = Literal["ReportBatchItemFailures"]


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
