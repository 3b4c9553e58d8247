"""Test seams: in-memory stand-ins for the ports around the stream engine, for users and for us.

The engine (:mod:`poller.streams`) reads through a :class:`~poller.ports.StreamApi`, invokes a
:class:`~poller.types.Target`, checkpoints into a :class:`~poller.types.CheckpointStore` and
reports to :class:`~poller.observability.metrics.Metrics`. This module offers a fake for each,
so a test drives the real reader, processor and runner with no emulator and no network::

    FakeStreamApi (scripted pages) --raw Kinesis records--> ShardReader --> ShardProcessor
        --event--> RecordingTarget (scripted answers)
        --Checkpoint--> MemoryCheckpointStore;  hooks --> RecordingMetrics

:class:`FakeStreamApi` serves raw Kinesis records (base64 ``Data``, ``PartitionKey``,
``SequenceNumber``, ``ApproximateArrivalTimestamp``) and converts them with the Kinesis
adapter's own converter, so the event records and KPL de-aggregation are the production ones.
Errors (``IteratorExpired``, ``Throttled``, ``PositionTrimmed``, any ``SourceError``) are items
of a shard's script, raised by the GetRecords call that reaches them. Nothing here imports a
test framework, so the module is safe to import from an application's own tests.

Example::

    api = FakeStreamApi()
    api.add_shard("shard-0")
    api.add_page("shard-0", [Put("key-a", b"one"), Put("key-b", b"two")])
    api.close_shard("shard-0")
    target = RecordingTarget()
    target.script(function_error("boom"), success())  # then success by default
    store, metrics = MemoryCheckpointStore(), RecordingMetrics()
    # ... run a StreamMappingRunner(api=api, target=target, store=store, metrics=metrics)
    # and poll until store.checkpoints shows SHARD_END; target.events holds every event.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from poller.checkpoints.memory import MemoryCheckpointStore
from poller.core.kpl import MAGIC
from poller.core.lineage import ShardInfo
from poller.errors import PositionTrimmed, SourceError
from poller.observability.metrics import RecordingMetrics
from poller.ports import PageConverter, RecordsPage, StartPosition
from poller.sources.kinesis import KinesisStreamApi
from poller.types import InvokeResult, Outcome

__all__ = [
    "FakeStreamApi",
    "MemoryCheckpointStore",
    "Put",
    "RecordingMetrics",
    "RecordingTarget",
    "Slow",
    "event_positions",
    "function_error",
    "kpl_aggregate",
    "partial_failure",
    "success",
]

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/fake"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:fake"


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put:
    """One record as a producer puts it; the fake stream gives it a sequence number.

    ``arrival`` is epoch seconds (default: when it is added to the stream).
    """

    partition_key: str
    data: bytes
    arrival: float | None = None


def kpl_aggregate(users: Sequence[tuple[str, bytes]], partition_key: str = "aggregate") -> Put:
    """A KPL aggregated record holding ``users`` (partition key, data) in order, in the wire
    format of amazon-kinesis-producer (magic, protobuf ``AggregatedRecord``, MD5)."""
    keys = list(dict.fromkeys(key for key, _ in users))
    message = b"".join(_field(1, key.encode()) for key in keys)
    for key, data in users:
        record = _varint(1 << 3) + _varint(keys.index(key)) + _field(3, data)
        message += _field(3, record)
    digest = hashlib.md5(message, usedforsecurity=False).digest()
    return Put(partition_key, MAGIC + message + digest)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# -- the stream -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Shard:
    """One shard's script: its records, page boundaries, scripted errors and lineage."""

    parents: tuple[str, ...]
    records: list[dict[str, Any]] = field(default_factory=list)
    #: Offsets (record counts) where a GetRecords page ends.
    page_ends: list[int] = field(default_factory=list)
    #: Errors raised by the first GetRecords at that offset, once each, in order.
    errors: dict[int, deque[SourceError]] = field(default_factory=dict)
    closed: bool = False
    children: tuple[str, ...] = ()
    #: Records before this offset are trimmed (older than the retention).
    horizon: int = 0


