"""Runs one SQS mapping: pollers that receive, batch, invoke and settle, scaled like Lambda.

Data flow::

    SqsMappingRunner
      ├─ scaling loop (one tick a second): core.queue_rules.Scaler decides how many pollers run
      └─ poller (a task; each holds a CapacityLimiter slot of maximum_concurrency while busy)
           Intake.gather -> BatchProcessor.process (invoke, judge, Settler) ; Heartbeat beside

    provisioned mode (``provisioned_poller_config``):
      ├─ scaling loop (one tick a second): core.scaling.ProvisionedScaler decides
      ├─ backlog loop (every 5 s): BacklogProbe.backlog(), when the queue offers it
      └─ poller (a task, one receive loop): its own Intake on a PacedQueue (≤ 10 receives/s),
           up to 10 batches in flight at once, each BatchProcessor.process ; Heartbeat beside

The runner owns the lifecycle: it opens the queue (once, retried), starts the pollers and the
scaling loop, restarts a poller that crashed, and returns only when every batch has settled.
See :mod:`poller.queues` for Lambda's rules and the shutdown order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.queue_rules import MIN_POLLERS, Scaler
from poller.core.scaling import BATCHES_PER_POLLER, Load, ProvisionedScaler
from poller.errors import SourceError
from poller.observability.metrics import Metrics, NullMetrics
from poller.queues.batch import BatchProcessor
from poller.queues.heartbeat import Heartbeat
from poller.queues.holding import Holding
from poller.queues.intake import Gathering, Intake
from poller.queues.ports import BacklogProbe, PacedQueue, QueueApi
from poller.queues.settle import Settler
from poller.queues.stopping import pause
from poller.retry import INVOKE_BACKOFF, READ_BACKOFF, Backoff, retrying
from poller.sources.sqs import (
    SETTLE_CLIENT_CONFIG,
    QueueInfo,
    SqsQueue,
    receive_client_config,
)
from poller.types import Target

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.config import SqsMapping

log = structlog.get_logger("poller.queues")

#: Seconds between scaling decisions.
SCALE_INTERVAL = 1.0
#: Seconds between reads of the queue's backlog in provisioned mode.
BACKLOG_INTERVAL = 5.0
#: ``maximum_pollers`` above which the start-up log warns: each poller holds a connection
#: and a long poll, so thousands of them cost file descriptors, memory and empty receives.
LARGE_MAXIMUM_POLLERS = 1000


async def build_sqs_runner(
    mapping: SqsMapping,
    *,
    clients: ClientFactory,
    target: Target,
    stopping: anyio.Event,
    metrics: Metrics | None = None,
) -> SqsMappingRunner:
    """The runner of one SQS mapping, with its receive and settle clients.

    Each mapping has a receive client of its own, with a connection per poller, so that its
    long polls never wait for another mapping's; deletes and visibility changes share a
    client per region, so that long polls never delay them.
    """
    receive = await clients.client(
        "sqs",
        purpose=f"sqs-receive:{mapping.name}",
        config=receive_client_config(most_pollers(mapping)),
        region=mapping.region,
    )
    settle = await clients.client(
        "sqs", purpose="sqs-settle", config=SETTLE_CLIENT_CONFIG, region=mapping.region
    )
    queue = SqsQueue(
        receive_client=receive,
        settle_client=settle,
        queue_arn=mapping.event_source_arn,
        region=mapping.region,
    )
    backlog: BacklogProbe = queue  # provisioned mode's scaling signal
    return SqsMappingRunner(
        mapping,
        queue=queue,
        target=target,
        stopping=stopping,
        metrics=metrics or NullMetrics(),
        backlog=backlog,
    )


def most_pollers(mapping: SqsMapping) -> int:
    """The most pollers the mapping may run at once (each holds a receive connection)."""
    provisioned = mapping.provisioned_poller_config
    if provisioned is not None:
        return provisioned.maximum_pollers
    return mapping.maximum_concurrency


class _FailureTally(Scaler):
    """What the batch processor reports to the default scaler, counted for provisioned mode:
    a throttled or failed batch stops growth there, and never sheds a poller."""

    def __init__(self) -> None:
        super().__init__(MIN_POLLERS)
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1


class SqsMappingRunner:
    """Keeps the pollers of one SQS mapping running until shutdown.

    ``backlog`` reads the queue's backlog for provisioned mode's scaling (optional).
    ``clock`` and ``scale_interval`` (provisioned mode's scaling clock and tick) are
    parameters only so that tests can pass minutes of scaling in a second.
    ``max_bytes`` (the 6 MB payload limit) is a parameter only so that tests can exercise
    the cut with small messages, and ``backoff`` (between re-invocations of a throttled
    batch, and after a failed batch) only so that they need not wait for it.
    """

    def __init__(
        self,
        mapping: SqsMapping,
        *,
        queue: QueueApi,
        target: Target,
        stopping: anyio.Event,
        metrics: Metrics | None = None,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        backoff: Backoff = INVOKE_BACKOFF,
        backlog: BacklogProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        scale_interval: float = SCALE_INTERVAL,
    ) -> None:
        self.mapping = mapping
        self._queue = queue
        self._stopping = stopping
        self._metrics: Metrics = metrics or NullMetrics()
        self._name = mapping.name
        self._backoff = backoff
        self._max_bytes = max_bytes
        self._probe = backlog
        self._clock = clock
        self._scale_interval = scale_interval
        provisioned = mapping.provisioned_poller_config
        self._tally = _FailureTally()
        self._provisioned = (
            None
            if provisioned is None
            else ProvisionedScaler(
                provisioned.minimum_pollers, provisioned.maximum_pollers, now=clock()
            )
        )
        self._scaler = self._tally if provisioned else Scaler(mapping.maximum_concurrency)
        self._limiter = anyio.CapacityLimiter(mapping.maximum_concurrency)
        self._next_index = 0
        self._info = QueueInfo(url="", visibility_timeout=30, redrive_policy=None, fifo=False)
        self._intake = Intake(
            mapping, queue=queue, stopping=stopping, metrics=self._metrics, max_bytes=max_bytes
        )
        # provisioned mode: pollers running (retiring ones included), those retiring, their
        # intakes, and what they reported since the last scaling tick
        self._running = 0
        self._retiring: set[int] = set()
        self._intakes: set[Intake] = set()
        self._in_flight = self._full = self._empty = 0
        self._backlog: int | None = None
        settler = Settler(
            queue,
            on_failure=mapping.visibility_timeout_on_failure,
            metrics=self._metrics,
            name=self._name,
        )
        self._batches = BatchProcessor(
            mapping,
            target=target,
            settler=settler,
            scaler=self._scaler,
            stopping=stopping,
            metrics=self._metrics,
            backoff=backoff,
        )

    @property
    def reachable(self) -> bool:
        """False while a poller's receives keep failing (the queue is missing, forbidden or
        does not answer); the service reports the mapping down meanwhile. One failed receive
        whose retry succeeds does not count."""
        return self._intake.reachable and all(i.reachable for i in self._intakes)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the queue and run pollers until shutdown; every batch has settled on return."""
        with structlog.contextvars.bound_contextvars(mapping=self._name):
            self._info = await retrying(f"open queue {self._queue.name}", self._queue.open)
            self._warn_about_queue()
            async with anyio.create_task_group() as tg:
                if self._provisioned is not None:
                    self._start_provisioned(tg, self._provisioned)
                    task_status.started()
                    return
                for _ in range(self._scaler.target):
                    self._spawn(tg)
                tg.start_soon(self._scale_loop, tg)
                log.info(
                    "mapping.started",
                    queue=self._queue.name,
                    fifo=self._info.fifo,
                    visibility_timeout_s=self._info.visibility_timeout,
                    pollers=self._scaler.target,
                    maximum_concurrency=self._scaler.cap,
                )
                task_status.started()

    def _warn_about_queue(self) -> None:
        info = self._info
        if info.redrive_policy is None:
            log.warning(
                "queue.no_redrive_policy",
                queue=self._queue.name,
                hint="messages that keep failing are retried until the queue's retention "
                "period drops them; give the queue a RedrivePolicy with a dead-letter queue",
            )
        if info.visibility_timeout == 0:
            log.warning(
                "queue.visibility_timeout_zero",
                queue=self._queue.name,
                hint="received messages are visible again at once, so batches in flight are "
                "delivered again; the heartbeat cannot extend a zero timeout",
            )
        if info.fifo != self.mapping.is_fifo:
            log.warning("queue.fifo_mismatch", queue=self._queue.name, fifo=info.fifo)

    async def _scale_loop(self, tg: TaskGroup) -> None:
        while await pause(self._stopping, SCALE_INTERVAL):
            for _ in range(self._scaler.tick()):
                self._spawn(tg)

    def _spawn(self, tg: TaskGroup) -> None:
        self._scaler.active += 1
        self._next_index += 1
        self._metrics.sqs_concurrency(self._name, self._scaler.active)
        tg.start_soon(self._poller, self._next_index, name=f"sqs poller {self._next_index}")

    # -- provisioned mode ---------------------------------------------------------------------

    def _start_provisioned(self, tg: TaskGroup, scaler: ProvisionedScaler) -> None:
        for _ in range(scaler.pollers):
            self._spawn_provisioned(tg)
        tg.start_soon(self._provisioned_loop, tg, scaler)
        if self._probe is not None:
            tg.start_soon(self._backlog_loop, self._probe)
        log.info(
            "mapping.started",
            queue=self._queue.name,
            fifo=self._info.fifo,
            visibility_timeout_s=self._info.visibility_timeout,
            pollers=scaler.pollers,
            minimum_pollers=scaler.minimum,
            maximum_pollers=scaler.maximum,
            backlog_signal=self._probe is not None,
        )
        if scaler.maximum > LARGE_MAXIMUM_POLLERS:
            log.warning(
                "sqs.provisioned_sizing",
                maximum_pollers=scaler.maximum,
                hint="each poller holds a connection and a long poll: check the open-file "
                "limit, memory and the cost of empty receives on an idle queue",
            )

    async def _provisioned_loop(self, tg: TaskGroup, scaler: ProvisionedScaler) -> None:
        while await pause(self._stopping, self._scale_interval):
            load = Load(
                in_flight=self._in_flight,
                full=self._full,
                empty=self._empty,
                failures=self._tally.failures,
                backlog=self._backlog,
            )
            self._full = self._empty = self._tally.failures = 0
            target = scaler.tick(load, now=self._clock())
            while self._running < target:
                self._spawn_provisioned(tg)

    async def _backlog_loop(self, probe: BacklogProbe) -> None:
        """Read the backlog every few seconds until shutdown, which cancels a read under way
        (it hands nothing out, and may hang for the client's read timeout)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_backlog, probe)
            await self._stopping.wait()
            tg.cancel_scope.cancel()

    async def _read_backlog(self, probe: BacklogProbe) -> None:
        """Read the backlog every few seconds; a failed read keeps the last value."""
        while True:
            try:
                read = await probe.backlog()
                if read is not None:
                    self._backlog = read
            except SourceError as exc:
                log.info("queue.backlog_unread", error=str(exc))
            if not await pause(self._stopping, BACKLOG_INTERVAL):
                return

    def _spawn_provisioned(self, tg: TaskGroup) -> None:
        self._running += 1
        self._next_index += 1
        self._report_pollers()
        index = self._next_index
        tg.start_soon(self._poller, index, name=f"sqs provisioned poller {index}")

    def _report_pollers(self) -> None:
        # The concurrency gauge counts batch slots in both modes (a default poller is one,
        # a provisioned one ten), so that "every slot busy" reads the same in the alerts.
        self._metrics.sqs_concurrency(self._name, self._running * BATCHES_PER_POLLER)
        self._metrics.provisioned_pollers(self._name, self._running)

    def _retire(self, index: int) -> bool:
        """Whether this poller is one too many (and it now retires): the scaler's target is
        below the pollers that are not already retiring."""
        assert self._provisioned is not None
        if self._running - len(self._retiring) <= self._provisioned.pollers:
            return False
        self._retiring.add(index)
        return True

    async def _poll_provisioned(self, holding: Holding, index: int) -> None:
        """One provisioned poller: a receive loop (its own paced intake) that keeps up to
        :data:`BATCHES_PER_POLLER` batches in flight; returns once they have all settled."""
        intake = Intake(
            self.mapping,
            queue=PacedQueue(self._queue, self._stopping),
            stopping=self._stopping,
            metrics=self._metrics,
            max_bytes=self._max_bytes,
        )
        self._intakes.add(intake)
        slots = anyio.Semaphore(BATCHES_PER_POLLER)
        failures = [0]  # failed batches in a row, shared with the batch tasks
        crash: Exception | None = None
        try:
            async with anyio.create_task_group() as batches:
                while not self._stopping.is_set() or holding.carry:
                    if not holding.carry and self._retire(index):
                        return
                    if failures[0]:
                        await pause(self._stopping, self._backoff.delay(failures[0]))
                    await slots.acquire()
                    try:
                        gathering = await self._gather(intake, holding, slots)
                    except Exception as exc:  # noqa: BLE001 (raised again below)
                        # the batches already handed to the function finish and settle
                        # (leaving the task group cancels them otherwise); then the poller
                        # restarts
                        crash = exc
                        break
                    if gathering is None:
                        continue
                    if self._info.fifo and holding.carry:
                        # messages carried past the 6 MB cut may belong to this batch's
                        # groups: they must not start until its verdict says they may
                        await self._run_batch(gathering, holding, slots, failures)
                    else:
                        batches.start_soon(self._run_batch, gathering, holding, slots, failures)
        finally:
            self._intakes.discard(intake)
        if crash is not None:
            raise crash

    async def _gather(
        self, intake: Intake, holding: Holding, slots: anyio.Semaphore
    ) -> Gathering | None:
        """Gather the next batch; None (and its slot given back) when it came back empty."""
        try:
            gathering = await intake.gather(holding)
        except BaseException:
            slots.release()
            raise
        if gathering.messages:
            self._full += int(gathering.full)
            return gathering
        slots.release()
        if not self._stopping.is_set():
            self._empty += 1
        return None

    async def _run_batch(
        self, gathering: Gathering, holding: Holding, slots: anyio.Semaphore, failures: list[int]
    ) -> None:
        self._in_flight += 1
        try:
            succeeded = await self._batches.process(
                gathering.messages, holding, gathering.received_at, self._info
            )
        finally:
            self._in_flight -= 1
            slots.release()
        if succeeded:
            failures[0] = 0
        else:
            failures[0] += 1
            self._tally.failed()

    # -- one poller -------------------------------------------------------------------------

    async def _poller(self, index: int) -> None:
        """One poller and its heartbeat, restarted after a backoff if it fails unexpectedly
        (the messages it held then reappear after their visibility timeout).

        Not :func:`poller.retry.retrying`: it restarts after any exception (not only
        retriable poller errors), and its wait ends when shutdown begins.
        """
        crashes = 0
        try:
            with structlog.contextvars.bound_contextvars(poller=index):
                while True:
                    holding = Holding(self._info.visibility_timeout / 2)
                    try:
                        await self._run_poller(holding, index)
                    except Exception:
                        crashes += 1
                        log.exception("poller.crashed", attempt=crashes, held=len(holding))
                        if not await pause(self._stopping, READ_BACKOFF.delay(crashes)):
                            return
                    else:
                        return
        finally:
            self._left(index)

    def _left(self, index: int) -> None:
        """A poller has stopped (retired, or shutdown): count it out of the gauges."""
        if self._provisioned is None:
            self._scaler.active -= 1
            self._metrics.sqs_concurrency(self._name, self._scaler.active)
            return
        self._running -= 1
        self._retiring.discard(index)
        self._report_pollers()

    async def _run_poller(self, holding: Holding, index: int) -> None:
        """Poll with a heartbeat beside, until the poller retires or shutdown."""
        async with anyio.create_task_group() as tg:
            if self._info.visibility_timeout > 0:
                heartbeat = Heartbeat(
                    self._queue, holding, info=self._info, metrics=self._metrics, name=self._name
                )
                tg.start_soon(heartbeat.run)
            if self._provisioned is None:
                await self._poll(holding)
            else:
                await self._poll_provisioned(holding, index)
            tg.cancel_scope.cancel()

    async def _poll(self, holding: Holding) -> None:
        failures = 0
        while not self._stopping.is_set() or holding.carry:
            if self._scaler.surplus() and not holding.carry:
                return
            async with self._limiter:
                gathering = await self._intake.gather(holding)
                if not gathering.messages:
                    if not self._stopping.is_set():
                        self._scaler.idle()
                    continue
                self._scaler.batch(full=gathering.full)
                succeeded = await self._batches.process(
                    gathering.messages, holding, gathering.received_at, self._info
                )
            if succeeded:
                failures = 0
                continue
            failures += 1
            self._scaler.failed()
            await pause(self._stopping, self._backoff.delay(failures))
