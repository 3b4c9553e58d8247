"""The member item of a mapping: the replicas' heartbeats and the assignment generation.

Lease protocol v2 keeps the cost of the table at rest proportional to the replicas, not the
shards: a replica proves it is alive by beating its own entry of one item per mapping
(``leaseKey = "<mapping>#__members__"``) instead of renewing every lease it holds, and bumps
the item's ``generation`` after it changed assignments so that peers, which read this item
every second, know when to read the lease view. The coordinator (:mod:`poller.leases`) decides
when; this module is the I/O, mixed into :class:`~.table.DynamoDBLeaseTable`::

    leaseKey    S   "<mapping>#__members__"
    membersOf   S   the mapping (not ``mapping``: the item stays out of the view index and of
                    every Scan filtered on ``mapping``)
    members     M   replica id -> N, its latest beat
    generation  N   +1 per change of assignments
"""

from __future__ import annotations

from poller.checkpoints.dynamodb.calls import TableCalls
from poller.checkpoints.dynamodb.items import (
    Members,
    _n,
    _s,
    members_from_item,
    members_key,
    new_members_item,
)
from poller.errors import CheckpointError


class MemberItem:
    """Reads and writes of the member items of one table (a base of DynamoDBLeaseTable).

    Every call raises :class:`~poller.errors.CheckpointError` when DynamoDB cannot be reached or
    answers an error; a refused condition is an answer, documented per method.
    """

    _calls: TableCalls

    async def members(self, mapping: str) -> Members:
        """The member item by a consistent read; ``Members({}, 0)`` when there is none yet."""
        item = await self._calls.read("GetItem (members)", members_key(mapping))
        return members_from_item(item)

    async def heartbeat(self, mapping: str, owner: str, beat: int) -> None:
        """Set ``owner``'s beat: ``SET members.#owner = :beat``.

        Idempotent (a retry after a lost answer writes the same beat). A nested path cannot be
        set in a missing map, so the update is conditional on the map: when the item does not
        exist yet, a conditional put creates it holding this beat; when another replica created
        it in between, the update is sent once more.
        """
        for attempt in range(2):
            write = await self._calls.update(
                "UpdateItem (heartbeat)",
                members_key(mapping),
                update="SET #members.#owner = :beat",
                condition="attribute_exists(#members)",
                values={":beat": _n(beat)},
                names={"#owner": owner},
                return_new=False,
            )
            if write.ok:
                return
            if attempt == 0 and await self._calls.put_new(
                new_members_item(mapping, owner, beat), "PutItem (heartbeat)"
            ):
                return
        raise CheckpointError(
            f"lease table {self._calls.table}: UpdateItem (heartbeat) was refused: the member"
            f" item of {mapping} has no members map"
        )

    async def leave(self, mapping: str, owner: str) -> None:
        """Remove ``owner``'s entry (a clean shutdown). Nothing happens when it is absent."""
        await self._calls.update(
            "UpdateItem (leave)",
            members_key(mapping),
            update="REMOVE #members.#owner",
            condition="attribute_exists(#members)",  # never creates the item
            values={},
            names={"#owner": owner},
            return_new=False,
        )

    async def prune_member(self, mapping: str, owner: str, beat: int) -> bool:
        """Remove a dead ``owner``'s entry if its beat is still ``beat`` (it did not come back
        meanwhile). Whether it was removed."""
        write = await self._calls.update(
            "UpdateItem (prune_member)",
            members_key(mapping),
            update="REMOVE #members.#owner",
            condition="#members.#owner = :beat",
            values={":beat": _n(beat)},
            names={"#owner": owner},
            return_new=False,
        )
        return write.ok

    async def bump_generation(self, mapping: str) -> None:
        """Add one to the mapping's generation (creating the member item when missing, with
        an empty map, so that heartbeats can set their entries in it)."""
        await self._calls.call(
            "UpdateItem (bump_generation)",
            "update_item",
            Key={"leaseKey": _s(members_key(mapping))},
            UpdateExpression=(
                "SET #membersOf = :mapping, #members = if_not_exists(#members, :empty)"
                " ADD #generation :one"
            ),
            ExpressionAttributeNames={
                "#membersOf": "membersOf",
                "#members": "members",
                "#generation": "generation",
            },
            ExpressionAttributeValues={":mapping": _s(mapping), ":empty": {"M": {}}, ":one": _n(1)},
        )
