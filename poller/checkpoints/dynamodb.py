"""DynamoDB lease table: shard ownership and checkpoints shared by several replicas.

One item per (mapping, shard), keyed ``leaseKey = "<mapping>#<shardId>"``, with the attribute
names of the Kinesis Client Library's lease table::

    leaseKey                      S   hash key
    mapping, shardId              S   the two halves of the key, for filtering and display
    leaseOwner                    S   the replica holding the lease; absent when unowned
    leaseCounter                  N   the fencing token: +1 on every take/renew/checkpoint/release
    checkpoint                    S   a sequence number or SHARD_END
    startTimestamp                N   a pinned LATEST start (epoch seconds), before any sequence
    windowState                   S   a tumbling window's open window and state (JSON)
    parentShardId                 SS  parent shard ids; absent when none (sets cannot be empty)
    ownerSwitchesSinceCheckpoint  N   +1 per change of owner, 0 after a checkpoint (churn signal)
    pendingOwner                  S   graceful handoff: a replica asking the owner to let go
    renewedAt                     N   writer's wall clock at the last take/renew/checkpoint

Besides the leases, each mapping that has started has one *mapping item*, keyed
``leaseKey = "<mapping>#__mapping__"`` (no shard id is spelled so)::

    leaseKey                      S   "<mapping>#__mapping__"
    startOf                       S   the mapping (deliberately not ``mapping``, so every Scan
                                      filtered on ``mapping`` - leases, checkpoints, status,
                                      balancing, older versions - never sees it)
    startTimestamp                N   the instant the mapping first started (epoch seconds);
                                      0 for "from TRIM_HORIZON" (see ``poller.streams``)
    pinnedAt                      N   the writer's wall clock when it was recorded (display)

It is written once, with ``attribute_not_exists(leaseKey)``, by whichever replica starts the
mapping first, and never changed: every shard that has no checkpoint yet starts from it.

This module is only the I/O layer: every write is one conditional ``UpdateItem`` (or
``PutItem``), and the lease manager above it decides when to take, renew, steal and hand off.
Every ownership or checkpoint write is conditional on the ``leaseCounter`` the caller observed,
so a replica that lost its lease (paused, partitioned, slow) can never overwrite the new owner's
state: its write fails and it learns that it was fenced off. ``request_handoff`` is the one
write that leaves the counter alone, so it never fences the owner out.

Expiry is for the caller to judge by observation, as KCL does: a lease whose counter has not
moved for the lease duration on the observer's *monotonic* clock is expired. ``renewedAt`` is a
wall-clock value written by whichever host renewed, and is for display only.

A replica must keep one current :class:`Lease` per shard and serialise its writes to it (renew
and checkpoint both move the counter, so two concurrent writers from one replica fence each
other). When a fenced write fails, :class:`LeaseLost` carries the item as DynamoDB held it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.translate import error_code
from poller.errors import CheckpointError, ConfigError, LeaseLost
from poller.types import Checkpoint

_CONDITION_FAILED = "ConditionalCheckFailedException"
_NOT_FOUND = "ResourceNotFoundException"
_IN_USE = "ResourceInUseException"
_PLACEHOLDER = re.compile(r"#(\w+)")
#: How long ensure_table waits for a new table to become ACTIVE: 1 s polls, 2 minutes.
_TABLE_WAIT = {"Delay": 1, "MaxAttempts": 120}
#: The largest window state (bytes of compact JSON) a lease can carry: DynamoDB's item limit
#: is 400 KB, names and values together; 8 KB is left for the lease's other attributes (key,
#: owner, checkpoint, parents, counters), which take well under 1 KB.
WINDOW_STATE_LIMIT = 400 * 1024 - 8 * 1024


#: The "shard id" half of a mapping item's ``leaseKey``; no Kinesis or DynamoDB shard has it.
MAPPING_ITEM = "__mapping__"


def lease_key(mapping: str, shard_id: str) -> str:
    """The ``leaseKey`` of a (mapping, shard)."""
    return f"{mapping}#{shard_id}"


def is_mapping_item(item: Mapping[str, Any]) -> bool:
    """Whether a raw item is a mapping item rather than a lease."""
    return str(item["leaseKey"]["S"]).endswith(f"#{MAPPING_ITEM}")


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

    @property
    def key(self) -> str:
        """The item's ``leaseKey``."""
        return lease_key(self.mapping, self.shard_id)


class _Write(NamedTuple):
    """The result of one conditional write: the item after it, or before the refusal."""

    ok: bool
    item: dict[str, Any] | None


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
    )