class FakeStreamApi:
    """A ``StreamApi`` over scripted shards, serving raw Kinesis records page by page.

    A shard's content is the pages added to it in order (:meth:`add_page`); a read returns the
    rest of the page its iterator is in, so a reader that recreates its iterator after the
    last record it handed on gets what a real stream would give. Errors added with
    :meth:`add_error` are raised, once, by the first GetRecords that reaches their place. An
    open shard answers an empty page at its end; a closed one (:meth:`close_shard`) answers its
    child shard ids and no next iterator. Iterators never expire unless scripted.

    Args:
        deaggregate: de-aggregate KPL records (the mapping's ``deaggregate_records``).
        reports_trims: behave as DynamoDB Streams (a trimmed position raises
            ``PositionTrimmed``) rather than Kinesis (read silently from the horizon).
        idle_interval: seconds between reads of a caught-up shard (Lambda: 1 s); small here.
        retention: what :meth:`retention_seconds` answers.

    Attributes:
        calls: every call, as ``(name, shard id, detail)`` in order: ``("get_iterator", shard,
            StartPosition)``, ``("get_records", shard, offset)``, ``("list_shards", "", None)``.
    """

    limit = 10_000

    def __init__(
        self,
        *,
        deaggregate: bool = False,
        reports_trims: bool = False,
        idle_interval: float = 0.01,
        retention: float | None = 24 * 3600.0,
        stream_arn: str = STREAM_ARN,
    ) -> None:
        self.idle_interval = idle_interval
        self.stream_arn = stream_arn
        self._reports_trims = reports_trims
        self._retention = retention
        self._shards: dict[str, _Shard] = {}
        self._sequence = itertools.count(1)
        self._iterators: dict[str, tuple[str, int]] = {}
        self._iterator_ids = itertools.count()
        self.calls: list[tuple[str, str, Any]] = []
        # Only the converters of the real adapter are used: it never reaches its client.
        self._kinesis = KinesisStreamApi(
            None,
            stream_arn=stream_arn,
            region="us-east-1",
            identity_arn="arn:aws:iam::123456789012:role/fake",
            deaggregate=deaggregate,
        )

    # -- scripting ------------------------------------------------------------------------------

    def add_shard(self, shard_id: str, *, parents: Sequence[str] = ()) -> None:
        """A new, open, empty shard (listed from now on)."""
        self._shards[shard_id] = _Shard(parents=tuple(parents))

    def add_page(self, shard_id: str, puts: Iterable[Put]) -> list[dict[str, Any]]:
        """Append one GetRecords page to the shard; returns its raw records."""
        shard = self._shards[shard_id]
        if shard.closed:
            raise ValueError(f"shard {shard_id} is closed: no page can be added")
        raws = [self._raw(put) for put in puts]
        shard.records.extend(raws)
        shard.page_ends.append(len(shard.records))
        return raws

    def add_error(self, shard_id: str, error: SourceError) -> None:
        """The next GetRecords at the shard's current end raises ``error`` (once)."""
        shard = self._shards[shard_id]
        shard.errors.setdefault(len(shard.records), deque()).append(error)

    def close_shard(self, shard_id: str, children: Sequence[str] = ()) -> None:
        """End the shard after its pages; reads at its end name ``children``."""
        shard = self._shards[shard_id]
        shard.closed, shard.children = True, tuple(children)

    def trim(self, shard_id: str, count: int) -> None:
        """Drop the shard's first ``count`` records, as retention does."""
        self._shards[shard_id].horizon = count

    @property
    def shard_ids(self) -> list[str]:
        """The shards added, in order."""
        return list(self._shards)

    def _raw(self, put: Put) -> dict[str, Any]:
        return {
            "SequenceNumber": f"{next(self._sequence):021d}",
            "PartitionKey": put.partition_key,
            "Data": base64.b64encode(put.data).decode("ascii"),
            "ApproximateArrivalTimestamp": time.time() if put.arrival is None else put.arrival,
        }

    # -- StreamApi ------------------------------------------------------------------------------

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard added, in the order added."""
        self.calls.append(("list_shards", "", None))
        return [
            ShardInfo(shard_id=shard_id, parent_ids=shard.parents, closed=shard.closed)
            for shard_id, shard in self._shards.items()
        ]

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        """An iterator at ``position``; raises ``PositionTrimmed`` as the service would."""
        self.calls.append(("get_iterator", shard_id, position))
        shard = self._shards[shard_id]
        offset = self._offset(shard, position)
        if offset < shard.horizon:
            if self._reports_trims and position.sequence_number is not None:
                raise PositionTrimmed(f"{shard_id}: {position.sequence_number} is trimmed")
            offset = shard.horizon
        iterator = f"{shard_id}/{next(self._iterator_ids)}"
        self._iterators[iterator] = (shard_id, offset)
        return iterator

    def _offset(self, shard: _Shard, position: StartPosition) -> int:
        """Index of the first record a new iterator at ``position`` reads."""
        if position.type == "TRIM_HORIZON":
            return 0
        if position.type == "LATEST":
            return len(shard.records)
        if position.type == "AT_TIMESTAMP":
            when = position.timestamp or 0.0
            arrivals = (self.arrival_of(raw) for raw in shard.records)
            return next((i for i, at in enumerate(arrivals) if at >= when), len(shard.records))
        wanted = int(position.sequence_number or 0)
        after = position.type == "AFTER_SEQUENCE_NUMBER"
        for index, raw in enumerate(shard.records):
            number = int(raw["SequenceNumber"])
            if number > wanted or (number == wanted and not after):
                return index
        return len(shard.records)

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        """The rest of the page at the iterator (at most ``limit`` records), or a scripted
        error."""
        shard_id, offset = self._iterators.pop(iterator)
        self.calls.append(("get_records", shard_id, offset))
        shard = self._shards[shard_id]
        errors = shard.errors.get(offset)
        if errors:
            raise errors.popleft()
        offset = max(offset, shard.horizon)
        end = next((e for e in shard.page_ends if e > offset), len(shard.records))
        if limit is not None:
            end = min(end, offset + max(1, limit))
        records = shard.records[offset:end]
        if end == len(shard.records) and shard.closed and not shard.errors.get(end):
            return RecordsPage(records, None, 0, shard.children)
        following = f"{shard_id}/{next(self._iterator_ids)}"
        self._iterators[following] = (shard_id, end)
        return RecordsPage(records, following, 0)

    def sequence_of(self, raw: dict[str, Any]) -> str:
        """A raw record's sequence number."""
        return str(raw["SequenceNumber"])

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        """The Kinesis adapter's converter (with KPL de-aggregation when configured)."""
        return self._kinesis.converter(shard_id, start)

    def arrival_of(self, raw: dict[str, Any]) -> float:
        """A raw record's arrival time, epoch seconds."""
        return float(raw["ApproximateArrivalTimestamp"])

    @property
    def reports_trims(self) -> bool:
        """Whether a trimmed position raises (DynamoDB Streams) or is read silently (Kinesis)."""
        return self._reports_trims

    async def retention_seconds(self) -> float | None:
        """The retention given at construction."""
        return self._retention

    def iterator_starts(self, shard_id: str) -> list[StartPosition]:
        """Every position an iterator of ``shard_id`` was asked for, in order."""
        return [d for name, s, d in self.calls if name == "get_iterator" and s == shard_id]


