"""Runs one stream mapping: shard discovery, lineage, and a supervised worker per shard.

Data flow::

    StreamMappingRunner
      ├─ discovery loop: ListShards every ``shard_discovery_interval_seconds``, and at once
      │  when a shard ends; ``plan_shards`` says which shards may start (parents first)
      └─ per ready shard, a supervised task group:
           reader (GetRecords) --bounded stream--> ShardProcessor (lanes, invoke, checkpoint)

Where a shard starts:

* after its checkpoint (``AFTER_SEQUENCE_NUMBER``) when it has one;
* for a mapping's first start: TRIM_HORIZON, AT_TIMESTAMP, or for LATEST the start time is
  written as a checkpoint of every open shard first (closed shards are marked finished), so a
  restart before the first record resumes at that instant instead of skipping what arrived
  while the service was down;
* a shard first seen later (a child after a reshard) starts at TRIM_HORIZON, or at the
  mapping's timestamp for AT_TIMESTAMP, once its parents are finished.

A shard task that fails unexpectedly is logged and restarted from its checkpoint after a
backoff; it never stops the other shards or the service.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from poller.checkpoints.dynamodb import LeaseLost
from poller.config import DynamoDBStreamMapping, KinesisMapping
from poller.core.failure_record import SourceKind
from poller.core.lineage import ShardInfo, plan_shards, retired_checkpoints
from poller.core.retry_policy import StreamRetryPolicy
from poller.destinations import FailureDestination
from poller.errors import CheckpointError
from poller.leases import LeaseCoordinator
from poller.observability.metrics import Metrics, NullMetrics
from poller.pipeline import BatchPolicy, FailureRouting, ShardProcessor
from poller.retry import READ_BACKOFF, retrying
from poller.sources._shards import RecordsPage, ShardReader, StartPosition, StreamApi
from poller.types import SHARD_END, Checkpoint, CheckpointStore, Chunk, Target

StreamMapping = KinesisMapping | DynamoDBStreamMapping

log = structlog.get_logger("poller.streams")

#: While leases are being handed to this replica, balance this often to take them promptly.
HANDOFF_POLL_SECONDS = 1.0
#: How often held leases are checked for staleness (self-fencing).
FENCE_CHECK_SECONDS = 0.5
#: Balance this long after a peer's lease would expire, to observe it expired.
EXPIRY_MARGIN_SECONDS = 0.2

#: Chunks (GetRecords responses) a reader may read ahead of its worker.
READ_AHEAD_CHUNKS = 2


class StreamMappingRunner:
    """Keeps one worker running per readable shard of one mapping."""

    def __init__(
        self,
        mapping: StreamMapping,
        *,
        api: StreamApi,
        kind: SourceKind,
        target: Target,
        store: CheckpointStore,
        stopping: anyio.Event,
        destination: FailureDestination | None = None,
        metrics: Metrics | None = None,
        leases: LeaseCoordinator | None = None,
    ) -> None:
        self.mapping = mapping
        self._metrics: Metrics = metrics or NullMetrics()
        self._leases = leases
        self._controls: dict[str, _ShardControl] = {}
        self._shards: list[ShardInfo] = []
        self._next_discovery = 0.0
        self._api = api
        self._target = target
        self._store = store
        self._stopping = stopping
        self._running: set[str] = set()
        self._wake = anyio.Event()
        self._policy = BatchPolicy(
            batch_size=mapping.batch_size,
            window_seconds=float(mapping.maximum_batching_window_in_seconds),
            parallelization_factor=mapping.parallelization_factor,
            filters=mapping.filters,
            tumbling_window_seconds=mapping.tumbling_window_in_seconds,
            retry=StreamRetryPolicy(
                maximum_retry_attempts=mapping.maximum_retry_attempts,
                maximum_record_age_seconds=mapping.maximum_record_age_in_seconds,
                bisect_on_function_error=mapping.bisect_batch_on_function_error,
                report_batch_item_failures=mapping.report_batch_item_failures,
            ),
        )
        self._routing = FailureRouting(
            kind=kind,
            stream_arn=mapping.event_source_arn,
            mapping_uuid=mapping.mapping_uuid,
            destination=destination,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Discover shards and run workers until shutdown; every worker has drained on return."""
        with structlog.contextvars.bound_contextvars(mapping=self.mapping.name):
            async with anyio.create_task_group() as tg:
                await self._maybe_initialize()
                await self._refresh(tg)
                log.info("mapping.started", shards=sorted(self._running))
                task_status.started()
                tg.start_soon(self._propagate_stop, name="stop propagation")
                if self._leases is not None:
                    tg.start_soon(self._renew_loop, self._leases, name="lease renewals")
                    tg.start_soon(self._fence_loop, self._leases, name="lease self-fencing")
                await self._discovery_loop(tg)

    async def _discovery_loop(self, tg: anyio.abc.TaskGroup) -> None:
        """Refresh every discovery interval (every balance interval with leases), at once when
        a shard ends, until shutdown."""
        while not self._stopping.is_set():
            with anyio.move_on_after(self._tick()):
                async with anyio.create_task_group() as waiters:
                    waiters.start_soon(_wait_and_cancel, self._wake, waiters.cancel_scope)
                    waiters.start_soon(_wait_and_cancel, self._stopping, waiters.cancel_scope)
            if self._wake.is_set():
                self._next_discovery = 0.0
            self._wake = anyio.Event()
            if not self._stopping.is_set():
                await self._refresh(tg)

    def _tick(self) -> float:
        """Seconds to the next refresh: the interval with ±20 % jitter (replicas started
        together drift apart), shortened for a pending handoff or a peer's lease expiry."""
        interval = self.mapping.shard_discovery_interval_seconds
        leases = self._leases
        if leases is not None:
            interval = min(interval, leases.settings.balance_interval)
        interval *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
        if leases is not None:
            if leases.awaiting_handoff:
                interval = min(interval, HANDOFF_POLL_SECONDS)
            expiry = leases.next_expiry()
            if expiry is not None:
                until = expiry - time.monotonic() + EXPIRY_MARGIN_SECONDS
                interval = min(interval, max(until, 0.1))
        return interval

    async def _refresh(self, tg: anyio.abc.TaskGroup) -> None:
        """Discover shards when due, balance leases, and start what this replica should run."""
        if time.monotonic() >= self._next_discovery:
            self._shards = await self._list_shards()
            self._next_discovery = time.monotonic() + self.mapping.shard_discovery_interval_seconds
            if self._leases is not None:
                await self._leases.sync(self._shards, self._initial_checkpoint)
        checkpoints = await self._store.get_all(self.mapping.name)
        await self._retire(self._shards, checkpoints)
        if self._leases is None:
            wanted = plan_shards(self._shards, checkpoints).ready
        else:
            for shard_id in await self._leases.balance():
                self._stop_shard(shard_id, lost=True)
            wanted = tuple(sorted(self._leases.held))
        for shard_id in wanted:
            if shard_id not in self._running and not self._stopping.is_set():
                self._running.add(shard_id)
                tg.start_soon(self._supervise_shard, shard_id, name=f"shard {shard_id}")

    async def _renew_loop(self, leases: LeaseCoordinator) -> None:
        """Renew held leases; stop lost shards at once, hand requested ones over gracefully."""
        while not self._stopping.is_set():
            await anyio.sleep(leases.settings.renew_interval)
            outcome = await leases.renew_all()
            for shard_id in outcome.lost:
                self._stop_shard(shard_id, lost=True)
            for shard_id in outcome.handoffs:
                log.info("lease.handing_off", handoff_shard=shard_id)
                self._stop_shard(shard_id, lost=False)

    async def _fence_loop(self, leases: LeaseCoordinator) -> None:
        """Cancel, in-flight invocation included, any shard whose lease went stale.

        Independent of the lease table's latency: a renewal stuck on a slow table must not let
        a batch run on while a peer, seeing the lease expire, starts the same shard.
        """
        while not self._stopping.is_set():
            await anyio.sleep(FENCE_CHECK_SECONDS)
            for shard_id in leases.stale():
                log.warning("lease.stale", stale_shard=shard_id)
                leases.forget(shard_id)
                self._stop_shard(shard_id, lost=True)

    def _stop_shard(self, shard_id: str, *, lost: bool) -> None:
        """Lost: cancel at once (no invocation, no checkpoint). Else: drain, then release."""
        control = self._controls.get(shard_id)
        if control is None:
            return
        if lost:
            control.lost = True
            control.scope.cancel()
        control.stop.set()

    async def _propagate_stop(self) -> None:
        await self._stopping.wait()
        for control in list(self._controls.values()):
            control.stop.set()

    def _initial_checkpoint(self, shard: ShardInfo) -> Checkpoint | None:
        """A lease's first checkpoint on the mapping's first start: LATEST pins the instant."""
        if self.mapping.starting_position != "LATEST":
            return None
        if shard.closed:
            return Checkpoint(sequence_number=SHARD_END)
        return Checkpoint(start_timestamp=time.time())

    async def _list_shards(self) -> list[ShardInfo]:
        return await retrying(f"list shards of {self.mapping.name}", self._api.list_shards)

    async def _maybe_initialize(self) -> None:
        """On a LATEST mapping's first start, pin the start instant in durable checkpoints.

        With leases the pin is written when the leases are created (``LeaseCoordinator.sync``).
        """
        if self.mapping.starting_position != "LATEST" or self._leases is not None:
            return
        if await self._store.get_all(self.mapping.name):
            return
        now = time.time()
        for shard in await self._list_shards():
            checkpoint = (
                Checkpoint(sequence_number=SHARD_END)
                if shard.closed
                else Checkpoint(start_timestamp=now)
            )
            await self._store.put(self.mapping.name, shard.shard_id, checkpoint)
        log.info("mapping.initialized", starting_position="LATEST", start_timestamp=now)

    async def _retire(self, shards: list[ShardInfo], checkpoints: dict[str, Checkpoint]) -> None:
        """Delete checkpoints of finished parents whose children all progress (lineage rules
        keep them finished), and of finished shards that aged out of the stream."""
        for shard_id in retired_checkpoints(shards, checkpoints):
            await self._store.delete(self.mapping.name, shard_id)
            log.info("checkpoint.retired", retired_shard=shard_id)

    async def _supervise_shard(self, shard_id: str) -> None:
        """Run a shard until it ends, is handed off or shutdown; restart it after failures."""
        control = self._controls[shard_id] = _ShardControl()
        if self._stopping.is_set():
            control.stop.set()
        with structlog.contextvars.bound_contextvars(shard=shard_id):
            try:
                with control.scope:
                    await self._run_until_done(shard_id, control)
            finally:
                self._controls.pop(shard_id, None)
                self._running.discard(shard_id)
                self._metrics.shard_released(self.mapping.name, shard_id)
                if self._leases is not None and not control.lost:
                    with anyio.CancelScope(shield=True):
                        await self._release(shard_id)

    async def _run_until_done(self, shard_id: str, control: _ShardControl) -> None:
        failures = 0
        while not control.stop.is_set():
            try:
                ended = await self._run_shard(shard_id, control.stop)
            except Exception as exc:
                if _contains(exc, LeaseLost):
                    control.lost = True
                    log.warning("shard.stopped", reason="lease lost")
                    return
                failures += 1
                log.exception("shard.crashed", attempt=failures)
                await anyio.sleep(READ_BACKOFF.delay(failures))
                continue
            if ended:
                self._wake.set()
            return

    async def _release(self, shard_id: str) -> None:
        assert self._leases is not None
        try:
            await self._leases.release(shard_id)
        except CheckpointError as exc:
            log.warning("lease.release_failed", error=str(exc))

    async def _run_shard(self, shard_id: str, stop: anyio.Event) -> bool:
        """One pass over a shard: reader and worker side by side. True when the shard ended."""
        checkpoint = await self._store.get(self.mapping.name, shard_id)
        if checkpoint is not None and checkpoint.is_shard_end:
            return True
        start = self._start_position(checkpoint)
        log.info("shard.started", start=start.type, after=start.sequence_number)
        reader = ShardReader(
            self._api, shard_id=shard_id, start=start, on_page=self._page_reporter(shard_id)
        )
        worker = ShardProcessor(
            mapping=self.mapping.name,
            shard_id=shard_id,
            target=self._target,
            store=self._store,
            policy=self._policy,
            routing=self._routing,
            stopping=stop,
            metrics=self._metrics,
            guard=None if self._leases is None else partial(self._leases.ensure_fresh, shard_id),
        )
        send, receive = anyio.create_memory_object_stream[Chunk](READ_AHEAD_CHUNKS)
        reader_scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_cancellable, reader.run, send, reader_scope)
            tg.start_soon(_stop_intake, stop, reader_scope, worker)
            ended = await worker.run(receive)
            tg.cancel_scope.cancel()
        return ended is not None

    def _page_reporter(self, shard_id: str) -> Callable[[RecordsPage], None]:
        """Reports the source's own lag (Kinesis ``MillisBehindLatest``) per read."""
        metrics, name = self._metrics, self.mapping.name

        def report(page: RecordsPage) -> None:
            if page.millis_behind_latest is not None:
                metrics.millis_behind_latest(name, shard_id, page.millis_behind_latest)

        return report

    def _start_position(self, checkpoint: Checkpoint | None) -> StartPosition:
        if checkpoint is not None and checkpoint.sub_sequence_number is not None:
            # Inside a KPL aggregate: read it again and skip the user records already settled.
            return StartPosition(
                "AT_SEQUENCE_NUMBER",
                checkpoint.sequence_number,
                settled_through=checkpoint.sub_sequence_number,
            )
        if checkpoint is not None and checkpoint.sequence_number is not None:
            return StartPosition("AFTER_SEQUENCE_NUMBER", checkpoint.sequence_number)
        if checkpoint is not None and checkpoint.start_timestamp is not None:
            return StartPosition("AT_TIMESTAMP", timestamp=checkpoint.start_timestamp)
        if (
            isinstance(self.mapping, KinesisMapping)
            and self.mapping.starting_position == "AT_TIMESTAMP"
        ):
            return StartPosition("AT_TIMESTAMP", timestamp=self.mapping.starting_position_timestamp)
        # TRIM_HORIZON mappings, and shards that appeared after a LATEST mapping started.
        return StartPosition("TRIM_HORIZON")


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is, or is a task-group exception group holding, a ``kind``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, kind)) is not None
    return isinstance(exc, kind)


@dataclass(slots=True)
class _ShardControl:
    """How the runner stops one shard: ``stop`` drains it; ``scope`` cancels it outright."""

    stop: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    lost: bool = False


async def _wait_and_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _run_cancellable(run: Any, send: Any, scope: anyio.CancelScope) -> None:
    """Run the reader under ``scope``, which shutdown cancels to stop intake."""
    with scope:
        await run(send)


async def _stop_intake(
    stopping: anyio.Event, reader_scope: anyio.CancelScope, worker: ShardProcessor
) -> None:
    """On shutdown, stop reading at once and stop the worker from taking a new batch."""
    await stopping.wait()
    reader_scope.cancel()
    worker.interrupt()
