"""The input-template wrapper: each record reshaped by the target's template before delivery.

Where it sits in the data flow::

    engine --event {"Records": [r1..rn], ...}--> TransformingTarget.invoke
        --Template.render(r_i), per record--> {"Records": [t(r1)..t(rn)], ...}  (records)
                                          or  [t(r1)..t(rn)]                    (array)
        --> the HTTP or Python target --> InvokeResult, returned unchanged

Only the payload changes. The engines build, judge and retry the original batch, so the ids a
partial batch response lists (SQS ``messageId``, stream ``sequenceNumber``) are looked up among
the original records; a template that keeps partial responses usable carries them
(``<$.messageId>``, ``<$.kinesis.sequenceNumber>``). With ``records``, the event's other keys
(a tumbling window's ``window``, ``state``, ``shardId``...) go through unchanged.

Rendering never raises for a record by design (:mod:`poller.core.transform`); if it ever does,
the batch is a function error named ``InputTransformError`` that gives the record's position
and the exception's type, never the record's data, and it is retried like any other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import structlog

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.transform import (
    BatchShape,
    PipeVariables,
    RenderTooLarge,
    Template,
    ingestion_time,
)
from poller.types import InvokeResult, Outcome

if TYPE_CHECKING:
    from poller.types import Target

#: The function error type of a batch whose template could not be applied.
INPUT_TRANSFORM_ERROR = "InputTransformError"

_log = structlog.get_logger(__name__)


class TransformingTarget:
    """Applies an input template to every record, then invokes the wrapped target.

    Args:
        inner: the HTTP or Python target.
        template: the compiled template.
        shape: ``records`` or ``array``.
        variables: the mapping's reserved variables; ``ingestion_time`` is set per invocation.
        clock: epoch seconds now (tests pass their own).
    """

    def __init__(
        self,
        inner: Target,
        template: Template,
        *,
        shape: BatchShape,
        variables: PipeVariables,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._template = template
        self._shape = shape
        self._variables = variables
        self._clock = clock
        self.function_arn = inner.function_arn

    @property
    def inner(self) -> Target:
        """The wrapped target (tests and diagnostics)."""
        return self._inner

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Render every record, then invoke the wrapped target once with the new payload."""
        records = event.get("Records") or []
        variables = replace(self._variables, ingestion_time=ingestion_time(self._clock()))
        rendered: list[Any] = []
        # The engines cut batches at the payload limit; a template must not multiply one past
        # it (a hundred copies of a 1 MB body). Sizes are JSON characters, a lower bound of
        # the bytes sent, so a batch refused here could never have been delivered.
        room = MAX_PAYLOAD_BYTES
        for position, record in enumerate(records, start=1):
            try:
                value, chars = self._template.render_sized(record, variables)
            except Exception as exc:  # noqa: BLE001 - reported as the batch's function error
                return self._failed(position, len(records), exc)
            room -= chars
            if room < 0:
                too_large = RenderTooLarge(f"the transformed batch passes {MAX_PAYLOAD_BYTES}")
                return self._failed(position, len(records), too_large)
            rendered.append(value)
        payload: Any = {**event, "Records": rendered} if self._shape == "records" else rendered
        # The HTTP and Python targets never look inside the event: they serialize or copy it,
        # so a bare array goes through the Lambda-shaped signature unchanged.
        return await self._inner.invoke(cast("dict[str, Any]", payload))

    async def aclose(self) -> None:
        """Close the wrapped target."""
        await self._inner.aclose()

    def _failed(self, position: int, size: int, exc: Exception) -> InvokeResult:
        """The function error for a record the template could not render: its position and
        the exception's type; never the record (it may hold personal data)."""
        error_type = type(exc).__name__
        message = f"the input template failed on record {position} of {size} ({error_type})"
        _log.error(
            "input_template.failed",
            function_arn=self.function_arn,
            position=position,
            records=size,
            error_type=error_type,
        )
        return InvokeResult(
            outcome=Outcome.FUNCTION_ERROR,
            payload={"errorType": INPUT_TRANSFORM_ERROR, "errorMessage": message},
            function_error="Unhandled",
            request_id=str(uuid.uuid4()),
            error=message,
        )
