"""Lease items in DynamoDB's wire format: the :class:`Lease` the coordinator works with, and
the attribute values and update expressions the table writes (see the package docstring for
the schema). No I/O: :mod:`.table` and :mod:`.calls` send what this module builds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from poller.checkpoints.rewinds import RewindState, RewindTarget
from poller.types import Checkpoint

log = structlog.get_logger("poller.leases")

#: (lease key, rewind id) of the unreadable rewind requests already logged: one warning each.
_UNREADABLE_LOGGED: set[tuple[str, str]] = set()

_PLACEHOLDER = re.compile(r"#(\w+)")
#: The largest window state (bytes of compact JSON) a lease can carry: DynamoDB's item limit
#: is 400 KB, names and values together; 8 KB is left for the lease's other attributes (key,
#: owner, checkpoint, parents, counters), which take well under 1 KB.
WINDOW_STATE_LIMIT = 400 * 1024 - 8 * 1024


#: The "shard id" half of a mapping item's ``leaseKey``; no Kinesis or DynamoDB shard has it.
MAPPING_ITEM = "__mapping__"
#: The "shard id" half of a mapping's member item (the replicas' heartbeats).
MEMBERS_ITEM = "__members__"
#: The global secondary index that gives the compact lease view of a mapping.
VIEW_INDEX = "mapping-shard-index"
#: The lease attributes the view index carries besides its keys (``leaseKey``, ``mapping``,
#: ``shardId``): everything balancing reads. ``windowState`` (up to 392 KB) is left out.
VIEW_ATTRIBUTES = (
    "leaseOwner",
    "leaseCounter",
    "pendingOwner",
    "parentShardId",
    "checkpoint",
    "checkpointSubSequenceNumber",
    "startTimestamp",
    "ownerSwitchesSinceCheckpoint",
    "renewedAt",
)


def lease_key(mapping: str, shard_id: str) -> str:
    """The ``leaseKey`` of a (mapping, shard)."""
    return f"{mapping}#{shard_id}"


def is_mapping_item(item: Mapping[str, Any]) -> bool:
    """Whether a raw item is one of a mapping's own items (its start or its member item)
    rather than a lease."""
    return str(item["leaseKey"]["S"]).endswith((f"#{MAPPING_ITEM}", f"#{MEMBERS_ITEM}"))


def members_key(mapping: str) -> str:
    """The ``leaseKey`` of ``mapping``'s member item."""
    return lease_key(mapping, MEMBERS_ITEM)


@dataclass(frozen=True, slots=True)
class Members:
    """A mapping's member item: the replicas' heartbeats and the assignment generation.

    Attributes:
        beats: replica id -> its latest beat (a number that changes at every heartbeat; only
            its movement means anything, never its value).
        generation: bumped by a replica after it changed assignments; 0 when the item does
            not exist yet.
    """

    beats: dict[str, int]
    generation: int
    #: The id of the latest rewind asked of the mapping (``rewindNotice``): owners that see it
    #: change look for pending rewinds on the leases they run. None when never asked.
    rewind_notice: str | None = None


def members_from_item(item: Mapping[str, Any] | None) -> Members:
    """Parse a member item (None: no item yet, so no members at generation 0)."""
    if item is None:
        return Members({}, 0)
    beats = item.get("members", {}).get("M", {})
    generation = _num(item, "generation")
    return Members(
        {owner: int(Decimal(beat["N"])) for owner, beat in beats.items()},
        0 if generation is None else int(generation),
        _str(item, "rewindNotice"),
    )


def new_members_item(mapping: str, owner: str, beat: int) -> dict[str, Any]:
    """A new member item holding one member, ``owner`` at ``beat``, at generation 0."""
    return {
        "leaseKey": _s(members_key(mapping)),
        "membersOf": _s(mapping),
        "members": {"M": {owner: _n(beat)}},
        "generation": _n(0),
    }


