"""An in-memory twin of :class:`~poller.checkpoints.dynamodb.DynamoDBLeaseTable`, for unit tests
of the lease coordinator and for the fake-clock simulation of the lease protocol.

It has the methods the coordinator calls, with the same conditional semantics, and keeps its
items in DynamoDB's wire format, parsed and built by the real table's own
:mod:`poller.checkpoints.dynamodb.items` (so a lease reads back the same from either table;
``tests/integration/test_lease_table_contract.py`` runs one set of table tests against both).
Every call is atomic (nothing awaits between a condition and its write), as DynamoDB's are.

What it adds for tests:

* ``calls``: a Counter of DynamoDB operations as the real table sends them (``GetItem``,
  ``Query``, ``Scan`` - one per page -, ``PutItem``, ``UpdateItem``, ``DeleteItem``, and the
  control calls), ``reads``/``writes`` totals and approximate on-demand capacity units
  (``read_units``/``write_units``, DynamoDB's rounding of item sizes) for cost models;
  ``by_call`` counts the finer names (``UpdateItem (heartbeat)``);
* ``down = True``: every call raises a retriable CheckpointError and changes nothing;
  ``lose_next.add("UpdateItem (heartbeat)")``: the next such write lands, and its caller gets
  a CheckpointError (a lost answer);
* ``view_lag_calls`` / ``view_lag_seconds``: :meth:`lease_view` answers from the state as it
  was that many table calls, or seconds on ``clock``, ago (the index is eventually consistent);
* ``view_index = False``: a table without the index (``lease_view`` falls back to the Scan).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from poller.checkpoints.dynamodb.calls import lease_lost
from poller.checkpoints.dynamodb.items import (
    MAPPING_ITEM,
    Lease,
    Members,
    _checkpoint_update,
    lease_from_item,
    lease_key,
    mapping_item,
    members_from_item,
    members_key,
    new_lease_item,
    new_members_item,
)
from poller.errors import CheckpointError, ConfigError, LeaseLost
from poller.types import Checkpoint
from tests.support.memory_table_store import Item, TableStore, item_size


class ViewIndex(TableStore):
    """The view index of :class:`MemoryLeaseTable`, kept up to date write by write: each
    write joins the index once it is older than the lag, and a view read lists the index
    (built again only for a mapping whose leases changed since). Rebuilding it from every
    item at each read cost a 10,000-lease simulation minutes per simulated second."""

    def __init__(self, table: str, **kwargs: Any) -> None:
        super().__init__(table, **kwargs)
        #: Writes not visible in the index yet: (tick, clock, key, item or None), oldest first.
        self._unindexed: deque[tuple[int, float, str, Item | None]] = deque()
        #: Per mapping, the shards in the index (sorted) and each one's lease and size.
        self._indexed: dict[str, tuple[list[str], dict[str, tuple[Lease, int]]]] = {}
        #: key -> (mapping, shard) of each lease in the index.
        self._indexed_keys: dict[str, tuple[str, str]] = {}
        #: Per mapping, the latest listing (leases, page sizes), while no write joined since.
        self._listed: dict[str, tuple[list[Lease], list[int]]] = {}
        #: key -> (item, its size), for the latest stored version of each item.
        self._sizes: dict[str, tuple[Item, int]] = {}

    def _put(self, key: str, item: Item | None) -> None:
        """Store (None: delete) ``item``, billed as one write of the larger of old and new,
        and index it (at once, or once the lag has passed)."""
        size = max(self._size(key, self.items.get(key)), self._size(key, item))
        self.write_units += max(1, math.ceil(size / 1024))
        if item is None:
            self.items.pop(key, None)
        else:
            self.items[key] = item
        write = (self._tick, self.clock(), key, item)
        if self.view_lag_calls or self.view_lag_seconds:
            self._unindexed.append(write)
        else:
            self._index(key, item)
        self._answer()  # last: it may raise (an answer lost) once the item is stored

    def _size(self, key: str, item: Item | None) -> int:
        """``item_size(item)``, computed once per stored item (the member item of 50 replicas
        is read and written many times a second)."""
        if item is None:
            return 0
        cached = self._sizes.get(key)
        if cached is None or cached[0] is not item:
            cached = self._sizes[key] = (item, item_size(item))
        return cached[1]

    def _view(self, mapping: str) -> tuple[list[Lease], list[int]]:
        """The view's leases, sorted by shard, and the bytes of each page."""
        tick, now = self._horizon()
        # Writes are in call order, their ticks and clocks rising: the visible ones come first.
        while self._unindexed and self._unindexed[0][0] <= tick and self._unindexed[0][1] <= now:
            _, _, key, item = self._unindexed.popleft()
            self._index(key, item)
        listed = self._listed.get(mapping)
        if listed is None:
            order, entries = self._indexed.get(mapping, ([], {}))
            shown = [entries[shard_id] for shard_id in order]
            listed = ([lease for lease, _ in shown], self._pages([size for _, size in shown], None))
            self._listed[mapping] = listed
        return listed

    def _index(self, key: str, item: Item | None) -> None:
        lease, size = (None, 0) if item is None else self._parsed(key, item, full=False)
        old = self._indexed_keys.get(key)
        if lease is not None and old == (lease.mapping, lease.shard_id):
            self._indexed[lease.mapping][1][lease.shard_id] = (lease, size)  # the usual write
            self._listed.pop(lease.mapping, None)
            return
        self._indexed_keys.pop(key, None)
        if old is not None:
            mapping, shard_id = old
            order, entries = self._indexed[mapping]
            del entries[shard_id]
            del order[bisect.bisect_left(order, shard_id)]
            self._listed.pop(mapping, None)
        if lease is not None:
            order, entries = self._indexed.setdefault(lease.mapping, ([], {}))
            bisect.insort(order, lease.shard_id)
            entries[lease.shard_id] = (lease, size)
            self._indexed_keys[key] = (lease.mapping, lease.shard_id)
            self._listed.pop(lease.mapping, None)


