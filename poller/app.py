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
"""

from __future__ import annotations

import signal
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from poller.aws.clients import ClientFactory
from poller.aws.embedded import EMBEDDED_CREDENTIALS, EmbeddedAws, ensure_streams, traffic_loop
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import AnyMapping, DynamoDBStreamMapping, KinesisMapping, Settings, SqsMapping
from poller.destinations import build_destination
from poller.leases import LeaseCoordinator, LeasedCheckpointStore, LeaseSettings, replica_identity
from poller.observability.metrics import Metrics, NullMetrics, PrometheusMetrics
from poller.observability.server import HealthState, serve_observability
from poller.queues import SqsMappingRunner, build_sqs_runner
from poller.sources._shards import StreamApi
from poller.sources.dynamodb_streams import DynamoDBStreamApi
from poller.sources.kinesis import KinesisStreamApi
from poller.streams import StreamMappingRunner
from poller.targets import build_target
from poller.types import CheckpointStore, Target

log = structlog.get_logger("poller.app")

#: A second signal sooner than this after the first is the same request, not a force.
SIGNAL_REPEAT_SECONDS = 1.0


class Service:
    """One running poller: all enabled mappings of one configuration."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
                stack.push_async_callback(self._close_step, "checkpoint_store", store.aclose)
                runners = await self._build_runners(clients, store, stack)
                self.health.mark_clients_connected()
                self.health.expect_mappings([r.mapping.name for r in runners])
                await self._run_tasks(clients, runners)
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

    async def _open_store(self, clients: ClientFactory) -> CheckpointStore:
        """The SQLite store; or, for the dynamodb backend, the lease table (each stream mapping
        then gets a fenced store of its own) and this replica's identity."""
        cfg = self.settings.checkpoints
        if cfg.backend == "sqlite":
            return await SqliteCheckpointStore(cfg.path, synchronous=cfg.synchronous).open()
        assert cfg.table is not None  # the config requires it with this backend
        self._lease_table = DynamoDBLeaseTable(await clients.client("dynamodb"), cfg.table)
        await self._lease_table.ensure_table(create=cfg.create_table)
        self._replica = self._replica or await replica_identity()
        log.info("replica.identity", replica=self._replica, lease_table=cfg.table)
        return MemoryCheckpointStore()  # unused: lease mode writes through LeasedCheckpointStore

    def _enabled_mappings(self) -> list[AnyMapping]:
        return [m for m in self.settings.mappings if m.enabled]

    async def _build_runners(
        self, clients: ClientFactory, store: CheckpointStore, stack: AsyncExitStack
    ) -> list[StreamMappingRunner | SqsMappingRunner]:
        runners: list[StreamMappingRunner | SqsMappingRunner] = []
        for mapping in self._enabled_mappings():
            target = await build_target(
                mapping.target,
                clients=clients,
                partition=mapping.partition,
                region=mapping.region,
                account_id=mapping.account_id,
            )
            stack.push_async_callback(self._close_step, f"target {mapping.name}", target.aclose)
            if isinstance(mapping, KinesisMapping | DynamoDBStreamMapping):
                runners.append(await self._stream_runner(mapping, clients, store, target))
            elif isinstance(mapping, SqsMapping):
                runners.append(
                    await build_sqs_runner(
                        mapping,
                        clients=clients,
                        target=target,
                        stopping=self.stopping,
                        metrics=self.metrics,
                    )
                )
        return runners

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
        leases = self._lease_coordinator(mapping.name)
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

    def _lease_coordinator(self, mapping: str) -> LeaseCoordinator | None:
        if self._lease_table is None:
            return None
        cfg = self.settings.checkpoints
        settings = LeaseSettings(
            lease_duration=cfg.lease_duration_seconds,
            balance_interval=cfg.balance_interval_seconds,
            max_leases_per_replica=cfg.max_leases_per_replica,
        )
        return LeaseCoordinator(
            self._lease_table,
            mapping=mapping,
            owner=self._replica,
            settings=settings,
            metrics=self.metrics,
        )

    async def _run_tasks(
        self, clients: ClientFactory, runners: list[StreamMappingRunner | SqsMappingRunner]
    ) -> None:
        async with anyio.create_task_group() as root:
            async with anyio.create_task_group() as work:
                root.start_soon(
                    self._enforce_drain_deadline, work.cancel_scope, name="drain deadline"
                )
                for runner in runners:
                    await work.start(runner.run, name=f"mapping {runner.mapping.name}")
                    self.health.mark_mapping_started(runner.mapping.name)
                if self.settings.embedded.enabled and self.settings.embedded.traffic.enabled:
                    await work.start(self._run_traffic, clients)
                self.ready.set()
                log.info("service.ready", mappings=[r.mapping.name for r in runners])
            log.info("shutdown.drained")
            root.cancel_scope.cancel()

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
        with anyio.CancelScope(shield=True):
            try:
                await close()
            except Exception:
                log.exception("shutdown.close_failed", component=what)
            else:
                log.debug("shutdown.closed", component=what)
