"""The composition root and lifecycle of the service.

:class:`Service` builds everything from the validated settings — the embedded emulator if
asked for, one client factory, the checkpoint store, a target and a runner per mapping — and
owns the one root task group that every long-lived task runs in.

Shutdown is one named procedure, :meth:`Service.request_stop`, triggered by SIGTERM or SIGINT
(a second signal skips the drain):

1. stop intake: readers stop calling GetRecords, workers take no new batch;
2. drain: invocations in progress finish and are checkpointed, within
   ``shutdown.drain_timeout_seconds``; at the deadline whatever remains is cancelled, and its
   records are re-delivered after the restart (at least once, never lost);
3. checkpoint: every settled batch has its checkpoint durable before its worker returns;
4. close: targets, the checkpoint store, AWS clients, then the embedded emulator.

Until a mapping's runner has started nothing of it is in flight, so a stop request abandons
start-up work (a lease table or a source that does not answer yet) at once instead of waiting
for the drain deadline.

An outage is never a reason to exit. At start-up the lease table is retried with backoff
(the service is alive but not ready meanwhile); only a definitive configuration problem (a
table with the wrong key schema, ``create_table: false`` and no table, no AWS credentials at
all, a handler that does not import) exits. Each mapping runs under a supervisor of its own:
mappings start independently, a mapping that cannot reach its source is reported down (log,
``poller_mapping_up``, ``/readyz``'s body) and keeps retrying, and a runner that raises (or
returns before shutdown) is logged as ``mapping.crashed``, backed off and restarted while the
other mappings run on; the backoff grows until a run lasts :data:`MAPPING_HEALTHY_RUN_SECONDS`. The
service is ready once every mapping has started, or after :data:`MAPPING_START_GRACE_SECONDS`
with the ones still down listed (:mod:`poller.observability.server`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus
from botocore.exceptions import NoCredentialsError, PartialCredentialsError

from poller.aws.clients import ClientFactory
from poller.aws.embedded import EMBEDDED_CREDENTIALS, EmbeddedAws, ensure_streams, traffic_loop
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import AnyMapping, DynamoDBStreamMapping, KinesisMapping, Settings, SqsMapping
from poller.destinations import build_destination
from poller.errors import CheckpointError, PollerError
from poller.leases import LeaseCoordinator, LeasedCheckpointStore, LeaseSettings, replica_identity
from poller.observability.metrics import Metrics, NullMetrics, PrometheusMetrics
from poller.observability.server import HealthState, serve_observability
from poller.ports import StreamApi
from poller.queues import SqsMappingRunner, build_sqs_runner
from poller.retry import Backoff
from poller.sources.dynamodb_streams import DynamoDBStreamApi
from poller.sources.kinesis import KinesisStreamApi
from poller.streams import StreamMappingRunner
from poller.targets import build_target
from poller.types import CheckpointStore, Target

_T = TypeVar("_T")
log = structlog.get_logger("poller.app")

#: A second signal sooner than this after the first is the same request, not a force.
SIGNAL_REPEAT_SECONDS = 1.0
#: How long start-up waits for every mapping to start before the service is ready anyway,
#: with the mappings still down reported (they keep retrying).
MAPPING_START_GRACE_SECONDS = 10.0
#: Between restarts of a mapping whose runner failed (reset once it ran long enough).
MAPPING_RESTART_BACKOFF = Backoff(initial=1.0, maximum=60.0)
#: A run at least this long counts as healthy: a crash after it backs off from the start
#: again. A runner that starts and fails sooner is a crash loop, and its backoff grows.
MAPPING_HEALTHY_RUN_SECONDS = 60.0
#: Longest wait for one shutdown step (closing a target, the store, the clients): shielded
#: from the drain's cancellation so that it completes, but never a reason to hang the exit.
CLOSE_STEP_SECONDS = 10.0
#: Between attempts to reach the lease table at start-up.
LEASE_TABLE_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: How often a running mapping's reachability is copied to its gauge and /readyz.
REACHABILITY_CHECK_SECONDS = 1.0
#: A running mapping is reported down only once its source (or the lease table) has not
#: answered for this long: one failed call that the next attempt repairs is not an outage, and
#: ``poller_mapping_up`` (what operators alert on) must not flap with it.
MAPPING_DOWN_AFTER_SECONDS = 5.0

Runner = StreamMappingRunner | SqsMappingRunner


def takeover_grace(configured: float | None, mapping: AnyMapping) -> float:
    """The lease takeover grace of ``mapping``: as configured, else its target's timeout.

    A Lambda target has no timeout of its own here (the function's is remote), so its default
    grace is 0; ``checkpoints.takeover_grace_seconds`` sets one.
    """
    if configured is not None:
        return configured
    return float(getattr(mapping.target, "timeout_seconds", 0.0))


class Service:
    """One running poller: all enabled mappings of one configuration."""

    def __init__(
        self, settings: Settings, *, start_grace: float = MAPPING_START_GRACE_SECONDS
    ) -> None:
        self.settings = settings
        self._start_grace = start_grace
        self._up: set[str] = set()
        self._reported_down: set[str] = set()
        self._all_up = anyio.Event()
        self.stopping = anyio.Event()
        self.ready = anyio.Event()
        self._force = anyio.Event()
        self._prometheus = PrometheusMetrics() if settings.observability.enabled else None
        self.metrics: Metrics = self._prometheus or NullMetrics()
        self.health = HealthState()
        self.health.mark_config_loaded()
        self.observability_url: str | None = None
        self._lease_table: DynamoDBLeaseTable | None = None
        self._replica = settings.checkpoints.replica_id or ""

    def request_stop(self, *, force: bool = False) -> None:
        """Begin the shutdown procedure; ``force`` skips the drain."""
        if not self.stopping.is_set():
            log.info(
                "shutdown.requested", drain_timeout_s=self.settings.shutdown.drain_timeout_seconds
            )
        self.health.mark_stopping()
        self.stopping.set()
        if force:
            self._force.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped, then shut down in order. Returns normally after a clean stop.

        Signals are handled for the whole run, cleanup included, so that a signal arriving
        while clients close does not fall through to Python's default handler.
        """
        async with anyio.create_task_group() as signals:
            if handle_signals:
                signals.start_soon(self._signal_loop, name="signals")
            if self._prometheus is not None:
                # Up first and down last, so /healthz and /metrics answer through start and drain.
                server = await signals.start(
                    serve_observability, self.settings.observability, self._prometheus, self.health
                )
                self.observability_url = server.url
            await self._run_service()
            signals.cancel_scope.cancel()
        log.info("service.stopped")

    async def _run_service(self) -> None:
        embedded = EmbeddedAws(self.settings.embedded) if self.settings.embedded.enabled else None
        try:
            clients = self._client_factory(embedded.start() if embedded else None)
            async with AsyncExitStack() as stack:
                stack.push_async_callback(self._close_step, "clients", clients.aclose)
                store = await self._open_store(clients)
                if store is None:  # stopped while the lease table did not answer
                    return
                stack.push_async_callback(self._close_step, "checkpoint_store", store.aclose)
                targets = await self._build_targets(clients, stack)
                self.health.mark_clients_connected()
                self.health.expect_mappings([mapping.name for mapping, _ in targets])
                await self._run_tasks(clients, store, targets)
        finally:
            if embedded is not None:
                embedded.stop()

    def _client_factory(self, embedded_url: str | None) -> ClientFactory:
        aws = self.settings.aws
        if embedded_url is not None:
            return ClientFactory(
                region=aws.region, endpoint_url=embedded_url, credentials=EMBEDDED_CREDENTIALS
            )
        return ClientFactory(
            region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints
        )

    async def _open_store(self, clients: ClientFactory) -> CheckpointStore | None:
        """The SQLite store; or, for the dynamodb backend, the lease table (each stream mapping
        then gets a fenced store of its own) and this replica's identity. None when a stop was
        requested before the lease table answered."""
        cfg = self.settings.checkpoints
        if cfg.backend == "sqlite":
            return await SqliteCheckpointStore(cfg.path, synchronous=cfg.synchronous).open()
        assert cfg.table is not None  # the config requires it with this backend
        table = DynamoDBLeaseTable(await clients.client("dynamodb"), cfg.table)
        if not await self._unless_stopped(lambda: self._ensure_lease_table(table)):
            return None
        self._lease_table = table
        self._replica = self._replica or await replica_identity()
        log.info("replica.identity", replica=self._replica, lease_table=cfg.table)
        return MemoryCheckpointStore()  # unused: lease mode writes through LeasedCheckpointStore

    async def _ensure_lease_table(self, table: DynamoDBLeaseTable) -> bool:
        """Make sure the lease table exists, retrying for as long as DynamoDB does not answer.

        An outage is waited out, logged at every attempt (``/readyz`` is not ready meanwhile).
        A ConfigError (a wrong key schema; no table while creating it is disabled) and missing
        AWS credentials are definitive: waiting cannot fix them, so they propagate and the
        process exits with one clear line.
        """
        attempt = 0
        while True:
            try:
                await table.ensure_table(create=self.settings.checkpoints.create_table)
            except CheckpointError as exc:
                if isinstance(exc.__cause__, NoCredentialsError | PartialCredentialsError):
                    raise
                attempt += 1
                wait = LEASE_TABLE_BACKOFF.delay(attempt)
                log.warning(
                    "lease_table.unavailable",
                    error=str(exc),
                    attempt=attempt,
                    wait_s=round(wait, 2),
                    hint="retrying; the mappings start once the lease table answers",
                )
                await anyio.sleep(wait)
            else:
                return True

    async def _unless_stopped(self, work: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run start-up ``work``, abandoned at once (None) if a stop is requested meanwhile:
        start-up has nothing in flight that a drain would wait for."""
        result: list[_T] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_set, self.stopping, tg.cancel_scope)
            result.append(await work())
            tg.cancel_scope.cancel()
        return result[0] if result else None

    def _enabled_mappings(self) -> list[AnyMapping]:
        return [m for m in self.settings.mappings if m.enabled]

    async def _build_targets(
        self, clients: ClientFactory, stack: AsyncExitStack
    ) -> list[tuple[AnyMapping, Target]]:
        """Each enabled mapping with its target. Nothing here calls AWS, so a bad target (a
        handler that does not import) is a configuration error that stops start-up."""
        built: list[tuple[AnyMapping, Target]] = []
        for mapping in self._enabled_mappings():
            target = await build_target(
                mapping.target,
                clients=clients,
                partition=mapping.partition,
                region=mapping.region,
                account_id=mapping.account_id,
                mapping=mapping.name,
                metrics=self.metrics,
            )
            stack.push_async_callback(self._close_step, f"target {mapping.name}", target.aclose)
            built.append((mapping, target))
        return built

    async def _build_runner(
        self, mapping: AnyMapping, clients: ClientFactory, store: CheckpointStore, target: Target
    ) -> Runner:
        """A fresh runner for one run of a mapping (a crashed runner's state is dropped)."""
        if isinstance(mapping, KinesisMapping | DynamoDBStreamMapping):
            return await self._stream_runner(mapping, clients, store, target)
        assert isinstance(mapping, SqsMapping)
        return await build_sqs_runner(
            mapping, clients=clients, target=target, stopping=self.stopping, metrics=self.metrics
        )

    async def _stream_runner(
        self,
        mapping: KinesisMapping | DynamoDBStreamMapping,
        clients: ClientFactory,
        store: CheckpointStore,
        target: Target,
    ) -> StreamMappingRunner:
        """A Kinesis or DynamoDB Streams mapping: the service adapter, then the shared runner."""
        api: StreamApi
        if isinstance(mapping, KinesisMapping):
            kinesis = await clients.client("kinesis", purpose="source", region=mapping.region)
            if self.settings.embedded.enabled:
                await ensure_streams(kinesis, [mapping], self.settings.embedded.shard_count)
            api = KinesisStreamApi(
                kinesis,
                stream_arn=mapping.event_source_arn,
                region=mapping.region,
                identity_arn=mapping.identity_arn,
                deaggregate=mapping.deaggregate_records,
            )
        else:
            region = mapping.region
            streams = await clients.client("dynamodbstreams", purpose="source", region=region)
            api = DynamoDBStreamApi(streams, stream_arn=mapping.event_source_arn, region=region)
        destination = None
        if mapping.on_failure_arn is not None:
            destination = await build_destination(mapping.on_failure_arn, clients=clients)
        leases = self._lease_coordinator(mapping)
        return StreamMappingRunner(
            mapping,
            api=api,
            kind=mapping.source,
            target=target,
            store=store if leases is None else LeasedCheckpointStore(leases),
            stopping=self.stopping,
            destination=destination,
            metrics=self.metrics,
            leases=leases,
        )

    def _lease_coordinator(self, mapping: AnyMapping) -> LeaseCoordinator | None:
        if self._lease_table is None:
            return None
        cfg = self.settings.checkpoints
        settings = LeaseSettings(
            lease_duration=cfg.lease_duration_seconds,
            balance_interval=cfg.balance_interval_seconds,
            max_leases_per_replica=cfg.max_leases_per_replica,
            takeover_grace=takeover_grace(cfg.takeover_grace_seconds, mapping),
        )
        return LeaseCoordinator(
            self._lease_table,
            mapping=mapping.name,
            owner=self._replica,
            settings=settings,
            metrics=self.metrics,
        )

    async def _run_tasks(
        self,
        clients: ClientFactory,
        store: CheckpointStore,
        targets: list[tuple[AnyMapping, Target]],
    ) -> None:
        names = [mapping.name for mapping, _ in targets]
        async with anyio.create_task_group() as root:
            async with anyio.create_task_group() as work:
                root.start_soon(
                    self._enforce_drain_deadline, work.cancel_scope, name="drain deadline"
                )
                for mapping, target in targets:
                    work.start_soon(
                        self._supervise_mapping,
                        mapping,
                        clients,
                        store,
                        target,
                        name=f"mapping {mapping.name}",
                    )
                if self.settings.embedded.enabled and self.settings.embedded.traffic.enabled:
                    await work.start(self._run_traffic, clients)
                await self._finish_start_up(names)
            log.info("shutdown.drained")
            root.cancel_scope.cancel()

    async def _finish_start_up(self, names: list[str]) -> None:
        """Wait until every mapping is up, or the grace period is over, then be ready; the
        mappings still down are reported and go on retrying."""
        if not names:
            self._all_up.set()
        with anyio.move_on_after(self._start_grace):
            await _first_of(self._all_up, self.stopping)
        if self.stopping.is_set():
            return
        down = sorted(set(names) - self._up)
        for name in down:
            if name not in self._reported_down:
                self._reported_down.add(name)
                log.warning(
                    "mapping.down",
                    mapping=name,
                    reason=f"not started after {self._start_grace:g} s",
                    hint="it keeps retrying (see its retry log lines); the other mappings run",
                )
        self.health.mark_startup_over()
        self.ready.set()
        log.info("service.ready", mappings=names, down=down)

    async def _supervise_mapping(
        self, mapping: AnyMapping, clients: ClientFactory, store: CheckpointStore, target: Target
    ) -> None:
        """Run one mapping until shutdown, restarting it with backoff whenever its runner
        fails; the other mappings never notice."""
        name = mapping.name
        self.metrics.mapping_up(name, False)
        failures = 0
        with structlog.contextvars.bound_contextvars(mapping=name):
            while not self.stopping.is_set():
                began = time.monotonic()
                ran, error = await self._run_mapping_once(mapping, clients, store, target)
                if self.stopping.is_set():
                    if error is not None:  # its drain did not finish: what it held is unsettled
                        log.error("mapping.crashed", mapping=name, error=error, restart_in_s=None)
                    return
                healthy = ran and time.monotonic() - began >= MAPPING_HEALTHY_RUN_SECONDS
                failures = 1 if healthy else failures + 1
                self._mark_down(name, reason="crashed")
                wait = MAPPING_RESTART_BACKOFF.delay(failures)
                log.error(
                    "mapping.crashed",
                    mapping=name,
                    error=error or "the runner returned before shutdown",
                    attempt=failures,
                    restart_in_s=round(wait, 2),
                )
                with anyio.move_on_after(wait):
                    await self.stopping.wait()

    async def _run_mapping_once(
        self, mapping: AnyMapping, clients: ClientFactory, store: CheckpointStore, target: Target
    ) -> tuple[bool, str | None]:
        """One run of a mapping: whether its runner started, and the error that ended it
        (None if it returned).

        Until the runner reports started nothing is in flight, so a stop request abandons the
        attempt at once; from then on the runner drains by itself.
        """
        started = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._abandon_start_on_stop, started, tg.cancel_scope)
                runner = await self._build_runner(mapping, clients, store, target)
                await tg.start(
                    self._run_runner, runner, tg.cancel_scope, name=f"runner {mapping.name}"
                )
                started.set()
                tg.start_soon(self._report_reachability, runner, name=f"health {mapping.name}")
        except Exception as exc:  # a mapping's failure is logged and retried, never fatal
            if not isinstance(_first_leaf(exc), PollerError):
                log.exception("mapping.error")  # a bug: keep the traceback
            return started.is_set(), _describe(exc)
        return started.is_set(), None

    async def _run_runner(
        self,
        runner: Runner,
        run_scope: anyio.CancelScope,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``runner``; once it returns, end its run (its reachability reports with it),
        so that a runner that returned before shutdown is restarted, not reported up."""
        await runner.run(task_status=task_status)
        run_scope.cancel()

    async def _report_reachability(self, runner: Runner) -> None:
        """Report a started mapping up while its runner reaches its source, down once its
        reads (or the lease table) have failed for MAPPING_DOWN_AFTER_SECONDS; until
        shutdown."""
        name = runner.mapping.name
        unreachable_since: float | None = None
        while not self.stopping.is_set():
            now = time.monotonic()
            if runner.reachable:
                unreachable_since = None
                self._mark_up(name)
            else:
                unreachable_since = unreachable_since or now
                if name not in self._up or now - unreachable_since >= MAPPING_DOWN_AFTER_SECONDS:
                    self._mark_down(name, reason="its source or the lease table does not answer")
            with anyio.move_on_after(REACHABILITY_CHECK_SECONDS):
                await self.stopping.wait()

    async def _abandon_start_on_stop(self, started: anyio.Event, scope: anyio.CancelScope) -> None:
        await _first_of(started, self.stopping)
        if not started.is_set():
            scope.cancel()

    def _mark_up(self, name: str) -> None:
        if name in self._up:
            return
        self._up.add(name)
        self._reported_down.discard(name)
        self.health.mark_mapping_started(name)
        self.metrics.mapping_up(name, True)
        log.info("mapping.up", mapping=name)
        if len(self._up) == len(self._enabled_mappings()):
            self._all_up.set()

    def _mark_down(self, name: str, *, reason: str) -> None:
        self._up.discard(name)
        self.health.mark_mapping_down(name)
        self.metrics.mapping_up(name, False)
        if name not in self._reported_down:
            self._reported_down.add(name)
            log.warning("mapping.down", mapping=name, reason=reason, hint="it keeps retrying")

    async def _run_traffic(self, clients: ClientFactory, *, task_status: TaskStatus[None]) -> None:
        """The embedded sample traffic: one producer per region, stopped with intake."""
        by_region: dict[str, list[KinesisMapping]] = {}
        for mapping in self._enabled_mappings():
            if isinstance(mapping, KinesisMapping):
                by_region.setdefault(mapping.region, []).append(mapping)
        task_status.started()
        async with anyio.create_task_group() as tg:
            for region, mappings in by_region.items():
                kinesis = await clients.client("kinesis", purpose="traffic", region=region)
                tg.start_soon(traffic_loop, kinesis, mappings, self.settings.embedded)
            await self.stopping.wait()
            tg.cancel_scope.cancel()

    async def _signal_loop(self) -> None:
        """SIGTERM/SIGINT start the shutdown; a second one, a second or more later, forces it.

        Repeats within a second count as the same request: supervisors such as ``timeout``
        signal both the process and its group, which delivers one request twice.
        """
        first_at: float | None = None
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                now = time.monotonic()
                force = first_at is not None and now - first_at >= SIGNAL_REPEAT_SECONDS
                first_at = first_at if first_at is not None else now
                log.info("signal.received", signal=signal.Signals(signum).name, forced=force)
                self.request_stop(force=force)

    async def _enforce_drain_deadline(self, work_scope: anyio.CancelScope) -> None:
        await self.stopping.wait()
        log.info("shutdown.intake_stopped")
        with anyio.move_on_after(self.settings.shutdown.drain_timeout_seconds):
            await self._force.wait()
        log.warning("shutdown.drain_deadline", forced=self._force.is_set())
        work_scope.cancel()

    @staticmethod
    async def _close_step(what: str, close: Any) -> None:
        """One shutdown step, shielded from the drain's cancellation but bounded in time."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_STEP_SECONDS) as limit:
            try:
                await close()
            except Exception:
                log.exception("shutdown.close_failed", component=what)
            else:
                log.debug("shutdown.closed", component=what)
        if limit.cancelled_caught:
            log.warning("shutdown.close_timed_out", component=what, limit_s=CLOSE_STEP_SECONDS)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _first_of(*events: anyio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:
            tg.start_soon(_cancel_when_set, event, tg.cancel_scope)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """An error for the log: the first leaf of an exception group, with its type."""
    leaf = _first_leaf(exc)
    return f"{type(leaf).__name__}: {leaf}"