def _checkpoint_update(checkpoint: Checkpoint) -> tuple[list[str], list[str], dict[str, Any]]:
    """SET clauses, REMOVE clauses and values that store ``checkpoint`` exactly."""
    if checkpoint.sequence_number is None and checkpoint.start_timestamp is None:
        raise ValueError("a checkpoint needs a sequence number, SHARD_END or a start timestamp")
    sets: list[str] = []
    removes: list[str] = []
    values: dict[str, Any] = {}
    if checkpoint.sequence_number is not None:
        sets.append("#checkpoint = :checkpoint")
        values[":checkpoint"] = _s(checkpoint.sequence_number)
    else:
        removes.append("#checkpoint")
    if checkpoint.start_timestamp is not None:
        sets.append("#startTimestamp = :start")
        values[":start"] = _n(float(checkpoint.start_timestamp))
    else:
        removes.append("#startTimestamp")
    # KCL's attribute for a position inside a de-aggregated KPL record.
    if checkpoint.sub_sequence_number is not None:
        sets.append("#checkpointSubSequenceNumber = :sub")
        values[":sub"] = _n(checkpoint.sub_sequence_number)
    else:
        removes.append("#checkpointSubSequenceNumber")
    # A tumbling window's open window and state (JSON), stored with the position it belongs to.
    if checkpoint.window_state is not None:
        sets.append("#windowState = :window")
        values[":window"] = _s(checkpoint.window_state)
    else:
        removes.append("#windowState")
    return sets, removes, values


def _update_expression(sets: Sequence[str], removes: Sequence[str] = ()) -> str:
    parts = []
    if sets:
        parts.append("SET " + ", ".join(sets))
    if removes:
        parts.append("REMOVE " + ", ".join(removes))
    return " ".join(parts)


