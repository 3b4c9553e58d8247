"""The mapping store's record and protocol: what every backend keeps for an API mapping.

Data flow::

    poller.control.operations --create/update/finalize_delete--> MappingStore
    poller.reconcile --head (every poll interval), records (when it moved), ack--> MappingStore
    poller.control.state <--acks-- MappingStore

A store keeps one :class:`MappingRecord` per mapping created through the API, a **head**
revision that every mutation moves (so that replicas notice a change with one tiny read),
and each replica's **ack**: the head revision it last applied, with the time it said so. The
backends: ``store_memory`` (tests), ``store_sqlite`` (the checkpoint database) and
``store_dynamodb`` (the lease table, shared by every replica).

Every mutation is atomic and conditional: a record is written only if nobody wrote it since it
was read (``written``), together with the head, so no change is lost and none is torn. The
caller's change function decides the new record from the current one; the store retries it on
contention (a bounded number of times, then :class:`~poller.errors.CheckpointError`). An
outage of the backend is a :class:`~poller.errors.CheckpointError`: the API answers 500, which
every AWS SDK retries, and running mappings keep their last configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

#: What the user asked the mapping to be.
Desired = Literal["Enabled", "Disabled", "Deleted"]
#: The last user change; names the transitional state until every replica applied it.
Change = Literal["create", "update", "enable", "disable", "delete"]

#: How many times a store retries a mutation that lost a race before giving up.
MAX_WRITE_ATTEMPTS = 8
#: An ack not renewed for this long is forgotten by the store: its replica stopped without
#: saying so (a crash, a killed task). Every start is a new replica identity, so such acks
#: would pile up for good (in the lease table, in one item of at most 400 KB, until every ack
#: is refused). Far beyond any liveness window (:mod:`poller.control.state`): no state changes.
ACK_RETENTION_SECONDS = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class MappingRecord:
    """One mapping created through the API, as stored.

    Attributes:
        uuid: the mapping's UUID; also its name (leases, checkpoints and metrics key on it).
        revision: the head revision of its last configuration change (create, update, enable,
            disable, delete). Replicas that acked at least this have applied it.
        created_revision: the head revision of its create.
        written: the head revision of its last write of any kind (tags included); the
            condition every write is made on. Set by the store.
        request: the mapping's parameters in AWS's names (``EventSourceArn``, ``FunctionName``,
            ``BatchSize``, ...), as normalized by :mod:`poller.control.shapes`; without
            ``UUID``, ``State``, ``Tags`` or ``Enabled`` (that is ``desired``).
        tags: the mapping's tags.
        desired: Enabled, Disabled, or Deleted (drained everywhere, then finalized).
        change: the last user change.
        function_arn: the full function ARN the API shows (``FunctionArn``).
        pair_key: ``<function_arn> <event_source_arn>``; unique among the stored records, as
            AWS refuses a second mapping of one function to one source.
        last_modified: epoch seconds of the last user change (``LastModified``).
        last_processing_result: ``OK``, ``PROBLEM: ...``, or None (no records processed yet).
    """

    uuid: str
    revision: int
    created_revision: int
    written: int
    request: Mapping[str, Any]
    tags: Mapping[str, str]
    desired: Desired
    change: Change
    function_arn: str
    pair_key: str
    last_modified: float
    last_processing_result: str | None = None

    def to_json(self) -> str:
        """The record as compact JSON, for backends that store it as one value.

        Non-ASCII text stays UTF-8, not ``\\uXXXX`` escapes: a letter outside the BMP (AWS
        accepts them in tags and filter patterns) takes 4 bytes instead of 12, which keeps a
        record at AWS's limits (50 tags, 5 filters of 4096 characters) within DynamoDB's
        400 KB item. Only text holding a lone surrogate, which UTF-8 cannot carry, is escaped.
        """
        data = asdict(self)
        data["request"], data["tags"] = dict(self.request), dict(self.tags)
        text = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:
            return json.dumps(data, separators=(",", ":"), sort_keys=True)
        return text

    @classmethod
    def from_json(cls, text: str) -> MappingRecord:
        """A record from :meth:`to_json`'s output. Fields this version does not know (a newer
        version's, during a rolling upgrade) are left out, so that older replicas still read
        the store; new fields have defaults, so that newer replicas read older records."""
        data = json.loads(text)
        return cls(**{name: data[name] for name in _RECORD_FIELDS if name in data})


#: The fields a stored record may set (see :meth:`MappingRecord.from_json`).
_RECORD_FIELDS = tuple(field.name for field in fields(MappingRecord))


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """A replica's last word: the head revision it applied, and when (epoch seconds)."""

    applied: int
    beat_at: float