# -- the target -------------------------------------------------------------------------------


def success(payload: Any = None) -> InvokeResult:
    """The function returned ``payload``."""
    return InvokeResult(Outcome.SUCCESS, payload=payload, status_code=200)


def function_error(message: str = "scripted failure") -> InvokeResult:
    """The function raised."""
    return InvokeResult(
        Outcome.FUNCTION_ERROR, status_code=200, function_error="Unhandled", error=message
    )


def partial_failure(*item_ids: str, state: dict[str, Any] | None = None) -> InvokeResult:
    """The function answered ``batchItemFailures`` naming ``item_ids`` (sequence numbers, or
    ``seq:sub`` inside a KPL aggregate); with ``state`` too, for a tumbling window."""
    payload: dict[str, Any] = {"batchItemFailures": [{"itemIdentifier": i} for i in item_ids]}
    if state is not None:
        payload["state"] = state
    return success(payload)


@dataclass(frozen=True, slots=True)
class Slow:
    """An answer given only once ``release`` is set: an invocation still in flight."""

    release: anyio.Event
    then: InvokeResult = field(default_factory=success)


#: An answer: a result, a slow result, or a function of the event that returns a result.
Answer = InvokeResult | Slow | Callable[[dict[str, Any]], InvokeResult | Awaitable[InvokeResult]]


class RecordingTarget:
    """A ``Target`` that records every event and answers from a script.

    Scripted answers (:meth:`script`) are used one per invocation, in order; after them every
    invocation gets ``default`` (success unless given). An answer may be a function of the
    event, for rules such as "fail every event holding key X".

    Attributes:
        events: every event received, in order of arrival (also those still in flight).
        in_flight: invocations not yet answered; ``max_in_flight``: the most at once.
    """

    def __init__(self, default: Answer | None = None, function_arn: str = FUNCTION_ARN) -> None:
        self.function_arn = function_arn
        self._default: Answer = success() if default is None else default
        self._script: deque[Answer] = deque()
        self.events: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next invocations."""
        self._script.extend(answers)

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Record ``event`` and answer it."""
        self.events.append(event)
        answer = self._script.popleft() if self._script else self._default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await _answer(answer, event)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        """Nothing to release."""
        self.closed = True

    def record_events(self) -> list[dict[str, Any]]:
        """The events that carried records (a window's final invocations carry none)."""
        return [event for event in self.events if event.get("Records")]

    def delivered(self) -> list[str]:
        """The positions of every record received, in order of invocation (retries repeat)."""
        return [position for event in self.events for position in event_positions(event)]


async def _answer(answer: Answer, event: dict[str, Any]) -> InvokeResult:
    if isinstance(answer, InvokeResult):
        return answer
    if isinstance(answer, Slow):
        await answer.release.wait()
        return answer.then
    result = answer(event)
    if inspect.isawaitable(result):
        return await result
    return result


def event_positions(event: dict[str, Any]) -> list[str]:
    """The positions of an event's Kinesis records: ``seq``, or ``seq:sub`` inside an aggregate
    (what ``batchItemFailures`` names)."""
    positions = []
    for record in event.get("Records", []):
        kinesis = record["kinesis"]
        sub = kinesis.get("subSequenceNumber")
        sequence = kinesis["sequenceNumber"]
        positions.append(sequence if sub is None else f"{sequence}:{sub}")
    return positions
