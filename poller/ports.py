"""Ports: the interfaces the stream engine reads shards through, which the adapters implement.

The engine (:mod:`poller.streams`) depends on these shapes only; the Kinesis and DynamoDB
Streams adapters (:mod:`poller.sources.kinesis`, :mod:`poller.sources.dynamodb_streams`)
implement :class:`StreamApi`, so adapters sit below the engine and never import it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from poller.core.lineage import ShardInfo
from poller.types import StreamRecord

IteratorType = Literal[
    "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"
]


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a shard iterator starts."""

    type: IteratorType
    sequence_number: str | None = None
    timestamp: float | None = None
    #: With AT_SEQUENCE_NUMBER: user records of that aggregate up to this index are settled.
    settled_through: int | None = None


@dataclass(frozen=True, slots=True)
class RecordsPage:
    """One GetRecords answer, in the service-neutral form the reader needs."""

    records: list[dict[str, Any]]
    next_iterator: str | None
    millis_behind_latest: int | None = None
    child_shard_ids: tuple[str, ...] = field(default_factory=tuple)


Converter = Callable[[dict[str, Any]], StreamRecord]
#: Converts the raw records of one read; may drop some or expand one into several (KPL).
PageConverter = Callable[[list[dict[str, Any]]], list[StreamRecord]]


class StreamApi(Protocol):
    """What the reader and the coordinator need from a stream service."""

    #: Records per GetRecords call.
    limit: int
    #: Seconds between polls of a shard that has caught up (Lambda: 1 s Kinesis, 0.25 s DynamoDB).
    idle_interval: float

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard within retention, with parents and whether it is closed."""
        ...

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        """A shard iterator at ``position``. Raises ``SourceError``."""
        ...

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        """One read of at most ``limit`` records (default and ceiling: :attr:`limit`).
        Raises ``SourceError`` (``IteratorExpired``, ``Throttled``, ...)."""
        ...

    def sequence_of(self, raw: dict[str, Any]) -> str:
        """A raw record's sequence number."""
        ...

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        """Turns a read's raw records into Lambda's event records, dropping records the
        iterator could not skip by itself (a pinned start, an aggregate settled in part)."""
        ...

    def arrival_of(self, raw: dict[str, Any]) -> float:
        """A raw record's arrival (creation) time, epoch seconds."""
        ...

    @property
    def reports_trims(self) -> bool:
        """True when the service refuses a trimmed position with an error (DynamoDB
        Streams); False when it silently reads from the oldest record held (Kinesis)."""
        ...

    async def retention_seconds(self) -> float | None:
        """How long the stream keeps a record (None while unknown). An infinite
        ``maximum_record_age_in_seconds`` means this: a failing record is retried until the
        stream has dropped it (docs/aws-esm.md §1.2)."""
        ...


@dataclass(frozen=True, slots=True)
class PushEvent:
    """One ``SubscribeToShardEvent`` of an enhanced fan-out subscription, service-neutral.

    ``records`` are raw records in the form a source client returns them (``Data`` as the
    wire's base64 text, ``ApproximateArrivalTimestamp`` as epoch seconds), the same as a
    :class:`RecordsPage`'s, so the shard's converter reads both.
    """

    records: list[dict[str, Any]]
    #: Where the next subscription resumes (``AFTER_SEQUENCE_NUMBER``); None at shard end.
    continuation: str | None
    millis_behind_latest: int | None = None
    #: Set on the last event of a closed shard: the shard has ended.
    child_shard_ids: tuple[str, ...] = field(default_factory=tuple)
    #: True when the event says the shard ended (``ChildShards`` present, or no continuation).
    shard_end: bool = False


class Subscriptions(Protocol):
    """What the push reader needs from an enhanced fan-out consumer: one subscription at a
    time per shard. Implemented by :class:`poller.sources.kinesis_efo.KinesisSubscriptions`."""

    def subscribe(
        self, shard_id: str, position: StartPosition
    ) -> AbstractAsyncContextManager[AsyncIterator[PushEvent]]:
        """Open a subscription at ``position`` (any iterator type but ``AT_SEQUENCE_NUMBER``
        with ``settled_through``, which is the converter's business). Entering it makes the
        call: it raises ``SubscriptionBusy`` (ResourceInUse), ``Throttled`` (LimitExceeded),
        ``StreamNotFound`` or ``SourceUnavailable``. The iterator yields events until the
        service ends the subscription (it then stops) or the connection or stream fails
        (``SourceUnavailable``). Leaving the context closes the connection at once, which
        ends the subscription on the service's side too."""
        ...
