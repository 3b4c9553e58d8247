"""AWS's request and response JSON for mappings: validation, translation and rendering.

Data flow::

    a Create/Update body (AWS JSON) --parse_create / parse_update--> NewMapping / a request
        (validated through botocore's model and then through poller's MappingConfig)
    a MappingRecord --to_mapping--> AnyMapping (what poller.reconcile runs)
    a MappingRecord + its state --render_record--> the API's answer
    a file mapping (AnyMapping) --render_file_mapping--> the API's answer

Pure: no I/O. (Owned by helper H1; signatures fixed by the lead.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from poller.config import AnyMapping, ControlApiSettings
from poller.control.store import MappingRecord


@dataclass(frozen=True, slots=True)
class NewMapping:
    """A validated Create request.

    Attributes:
        request: the normalized parameters to store (``MappingRecord.request``).
        tags: ``Tags`` of the request.
        enabled: ``Enabled`` (default true).
        function_arn: the full ``FunctionArn``.
        event_source_arn: the source ARN.
    """

    request: Mapping[str, Any]
    tags: Mapping[str, str]
    enabled: bool
    function_arn: str
    event_source_arn: str


def parse_create(body: Any, *, settings: ControlApiSettings, region: str) -> NewMapping:
    """Validate a CreateEventSourceMapping body; raises ApiError with AWS's code and text."""
    raise NotImplementedError


def parse_update(
    record: MappingRecord, body: Any, *, settings: ControlApiSettings, region: str
) -> tuple[Mapping[str, Any], bool | None]:
    """Validate an UpdateEventSourceMapping body against ``record``: the merged request to
    store, and ``Enabled`` if the body gives it. Raises ApiError."""
    raise NotImplementedError


def to_mapping(record: MappingRecord, *, settings: ControlApiSettings, region: str) -> AnyMapping:
    """The mapping poller runs for ``record``: named by its UUID, enabled unless disabled or
    deleted, its target from ``settings.functions`` or a Lambda function."""
    raise NotImplementedError


def render_record(record: MappingRecord, state: str, *, region: str) -> dict[str, Any]:
    """The API's JSON for ``record`` in ``state`` (Get, List, and the mutating calls)."""
    raise NotImplementedError


def render_file_mapping(mapping: AnyMapping, *, region: str) -> dict[str, Any]:
    """The API's JSON for a mapping of the configuration file (always settled)."""
    raise NotImplementedError
