"""The composition root and lifecycle of the service.

:class:`Service` builds everything from the validated settings — the embedded emulator if
asked for, one client factory, the checkpoint backend (:func:`poller.checkpoints.open_checkpoints`),
a target and a runner per mapping (:mod:`poller.mappings`), the metrics (with the tag labels
``observability.metric_tag_labels`` names, and ``poller_mapping_info`` for every mapping it
runs) — and owns the one root task group that every long-lived task runs in.

Shutdown is one named procedure, :meth:`Service.request_stop`, triggered by SIGTERM or SIGINT
(a second signal skips the drain):

1. stop intake: readers stop calling GetRecords, processors take no new batch;
2. drain: invocations in progress finish and are checkpointed, within
   ``shutdown.drain_timeout_seconds``; at the deadline whatever remains is cancelled, and its
   records are re-delivered after the restart (at least once, never lost);
3. checkpoint: every settled batch has its checkpoint durable before its processor returns;
4. close: targets, the checkpoint backend, AWS clients, then the embedded emulator, each step
   shielded from the drain's cancellation but bounded by :data:`CLOSE_STEP_SECONDS`.

With ``control_api.enabled`` the mapping store is opened beside the checkpoints, the API is
served (:func:`poller.control.server.serve_control_api`), and its server is the first thing to
stop: a stop request closes it before intake stops, and a clean stop then removes this
replica's ack from the store, so that no mapping's state waits for a replica that is gone.

Which mappings run is :mod:`poller.reconcile`'s business: the file's enabled mappings start
with the service (a target that does not build stops start-up, as before), and mappings
created, changed or deleted at run time (the control API, ``SIGHUP``) are drained and
restarted by it, each under the same supervisor as below. ``SIGHUP`` reloads the file given
as ``config_path``: its mappings apply at once; a change of any other section is logged as
needing a restart.

Stopping, one signal for the service: :attr:`Service.stopping` (an event, set once by
:meth:`Service.request_stop`) means "take nothing new, drain, then close". Every mapping runner
has a stop event of its own, set when the service stops (or when :mod:`poller.reconcile`
drains that one mapping for a change), and every start-up wait (the lease table, a runner not
started yet) is abandoned on it. The drain deadline is not a signal but a cancellation of the work
scope; a forced stop (``request_stop(force=True)``, the second signal) only moves that
deadline to now.

Until a mapping's runner has started nothing of it is in flight, so a stop request abandons
start-up work (a lease table or a source that does not answer yet) at once instead of waiting
for the drain deadline.

An outage is never a reason to exit. At start-up the lease table is retried with backoff
(the service is alive but not ready meanwhile); only a definitive configuration problem (a
table with the wrong key schema, ``create_table: false`` and no table, no AWS credentials at
all, a handler that does not import) exits. Each mapping runs under a supervisor of its own:
mappings start independently, a mapping that cannot reach its source is reported down (log,
``poller_mapping_up``, ``/readyz``'s body; :mod:`poller.readiness`) and keeps retrying, and a
runner that raises (or returns before shutdown) is logged as ``mapping.crashed``, backed off and
restarted while the other mappings run on; the backoff grows until a run lasts
:data:`MAPPING_HEALTHY_RUN_SECONDS`. The service is ready once every mapping has started, or
after :data:`MAPPING_START_GRACE_SECONDS` with the ones still down listed
(:mod:`poller.observability.server`).
"""

from __future__ import annotations

import functools
import gc
import resource
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskStatus

from poller.aws.clients import ClientFactory
from poller.aws.embedded import EMBEDDED_CREDENTIALS, EmbeddedAws
from poller.checkpoints import Checkpoints, SharedCheckpoints, open_checkpoints
from poller.config import AnyMapping, PythonTargetConfig, Settings, load_settings
from poller.control.context import ControlContext
from poller.errors import ConfigError, PollerError, describe_error, first_leaf
from poller.leases import replica_identity
from poller.mappings import (
    ProcessingResults,
    Runner,
    build_mapping_target,
    build_runner,
    run_sample_traffic,
)
from poller.observability.metrics import Metrics, NullMetrics, PrometheusMetrics
from poller.observability.metrics.prometheus import MappingLabels
from poller.observability.server import HealthState, serve_observability
from poller.readiness import MappingReadiness
from poller.reconcile import MappingHooks, MappingSet, Reconciler, StoreLink
from poller.retry import Backoff
from poller.streams.budget import ReadBudget
from poller.streams.ownership import takeover_grace
from poller.targets.python.loading import load_handler
from poller.types import Target