class MemoryMembers(ViewIndex):
    """The member item's calls of :class:`MemoryLeaseTable` (as :mod:`.members` is a base of
    the real table)."""

    async def members(self, mapping: str) -> Members:
        """The member item (a consistent read); ``Members({}, 0)`` when there is none."""
        await self._call("GetItem", "members")
        key = members_key(mapping)
        item = self.items.get(key)
        self._read_units(self._size(key, item))
        return members_from_item(item)

    async def _create_members(self, mapping: str, owner: str, beat: int) -> bool:
        await self._call("PutItem", "heartbeat")
        key = members_key(mapping)
        if key in self.items:
            self._refused(key)
            return False
        self._put(key, new_members_item(mapping, owner, beat))
        return True

    async def heartbeat(self, mapping: str, owner: str, beat: int) -> None:
        """Set ``owner``'s beat, creating the member item when there is none (the real
        table's calls: the update, then on a missing item a conditional put, then the update
        once more if another replica created the item in between)."""
        key = members_key(mapping)
        for attempt in range(2):
            await self._call("UpdateItem", "heartbeat")
            old = self.items.get(key)
            if old is not None and "members" in old:
                beats = {**old["members"]["M"], owner: {"N": str(beat)}}
                self._put(key, _with_beats(old, beats))
                return
            self._refused(key)
            if attempt == 0 and await self._create_members(mapping, owner, beat):
                return
        raise CheckpointError(
            f"lease table {self.table}: UpdateItem (heartbeat) refused: the member item of"
            f" {mapping} has no members map"
        )

    async def leave(self, mapping: str, owner: str) -> None:
        """Remove ``owner``'s entry (nothing when absent or when there is no item)."""
        key = members_key(mapping)
        await self._call("UpdateItem", "leave")
        old = self.items.get(key)
        if old is None or "members" not in old:
            self._refused(key)
            return
        beats = {k: v for k, v in old["members"]["M"].items() if k != owner}
        self._put(key, _with_beats(old, beats))

    async def prune_member(self, mapping: str, owner: str, beat: int) -> bool:
        """Remove ``owner``'s entry if its beat is still ``beat``; whether it was removed."""
        key = members_key(mapping)
        await self._call("UpdateItem", "prune_member")
        old = self.items.get(key)
        current = None if old is None else old.get("members", {}).get("M", {}).get(owner)
        if old is None or current is None or int(Decimal(current["N"])) != beat:
            self._refused(key)
            return False
        beats = {k: v for k, v in old["members"]["M"].items() if k != owner}
        self._put(key, _with_beats(old, beats))
        return True

    async def bump_generation(self, mapping: str) -> None:
        """Add one to the generation (creating the member item, empty, when missing)."""
        key = members_key(mapping)
        await self._call("UpdateItem", "bump_generation")
        old = self.items.get(key) or {"leaseKey": {"S": key}}
        generation = int(old.get("generation", {"N": "0"})["N"]) + 1
        new = {
            **old,
            "membersOf": {"S": mapping},
            "members": old.get("members", {"M": {}}),
            "generation": {"N": str(generation)},
        }
        self._put(key, new)


