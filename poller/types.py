"""Value types and ports shared by every stage of the pipeline.

Data flow::

    Source (one reader per shard)  --StreamRecord-->  ShardProcessor (batch, invoke, settle)
        ShardProcessor  --event dict-->  Target  --InvokeResult-->  ShardProcessor
        ShardProcessor  --Checkpoint-->  CheckpointStore

A source turns each raw record into a :class:`StreamRecord` once, already shaped as the record
Lambda puts in ``Records[]``, so nothing downstream touches per-record JSON again. Targets never
raise for a failed invocation: they return an :class:`InvokeResult` whose :class:`Outcome` tells
the retry policy how AWS would count it. Ports are small Protocols so that in-memory fakes serve
the unit tests and a DynamoDB lease store can replace SQLite without touching the pipeline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

#: The checkpoint value that marks a shard as read to its end and fully settled.
SHARD_END = "SHARD_END"


@dataclass(slots=True)
class StreamRecord:
    """One record of a shard, ready to be put in an event. Never changed once made.

    Not a frozen dataclass although it is used as one: a frozen dataclass sets each field
    through ``object.__setattr__``, which made building one cost 4.5 times as much (measured
    2.1 against 0.47 us), and one is built per record read, the hottest path of the service.
    Derive a changed record with ``dataclasses.replace``; never assign to a field.

    Attributes:
        sequence_number: the record's sequence number in its shard.
        partition_key: the key that orders records (Kinesis partition key, DynamoDB keys).
        arrival_timestamp: epoch seconds when the stream received the record; record age and
            iterator age are measured from it.
        event_record: the record exactly as Lambda delivers it inside ``Records``.
        size: bytes the record adds to the compact JSON event, used for the 6 MB cut.
    """

    sequence_number: str
    partition_key: str
    arrival_timestamp: float
    event_record: dict[str, Any]
    size: int
    #: The user record's index inside a de-aggregated KPL record; None for plain records.
    sub_sequence_number: int | None = None

    @property
    def position(self) -> str:
        """The record's unique position in its shard, as the watermark and partial batch
        responses know it: the sequence number, or ``seq:sub`` inside an aggregate."""
        if self.sub_sequence_number is None:
            return self.sequence_number
        return f"{self.sequence_number}:{self.sub_sequence_number}"


@dataclass(frozen=True, slots=True)
class ShardEnd:
    """Sent by a shard reader after the last record of a closed shard."""

    child_shard_ids: tuple[str, ...] = ()


#: What a shard reader sends its processor: the records of one read, or the end of the shard.
Chunk = list[StreamRecord] | ShardEnd


class Outcome(enum.StrEnum):
    """How an invocation ended, in the classes Lambda uses to count retries."""

    SUCCESS = "success"
    #: The function ran and failed: an exception, a runtime error, an HTTP 4xx/5xx answer.
    FUNCTION_ERROR = "function_error"
    #: The function ran past its timeout. Lambda counts this as a function error.
    TIMEOUT = "timeout"
    #: The target refused the invocation for capacity (Lambda 429, HTTP 429). Not counted.
    THROTTLE = "throttle"
    #: The invocation did not happen: connection failure, a Lambda service error, a missing
    #: function or permission. Not counted toward retries.
    SERVICE_ERROR = "service_error"

    @property
    def counts_toward_retries(self) -> bool:
        """Whether AWS counts this outcome against ``MaximumRetryAttempts``."""
        return self in (Outcome.FUNCTION_ERROR, Outcome.TIMEOUT)


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """The typed result of one invocation of a target.

    Attributes:
        outcome: the class of the result.
        payload: the function's response, parsed from JSON when it was JSON; needed for
            partial batch responses. ``None`` for a null or empty response.
        payload_is_json: False when the function answered with bytes that are not JSON.
        status_code: the HTTP status of the invocation, where there was one.
        function_error: Lambda's ``X-Amz-Function-Error`` value (``Unhandled``/``Handled``),
            or the equivalent for other targets; ``None`` on success.
        executed_version: the function version that ran, where the target reports one.
        request_id: an id for this invocation (Lambda's request id, or a generated uuid).
        error: a short description of the failure for logs; never contains record data.
    """

    outcome: Outcome
    payload: Any = None
    payload_is_json: bool = True
    status_code: int | None = None
    function_error: str | None = None
    executed_version: str | None = None
    request_id: str = ""
    error: str | None = None


class Target(Protocol):
    """Where batches are delivered: a Lambda function, an HTTP endpoint or a Python handler."""

    #: A stable identifier of the function, used in logs and failure records.
    function_arn: str

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Invoke the function once with ``event`` and classify the result.

        Never raises for a failed invocation: every failure mode is an :class:`Outcome`.
        Never retries by itself; the pipeline owns retries. Safe to call concurrently.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A durable position in a shard.

    Exactly one of the forms holds:

    * ``sequence_number`` set: every record up to and including it is settled; resume after it.
      With ``sub_sequence_number`` also set (a de-aggregated KPL record), the aggregate at that
      sequence number is settled up to and including that user record; resume inside it.
    * ``sequence_number == SHARD_END``: the shard was read to its end and everything settled.
    * ``start_timestamp`` set, no sequence number: nothing is settled yet, and the mapping began
      at this wall-clock time (how a LATEST start survives a restart before its first record).

    ``window_state``, with a tumbling window, is the open window and the state the function
    returned for it, as JSON (``poller.core.windows.encode_window_state``); None when no
    window is open.
    """

    sequence_number: str | None = None
    start_timestamp: float | None = None
    sub_sequence_number: int | None = None
    window_state: str | None = None

    @property
    def is_shard_end(self) -> bool:
        """True when the shard is finished."""
        return self.sequence_number == SHARD_END


class CheckpointStore(Protocol):
    """Durable checkpoints per (mapping, shard).

    ``put`` returns only once the checkpoint is durable: a crash after it returns never
    re-delivers records at or before that checkpoint. Callers write checkpoints of one shard
    from one task at a time, in increasing order.
    """

    #: The largest tumbling-window state, in bytes of compact JSON, that a checkpoint of this
    #: store can carry. A state past it (or past Lambda's 1 MB) ends its window early.
    window_state_limit: int

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's checkpoint, or ``None`` when the shard was never checkpointed."""
        ...

    async def get_all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every checkpoint of a mapping, by shard id."""
        ...

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        """Durably store the shard's checkpoint, replacing the previous one."""
        ...

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Forget a shard's checkpoint (a finished shard that left the stream's listing)."""
        ...

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping's pinned start instant (epoch seconds), or None before its first start.

        Kept apart from the shard checkpoints, so retiring every checkpoint never makes a
        started mapping look new. ``0.0`` means "from each shard's TRIM_HORIZON" (a mapping
        migrated from a version that did not record its start; see ``poller.streams.start``).
        """
        ...

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Record ``instant`` as the mapping's start unless one is recorded already, atomically.

        Returns the instant that is recorded afterwards: ``instant``, or the one a previous
        start (or a replica that won the race) recorded. Never changes a recorded instant.
        """
        ...

    async def aclose(self) -> None:
        """Flush and close. Idempotent."""
        ...
