"""Per-shard supervision: one reader feeding one processor, per shard this replica runs.

Data flow (one :class:`ShardSupervisor` per stream mapping, owned by its runner)::

    runner --start(shard_id)--> a supervised task per shard, in the runner's task group:
        checkpoint (ownership.store) -> start_position -> ShardReader (GetRecords), or
            PushShardReader (SubscribeToShard, enhanced fan-out: the same records, pushed)
            --send(chunk), in the shard's task--> ShardProcessor (lanes, invoke, checkpoint)
        a ShardAccount of the process's ReadBudget per shard task: the reader reserves and
            charges it, settled records release it, a run's end drops what it still holds,
            the task's end closes it (poller.streams.budget)
        a settled stop -> ownership.release(shard_id)
    ownership --stop(shard_id, lost=...)--> that shard's _ShardControl

A shard task that fails unexpectedly is logged (``shard.crashed``) and restarted from its
checkpoint after a backoff; it never stops the other shards or the service. A shard that ends
(SHARD_END checkpointed) wakes the runner, which then starts its children.

A shard costs two tasks and one task group while it runs: its supervised task, which runs the
reader and, inline, the processor's intake (no stream between them), and one task per lane
in the processor's task group. What waits is made when it waits (memory per idle shard is
what limits the shards a replica can hold).

Stopping, one signal per shard: ``_ShardControl.draining`` (a flag, set once) means "read no
more, take no new batch, let the batches in flight finish and checkpoint, then return"; the
runner's ``stopping`` (shutdown) and a handoff set it. The processor is handed the control as
its ``stopping``, and when it is set (``_ShardControl.request_drain``)
``ShardProcessor.interrupt()`` cancels the intake (the reader) and abandons the processor's
waits, and a restart's backoff is cut short: a callback, not a task waiting for an event (a
task per shard costs memory at thousands of shards). A lost
lease is not a signal but a cancellation of the shard's whole scope (``_ShardControl.scope``),
in-flight invocation included: nothing of a shard another replica owns may run on, nor may its
lease be released.

Rewinds (``poller rewind``): ownership asks for a *restart* (``restart(shard_id)``,
``_ShardControl.request_restart``) when a rewind is pending for a running shard. It stops the
run as a drain does (no new batch, the batches in flight finish and checkpoint), then, instead
of returning, runs the shard again at once; every run starts from
``ownership.start_checkpoint``, which applies a pending rewind first (fenced as any
checkpoint). The new run has a new reader (its iterator at the new position), a new processor
(no buffered read-ahead, a fresh watermark): nothing of the old position survives, and the
lease is never let go of in between, so no peer can take the shard meanwhile. A run that ended
at ``SHARD_END`` while its restart was asked is not run again: the shard is finished, and its
request is marked skipped by whoever applies it. A SQLite checkpoint write refused because a
rewind was applied behind the run (``RewoundMeanwhile``) restarts the run at once, from the new
checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import structlog
from anyio.abc import TaskGroup

from poller.checkpoints.sqlite import RewoundMeanwhile
from poller.config.arns import DYNAMODB_LOCAL_CREATION_TIME_STEP, is_dynamodb_local
from poller.core.failure_record import SourceKind
from poller.core.retry_policy import StreamRetryPolicy
from poller.destinations import FailureDestination
from poller.errors import LeaseLost
from poller.observability.metrics import Metrics
from poller.ports import RecordsPage, StartPosition, StreamApi, Subscriptions
from poller.retry import READ_BACKOFF
from poller.streams.budget import ReadBudget, ShardAccount
from poller.streams.ownership import ShardOwnership
from poller.streams.processor import BatchPolicy, ChunkSink, FailureRouting, ShardProcessor
from poller.streams.push_reader import PushShardReader
from poller.streams.reader import ShardReader
from poller.streams.start import StreamMapping, start_position
from poller.types import Target

#: A run of a shard that lasted this long before it crashed was healthy: its crash counts as
#: a first one (the restart backoff grows only over crashes in quick succession). Longer than
#: the longest backoff, so a crash loop never looks healthy.
HEALTHY_RUN_SECONDS = 60.0

log = structlog.get_logger("poller.streams")


@dataclass(slots=True)
class _ShardControl:
    """How the supervisor stops one shard: a drain (``request_drain``) drains it; ``scope``
    cancels it outright (a lost lease, which ``lost`` records: such a shard is not released).
    It is also the processor's ``stopping`` (``is_set``)."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    lost: bool = False
    #: A drain was asked for.
    draining: bool = False
    #: A restart was asked for (a rewind): drain this run, then run the shard again.
    restarting: bool = False
    #: Stops what the shard waits on now: its run's intake, or a restart's backoff.
    on_drain: Callable[[], None] | None = None

    def is_set(self) -> bool:
        """Whether this run must stop: a drain or a restart was asked for (the processor's
        ``stopping``)."""
        return self.draining or self.restarting

    def request_drain(self) -> None:
        """Drain: read no more, take no new batch, finish the batches in flight."""
        self.draining = True
        if self.on_drain is not None:
            self.on_drain()

    def request_restart(self) -> None:
        """Stop this run as a drain does, then run the shard again (from its checkpoint)."""
        self.restarting = True
        if self.on_drain is not None:
            self.on_drain()

    def stop_with(self, on_drain: Callable[[], None] | None) -> None:
        """From now on a drain calls ``on_drain`` (at once if it was already asked for);
        None: nothing to stop."""
        self.on_drain = on_drain
        if on_drain is not None and self.is_set():
            on_drain()