def view_projection(item: Mapping[str, Any]) -> dict[str, Any]:
    """``item`` as the view index holds it: its keys and :data:`VIEW_ATTRIBUTES` only."""
    kept = ("leaseKey", "mapping", "shardId", *VIEW_ATTRIBUTES)
    return {name: item[name] for name in kept if name in item}


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease item as last read or written.

    Attributes:
        mapping: the event source mapping the shard belongs to.
        shard_id: the shard.
        owner: the replica holding the lease (``leaseOwner``), or None when unowned.
        counter: ``leaseCounter``, the fencing token every ownership and checkpoint write is
            conditional on.
        checkpoint: the shard's durable position, or None when never checkpointed.
        parent_ids: parent shard ids, sorted (``parentShardId``).
        pending_owner: a replica that asked the owner to hand the lease over, or None.
        owner_switches: ``ownerSwitchesSinceCheckpoint``.
        renewed_at: the writer's wall clock (epoch seconds) at the last take, renew or
            checkpoint. For display only: never compare it with another host's clock.
        rewind: the latest rewind asked of the shard (``rewindId``, ``rewindTo``, and once
            applied ``rewindApplied*``), or None when none was.
    """

    mapping: str
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: Checkpoint | None
    parent_ids: tuple[str, ...]
    pending_owner: str | None
    owner_switches: int
    renewed_at: float | None
    rewind: RewindState | None = None

    @property
    def key(self) -> str:
        """The item's ``leaseKey``."""
        return lease_key(self.mapping, self.shard_id)

    @property
    def pending_rewind(self) -> RewindState | None:
        """The rewind asked of the shard and not applied yet, if any."""
        return None if self.rewind is None or self.rewind.applied else self.rewind