class PairTaken(Exception):
    """A mapping of this function to this source exists already (AWS's 409)."""

    def __init__(self, uuid: str) -> None:
        super().__init__(f"a mapping of this function to this source exists: {uuid}")
        self.uuid = uuid


class TooManyMappings(Exception):
    """The store holds ``limit`` mappings already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the mapping store holds its limit of {limit} mappings")
        self.limit = limit


#: A change function: (current record, the revision this write gets) -> the new record, or
#: None to write nothing (a repeated update that changes nothing). It may raise to refuse.
ChangeFn = Callable[[MappingRecord, int], "MappingRecord | None"]


class MappingStore(Protocol):
    """Durable, shared mapping records. Every method may raise CheckpointError (an outage)."""

    async def head(self) -> int:
        """The current head revision (0 for an empty store); a consistent, cheap read."""
        ...

    async def records(self) -> dict[str, MappingRecord]:
        """Every stored record (deleted ones included until finalized), by UUID."""
        ...

    async def get(self, uuid: str) -> MappingRecord | None:
        """One record, or None."""
        ...

    async def create(self, record: MappingRecord, *, limit: int) -> MappingRecord:
        """Store a new record; the store sets ``revision``, ``created_revision`` and
        ``written`` to the new head. Raises PairTaken (same ``pair_key`` stored) or
        TooManyMappings (``limit`` records stored)."""
        ...

    async def update(self, uuid: str, change: ChangeFn) -> MappingRecord | None:
        """Read the record, apply ``change``, write it if nobody wrote it meanwhile (retried
        on contention); the store sets ``written`` to the new head. Returns the record as
        stored after the call (unchanged if ``change`` returned None), or None if no record
        has this UUID. Raises PairTaken if the new record's ``pair_key`` is another's."""
        ...

    async def finalize_delete(self, uuid: str, revision: int) -> bool:
        """Remove a deleted record, only if its ``revision`` is still ``revision`` (nobody
        changed it since every replica drained it); moves the head. Whether it removed it."""
        ...

    async def set_processing_result(self, uuid: str, result: str) -> None:
        """Record ``LastProcessingResult``; moves neither ``written`` nor the head. A missing
        record is ignored."""
        ...

    async def ack(self, replica: str, applied: int) -> None:
        """Say that ``replica`` applied head revision ``applied``, now (also its heartbeat).
        Meanwhile the store forgets acks older than ``ACK_RETENTION_SECONDS``."""
        ...

    async def acks(self) -> dict[str, ReplicaAck]:
        """Every replica's last ack, but those older than ``ACK_RETENTION_SECONDS``."""
        ...

    async def forget_replica(self, replica: str) -> None:
        """Remove ``replica``'s ack (a clean stop), so the state no longer waits for it."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds (not a shared client or connection)."""
        ...


def fresh_acks(acks: Mapping[str, ReplicaAck], now: float) -> dict[str, ReplicaAck]:
    """The acks renewed within ``ACK_RETENTION_SECONDS`` of ``now`` (epoch seconds)."""
    return {r: ack for r, ack in acks.items() if now - ack.beat_at <= ACK_RETENTION_SECONDS}


def pair_key(function_arn: str, event_source_arn: str) -> str:
    """The key that keeps one mapping per function and source."""
    return f"{function_arn} {event_source_arn}"


def tags_only(record: MappingRecord, tags: Mapping[str, str]) -> MappingRecord:
    """``record`` with new tags and nothing else changed (a tag write is no configuration
    change, so its state does not move)."""
    return MappingRecord(**{**asdict(record), "tags": dict(tags)})


__all__ = [
    "ACK_RETENTION_SECONDS",
    "MAX_WRITE_ATTEMPTS",
    "Change",
    "ChangeFn",
    "Desired",
    "MappingRecord",
    "MappingStore",
    "PairTaken",
    "ReplicaAck",
    "TooManyMappings",
    "fresh_acks",
    "pair_key",
    "tags_only",
]