class MemoryLeaseTable(MemoryMembers):
    """The lease table in memory (see the module docstring).

    Args:
        table: the table's name, used in error messages.
        view_index: whether the table has the view index; without it :meth:`lease_view`
            falls back to the consistent Scan.
        view_lag_calls, view_lag_seconds: how far behind the view index is.
        clock: the clock ``view_lag_seconds`` is measured on (a simulation's fake clock).
        wall_clock: epoch seconds written to ``renewedAt`` and the mapping item.
        scan_page_size: the ``Limit`` of Scan pages, as the real table's.
        exists: whether the table exists before :meth:`ensure_table`.
    """

    def __init__(
        self,
        table: str = "memory-leases",
        *,
        view_index: bool = True,
        view_lag_calls: int = 0,
        view_lag_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        scan_page_size: int | None = None,
        exists: bool = True,
    ) -> None:
        super().__init__(
            table, view_lag_calls=view_lag_calls, view_lag_seconds=view_lag_seconds, clock=clock
        )
        self.view_index = view_index
        self.wall_clock = wall_clock
        self.scan_page_size = scan_page_size
        self.exists = exists
        self.has_view_index: bool | None = None
        self.warnings: list[str] = []

    async def ensure_table(self, *, create: bool = True) -> None:
        """Create the table (with the index) when allowed; add a missing index when allowed."""
        await self._call("DescribeTable")
        if not self.exists:
            if not create:
                raise ConfigError(
                    [f"lease table {self.table!r} does not exist (and creating it is disabled)"]
                )
            await self._call("CreateTable")
            self.exists, self.view_index = True, True
        elif not self.view_index and create:
            await self._call("UpdateTable")
            self.view_index = True
        self.has_view_index = self.view_index
        if not self.view_index:
            self._no_index()

    def _no_index(self) -> None:
        if "lease_table.no_view_index" not in self.warnings:
            self.warnings.append("lease_table.no_view_index")

    # -- reads --------------------------------------------------------------------------------

    async def list_leases(self, mapping: str) -> list[Lease]:
        """Every lease of ``mapping`` with window state, sorted by shard (consistent Scans)."""
        parsed = [self._parsed(key, item, full=True) for key, item in self.items.items()]
        for page in self._pages([size for _, size in parsed], self.scan_page_size):
            await self._call("Scan")
            self._read_units(page)
        return _sorted(
            lease for lease, _ in parsed if lease is not None and lease.mapping == mapping
        )

    async def lease_view(self, mapping: str) -> list[Lease]:
        """The compact view (eventually consistent, maybe lagging, no window state), or the
        consistent Scan when the table has no view index."""
        if not self.view_index:
            self.has_view_index = False
            self._no_index()
            return await self.list_leases(mapping)
        self.has_view_index = True
        leases, pages = self._view(mapping)
        for page in pages:
            await self._call("Query")
            self._read_units(page, consistent=False)
        return list(leases)

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        """The lease by a consistent read, or None."""
        item = await self._get(lease_key(mapping, shard_id))
        return None if item is None else lease_from_item(item)

    async def mapping_start(self, mapping: str) -> float | None:
        """The mapping item's start instant, or None."""
        item = await self._get(lease_key(mapping, MAPPING_ITEM), "mapping start")
        return None if item is None else float(Decimal(item["startTimestamp"]["N"]))

    async def _get(self, key: str, detail: str = "") -> Item | None:
        await self._call("GetItem", detail)
        item = self.items.get(key)
        self._read_units(item_size(item) if item else 0)
        return item

    # -- lease writes -------------------------------------------------------------------------

    async def pin_mapping_start(self, mapping: str, instant: float) -> float:
        """Record the mapping's start unless recorded; the recorded instant."""
        item = mapping_item(mapping, instant)
        item["pinnedAt"] = {"N": repr(self.wall_clock())}
        if await self._put_new(item, "mapping start"):
            return float(instant)
        recorded = await self.mapping_start(mapping)
        assert recorded is not None
        return recorded

    async def create(
        self,
        mapping: str,
        shard_id: str,
        *,
        parent_ids: Sequence[str] = (),
        checkpoint: Checkpoint | None = None,
    ) -> bool:
        """Create an unowned lease at counter 0; False when it exists (left unchanged)."""
        return await self._put_new(new_lease_item(mapping, shard_id, parent_ids, checkpoint))

    async def _put_new(self, item: Item, detail: str = "create") -> bool:
        await self._call("PutItem", detail)
        key = str(item["leaseKey"]["S"])
        if key in self.items:
            self._refused(key)
            return False
        self._put(key, item)
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        """Take ``lease`` if its counter is still the one observed; None otherwise."""
        await self._call("UpdateItem", "take")
        old = self.items.get(lease.key)
        if old is None or _counter(old) != lease.counter:
            self._refused(lease.key)
            return None
        new = {**old, "leaseOwner": {"S": owner}, **self._moved(lease.counter)}
        if lease.owner is not None and lease.owner != owner:
            switches = int(old.get("ownerSwitchesSinceCheckpoint", {"N": "0"})["N"])
            new["ownerSwitchesSinceCheckpoint"] = {"N": str(switches + 1)}
        new.pop("pendingOwner", None)
        self._put(lease.key, new)
        return lease_from_item(new)

    async def renew(self, lease: Lease, owner: str) -> Lease:
        """Move the counter of ``owner``'s lease (v1); LeaseLost when fenced out."""
        old = await self._fenced("renew", lease, owner)
        new = {**old, **self._moved(lease.counter)}
        self._put(lease.key, new)
        return lease_from_item(new)

    async def checkpoint(self, lease: Lease, owner: str, checkpoint: Checkpoint) -> Lease:
        """Store ``checkpoint`` on ``owner``'s lease, fenced; LeaseLost when fenced out."""
        sets, removes, values = _checkpoint_update(checkpoint)  # ValueError before any call
        old = await self._fenced("checkpoint", lease, owner)
        new = {**old, **self._moved(lease.counter), "ownerSwitchesSinceCheckpoint": {"N": "0"}}
        for clause in sets:  # "#attribute = :placeholder"
            name, placeholder = clause.split(" = ")
            new[name.lstrip("#")] = values[placeholder]
        for name in removes:
            new.pop(name.lstrip("#"), None)
        self._put(lease.key, new)
        return lease_from_item(new)

    async def release(self, lease: Lease, owner: str) -> bool:
        """Give up ``owner``'s lease; False when already lost (never raises LeaseLost)."""
        try:
            old = await self._fenced("release", lease, owner)
        except LeaseLost:
            return False
        new = {**old, "leaseCounter": {"N": str(lease.counter + 1)}}
        new.pop("leaseOwner", None)
        new.pop("pendingOwner", None)
        self._put(lease.key, new)
        return True

    async def request_handoff(self, lease: Lease, requester: str) -> bool:
        """Set ``pendingOwner`` if ``lease.owner`` still owns it and none is pending."""
        if lease.owner is None:
            return False
        await self._call("UpdateItem", "request_handoff")
        old = self.items.get(lease.key)
        if old is None or _owner(old) != lease.owner or "pendingOwner" in old:
            self._refused(lease.key)
            return False
        self._put(lease.key, {**old, "pendingOwner": {"S": requester}})
        return True

    async def delete(self, mapping: str, shard_id: str) -> None:
        """Delete the lease, unconditionally."""
        await self._call("DeleteItem")
        self._put(lease_key(mapping, shard_id), None)

    async def _fenced(self, call: str, lease: Lease, owner: str) -> Item:
        """The item, if ``owner`` holds it at ``lease.counter``; else LeaseLost."""
        await self._call("UpdateItem", call)
        old = self.items.get(lease.key)
        if old is None or _owner(old) != owner or _counter(old) != lease.counter:
            raise lease_lost(self.table, call, lease, owner, self._refused(lease.key))
        return old

    def _moved(self, counter: int) -> Item:
        return {
            "leaseCounter": {"N": str(counter + 1)},
            "renewedAt": {"N": repr(float(self.wall_clock()))},
        }


def _sorted(leases: Iterable[Lease]) -> list[Lease]:
    return sorted(leases, key=lambda lease: lease.shard_id)


def _owner(item: Item) -> str | None:
    owner = item.get("leaseOwner")
    return None if owner is None else str(owner["S"])


def _counter(item: Item) -> int | None:
    counter = item.get("leaseCounter")
    return None if counter is None else int(counter["N"])


def _with_beats(item: Item, beats: dict[str, Any]) -> Item:
    return {**item, "members": {"M": beats}}