def _n(value: int | float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _names(*expressions: str) -> dict[str, str]:
    """ExpressionAttributeNames for the ``#attribute`` placeholders used in ``expressions``.

    DynamoDB refuses unused names, so the map is built from the expressions themselves.
    """
    found = {name for expr in expressions for name in _PLACEHOLDER.findall(expr)}
    return {f"#{name}": name for name in sorted(found)}


def _str(item: Mapping[str, Any], name: str) -> str | None:
    value = item.get(name)
    return None if value is None else str(value["S"])


def _num(item: Mapping[str, Any], name: str) -> Decimal | None:
    value = item.get(name)
    return None if value is None else Decimal(value["N"])


def _checkpoint_from(item: Mapping[str, Any]) -> Checkpoint | None:
    sequence = _str(item, "checkpoint")
    start = _num(item, "startTimestamp")
    sub = _num(item, "checkpointSubSequenceNumber")
    if sequence is None and start is None:
        return None
    return Checkpoint(
        sequence_number=sequence,
        start_timestamp=None if start is None else float(start),
        sub_sequence_number=None if sub is None else int(sub),
        window_state=_str(item, "windowState"),
    )


def lease_from_item(item: Mapping[str, Any]) -> Lease:
    """Parse a lease item in DynamoDB's wire format."""
    key = str(item["leaseKey"]["S"])
    fallback_mapping, _, fallback_shard = key.rpartition("#")
    counter = _num(item, "leaseCounter")
    switches = _num(item, "ownerSwitchesSinceCheckpoint")
    renewed = _num(item, "renewedAt")
    return Lease(
        mapping=_str(item, "mapping") or fallback_mapping,
        shard_id=_str(item, "shardId") or fallback_shard,
        owner=_str(item, "leaseOwner"),
        counter=0 if counter is None else int(counter),
        checkpoint=_checkpoint_from(item),
        parent_ids=tuple(sorted(item.get("parentShardId", {}).get("SS", ()))),
        pending_owner=_str(item, "pendingOwner"),
        owner_switches=0 if switches is None else int(switches),
        renewed_at=None if renewed is None else float(renewed),
        rewind=_rewind_from(item, _str(item, "shardId") or fallback_shard),
    )


def _rewind_from(item: Mapping[str, Any], shard_id: str) -> RewindState | None:
    """The lease's rewind request: pending while ``rewindApplied`` is not its ``rewindId``.

    A request this version cannot read (a newer kind, a hand edit, a timestamp without its
    instant) is ignored, with one warning: raising would break every read of the lease (the
    mapping's refresh, the shard's checkpoint writes, and the command that can replace it)."""
    rewind_id, text = _str(item, "rewindId"), _str(item, "rewindTo")
    if rewind_id is None or text is None:
        return None
    try:
        target = RewindTarget.decode(text)
    except ValueError:
        _warn_unreadable(str(item["leaseKey"]["S"]), rewind_id, text)
        return None
    return RewindState(
        shard_id=shard_id,
        rewind_id=rewind_id,
        target=target,
        applied=_str(item, "rewindApplied") == rewind_id,
        applied_by=_str(item, "rewindAppliedBy"),
        applied_from=_str(item, "rewindAppliedFrom"),
        applied_to=_str(item, "rewindAppliedTo"),
    )


def _warn_unreadable(key: str, rewind_id: str, text: str) -> None:
    if (key, rewind_id) not in _UNREADABLE_LOGGED:
        _UNREADABLE_LOGGED.add((key, rewind_id))
        log.warning("lease.rewind_unreadable", lease=key, rewind_id=rewind_id, rewind_to=text)


def _checkpoint_update(checkpoint: Checkpoint) -> tuple[list[str], list[str], dict[str, Any]]:
    """SET clauses, REMOVE clauses and values that store ``checkpoint`` exactly."""
    if checkpoint.sequence_number is None and checkpoint.start_timestamp is None:
        raise ValueError("a checkpoint needs a sequence number, SHARD_END or a start timestamp")
    start = checkpoint.start_timestamp
    sub = checkpoint.sub_sequence_number
    fields = (
        ("checkpoint", ":checkpoint", _s_or_none(checkpoint.sequence_number)),
        ("startTimestamp", ":start", None if start is None else _n(float(start))),
        # KCL's attribute for a position inside a de-aggregated KPL record.
        ("checkpointSubSequenceNumber", ":sub", None if sub is None else _n(sub)),
        # A tumbling window's open window and state (JSON), stored with its position.
        ("windowState", ":window", _s_or_none(checkpoint.window_state)),
    )
    sets: list[str] = []
    removes: list[str] = []
    values: dict[str, Any] = {}
    # Every attribute is written or removed, so no part of an older checkpoint survives.
    for attribute, placeholder, value in fields:
        if value is None:
            removes.append(f"#{attribute}")
        else:
            sets.append(f"#{attribute} = {placeholder}")
            values[placeholder] = value
    return sets, removes, values


def _s_or_none(value: str | None) -> dict[str, str] | None:
    return None if value is None else _s(value)


def _update_expression(sets: Sequence[str], removes: Sequence[str] = ()) -> str:
    parts = []
    if sets:
        parts.append("SET " + ", ".join(sets))
    if removes:
        parts.append("REMOVE " + ", ".join(removes))
    return " ".join(parts)


def new_lease_item(
    mapping: str, shard_id: str, parent_ids: Sequence[str], checkpoint: Checkpoint | None
) -> dict[str, Any]:
    """The item of a new, unowned lease at counter 0."""
    item: dict[str, Any] = {
        "leaseKey": _s(lease_key(mapping, shard_id)),
        "mapping": _s(mapping),
        "shardId": _s(shard_id),
        "leaseCounter": _n(0),
        "ownerSwitchesSinceCheckpoint": _n(0),
    }
    parents = sorted(set(parent_ids))
    if parents:
        item["parentShardId"] = {"SS": parents}
    if checkpoint is not None:
        if checkpoint.sequence_number is not None:
            item["checkpoint"] = _s(checkpoint.sequence_number)
        if checkpoint.start_timestamp is not None:
            item["startTimestamp"] = _n(float(checkpoint.start_timestamp))
    return item


def mapping_item(mapping: str, instant: float) -> dict[str, Any]:
    """The mapping item recording the mapping's start ``instant``."""
    return {
        "leaseKey": _s(lease_key(mapping, MAPPING_ITEM)),
        "startOf": _s(mapping),
        "startTimestamp": _n(float(instant)),
        "pinnedAt": _n(time.time()),
    }


def take_update(lease: Lease, owner: str) -> tuple[str, dict[str, Any]]:
    """The update expression and values of a take of ``lease`` by ``owner``."""
    sets = [
        "#leaseOwner = :owner",
        "#leaseCounter = :next",
        "#renewedAt = :now",
    ]
    values: dict[str, Any] = {
        ":owner": _s(owner),
        ":next": _n(lease.counter + 1),
        ":counter": _n(lease.counter),
        ":now": _n(time.time()),
    }
    if lease.owner is not None and lease.owner != owner:
        sets.append(
            "#ownerSwitchesSinceCheckpoint ="
            " if_not_exists(#ownerSwitchesSinceCheckpoint, :zero) + :one"
        )
        values[":zero"] = _n(0)
        values[":one"] = _n(1)
    return _update_expression(sets, ["#pendingOwner"]), values
