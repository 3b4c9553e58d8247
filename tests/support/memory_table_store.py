"""The storage under :class:`~tests.support.memory_lease_table.MemoryLeaseTable`: items in
DynamoDB's wire format, the accounting of calls and capacity units, the parses and page sizes
a view lists, and the horizon a lagging view index sees up to (the index itself is
``ViewIndex``, in ``memory_lease_table.py``). No table semantics here: the conditions live in
the table.
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
    """The items, the call accounting, and what a view index is built from."""

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

    def _horizon(self) -> tuple[int, float]:
        return self._tick - self.view_lag_calls, self.clock() - self.view_lag_seconds

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
