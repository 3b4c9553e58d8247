"""The checkpointer of one shard: the watermark of settled records and the durable writes.

Data flow::

    ShardProcessor --track(records read)--> Checkpointer
    filter / Delivery / FailureRouter --settle(records)--> Checkpointer
        -> released(records): the read budget frees their bytes (poller.streams.budget)
        -> Watermark (highest record below which every record is settled)
        -> CheckpointStore.put(mapping, shard, Checkpoint), with the open window's state

The checkpoint is the highest record below which every record is settled
(:class:`~poller.core.watermark.Watermark`): with several lanes, batches settle out of order,
and a checkpoint past an unsettled record would skip it after a restart. A lane's settlement
writes it, durably, before the lane takes its next batch, so a restart re-delivers at most
what was in flight. With a tumbling window open, its window and state are stored with every
checkpoint (read back by :class:`~poller.streams.windows.TumblingWindows` when the shard
starts again); ``SHARD_END`` is written once the shard's end is reached and all is settled.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence

import anyio

from poller.core.watermark import Watermark
from poller.errors import CheckpointError
from poller.observability.metrics import Metrics
from poller.retry import retrying
from poller.types import SHARD_END, Checkpoint, CheckpointStore, StreamRecord

#: How long a checkpoint write is shielded from cancellation: the drain deadline cannot cancel
#: the write for a batch already delivered within this time; past it the write carries on,
#: cancellable, so a store that stays down cannot hold the shutdown forever.
CHECKPOINT_SHIELD_SECONDS = 10.0


def checkpoint_at(position: str) -> Checkpoint:
    """The checkpoint for a watermark position: ``seq``, ``seq:sub`` (KPL) or ``SHARD_END``."""
    sequence, _, sub = position.partition(":")
    return Checkpoint(sequence_number=sequence, sub_sequence_number=int(sub) if sub else None)


#: A record's sequence number, and its index inside a KPL aggregate (None for most).
_SEQUENCE = operator.attrgetter("sequence_number")
_SUB_SEQUENCE = operator.attrgetter("sub_sequence_number")


def positions(records: Sequence[StreamRecord]) -> list[str]:
    """The records' positions (``StreamRecord.position``): when none is a KPL user record
    (nearly always), their sequence numbers, gathered in C rather than through the property
    record by record (this runs twice for every record read)."""
    if operator.countOf(map(_SUB_SEQUENCE, records), None) == len(records):
        return list(map(_SEQUENCE, records))
    return [record.position for record in records]


class Checkpointer:
    """Tracks the records of one shard until they settle, and writes the checkpoint."""

    def __init__(
        self,
        *,
        mapping: str,
        shard_id: str,
        store: CheckpointStore,
        metrics: Metrics,
        window_state: Callable[[], str | None],
        released: Callable[[Sequence[StreamRecord]], None] | None = None,
    ) -> None:
        """``released`` is told of every record that settles (the read budget frees its
        bytes: :mod:`poller.streams.budget`)."""
        self._mapping = mapping
        self._released = released
        self._shard_id = shard_id
        self._store = store
        self._metrics = metrics
        #: The open tumbling window and its state, encoded; None when no window is open.
        self._window_state = window_state
        self._watermark: Watermark[str] = Watermark()
        self._lock = anyio.Lock()
        #: The last position written durably.
        self._durable: str | None = None

    def track(self, records: Sequence[StreamRecord]) -> None:
        """Records read, in read order: the checkpoint cannot pass them until they settle."""
        self._watermark.track(positions(records))

    @property
    def unsettled(self) -> int:
        """How many tracked records are not settled yet."""
        return self._watermark.pending

    async def read(self) -> Checkpoint | None:
        """The shard's stored checkpoint (retried while the store is unavailable)."""

        async def get() -> Checkpoint | None:
            return await self._store.get(self._mapping, self._shard_id)

        return await retrying(f"read checkpoint {self._shard_id}", get)

    async def settle(self, records: Sequence[StreamRecord]) -> None:
        """Mark records settled and checkpoint the watermark if it is past the durable one.

        Compared with the last *durable* position, not with the last advance: a write that was
        cancelled is made again by the next settlement.
        """
        if self._released is not None:
            self._released(records)
        self._watermark.settle(positions(records))
        async with self._lock:
            self._watermark.advance()
            position = self._watermark.checkpoint
            if position is not None and position != self._durable:
                await self._checkpoint(position)
                self._durable = position

    async def window_closed(self, resumed: Checkpoint | None) -> None:
        """Checkpoint again now that the window closed, so its state is no longer stored.

        With nothing settled since the start, the checkpoint read at the start (``resumed``,
        which held the window) is written back without it.
        """
        async with self._lock:
            position = self._watermark.checkpoint
            if position is not None:
                await self._checkpoint(position)
                self._durable = position
            elif resumed is not None:
                await self._write(dataclasses.replace(resumed, window_state=None))

    async def end_shard(self) -> None:
        """Checkpoint ``SHARD_END``: the shard is closed and every record of it settled."""
        await self._checkpoint(SHARD_END)

    async def _checkpoint(self, position: str) -> None:
        """Durably record progress before the lane takes its next batch.

        The first attempts are shielded (see :meth:`_write`), so that the drain deadline cannot
        cancel the write for a batch that was already delivered. If the store stays down past
        the shield, the lane keeps trying, now cancellable: it never moves on without a
        checkpoint.
        """
        checkpoint = checkpoint_at(position)
        state = None if position == SHARD_END else self._window_state()
        if state is not None:
            checkpoint = dataclasses.replace(checkpoint, window_state=state)
        await self._write(checkpoint)

    async def _write(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint``: shielded for ``CHECKPOINT_SHIELD_SECONDS``, then cancellable."""

        async def put() -> None:
            try:
                await self._store.put(self._mapping, self._shard_id, checkpoint)
            except CheckpointError:
                self._metrics.checkpoint_failed(self._mapping, self._shard_id)
                raise
            self._metrics.checkpoint_written(self._mapping, self._shard_id)

        what = f"checkpoint {self._shard_id}"
        with anyio.move_on_after(CHECKPOINT_SHIELD_SECONDS, shield=True):
            await retrying(what, put)
            return
        await retrying(what, put)