class ShardSupervisor:
    """Runs, restarts and stops the shard tasks of one mapping."""

    def __init__(
        self,
        mapping: StreamMapping,
        *,
        api: StreamApi,
        kind: SourceKind,
        target: Target,
        ownership: ShardOwnership,
        stopping: anyio.Event,
        metrics: Metrics,
        destination: FailureDestination | None,
        on_shard_end: Callable[[], None],
        budget: ReadBudget | None = None,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        self._mapping = mapping
        #: Enhanced fan-out: shards are read through these subscriptions, not polled.
        self._subscriptions = subscriptions
        self._budget = budget
        self._api = api
        self._target = target
        self._ownership = ownership
        self._stopping = stopping
        self._metrics = metrics
        self._on_shard_end = on_shard_end
        self._controls: dict[str, _ShardControl] = {}
        self._running: set[str] = set()
        self._policy = batch_policy(mapping)
        self._routing = FailureRouting(
            kind=kind,
            stream_arn=mapping.stream_arn,
            mapping_uuid=mapping.mapping_uuid,
            destination=destination,
        )

    @property
    def running(self) -> AbstractSet[str]:
        """Shards whose task still runs, releasing included (the balancer must not re-take
        their leases meanwhile)."""
        return self._running

    def start(self, tg: TaskGroup, shard_id: str) -> None:
        """Run ``shard_id`` in ``tg`` unless it runs already or shutdown began."""
        if shard_id in self._running or self._stopping.is_set():
            return
        self._running.add(shard_id)
        # Opened now, not when the task runs: shards started together divide the budget
        # from their first read, rather than the first ones taking all of it.
        account = self._account(shard_id)
        # Made now, not when the task first runs: a stop() in between must not be lost.
        control = self._controls[shard_id] = _ShardControl()
        tg.start_soon(self._supervise, shard_id, control, account, name=f"shard {shard_id}")

    def stop(self, shard_id: str, *, lost: bool) -> None:
        """Lost: cancel at once (no invocation, no checkpoint). Else: drain, then release."""
        control = self._controls.get(shard_id)
        if control is None:
            return
        if lost:
            control.lost = True
            control.scope.cancel()
        control.request_drain()

    def restart(self, shard_id: str) -> None:
        """Stop the shard's run at a batch boundary and run it again from its checkpoint
        (a rewind is pending for it); nothing when it does not run or is draining."""
        control = self._controls.get(shard_id)
        if control is not None and not control.draining:
            log.info("shard.restarting", reason="rewind", restart_shard=shard_id)
            control.request_restart()

    async def relay_stop(self) -> None:
        """On shutdown, drain every running shard (a shard started later drains at once)."""
        await self._stopping.wait()
        for control in list(self._controls.values()):
            control.request_drain()

    async def _supervise(
        self, shard_id: str, control: _ShardControl, account: ShardAccount | None
    ) -> None:
        """Run a shard until it ends, is handed off or shutdown; restart it after failures.

        The shard is released (or handed to the peer that asked) only when it stopped
        *settled*: its last batch finished and its checkpoint was written. A shard cancelled
        by the drain deadline keeps its lease until it expires, since its invocation may still
        be running; a lost shard's lease is not ours to release.
        """
        if self._stopping.is_set():
            control.draining = True
        settled = False
        # Bound for the rest of this task (and its lanes, whose context is a copy): the task
        # has a context of its own, so nothing needs unbinding, and no context manager stays
        # alive per shard.
        structlog.contextvars.bind_contextvars(shard=shard_id)
        try:
            with control.scope:
                await self._run_until_done(shard_id, control, account)
            settled = not control.lost
        finally:
            if account is not None:
                account.close()
            self._controls.pop(shard_id, None)
            self._metrics.shard_released(self._mapping.name, shard_id)
            if settled:
                await self._ownership.release(shard_id)
            # Only now: while it was busy, the balancer must not re-take its lease.
            self._running.discard(shard_id)

    async def _run_until_done(
        self, shard_id: str, control: _ShardControl, account: ShardAccount | None
    ) -> None:
        # Not ``poller.retry.retrying``: any exception restarts the shard (a bug included,
        # logged with its traceback), a lost lease ends it, and the drain ends the loop.
        failures = 0
        while not control.draining:
            # Cleared before the run reads its start: a rewind asked from now on stops it.
            control.restarting = False
            started = time.monotonic()
            try:
                ended = await self._run_shard(shard_id, control, account)
            except Exception as exc:
                if _contains(exc, LeaseLost):
                    control.lost = True
                    log.warning("shard.stopped", reason="lease lost")
                    return
                if _contains(exc, RewoundMeanwhile):
                    # Moved behind this run (SQLite): start again from the new checkpoint.
                    log.warning("shard.restarting", reason="rewound meanwhile")
                    continue
                # A run that was healthy for a while starts the count again: crashes hours
                # apart are each a first one, not a streak that waits out the longest backoff.
                healthy = time.monotonic() - started >= HEALTHY_RUN_SECONDS
                failures = 1 if healthy else failures + 1
                log.exception("shard.crashed", attempt=failures)
            else:
                if control.restarting and not control.draining and not ended:
                    # A rewind: the run drained; start again from the new checkpoint. A run
                    # that ended at SHARD_END is finished whatever was asked meanwhile: a
                    # finished shard is never re-opened (its request is marked skipped).
                    continue
                if ended:
                    self._on_shard_end()
                return
            # Outside the handler: while it runs, the exception's traceback keeps the failed
            # run's frames alive, and with them the records they held, outside the read budget.
            await _backoff(control, READ_BACKOFF.delay(failures))

    async def _run_shard(
        self, shard_id: str, control: _ShardControl, account: ShardAccount | None
    ) -> bool:
        """One pass over a shard: reader and processor side by side. True when it ended."""
        # A pending rewind is applied here, before the reader opens (fenced when leased).
        checkpoint = await self._ownership.start_checkpoint(shard_id)
        if checkpoint is not None and checkpoint.is_shard_end:
            return True
        start = start_position(self._mapping, checkpoint)
        log.info("shard.started", start=start.type, after=start.sequence_number)
        try:
            processor = self._processor(shard_id, control, account)
            # The reader only sends and closes: the processor's intake is all it needs of a
            # send stream (its parameter's type is the stream's; the reader is passed as it
            # is, since a wrapper would be one more coroutine per shard).
            read = cast(
                Callable[[ChunkSink], Awaitable[None]], self._reader(shard_id, start, account).run
            )
            # The processor runs the reader in this task, under the scope its interrupt cancels.
            control.stop_with(processor.interrupt)
            return await processor.run_with(read) is not None
        finally:
            control.stop_with(None)
            if account is not None:
                account.drop()  # whatever is still buffered is dropped with this run

    def _account(self, shard_id: str) -> ShardAccount | None:
        """This run's part of the read budget (none without a budget)."""
        if self._budget is None:
            return None
        return self._budget.account(
            self._mapping.name,
            shard_id,
            floor_records=self._mapping.batch_size,
            max_records=self._api.limit,
        )

    def _processor(
        self, shard_id: str, control: _ShardControl, account: ShardAccount | None
    ) -> ShardProcessor:
        """The processor of one run of the shard: it stops with ``control``, releases what
        settles from ``account``."""
        processor = ShardProcessor(
            mapping=self._mapping.name,
            shard_id=shard_id,
            target=self._ownership.target(shard_id, self._target),
            store=self._ownership.store,
            policy=self._policy,
            routing=self._routing,
            stopping=control,
            metrics=self._metrics,
            guard=self._ownership.guard(shard_id),
            retention=self._api.retention_seconds,
            released=None if account is None else account.release,
        )
        if account is not None:  # a batch never waits for records the budget holds back
            account.on_blocked(processor.reads_blocked)
        return processor

    def _reader(
        self, shard_id: str, start: StartPosition, account: ShardAccount | None
    ) -> ShardReader | PushShardReader:
        """The shard's reader: pushed records (enhanced fan-out) or polled ones, the same
        records either way, into the same processor."""
        common: dict[str, Any] = {
            "shard_id": shard_id,
            "start": start,
            "on_page": self._page_reporter(shard_id),
            "metrics": self._metrics,
            "mapping": self._mapping.name,
            "account": account,
        }
        if self._subscriptions is not None:
            return PushShardReader(self._api, subscriptions=self._subscriptions, **common)
        return ShardReader(self._api, **common)

    def _page_reporter(self, shard_id: str) -> Callable[[RecordsPage], None]:
        """Reports the source's own lag (Kinesis ``MillisBehindLatest``) when it changes: an
        idle shard reads 0 every poll, and setting the gauge to the value it holds is work."""
        metrics, name = self._metrics, self._mapping.name
        last: list[int | None] = [None]

        def report(page: RecordsPage) -> None:
            millis = page.millis_behind_latest
            if millis is not None and millis != last[0]:
                last[0] = millis
                metrics.millis_behind_latest(name, shard_id, millis)

        return report


def batch_policy(mapping: StreamMapping) -> BatchPolicy:
    """How the mapping's batches are cut, how many are in flight, how failures are handled."""
    return BatchPolicy(
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
            arrival_uncertainty_seconds=_creation_time_uncertainty(mapping),
        ),
    )


def _creation_time_uncertainty(mapping: StreamMapping) -> float:
    """How much later than its reported creation time a change may have been made."""
    local = is_dynamodb_local(mapping.event_source_arn)
    return DYNAMODB_LOCAL_CREATION_TIME_STEP if local else 0.0


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is, or is a task-group exception group holding, a ``kind``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, kind)) is not None
    return isinstance(exc, kind)


async def _backoff(control: _ShardControl, seconds: float) -> None:
    """Wait ``seconds`` before a restart, or until a drain is asked for (at once if it was)."""
    with anyio.CancelScope() as scope:
        control.stop_with(scope.cancel)
        try:
            await anyio.sleep(seconds)
        finally:
            control.stop_with(None)
