"""Runs one SQS mapping: pollers that receive, batch, invoke and settle, scaled like Lambda.

Data flow::

    SqsMappingRunner
      ├─ scaling loop (one tick a second): core.queue_rules.Scaler decides how many pollers run
      └─ poller (a task; each holds a CapacityLimiter slot of maximum_concurrency while busy)
           Intake.gather -> BatchProcessor.process (invoke, judge, Settler) ; Heartbeat beside

The runner owns the lifecycle: it opens the queue (once, retried), starts the pollers and the
scaling loop, restarts a poller that crashed, and returns only when every batch has settled.
See :mod:`poller.queues` for Lambda's rules and the shutdown order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.core.queue_rules import Scaler
from poller.observability.metrics import Metrics, NullMetrics
from poller.queues.batch import BatchProcessor
from poller.queues.heartbeat import Heartbeat
from poller.queues.holding import Holding
from poller.queues.intake import Intake
from poller.queues.ports import QueueApi
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
        config=receive_client_config(mapping.maximum_concurrency),
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
    return SqsMappingRunner(
        mapping, queue=queue, target=target, stopping=stopping, metrics=metrics or NullMetrics()
    )


class SqsMappingRunner:
    """Keeps the pollers of one SQS mapping running until shutdown.

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
    ) -> None:
        self.mapping = mapping
        self._queue = queue
        self._stopping = stopping
        self._metrics: Metrics = metrics or NullMetrics()
        self._name = mapping.name
        self._backoff = backoff
        self._scaler = Scaler(mapping.maximum_concurrency)
        self._limiter = anyio.CapacityLimiter(mapping.maximum_concurrency)
        self._next_index = 0
        self._info = QueueInfo(url="", visibility_timeout=30, redrive_policy=None, fifo=False)
        self._intake = Intake(
            mapping, queue=queue, stopping=stopping, metrics=self._metrics, max_bytes=max_bytes
        )
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
        return self._intake.reachable

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the queue and run pollers until shutdown; every batch has settled on return."""
        with structlog.contextvars.bound_contextvars(mapping=self._name):
            self._info = await retrying(f"open queue {self._queue.name}", self._queue.open)
            self._warn_about_queue()
            async with anyio.create_task_group() as tg:
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
                        await self._run_poller(holding)
                    except Exception:
                        crashes += 1
                        log.exception("poller.crashed", attempt=crashes, held=len(holding))
                        if not await pause(self._stopping, READ_BACKOFF.delay(crashes)):
                            return
                    else:
                        return
        finally:
            self._scaler.active -= 1
            self._metrics.sqs_concurrency(self._name, self._scaler.active)

    async def _run_poller(self, holding: Holding) -> None:
        """Poll with a heartbeat beside, until the poller retires or shutdown."""
        async with anyio.create_task_group() as tg:
            if self._info.visibility_timeout > 0:
                heartbeat = Heartbeat(
                    self._queue, holding, info=self._info, metrics=self._metrics, name=self._name
                )
                tg.start_soon(heartbeat.run)
            await self._poll(holding)
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