class DynamoDBLeaseTable:
    """Conditional reads and writes of one lease table.

    Args:
        client: an aiobotocore DynamoDB client (a control client: a few quick retries). The
            caller owns it and closes it.
        table: the table name.
        scan_page_size: ``Limit`` of each Scan page in :meth:`list_leases`; None lets DynamoDB
            fill 1 MB pages.

    Every call raises :class:`~poller.errors.CheckpointError` (retriable) when DynamoDB cannot
    be reached or answers an error, naming the table and the call. A refused condition is not
    an error: each method documents what it returns or raises then.
    """

    def __init__(self, client: Any, table: str, *, scan_page_size: int | None = None) -> None:
        self._client = client
        self.table = table
        self._scan_page_size = scan_page_size

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, call: str, exc: Exception) -> CheckpointError:
        if isinstance(exc, ClientError):
            code = error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            text = f"lease table {self.table}: {call} failed with {code}: {message}"
            return CheckpointError(text.rstrip(": "))
        return CheckpointError(f"lease table {self.table}: {call} could not reach DynamoDB: {exc}")

    async def _call(self, call: str, method: str, **params: Any) -> dict[str, Any]:
        """One DynamoDB call on this table; errors become CheckpointError."""
        try:
            response: dict[str, Any] = await getattr(self._client, method)(
                TableName=self.table, **params
            )
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(call, exc) from exc
        return response

    async def _update(
        self,
        call: str,
        key: str,
        *,
        update: str,
        condition: str,
        values: dict[str, Any],
        return_new: bool = True,
    ) -> _Write:
        """A conditional UpdateItem. A refused condition returns the item as it was."""
        params: dict[str, Any] = {
            "Key": {"leaseKey": _s(key)},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": _names(update, condition),
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW" if return_new else "NONE",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        try:
            response = await self._client.update_item(TableName=self.table, **params)
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return _Write(False, exc.response.get("Item"))
            raise self._error(call, exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(call, exc) from exc
        return _Write(True, response.get("Attributes"))

    async def _fenced_update(
        self,
        call: str,
        lease: Lease,
        owner: str,
        *,
        update: str,
        values: dict[str, Any] | None = None,
        return_new: bool = True,
    ) -> _Write:
        """An UpdateItem that only ``owner`` at ``lease.counter`` may make: the fence.

        ``update`` may use ``:next`` (the counter after this write) besides its own ``values``.
        """
        fence = {
            ":owner": _s(owner),
            ":counter": _n(lease.counter),
            ":next": _n(lease.counter + 1),
        }
        return await self._update(
            call,
            lease.key,
            update=update,
            condition="#leaseOwner = :owner AND #leaseCounter = :counter",
            values={**(values or {}), **fence},
            return_new=return_new,
        )

    def _lost(self, call: str, lease: Lease, owner: str, write: _Write) -> LeaseLost:
        observed = None if write.item is None else lease_from_item(write.item)
        if observed is None:
            now = "the lease no longer exists"
        else:
            now = f"it is now owned by {observed.owner or 'nobody'} at counter {observed.counter}"
        return LeaseLost(
            f"lease table {self.table}: {call} of {lease.key} by {owner} at counter"
            f" {lease.counter} was refused: {now}",
            observed=observed,
        )

    # -- table --------------------------------------------------------------------------------

    async def ensure_table(self, *, create: bool = True) -> None:
        """Make sure the table exists and is ACTIVE, creating it when allowed.

        A new table has hash key ``leaseKey`` (S) and on-demand billing. Replicas that start
        together may all try to create it; whoever loses the race waits for the winner's table.

        Raises:
            ConfigError: the table does not exist and ``create`` is False, or its key schema is
                not ``leaseKey`` alone.
            CheckpointError: DynamoDB could not be reached or refused a call.
        """
        table = await self._describe()
        if table is None:
            if not create:
                raise ConfigError(
                    [f"lease table {self.table!r} does not exist (and creating it is disabled)"]
                )
            await self._create_table()
        else:
            schema = [(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])]
            if schema != [("leaseKey", "HASH")]:
                raise ConfigError(
                    [f"lease table {self.table!r} has key schema {schema}, not leaseKey (HASH)"]
                )
            if table.get("TableStatus") == "ACTIVE":
                return
        await self._wait_active()

    async def _describe(self) -> dict[str, Any] | None:
        """The table's description, or None when it does not exist."""
        try:
            described = await self._client.describe_table(TableName=self.table)
        except ClientError as exc:
            if error_code(exc) == _NOT_FOUND:
                return None
            raise self._error("DescribeTable", exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error("DescribeTable", exc) from exc
        table: dict[str, Any] = described["Table"]
        return table

    async def _create_table(self) -> None:
        try:
            await self._client.create_table(
                TableName=self.table,
                KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if error_code(exc) != _IN_USE:  # another replica is creating it
                raise self._error("CreateTable", exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error("CreateTable", exc) from exc

    async def _wait_active(self) -> None:
        try:
            waiter = self._client.get_waiter("table_exists")
            await waiter.wait(TableName=self.table, WaiterConfig=_TABLE_WAIT)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error("DescribeTable (waiting for ACTIVE)", exc) from exc

    # -- reads --------------------------------------------------------------------------------

    async def list_leases(self, mapping: str) -> list[Lease]:
        """Every lease of ``mapping``, sorted by shard id (a consistent, paginated Scan)."""
        params: dict[str, Any] = {
            "ConsistentRead": True,
            "FilterExpression": "#mapping = :mapping",
            "ExpressionAttributeNames": {"#mapping": "mapping"},
            "ExpressionAttributeValues": {":mapping": _s(mapping)},
        }
        if self._scan_page_size is not None:
            params["Limit"] = self._scan_page_size
        leases: list[Lease] = []
        while True:
            page = await self._call("Scan", "scan", **params)
            items = page.get("Items", [])
            leases.extend(lease_from_item(item) for item in items if not is_mapping_item(item))
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            params["ExclusiveStartKey"] = last
        leases.sort(key=lambda lease: lease.shard_id)
        return leases

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        """The lease of (mapping, shard) by a consistent read, or None when there is none."""
        item = await self._read("GetItem", lease_key(mapping, shard_id))
        return None if item is None else lease_from_item(item)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping item's start instant (a consistent read), or None when there is none."""
        item = await self._read("GetItem (mapping start)", lease_key(mapping, MAPPING_ITEM))
        start = None if item is None else _num(item, "startTimestamp")
        return None if start is None else float(start)

    async def _read(self, call: str, key: str) -> dict[str, Any] | None:
        """The item at lease key ``key``, or None when there is none. The read is consistent:
        ownership and the pinned start are decided on it, and a stale copy could undo them."""
        response = await self._call(
            call, "get_item", Key={"leaseKey": _s(key)}, ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    # -- writes -------------------------------------------------------------------------------

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Create the mapping item at ``instant`` unless it exists; return its instant.

        A conditional PutItem: of replicas starting together exactly one records its instant,
        and every one gets that instant back.
        """
        item = {
            "leaseKey": _s(lease_key(mapping, MAPPING_ITEM)),
            "startOf": _s(mapping),
            "startTimestamp": _n(float(instant)),
            "pinnedAt": _n(time.time()),
        }
        if await self._put_new(item, "PutItem (mapping start)"):
            return float(instant)
        recorded = await self.mapping_start(mapping)
        if recorded is None:  # only if someone deleted it in between: never done by poller
            raise CheckpointError(f"lease table {self.table}: mapping item of {mapping} vanished")
        return recorded

    async def create(
        self,
        mapping: str,
        shard_id: str,
        *,
        parent_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        """Create an unowned lease at counter 0. False when the lease already exists.

        An existing lease is left exactly as it is, whatever ``parent_ids`` and ``checkpoint``
        say: several replicas may discover the same shard at once.
        """
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
        return await self._put_new(item, "PutItem (create)")

    async def _put_new(self, item: dict[str, Any], what: str) -> bool:
        """Put ``item`` unless an item with its lease key exists; False when one does.

        The condition makes creation race-free: of replicas creating the same item at once,
        exactly one wins and the others learn it without overwriting anything.
        """
        try:
            await self._client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(#leaseKey)",
                ExpressionAttributeNames={"#leaseKey": "leaseKey"},
            )
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise self._error(what, exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(what, exc) from exc
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take ``lease`` for ``owner`` if its counter is still the one observed.

        Sets the owner, moves the counter, counts an owner switch (unless the lease was unowned
        or already ``owner``'s) and clears any pending handoff. Used for unowned, expired and
        stolen leases alike: the caller decides which leases to take.

        Returns:
            The lease as written, or None when the counter moved since it was observed
            (another replica took it, or the owner renewed it) or the lease is gone.
        """
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
        write = await self._update(
            "UpdateItem (take)",
            lease.key,
            update=_update_expression(sets, ["#pendingOwner"]),
            condition="#leaseCounter = :counter",
            values=values,
        )
        return lease_from_item(write.item) if write.ok and write.item else None

    async def renew(self, lease: Lease, owner: str) -> Lease:
        """Renew ``owner``'s lease: move the counter so that observers see it alive.

        Returns:
            The lease as written, including a ``pending_owner`` that a peer may have set.

        Raises:
            LeaseLost: ``owner`` no longer holds the lease at ``lease.counter``.
        """
        write = await self._fenced_update(
            "UpdateItem (renew)",
            lease,
            owner,
            update="SET #leaseCounter = :next, #renewedAt = :now",
            values={":now": _n(time.time())},
        )
        if not write.ok or write.item is None:
            raise self._lost("renew", lease, owner, write)
        return lease_from_item(write.item)

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        """Durably store ``checkpoint`` on ``owner``'s lease, fenced like :meth:`renew`.

        Replaces the previous checkpoint entirely (a sequence number drops a start timestamp),
        resets ``ownerSwitchesSinceCheckpoint`` and moves the counter, which also counts as a
        renewal.

        Raises:
            LeaseLost: ``owner`` no longer holds the lease at ``lease.counter``; nothing was
                written.
            ValueError: ``checkpoint`` holds neither a sequence number nor a start timestamp.
        """
        sets, removes, values = _checkpoint_update(checkpoint)
        sets += [
            "#leaseCounter = :next",
            "#renewedAt = :now",
            "#ownerSwitchesSinceCheckpoint = :zero",
        ]
        values.update({":now": _n(time.time()), ":zero": _n(0)})
        write = await self._fenced_update(
            "UpdateItem (checkpoint)",
            lease,
            owner,
            update=_update_expression(sets, removes),
            values=values,
        )
        if not write.ok or write.item is None:
            raise self._lost("checkpoint", lease, owner, write)
        return lease_from_item(write.item)

    async def release(self, lease: Lease, owner: str) -> bool:
        """Give up ``owner``'s lease: remove the owner and any pending handoff, move the counter.

        Returns:
            True when released; False when ``owner`` had already lost it at ``lease.counter``
            (never raises :class:`LeaseLost`).
        """
        write = await self._fenced_update(
            "UpdateItem (release)",
            lease,
            owner,
            update="SET #leaseCounter = :next REMOVE #leaseOwner, #pendingOwner",
            return_new=False,
        )
        return write.ok

    async def request_handoff(self, lease: Lease, requester: str) -> bool:
        """Ask the lease's owner to hand it to ``requester`` (sets ``pendingOwner``).

        Leaves the counter alone, so the owner keeps renewing; it sees the request in its next
        renew, checkpoints and releases. Only one request stands at a time.

        Returns:
            True when the request was recorded; False when the lease is no longer
            ``lease.owner``'s, another request is pending, or the lease is unowned (an unowned
            lease needs no handoff: take it).
        """
        if lease.owner is None:
            return False
        write = await self._update(
            "UpdateItem (request_handoff)",
            lease.key,
            update="SET #pendingOwner = :requester",
            condition="#leaseOwner = :owner AND attribute_not_exists(#pendingOwner)",
            values={":owner": _s(lease.owner), ":requester": _s(requester)},
            return_new=False,
        )
        return write.ok

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Delete the lease (a finished parent whose children progress). Unconditional."""
        await self._call(
            "DeleteItem", "delete_item", Key={"leaseKey": _s(lease_key(mapping, shard_id))}
        )