if TYPE_CHECKING:
    from poller.control.auth import CredentialResolver
    from poller.control.store import MappingStore

__all__ = ["Service", "mapping_labels", "takeover_grace"]

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


#: Allocations of container objects between two collections of the youngest generation
#: (CPython's default is 700): every record builds a few dicts, so the default collects
#: hundreds of times a second under load, each pass walking the buffered records again.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Make the collector cheaper for a record pipeline, once start-up is done.

    Everything alive now (botocore's service models, handler modules, clients: hundreds of
    thousands of objects that live as long as the process) is moved out of the collector's
    sight (``gc.freeze``), so full collections no longer walk it; and the youngest generation
    is collected every :data:`GC_YOUNG_THRESHOLD` allocations rather than every 700. Measured
    with ``benchmarks/kinesis_throughput.py``: about 15 % less CPU per record, and no more
    memory. Only for a process that is the service: freezing a test runner's objects would
    keep them for good.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


#: The soft open-file limit asked for when the hard limit is unlimited.
OPEN_FILES_WANTED = 1 << 20


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the process's soft ``RLIMIT_NOFILE`` to its hard limit; return (before, after).

    Enhanced fan-out holds a socket per subscribed shard for minutes, on top of the pools of
    every other client; a soft limit of 1,024 (systemd's default, and containerd's for
    containers) would make every socket past it fail, Lambda invokes and lease-table calls
    included. The hard limit is what the operator allows; the soft one is only a default, so
    it is raised for the whole process (a test runner that runs the service too).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # a sandbox refusing it: keep the soft limit
            log.warning("process.open_file_limit_kept", soft=soft, hard=hard, error=str(exc))
            return soft, soft
        log.info("process.open_file_limit_raised", soft=soft, now=wanted, hard=hard)
        return soft, wanted
    return soft, soft


