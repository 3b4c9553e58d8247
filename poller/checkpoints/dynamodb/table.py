"""The lease table's operations: what the lease coordinator reads and writes, one call each.

:class:`DynamoDBLeaseTable` is the store under :mod:`poller.leases` (and under the status
command): list, get, create, take, renew, checkpoint, release, hand off and delete leases, and
pin a mapping's start. Items are built by :mod:`.items`, requests sent by :mod:`.calls`, and the
table itself made by :mod:`.schema`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from poller.checkpoints.dynamodb import schema
from poller.checkpoints.dynamodb.calls import TableCalls
from poller.checkpoints.dynamodb.items import (
    MAPPING_ITEM,
    Lease,
    _checkpoint_update,
    _n,
    _num,
    _s,
    _update_expression,
    is_mapping_item,
    lease_from_item,
    lease_key,
    mapping_item,
    members_key,
    new_lease_item,
    take_update,
)
from poller.checkpoints.dynamodb.members import MemberItem
from poller.checkpoints.dynamodb.view import LeaseView
from poller.checkpoints.rewinds import SKIPPED_AT_SHARD_END, RewindTarget, describe_checkpoint
from poller.errors import CheckpointError
from poller.types import SHARD_END, Checkpoint


class DynamoDBLeaseTable(LeaseView, MemberItem):
    """Conditional reads and writes of one lease table.

    Args:
        client: an aiobotocore DynamoDB client (a control client: a few quick retries). The
            caller owns it and closes it.
        table: the table name.
        scan_page_size: ``Limit`` of each Scan page in :meth:`list_leases`; None lets DynamoDB
            fill 1 MB pages.
        index_wait: how long :meth:`ensure_table` waits for an added view index to be built.

    ``has_view_index`` says whether :meth:`lease_view` reads the view index (None until
    :meth:`ensure_table` or the first view found out).

    Every call raises :class:`~poller.errors.CheckpointError` (retriable) when DynamoDB cannot
    be reached or answers an error, naming the table and the call. A refused condition is not
    an error: each method documents what it returns or raises then.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        scan_page_size: int | None = None,
        index_wait: float = schema.INDEX_WAIT,
    ) -> None:
        self._client = client
        self.table = table
        self._scan_page_size = scan_page_size
        self._index_wait = index_wait
        self._calls = TableCalls(client, table)
        self.has_view_index: bool | None = None

    @property
    def table_calls(self) -> TableCalls:
        """This table's requests, for the items that live beside the leases (the control
        API's mapping records, :mod:`poller.control.store_dynamodb`)."""
        return self._calls

    async def ensure_table(self, *, create: bool = True) -> None:
        """Make sure the table exists and is ACTIVE, creating it, or adding its view index to
        an older table, when allowed (see :func:`.schema.ensure_table`).

        Raises:
            ConfigError: the table does not exist and ``create`` is False, or its key schema is
                not ``leaseKey`` alone.
            CheckpointError: DynamoDB could not be reached or refused a call.
        """
        self.has_view_index = await schema.ensure_table(
            self._calls, create=create, index_wait=self._index_wait
        )

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
            page = await self._calls.call("Scan", "scan", **params)
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
        item = await self._calls.read("GetItem", lease_key(mapping, shard_id))
        return None if item is None else lease_from_item(item)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping item's start instant (a consistent read), or None when there is none."""
        item = await self._calls.read("GetItem (mapping start)", lease_key(mapping, MAPPING_ITEM))
        start = None if item is None else _num(item, "startTimestamp")
        return None if start is None else float(start)

    # -- writes -------------------------------------------------------------------------------

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Create the mapping item at ``instant`` unless it exists; return its instant.

        A conditional PutItem: of replicas starting together exactly one records its instant,
        and every one gets that instant back.
        """
        if await self._calls.put_new(mapping_item(mapping, instant), "PutItem (mapping start)"):
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
        item = new_lease_item(mapping, shard_id, parent_ids, checkpoint)
        return await self._calls.put_new(item, "PutItem (create)")

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take ``lease`` for ``owner`` if its counter is still the one observed.

        Sets the owner, moves the counter, counts an owner switch (unless the lease was unowned
        or already ``owner``'s) and clears any pending handoff. Used for unowned, expired and
        stolen leases alike: the caller decides which leases to take.

        Returns:
            The lease as written, or None when the counter moved since it was observed
            (another replica took it, or the owner renewed it) or the lease is gone.
        """
        update, values = take_update(lease, owner)
        write = await self._calls.update(
            "UpdateItem (take)",
            lease.key,
            update=update,
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
        write = await self._calls.fenced_update(
            "UpdateItem (renew)",
            lease,
            owner,
            update="SET #leaseCounter = :next, #renewedAt = :now",
            values={":now": _n(time.time())},
        )
        if not write.ok or write.item is None:
            raise self._calls.lost("renew", lease, owner, write)
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
        write = await self._calls.fenced_update(
            "UpdateItem (checkpoint)",
            lease,
            owner,
            update=_update_expression(sets, removes),
            values=values,
        )
        if not write.ok or write.item is None:
            raise self._calls.lost("checkpoint", lease, owner, write)
        return lease_from_item(write.item)

    async def release(self, lease: Lease, owner: str) -> bool:
        """Give up ``owner``'s lease: remove the owner and any pending handoff, move the counter.

        Returns:
            True when released; False when ``owner`` had already lost it at ``lease.counter``
            (never raises :class:`LeaseLost`).
        """
        write = await self._calls.fenced_update(
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
        write = await self._calls.update(
            "UpdateItem (request_handoff)",
            lease.key,
            update="SET #pendingOwner = :requester",
            condition="#leaseOwner = :owner AND attribute_not_exists(#pendingOwner)",
            values={":owner": _s(lease.owner), ":requester": _s(requester)},
            return_new=False,
        )
        return write.ok

    # -- rewinds (poller rewind; see poller.operations.rewind) --------------------------------

    async def request_rewind(
        self, mapping: str, shard_id: str, rewind_id: str, target: RewindTarget
    ) -> Lease | None:
        """Ask for a rewind of the shard: ``rewindId`` and ``rewindTo`` on its lease, pending
        until applied. Like a handoff request it leaves the counter alone (the owner's next
        checkpoint is not fenced off by it). None when the lease does not exist."""
        write = await self._calls.update(
            "UpdateItem (request_rewind)",
            lease_key(mapping, shard_id),
            update="SET #rewindId = :rid, #rewindTo = :to, #rewindRequestedAt = :now",
            condition="attribute_exists(#leaseKey)",
            values={":rid": _s(rewind_id), ":to": _s(target.encode()), ":now": _n(time.time())},
        )
        return lease_from_item(write.item) if write.ok and write.item else None

    async def apply_rewind(
        self, lease: Lease, owner: str | None, rewind_id: str, checkpoint: Checkpoint
    ) -> tuple[bool, Lease | None]:
        """Write rewind ``rewind_id``'s ``checkpoint`` and mark it applied, fenced like any
        checkpoint: only while the lease is still ``owner``'s (None: unowned, the command's
        direct write) at ``lease.counter`` and the request is still ``rewind_id``. Moves the
        counter, so a replica that observed the lease before (to take it) is fenced off.

        A shard read to its end is never re-opened: with ``checkpoint`` ``SHARD_END`` (the
        caller saw the lease ended) only the request is marked done, ``applied_to``
        :data:`~poller.checkpoints.rewinds.SKIPPED_AT_SHARD_END`, conditional on the lease
        being at ``SHARD_END``; any other checkpoint is written only while the lease is not at
        ``SHARD_END``.

        Returns:
            (True, the lease as written), or (False, the item as DynamoDB held it, or None
            when gone): nothing was written.
        """
        skip = checkpoint.is_shard_end
        sets: list[str] = []
        removes: list[str] = []
        values: dict[str, Any] = {}
        if not skip:
            sets, removes, values = _checkpoint_update(checkpoint)
        sets += [
            "#leaseCounter = :next",
            "#renewedAt = :now",
            "#rewindApplied = :rid",
            "#rewindAppliedBy = :by",
            "#rewindAppliedFrom = :from",
            "#rewindAppliedTo = :to",
        ]
        if not skip:
            sets.append("#ownerSwitchesSinceCheckpoint = :zero")
            values[":zero"] = _n(0)
        values.update(
            {
                ":now": _n(time.time()),
                ":rid": _s(rewind_id),
                ":by": _s(owner or "poller rewind"),
                ":from": _s(describe_checkpoint(lease.checkpoint)),
                ":to": _s(SKIPPED_AT_SHARD_END if skip else describe_checkpoint(checkpoint)),
                ":counter": _n(lease.counter),
                ":next": _n(lease.counter + 1),
                ":shardEnd": _s(SHARD_END),
            }
        )
        held = "attribute_not_exists(#leaseOwner)"
        if owner is not None:
            held = "#leaseOwner = :owner"
            values[":owner"] = _s(owner)
        ended = (
            "#checkpoint = :shardEnd"
            if skip
            else "(attribute_not_exists(#checkpoint) OR #checkpoint <> :shardEnd)"
        )
        write = await self._calls.update(
            "UpdateItem (apply_rewind)",
            lease.key,
            update=_update_expression(sets, removes),
            condition=f"{held} AND #leaseCounter = :counter AND #rewindId = :rid AND {ended}",
            values=values,
        )
        return write.ok, None if write.item is None else lease_from_item(write.item)

    async def notify_rewind(self, mapping: str, rewind_id: str) -> bool:
        """Tell the mapping's replicas a rewind was asked (``rewindNotice`` on the member item,
        which each reads every second anyway). False when there is no member item: no replica
        of this protocol runs the mapping."""
        write = await self._calls.update(
            "UpdateItem (notify_rewind)",
            members_key(mapping),
            update="SET #rewindNotice = :rid",
            condition="attribute_exists(#leaseKey)",
            values={":rid": _s(rewind_id)},
            return_new=False,
        )
        return write.ok

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Delete the lease (a finished parent whose children progress). Unconditional."""
        await self._calls.call(
            "DeleteItem", "delete_item", Key={"leaseKey": _s(lease_key(mapping, shard_id))}
        )
