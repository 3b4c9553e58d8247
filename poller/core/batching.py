"""Batch cutting: decides which buffered items go into the next invocation.

Both engines cut their batches here: a stream lane feeds the records it has read into a
:class:`BatchBuilder`, and an SQS poller feeds the messages it has received, until the builder
is full by count or by payload size. The caller handles the batching window, because that
needs a clock. Sizes are those of the compact JSON event ``{"Records":[r1,r2,...]}`` that the
targets send, so the 6 MB cut is exact rather than estimated. An event with more than
``Records`` (a tumbling window's ``window``, ``state`` and the fields around them) passes their
size as ``overhead``, so the cut counts the whole event as sent. An item that cannot fit even
alone (:func:`fits_alone`: a Kinesis record over about 4.4 MiB of data, base64 included) is set
aside in :attr:`BatchBuilder.oversized`, never batched: the engines give it up without an
invocation. I/O-free and synchronous.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice, repeat
from operator import attrgetter
from typing import Generic, Protocol

# typing_extensions (installed with pydantic) for PEP 696 TypeVar defaults on Python 3.11:
# a bare ``BatchBuilder`` annotation keeps meaning a builder of stream records.
from typing_extensions import TypeVar

from poller.types import StreamRecord

#: Lambda's synchronous invocation payload limit, in bytes (6 MB).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

#: Bytes of ``{"Records":[`` plus ``]}`` around the records.
ENVELOPE_BYTES = len('{"Records":[') + len("]}")


class SizedItem(Protocol):
    """An item of ``Records``: a stream record or a queue message."""

    @property
    def size(self) -> int:
        """Bytes the item adds to the compact JSON event."""
        ...


ItemT = TypeVar("ItemT", bound=SizedItem, default=StreamRecord)

#: An item's size (``SizedItem.size``).
_SIZE = attrgetter("size")


def fits_alone(item: SizedItem, max_bytes: int = MAX_PAYLOAD_BYTES, overhead: int = 0) -> bool:
    """Whether an event holding ``item`` alone (plus ``overhead``) is within ``max_bytes``."""
    return ENVELOPE_BYTES + overhead + item.size <= max_bytes


def event_size(records: Sequence[SizedItem]) -> int:
    """The size in bytes of the compact JSON event holding ``records``."""
    separators = max(len(records) - 1, 0)
    return ENVELOPE_BYTES + separators + sum(r.size for r in records)


class BatchBuilder(Generic[ItemT]):
    """Collects items until the batch is full by count or by payload size.

    An item that would push the event past ``max_bytes`` is refused, so it starts the next
    batch. An item too large to fit even alone goes to :attr:`oversized` instead, when it
    would start the batch: no invocation could carry it, and sending it would only fail
    (Lambda's ``RequestTooLargeException``) and be retried until it expired, stalling the
    shard. The caller gives those up. So every item of ``oversized`` comes before every item of
    ``records`` in the input's order, and the batch goes on filling after them.
    """

    __slots__ = ("_bytes", "_max_bytes", "_max_records", "_refused", "oversized", "records")

    def __init__(
        self, max_records: int, max_bytes: int = MAX_PAYLOAD_BYTES, overhead: int = 0
    ) -> None:
        self.records: list[ItemT] = []
        #: Items no invocation can carry, in input order (all before ``records``).
        self.oversized: list[ItemT] = []
        self._max_records = max_records
        self._max_bytes = max_bytes
        #: ``overhead``: bytes the event holds besides ``{"Records":[...]}``.
        self._bytes = ENVELOPE_BYTES + overhead
        self._refused = False

    @property
    def is_full(self) -> bool:
        """True when no further item may be added."""
        return self._refused or len(self.records) >= self._max_records

    @property
    def room(self) -> int:
        """How many more items the count limit allows (the size limit may allow fewer)."""
        return max(0, self._max_records - len(self.records))

    @property
    def size_bytes(self) -> int:
        """The serialized size of the event built so far."""
        return self._bytes

    def try_add(self, record: ItemT) -> bool:
        """Take ``record`` if it fits, or into :attr:`oversized` if it would start the batch
        and cannot fit even alone; False when refused (then the batch counts as full)."""
        if self.is_full:
            return False
        if not self.records:
            if self._bytes + record.size > self._max_bytes:
                self.oversized.append(record)
            else:
                self.records.append(record)
                self._bytes += record.size
            return True
        added = record.size + 1
        if self._bytes + added > self._max_bytes:
            self._refused = True
            return False
        self.records.append(record)
        self._bytes += added
        return True

    def fill_from(self, pending: deque[ItemT]) -> None:
        """Move items from the front of ``pending`` into the batch while they fit.

        :meth:`try_add` inlined, with its state in locals: this runs once per record. When
        every item the count allows fits, they are moved at once.
        """
        records, size, limit = self.records, self._bytes, self._max_bytes
        room = self._max_records - len(records)
        count = min(room, len(pending))
        if count > 0 and not self._refused:
            # Whole: all that the count allows fits (the usual case), moved together in C.
            added = sum(map(_SIZE, islice(pending, count))) + count - (0 if records else 1)
            if size + added <= limit:
                records.extend(map(deque.popleft, repeat(pending, count)))
                self._bytes = size + added
                return
        # One at a time: the size limit cuts this batch, or an item is oversized. While the
        # batch is empty, ``size`` is the bare event's, so an item over the limit cannot fit
        # alone.
        popleft, append = pending.popleft, records.append
        while pending and room > 0 and not self._refused:
            added = pending[0].size + (1 if records else 0)
            if size + added > limit:
                if records:
                    self._refused = True
                    break
                self.oversized.append(popleft())
                continue
            append(popleft())
            size += added
            room -= 1
        self._bytes = size

    def take(self, pending: Sequence[ItemT]) -> list[ItemT]:
        """Take items from the front of ``pending`` (see :meth:`try_add`); return the rest."""
        for index, item in enumerate(pending):
            if not self.try_add(item):
                return list(pending[index:])
        return []