class Service:
    """One running poller: all enabled mappings of one configuration."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_grace: float = MAPPING_START_GRACE_SECONDS,
        own_process: bool = False,
        config_path: str | Path | None = None,
    ) -> None:
        """``own_process``: the process is the service (``poller run``), so process-wide
        settings are ours to tune (:func:`tune_gc`); not when a test or an embedding program
        runs the service in its own process. ``config_path``: the file ``settings`` came from,
        read again on ``SIGHUP`` (without it ``SIGHUP`` is ignored)."""
        self.settings = settings
        self._own_process = own_process
        self._config_path = config_path
        self.stopping = anyio.Event()
        #: The file's mappings now (a SIGHUP may have reloaded them; the rest of ``settings``
        #: stays as the service started with it).
        self.file_mappings: list[AnyMapping] = list(settings.mappings)
        #: Each running mapping's own stop event, by name (see :meth:`_supervise_mapping`).
        self._mapping_stops: dict[str, anyio.Event] = {}
        self._reconciler: Reconciler | None = None
        #: The control API's SigV4 keys (``auth: sigv4``), re-read on SIGHUP.
        self._credentials: CredentialResolver | None = None
        #: The control API's URL once it listens (``control_api.enabled``).
        self.control_url: str | None = None
        #: Moves the drain deadline to now (a forced stop); not a stop signal of its own.
        self._force = anyio.Event()
        self._prometheus = (
            PrometheusMetrics(mapping_labels=mapping_labels(settings))
            if settings.observability.enabled
            else None
        )
        self.metrics: Metrics = self._prometheus or NullMetrics()
        self._export_mapping_info()
        #: One read budget for every shard of every stream mapping (poller.streams.budget).
        self.read_budget = ReadBudget(settings.memory.read_budget_bytes, metrics=self.metrics)
        self.health = HealthState()
        self.health.mark_config_loaded()
        self.observability_url: str | None = None
        self._readiness = MappingReadiness(
            [mapping.name for mapping in self._enabled_mappings()],
            health=self.health,
            metrics=self.metrics,
            start_grace=start_grace,
            stopping=self.stopping,
        )
        self.ready = self._readiness.ready

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
        raise_open_file_limit()
        try:
            clients = _client_factory(self.settings, embedded.start() if embedded else None)
            async with AsyncExitStack() as stack:
                stack.push_async_callback(self._close_step, "clients", clients.aclose)
                checkpoints = await open_checkpoints(
                    self.settings.checkpoints,
                    clients=clients,
                    replica_identity=replica_identity,
                    stopping=self.stopping,
                )
                if checkpoints is None:  # stopped while the lease table did not answer
                    return
                stack.push_async_callback(self._close_step, "checkpoint_store", checkpoints.aclose)
                store = await self._open_mapping_store(checkpoints, stack)
                self._preload_function_handlers()
                targets = await self._build_targets(clients)
                if self._own_process:
                    tune_gc()
                self.health.mark_clients_connected()
                self.health.expect_mappings([mapping.name for mapping, _ in targets])
                await self._run_tasks(clients, checkpoints, targets, store)
        finally:
            if embedded is not None:
                embedded.stop()

    def _enabled_mappings(self) -> list[AnyMapping]:
        return [m for m in self.settings.mappings if m.enabled]

    def _export_mapping_info(self) -> None:
        """``poller_mapping_info`` for every mapping the service runs, from the start (also
        while one is down): its identity, for joins with AWS's metrics and other series."""
        region = self.settings.aws.region
        for mapping in self._enabled_mappings():
            arn = mapping.event_source_mapping_arn(region)
            self.metrics.mapping_info(mapping.name, mapping.mapping_uuid, arn, mapping.source, True)

    async def _open_mapping_store(
        self, checkpoints: Checkpoints, stack: AsyncExitStack
    ) -> MappingStore | None:
        """The control API's mapping store, beside the checkpoints; None with the API off."""
        if not self.settings.control_api.enabled:
            return None
        # Imported only with the API on: a file-only service starts as fast as before.
        from poller.control.backends import open_mapping_store

        store = await open_mapping_store(checkpoints)
        stack.push_async_callback(self._close_step, "mapping_store", store.aclose)
        return store

    def _preload_function_handlers(self) -> None:
        """Import the Python handlers ``control_api.functions`` names, at start-up.

        An import runs on the event loop; done first when an API mapping is created, a module
        that is slow to import would stall every running mapping, heartbeat and health check.
        Imported now, later builds find them in ``sys.modules``; one that does not import
        stops start-up, as a file mapping's handler does.
        """
        control = self.settings.control_api
        if not control.enabled:
            return
        for target in control.functions.values():
            if isinstance(target, PythonTargetConfig):
                load_handler(target.handler)

    async def _build_targets(self, clients: ClientFactory) -> list[tuple[AnyMapping, Target]]:
        """Each enabled mapping of the file with its target (the mapping set closes them).
        A target that does not build stops start-up: the ones built are closed first."""
        built: list[tuple[AnyMapping, Target]] = []
        try:
            for mapping in self._enabled_mappings():
                target = await self._build_target(mapping, clients)
                built.append((mapping, target))
        except BaseException:
            for mapping, target in reversed(built):
                await self._close_step(f"target {mapping.name}", target.aclose)
            raise
        return built

    async def _build_target(self, mapping: AnyMapping, clients: ClientFactory) -> Target:
        return await build_mapping_target(mapping, clients=clients, metrics=self.metrics)

    async def _build_runner(
        self, mapping: AnyMapping, clients: ClientFactory, checkpoints: Checkpoints, target: Target
    ) -> Runner:
        """A fresh runner for one run of a mapping (a crashed runner's state is dropped)."""
        return await build_runner(
            mapping,
            target,
            settings=self.settings,
            clients=clients,
            checkpoints=checkpoints,
            stopping=self._stop_of(mapping),
            metrics=self._runner_metrics(mapping),
            budget=self.read_budget,
        )

    def _runner_metrics(self, mapping: AnyMapping) -> Metrics:
        """The metrics a run reports to: with the control API on, a stream mapping's are
        teed so that its invocations' outcomes make its ``LastProcessingResult``."""
        reconciler = self._reconciler
        if reconciler is None or not reconciler.has_store or mapping.source == "sqs":
            return self.metrics
        return ProcessingResults(self.metrics, reconciler.results.note)

    def _stop_of(self, mapping: AnyMapping) -> anyio.Event:
        """The stop event of ``mapping``'s current run: its drain signal."""
        return self._mapping_stops.get(mapping.name, self.stopping)

    async def _run_tasks(
        self,
        clients: ClientFactory,
        checkpoints: Checkpoints,
        targets: list[tuple[AnyMapping, Target]],
        store: MappingStore | None = None,
    ) -> None:
        mappings = MappingSet(
            self._mapping_hooks(clients, checkpoints),
            targets,
            stopping=self.stopping,
            drain_timeout=self.settings.shutdown.drain_timeout_seconds,
        )
        try:
            link = None if store is None else await self._store_link(store, checkpoints)
            reconciler = Reconciler(mappings, self.file_mappings, stopping=self.stopping, link=link)
            self._reconciler = reconciler
            async with anyio.create_task_group() as root:
                async with anyio.create_task_group() as work:
                    root.start_soon(
                        self._enforce_drain_deadline, work.cancel_scope, name="drain deadline"
                    )
                    await work.start(mappings.run, name="mapping set")
                    if link is not None:
                        self._credentials = self._credential_resolver(clients)
                        await root.start(self._serve_control, self._control_context(link))
                    # The desired set is read before the service is ready (API mappings too).
                    await work.start(reconciler.run, name="reconciler")
                    embedded = self.settings.embedded
                    if embedded.enabled and embedded.traffic.enabled:
                        await work.start(run_sample_traffic, self.settings, clients, self.stopping)
                    await self._readiness.finish_start_up()
                log.info("shutdown.drained")
                root.cancel_scope.cancel()
        finally:
            self._reconciler = None
            await mappings.close_targets()
        if link is not None:
            await self._close_step("replica_ack", lambda: _forget_replica(link))

    def _mapping_hooks(self, clients: ClientFactory, checkpoints: Checkpoints) -> MappingHooks:
        """How the mapping set builds, supervises, closes and reports a mapping."""

        async def supervise(mapping: AnyMapping, target: Target, stop: anyio.Event) -> None:
            await self._supervise_mapping(mapping, clients, checkpoints, target, stop=stop)

        async def close(name: str, target: Target) -> None:
            await self._close_step(f"target {name}", target.aclose)

        def failed(mapping: AnyMapping, reason: str) -> None:
            if self._reconciler is not None:
                self._reconciler.results.problem(mapping.name, reason)
            self._mapping_started(mapping)
            self._readiness.mark_down(mapping.name, reason=reason)

        return MappingHooks(
            build_target=lambda mapping: self._build_target(mapping, clients),
            supervise=supervise,
            close_target=close,
            started=self._mapping_started,
            removed=self._mapping_removed,
            failed=failed,
        )

    def _mapping_started(self, mapping: AnyMapping) -> None:
        self._readiness.add(mapping.name)
        self._export_identity(mapping)

    def _mapping_removed(self, mapping: AnyMapping) -> None:
        # Its run has drained: nothing waits on its stop event any more (weeks of API
        # creates and deletes must not keep one each).
        self._mapping_stops.pop(mapping.name, None)
        self._readiness.remove(mapping.name)
        if self._prometheus is not None:  # its series go too (poller_mapping_info included)
            self._prometheus.forget_mapping(mapping.name)

    def _export_identity(self, mapping: AnyMapping) -> None:
        """``poller_mapping_info`` for a mapping started at run time (as at start-up)."""
        arn = mapping.event_source_mapping_arn(self.settings.aws.region)
        self.metrics.mapping_info(mapping.name, mapping.mapping_uuid, arn, mapping.source, True)

    async def _store_link(self, store: MappingStore, checkpoints: Checkpoints) -> StoreLink:
        """The reconciler's view of the control API: the store, and who this replica is."""
        control = self.settings.control_api
        region = control.region or self.settings.aws.region
        if isinstance(checkpoints, SharedCheckpoints):
            replica = checkpoints.replica
        else:
            replica = self.settings.checkpoints.replica_id or await replica_identity()

        from poller.control.cleanup import forget_checkpoints
        from poller.control.shapes import render_file_mapping, to_mapping
        from poller.control.store import pair_key

        async def forget(mapping: str) -> None:
            await forget_checkpoints(checkpoints, mapping)

        def pair_of(mapping: AnyMapping) -> str:
            shown = render_file_mapping(mapping, region=region)
            return pair_key(str(shown["FunctionArn"]), mapping.event_source_arn)

        return StoreLink(
            store=store,
            settings=control,
            region=region,
            replica=replica,
            to_mapping=lambda record: to_mapping(record, settings=control, region=region),
            forget=forget,
            pair_of=pair_of,
        )

    def _credential_resolver(self, clients: ClientFactory) -> CredentialResolver | None:
        """The key pairs ``auth: sigv4`` accepts (environment variables, Secrets Manager
        secrets read through ``clients``); None with ``auth: none``."""
        control = self.settings.control_api
        if control.auth != "sigv4":
            return None
        from poller.control.auth import CredentialResolver

        return CredentialResolver(control, clients=clients)

    def _control_context(self, link: StoreLink) -> ControlContext:
        return ControlContext(
            settings=link.settings,
            region=link.region,
            store=link.store,
            file_mappings=lambda: tuple(self.file_mappings),
            changed=self._wake_reconciler,
            clock=link.clock,
        )

    def _wake_reconciler(self) -> None:
        if self._reconciler is not None:
            self._reconciler.wake()

    async def _serve_control(
        self, ctx: ControlContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the control API until a stop is requested: the first thing to close, so
        that no change is accepted while mappings drain."""
        from poller.control.server import serve_control_api

        serve = functools.partial(serve_control_api, ctx, credentials=self._credentials)
        async with anyio.create_task_group() as tg:
            server = await tg.start(serve, name="control api")
            self.control_url = server.url
            log.info("control_api.listening", url=server.url)
            task_status.started()
            await self.stopping.wait()
            tg.cancel_scope.cancel()
        log.info("control_api.stopped")

    async def _supervise_mapping(
        self,
        mapping: AnyMapping,
        clients: ClientFactory,
        checkpoints: Checkpoints,
        target: Target,
        *,
        stop: anyio.Event | None = None,
    ) -> None:
        """Run one mapping until ``stop`` (default: the service's stop), restarting it with
        backoff whenever its runner fails; the other mappings never notice."""
        # Not ``poller.retry.retrying``: a supervisor, not a call. It restarts on anything a
        # run ends with (a bug included), resets its backoff after a healthy run, and reports
        # the mapping down meanwhile.
        name = mapping.name
        stop = stop or self.stopping
        self._mapping_stops[name] = stop  # the runners built for it drain on it
        self.metrics.mapping_up(name, False)
        failures = 0
        with structlog.contextvars.bound_contextvars(mapping=name):
            while not stop.is_set():
                began = time.monotonic()
                ran, error = await self._run_mapping_once(
                    mapping, clients, checkpoints, target, stop=stop
                )
                if stop.is_set():
                    if error is not None:  # its drain did not finish: what it held is unsettled
                        log.error("mapping.crashed", mapping=name, error=error, restart_in_s=None)
                    return
                healthy = ran and time.monotonic() - began >= MAPPING_HEALTHY_RUN_SECONDS
                failures = 1 if healthy else failures + 1
                self._readiness.mark_down(name, reason="crashed")
                wait = MAPPING_RESTART_BACKOFF.delay(failures)
                log.error(
                    "mapping.crashed",
                    mapping=name,
                    error=error or "the runner returned before shutdown",
                    attempt=failures,
                    restart_in_s=round(wait, 2),
                )
                with anyio.move_on_after(wait):
                    await stop.wait()

    async def _run_mapping_once(
        self,
        mapping: AnyMapping,
        clients: ClientFactory,
        checkpoints: Checkpoints,
        target: Target,
        *,
        stop: anyio.Event | None = None,
    ) -> tuple[bool, str | None]:
        """One run of a mapping: whether its runner started, and the error that ended it
        (None if it returned).

        Until the runner reports started nothing is in flight, so a stop request abandons the
        attempt at once; from then on the runner drains by itself.
        """
        started = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    self._abandon_start_on_stop, started, tg.cancel_scope, stop or self.stopping
                )
                runner = await self._build_runner(mapping, clients, checkpoints, target)
                await tg.start(
                    self._run_runner, runner, tg.cancel_scope, name=f"runner {mapping.name}"
                )
                started.set()
                tg.start_soon(
                    self._readiness.report_reachability,
                    runner.mapping.name,
                    lambda: runner.reachable,
                    name=f"health {mapping.name}",
                )
        except Exception as exc:  # a mapping's failure is logged and retried, never fatal
            if not isinstance(first_leaf(exc), PollerError):
                log.exception("mapping.error")  # a bug: keep the traceback
            return started.is_set(), describe_error(exc)
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

    async def _abandon_start_on_stop(
        self, started: anyio.Event, scope: anyio.CancelScope, stop: anyio.Event
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_set, started, tg.cancel_scope)
            tg.start_soon(_cancel_when_set, stop, tg.cancel_scope)
        if not started.is_set():
            scope.cancel()

    async def _signal_loop(self) -> None:
        """SIGTERM/SIGINT start the shutdown; a second one, a second or more later, forces it.
        SIGHUP reloads the configuration file (:meth:`reload_config`).

        Repeats within a second count as the same request: supervisors such as ``timeout``
        signal both the process and its group, which delivers one request twice.
        """
        first_at: float | None = None
        # A reload runs beside the loop (it reads a file, maybe a secret), so that a SIGTERM
        # is never kept waiting by it; reloads run one at a time, in order.
        one_at_a_time = anyio.Lock()

        async def reload() -> None:
            async with one_at_a_time:
                await self.reload_config()

        async with anyio.create_task_group() as reloads:
            with anyio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGHUP
            ) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("signal.received", signal="SIGHUP")
                        reloads.start_soon(reload, name="config reload")
                        continue
                    now = time.monotonic()
                    force = first_at is not None and now - first_at >= SIGNAL_REPEAT_SECONDS
                    first_at = first_at if first_at is not None else now
                    log.info("signal.received", signal=signal.Signals(signum).name, forced=force)
                    self.request_stop(force=force)

    async def reload_config(self) -> bool:
        """Read the configuration file again and apply its mappings (drained and restarted
        as changes through the API are); whether it applied. An invalid file changes nothing
        (``config.reload_failed``); a change to any other section is only logged
        (``config.reload_needs_restart``), since it needs a restart."""
        if self._config_path is None:
            log.warning("config.reload_unavailable", reason="the service was given no file")
            return False
        try:
            new = await anyio.to_thread.run_sync(load_settings, self._config_path)
        except ConfigError as exc:
            log.error(  # noqa: TRY400 - the problems are the message; no traceback
                "config.reload_failed", path=str(self._config_path), problems=exc.problems
            )
            return False
        others = _sections_needing_restart(self.settings, new)
        if others:
            log.warning(
                "config.reload_needs_restart",
                sections=others,
                hint="only mappings apply without a restart; the rest stays as started",
            )
        await self._reload_credentials(new)
        self.file_mappings = list(new.mappings)
        if self._reconciler is not None:
            self._reconciler.replace_file_mappings(self.file_mappings)
        log.info("config.reloaded", mappings=[m.name for m in new.mappings])
        return True

    async def _reload_credentials(self, new: Settings) -> None:
        """The control API's SigV4 keys, read again from the reloaded file's sources; a
        source that cannot be read keeps the keys the API has."""
        if self._credentials is None or new.control_api.auth != "sigv4":
            return
        try:
            await self._credentials.reload(new.control_api)
        except ConfigError as exc:
            log.error(  # noqa: TRY400 - the problems are the message; no traceback
                "config.reload_failed", path=str(self._config_path), problems=exc.problems
            )

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


def mapping_labels(settings: Settings) -> MappingLabels:
    """The labels ``observability.metric_tag_labels`` adds to every mapping series: one per
    tag key, valued by each mapping's tag ("" when it has none)."""
    keys = settings.observability.tag_label_names
    values = {
        mapping.name: tuple(mapping.tags.get(key, "") for key in keys)
        for mapping in settings.mappings
    }
    return MappingLabels(tuple(keys.values()), values)


def _client_factory(settings: Settings, embedded_url: str | None) -> ClientFactory:
    """One client factory for the service: the embedded emulator's, else the configured AWS."""
    aws = settings.aws
    if embedded_url is not None:
        return ClientFactory(
            region=aws.region, endpoint_url=embedded_url, credentials=EMBEDDED_CREDENTIALS
        )
    return ClientFactory(region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints)


def _sections_needing_restart(running: Settings, new: Settings) -> list[str]:
    """The sections of ``new`` that differ from ``running`` and a reload cannot apply: all
    but ``mappings`` and the control API's credentials."""
    changed = []
    for name in type(new).model_fields:
        before, after = getattr(running, name), getattr(new, name)
        if name == "control_api":
            after = after.model_copy(update={"credentials": before.credentials})
        if name != "mappings" and after != before:
            changed.append(name)
    return changed


async def _forget_replica(link: StoreLink) -> None:
    """Remove this replica's ack at a clean stop: the API's states stop waiting for it."""
    await link.store.forget_replica(link.replica)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
