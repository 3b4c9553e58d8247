"""The storage under :class:`~tests.support.memory_lease_table.MemoryLeaseTable`: items in
DynamoDB's wire format, the accounting of calls and capacity units, and the versions a lagging
view index still shows. No table semantics here: the conditions live in the table.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from poller.checkpoints.dynamodb.items import (
    Lease,
    is_mapping_item,
    lease_from_item,
    view_projection,
)
from poller.errors import CheckpointError

Item = dict[str, Any]
_READS = ("GetItem", "Query", "Scan")
_WRITES = ("PutItem", "UpdateItem", "DeleteItem")
_PAGE_BYTES = 1024 * 1024  # DynamoDB's Scan and Query page limit


def item_size(item: Item) -> int:
    """An item's size as DynamoDB bills it, approximately: names plus values in bytes."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, body), *_ = value.items()
    if kind == "S":
        return len(str(body).encode())
    if kind == "N":
        return len(str(body).lstrip("-").replace(".", "")) // 2 + 2
    if kind == "SS":
        return sum(len(str(v).encode()) for v in body)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in body.items())
    return len(json.dumps(body))


class TableStore:
    """The items, their recent versions (for a lagging view) and the call accounting."""

    def __init__(
        self,
        table: str,
        *,
        view_lag_calls: int,
        view_lag_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self.table = table
        self.items: dict[str, Item] = {}
        self.down = False
        #: Calls (``UpdateItem`` or ``UpdateItem (heartbeat)``) whose next write is applied and
        #: its answer lost: the caller gets a CheckpointError, as after botocore gave up.
        self.lose_next: set[str] = set()
        self._losing: str | None = None
        self.calls: Counter[str] = Counter()
        self.by_call: Counter[str] = Counter()
        self.read_units = 0.0
        self.write_units = 0.0
        self.view_lag_calls = view_lag_calls
        self.view_lag_seconds = view_lag_seconds
        self.clock = clock
        self._tick = 0
        #: key -> (item, its lease or None, its size): parses of the stored items.
        self._full_cache: dict[str, tuple[Item, Lease | None, int]] = {}
        self._view_cache: dict[str, tuple[Item, Lease | None, int]] = {}
        #: Per mapping, how many writes touched its leases; the last view, at which version.
        self._lease_version: Counter[str] = Counter()
        #: The last view, with whether every lease write was visible to it already (a
        #: lagging view changes without writes while the horizon passes earlier ones).
        self._view_memo: dict[str, tuple[int, list[Lease], list[int], bool]] = {}
        self._lease_written: dict[str, tuple[int, float]] = {}
        #: key -> [(tick, clock, item or None)], oldest first: kept only while a view lags.
        self._history: dict[str, list[tuple[int, float, Item | None]]] = {}

    @property
    def reads(self) -> int:
        """Read calls (GetItem, Query and Scan pages) answered so far."""
        return sum(self.calls[op] for op in _READS)

    @property
    def writes(self) -> int:
        """Write calls (PutItem, UpdateItem, DeleteItem) answered so far, refused ones too."""
        return sum(self.calls[op] for op in _WRITES)

    async def _call(self, operation: str, detail: str = "") -> None:
        """One call: a scheduling point, then the outage check and the count."""
        await anyio.lowlevel.checkpoint()
        name = f"{operation} ({detail})" if detail else operation
        if self.down:
            raise CheckpointError(
                f"lease table {self.table}: {name} could not reach DynamoDB: down (in memory)"
            )
        self._tick += 1
        self.calls[operation] += 1
        self.by_call[name] += 1
        for lost in (name, operation):
            if lost in self.lose_next:
                self.lose_next.discard(lost)
                self._losing = name
                break

    def _read_units(self, size: int, *, consistent: bool = True) -> None:
        self.read_units += max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)

    def _put(self, key: str, item: Item | None) -> None:
        """Store (None: delete) ``item``; billed as one write of the larger of old and new."""
        old = self.items.get(key)
        size = max(item_size(old) if old else 0, item_size(item) if item else 0)
        self.write_units += max(1, math.ceil(size / 1024))
        if item is None:
            self.items.pop(key, None)
        else:
            self.items[key] = item
        for changed in (old, item):
            if changed is not None and "mapping" in changed:
                self._lease_version[str(changed["mapping"]["S"])] += 1
                self._lease_written[str(changed["mapping"]["S"])] = (self._tick, self.clock())
        if self.view_lag_calls or self.view_lag_seconds:
            self._remember(key, item)
        self._answer()

    def _refused(self, key: str) -> Item | None:
        """A refused conditional write: billed, and the item as it stands returned."""
        old = self.items.get(key)
        self.write_units += max(1, math.ceil(item_size(old) / 1024)) if old else 1
        self._answer()
        return old

    def _answer(self) -> None:
        """After a write: lose its answer if the test asked for it."""
        if self._losing is not None:
            lost, self._losing = self._losing, None
            raise CheckpointError(f"lease table {self.table}: {lost}: the answer was lost")

    def _remember(self, key: str, item: Item | None) -> None:
        versions = self._history.setdefault(key, [])
        versions.append((self._tick, self.clock(), item))
        tick, now = self._horizon()
        # Keep the newest version at or before the horizon (what a lagging view sees).
        keep = 0
        for i, (t, c, _) in enumerate(versions):
            if t <= tick and c <= now:
                keep = i
        del versions[:keep]

    def _horizon(self) -> tuple[int, float]:
        return self._tick - self.view_lag_calls, self.clock() - self.view_lag_seconds

    def _lagged(self) -> dict[str, Item]:
        """The items as a lagging view sees them."""
        if not (self.view_lag_calls or self.view_lag_seconds):
            return self.items
        tick, now = self._horizon()
        seen = {k: v for k, v in self.items.items() if k not in self._history}
        for key, versions in self._history.items():
            visible = [item for t, c, item in versions if t <= tick and c <= now]
            if visible and visible[-1] is not None:
                seen[key] = visible[-1]
        return seen

    def _pages(self, sizes: Sequence[int], limit: int | None) -> list[int]:
        """Bytes read per page of a Scan or Query over items of ``sizes``."""
        pages: list[int] = []
        current, count = 0, 0
        for size in sizes:
            if (limit is not None and count == limit) or current + size > _PAGE_BYTES:
                pages.append(current)
                current, count = 0, 0
            current += size
            count += 1
        pages.append(current)
        return pages

    def _view(self, mapping: str) -> tuple[list[Lease], list[int]]:
        """The view's leases and the bytes of each page; unchanged leases are not parsed
        again, and an unchanged mapping (only heartbeats since) not even listed again."""
        version = self._lease_version[mapping]
        memo = self._view_memo.get(mapping)
        if memo is not None and memo[0] == version and memo[3]:
            return memo[1], memo[2]
        parsed = [self._parsed(key, item, full=False) for key, item in self._lagged().items()]
        shown = [(lease, size) for lease, size in parsed if lease and lease.mapping == mapping]
        shown.sort(key=lambda entry: entry[0].shard_id)
        leases = [lease for lease, _ in shown]
        pages = self._pages([size for _, size in shown], None)
        tick, now = self._horizon()
        written_tick, written_at = self._lease_written.get(mapping, (0, -math.inf))
        settled = written_tick <= tick and written_at <= now
        self._view_memo[mapping] = (version, leases, pages, settled)
        return leases, pages

    def _parsed(self, key: str, item: Item, *, full: bool) -> tuple[Lease | None, int]:
        """``item`` as a lease (None: not a lease) and its size, whole (``full``) or as the
        view index holds it. Cached per stored item (items are never changed in place), so
        that a view of 10,000 leases costs a simulation milliseconds, not a parse of each."""
        cache = self._full_cache if full else self._view_cache
        cached = cache.get(key)
        if cached is not None and cached[0] is item:
            return cached[1], cached[2]
        shown = item if full else view_projection(item)
        lease = lease_from_item(shown) if "mapping" in item and not is_mapping_item(item) else None
        size = item_size(shown) if full or lease is not None else 0  # the index holds leases only
        cache[key] = (item, lease, size)
        return lease, size
