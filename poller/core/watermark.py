"""The contiguous checkpoint watermark of one shard.

With ``ParallelizationFactor`` above 1 the shard processor splits a shard's records into lanes by
partition key and keeps several batches in flight at once, so batches settle out of order. A
checkpoint may only name a position below which *every* record is settled (delivered, or sent
to the failure destination); otherwise a crash would skip the unsettled ones. The engine calls
:meth:`Watermark.track` with the records of each read in read order, :meth:`Watermark.settle`
as each batch finishes, and :meth:`Watermark.advance` to learn the position it may checkpoint.
I/O-free and synchronous; on the per-record hot path, so every operation is O(1) per record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from itertools import islice, repeat
from typing import Generic, TypeVar

#: A record position: a sequence number now, ``(sequence, subsequence)`` later. Never ``None``.
K = TypeVar("K", bound=Hashable)


class Watermark(Generic[K]):
    """The highest position below which every tracked record is settled.

    Positions are only hashed and compared for equality, never ordered: read order is the
    order of :meth:`track` calls, which spares callers from making sequence numbers (decimal
    strings of varying length) sortable.

    Memory is held for pending records only: a record passed by :meth:`advance` is forgotten,
    except the newest checkpoint. So a position tracked again after it was passed is detected
    when it is the checkpoint (the usual bug: resuming *at* rather than *after* the checkpoint)
    but not when it is older; catching those too would mean remembering every position ever
    read.
    """

    __slots__ = ("_checkpoint", "_order", "_pending", "_settled")

    def __init__(self) -> None:
        #: Pending positions in read order; the head is the oldest record not yet passed.
        self._order: deque[K] = deque()
        #: The same positions as ``_order``, for O(1) membership.
        self._pending: set[K] = set()
        #: The pending positions that are settled.
        self._settled: set[K] = set()
        self._checkpoint: K | None = None

    @property
    def checkpoint(self) -> K | None:
        """The last position returned by :meth:`advance`, or ``None`` before the first."""
        return self._checkpoint

    @property
    def pending(self) -> int:
        """How many tracked records :meth:`advance` has not passed yet, settled or not."""
        return len(self._order)

    def track(self, positions: Iterable[K]) -> None:
        """Register records in read order (the order the shard returned them).

        Args:
            positions: the positions of the records, oldest first.

        Raises:
            ValueError: a position is already pending, appears twice in ``positions``, or is
                the checkpoint. Nothing is tracked then.
        """
        batch = tuple(positions)
        pending = self._pending
        before = len(pending)
        # Bulk set update runs in C; duplicates show up as a smaller growth than the batch,
        # and the checkpoint (never pending before) as its presence afterwards.
        pending.update(batch)
        if len(pending) - before != len(batch) or (
            self._checkpoint is not None and self._checkpoint in pending
        ):
            self._pending = set(self._order)
            raise ValueError(self._refusal(batch))
        self._order.extend(batch)

    def settle(self, positions: Iterable[K]) -> None:
        """Mark records settled, in any order. Settling a settled pending record is a no-op.

        Raises:
            KeyError: a position is not pending: never tracked, or already passed by
                :meth:`advance`. Nothing is settled then.
        """
        batch = tuple(positions)
        if not self._pending.issuperset(batch):
            unknown = next(p for p in batch if p not in self._pending)
            raise KeyError(f"position {unknown!r} is not pending: never tracked, or already passed")
        self._settled.update(batch)

    def advance(self) -> K | None:
        """Pass the settled records at the head of the read order.

        Returns:
            The last position passed, which is the new checkpoint, or ``None`` when the oldest
            pending record is unsettled (or nothing is pending) and so nothing was passed.
        """
        order, settled, pending = self._order, self._settled, self._pending
        passed: K | None = None
        count = len(settled)
        if count and settled.issuperset(islice(order, count)):
            # Every settled record is at the head (in-order settlement, the usual case):
            # they are passed together, in C, rather than one by one.
            passed = order[count - 1]
            pending.difference_update(settled)
            settled.clear()
            deque(map(deque.popleft, repeat(order, count)), maxlen=0)
        while order and order[0] in settled:
            passed = order.popleft()
            settled.remove(passed)
            pending.remove(passed)
        if passed is not None:
            self._checkpoint = passed
        if not order:
            # Sets never shrink as items leave; clearing an empty one gives back the table a
            # backlog grew it to (about 20 KB a shard after a 1,000-record read).
            pending.clear()
            settled.clear()
        return passed

    def first_unsettled(self) -> K | None:
        """The oldest unsettled record, the one the watermark waits on; ``None`` if none.

        O(1) right after :meth:`advance`; otherwise it skips the settled head first.
        """
        settled = self._settled
        return next((p for p in self._order if p not in settled), None)

    def _refusal(self, batch: tuple[K, ...]) -> str:
        """Explain why :meth:`track` refuses ``batch``, naming its first offending position.

        Runs only on the error path, with ``_pending`` already restored.
        """
        first_index = {p: i for i, p in reversed(tuple(enumerate(batch)))}
        offender = next(
            p
            for i, p in enumerate(batch)
            if p == self._checkpoint or p in self._pending or first_index[p] != i
        )
        if offender == self._checkpoint:
            return f"position {offender!r} was already passed: it is the checkpoint"
        return f"position {offender!r} is already tracked"
