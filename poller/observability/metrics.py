"""Metrics as domain hooks: the pipeline says what happened, an implementation counts it.

Pipeline code never touches Prometheus objects: it calls hooks such as
``metrics.records_invoked(mapping, n)``. :class:`NullMetrics` ignores them (unit tests, and a
service with metrics off); the Prometheus implementation exports them from a registry private
to the service instance. Labels are bounded: mapping, shard, outcome, destination type. Never
record ids.

Data flow: readers, workers, checkpointers and lease managers call the hooks once per batch
(never per record) on the event loop; :class:`PrometheusMetrics` turns them into series in its
own registry; :mod:`poller.observability.server` renders that registry at ``/metrics`` from its
own thread, where Prometheus scrapes it. :class:`RecordingMetrics` keeps the calls in memory
so that pipeline tests assert on what was reported.

Event counts follow Lambda's ESM metric definitions (aws-esm.md §4):

* polled: records read from the source (``PolledEventCount``);
* filtered out: records removed by filter criteria (``FilteredOutEventCount``);
* invoked: records in invocations that ran, counted again on every retry
  (``InvokedEventCount``);
* failed invoke: records of invocations that failed, plus records listed in a non-empty
  ``batchItemFailures`` (``FailedInvokeEventCount``);
* dropped: records given up without a destination, or whose destination delivery failed
  (``DroppedEventCount``);
* sent to destination: records delivered to the on-failure destination
  (``OnFailureDestinationDeliveredEventCount``);
* deleted: SQS messages deleted after processing (``DeletedEventCount``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Final, Generic, ParamSpec, Protocol, TypeVar

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from poller import __version__


class Metrics(Protocol):
    """The hooks every pipeline stage reports through. All are cheap and never raise."""

    # -- Lambda's event counts, per mapping ------------------------------------------------
    def records_polled(self, mapping: str, count: int) -> None: ...
    def records_filtered(self, mapping: str, count: int) -> None: ...
    def records_invoked(self, mapping: str, count: int) -> None: ...
    def records_failed_invoke(self, mapping: str, count: int) -> None: ...
    def records_dropped(self, mapping: str, count: int) -> None: ...
    def records_sent_to_destination(self, mapping: str, count: int) -> None: ...
    def records_deleted(self, mapping: str, count: int) -> None: ...
    def destination_delivery_failed(self, mapping: str, destination_type: str) -> None: ...
    def destination_blocked(self, mapping: str, blocked: bool) -> None:
        """A batch starts (True) or stops (False) waiting on an on-failure destination that
        refuses for a permanent reason (access denied, no such queue, topic or bucket)."""
        ...

    def retention_gap(self, mapping: str, shard: str) -> None:
        """A shard's position was older than the stream's retention: reading went on from
        the oldest record held, and the records in between were lost to the stream's trim."""
        ...

    # -- invocations ------------------------------------------------------------------------
    def invocation(
        self, mapping: str, outcome: str, duration_seconds: float, batch_size: int
    ) -> None:
        """One invocation. ``outcome``: success, function_error, timeout, throttle,
        service_error or partial_failure."""
        ...

    def retry(self, mapping: str) -> None:
        """A batch (or part of one) is about to be invoked again."""
        ...

    def handler_thread_abandoned(self, mapping: str) -> None:
        """A sync Python handler ran past its timeout; its thread runs on, abandoned."""
        ...

    # -- shard progress ---------------------------------------------------------------------
    def iterator_age(self, mapping: str, shard: str, age_ms: float) -> None:
        """Lambda's IteratorAge: now minus the arrival of the last record of a finished batch."""
        ...

    def millis_behind_latest(self, mapping: str, shard: str, millis: int) -> None: ...
    def checkpoint_written(self, mapping: str, shard: str) -> None: ...
    def checkpoint_failed(self, mapping: str, shard: str) -> None: ...
    def shard_released(self, mapping: str, shard: str) -> None:
        """The shard ended or moved away: forget its per-shard series (bounded cardinality)."""
        ...

    # -- leases (several replicas) ----------------------------------------------------------
    def leases_held(self, mapping: str, count: int) -> None: ...
    def lease_event(self, mapping: str, event: str) -> None:
        """``event``: taken, stolen, lost or handed_off."""
        ...

    def dependency_error(self, mapping: str, operation: str) -> None:
        """A call to an AWS dependency failed after retries (``operation``: list_shards,
        sync, balance, retire, renew, release, ...); the mapping retries and keeps running."""
        ...

    # -- SQS --------------------------------------------------------------------------------
    def sqs_in_flight(self, mapping: str, batches: int) -> None: ...
    def sqs_concurrency(self, mapping: str, pollers: int) -> None: ...
    def visibility_extended(self, mapping: str, messages: int) -> None: ...

    # -- the service ------------------------------------------------------------------------
    def mapping_up(self, mapping: str, up: bool) -> None:
        """The mapping's runner started (True), or has not started yet or crashed (False);
        its supervisor keeps retrying while it is down."""
        ...


class NullMetrics:
    """Ignores every hook. Implements :class:`Metrics`."""

    def records_polled(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_filtered(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_invoked(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_failed_invoke(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_dropped(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_sent_to_destination(self, mapping: str, count: int) -> None:
        """Ignored."""

    def records_deleted(self, mapping: str, count: int) -> None:
        """Ignored."""

    def destination_delivery_failed(self, mapping: str, destination_type: str) -> None:
        """Ignored."""

    def destination_blocked(self, mapping: str, blocked: bool) -> None:
        """Ignored."""

    def retention_gap(self, mapping: str, shard: str) -> None:
        """Ignored."""

    def invocation(
        self, mapping: str, outcome: str, duration_seconds: float, batch_size: int
    ) -> None:
        """Ignored."""

    def retry(self, mapping: str) -> None:
        """Ignored."""

    def handler_thread_abandoned(self, mapping: str) -> None:
        """Ignored."""

    def iterator_age(self, mapping: str, shard: str, age_ms: float) -> None:
        """Ignored."""

    def millis_behind_latest(self, mapping: str, shard: str, millis: int) -> None:
        """Ignored."""

    def checkpoint_written(self, mapping: str, shard: str) -> None:
        """Ignored."""

    def checkpoint_failed(self, mapping: str, shard: str) -> None:
        """Ignored."""

    def shard_released(self, mapping: str, shard: str) -> None:
        """Ignored."""

    def leases_held(self, mapping: str, count: int) -> None:
        """Ignored."""

    def lease_event(self, mapping: str, event: str) -> None:
        """Ignored."""

    def dependency_error(self, mapping: str, operation: str) -> None:
        """Ignored."""

    def sqs_in_flight(self, mapping: str, batches: int) -> None:
        """Ignored."""

    def sqs_concurrency(self, mapping: str, pollers: int) -> None:
        """Ignored."""

    def visibility_extended(self, mapping: str, messages: int) -> None:
        """Ignored."""

    def mapping_up(self, mapping: str, up: bool) -> None:
        """Ignored."""


# == Prometheus ===============================================================================

#: The values of ``outcome`` in :meth:`Metrics.invocation`.
INVOCATION_OUTCOMES: Final = (
    "success",
    "function_error",
    "timeout",
    "throttle",
    "service_error",
    "partial_failure",
)
#: The values of ``event`` in :meth:`Metrics.lease_event`.
LEASE_EVENTS: Final = ("taken", "stolen", "lost", "handed_off")

#: Invocation duration buckets, seconds: 1 ms up to Lambda's 15-minute timeout.
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0,
)  # fmt: skip
#: Batch size buckets, records: 1 up to Lambda's largest BatchSize (10,000).
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

_M = TypeVar("_M", bound=MetricWrapperBase)
_P = ParamSpec("_P")

log = structlog.get_logger("poller.metrics")


class _Children(Generic[_M]):
    """The labelled children of one metric, cached so that ``.labels()`` runs once per series."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child

    def __contains__(self, values: tuple[str, ...]) -> bool:
        return values in self._children

    def remove(self, *values: str) -> None:
        """Forget the series with these label values; a no-op when there is none."""
        self._children.pop(values, None)
        self._metric.remove(*values)


class _CheckpointAge(Collector):
    """``poller_checkpoint_age_seconds``: now minus the last checkpoint write, at scrape time.

    The value keeps growing while a shard writes no checkpoint, so an alert fires on a stuck
    shard even though no hook is called. Written from the event loop, read from the scrape
    thread: both go through a lock.
    """

    NAME: Final = "poller_checkpoint_age_seconds"
    HELP: Final = "Seconds since the shard's last successful checkpoint write, at scrape time."

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._written_at: dict[tuple[str, str], float] = {}

    def written(self, mapping: str, shard: str) -> None:
        at = self._clock()
        with self._lock:
            self._written_at[mapping, shard] = at

    def forget(self, mapping: str, shard: str) -> None:
        with self._lock:
            self._written_at.pop((mapping, shard), None)

    def describe(self) -> Iterable[Metric]:
        """Declare the name to the registry without computing values."""
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=("mapping", "shard"))

    def collect(self) -> Iterable[Metric]:
        """One sample per shard that has written a checkpoint and is still held."""
        with self._lock:
            written = list(self._written_at.items())
        now = self._clock()
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=("mapping", "shard"))
        for (mapping, shard), at in written:
            family.add_metric((mapping, shard), max(0.0, now - at))
        yield family


def _never_raises(
    hook: Callable[Concatenate[PrometheusMetrics, _P], None],
) -> Callable[Concatenate[PrometheusMetrics, _P], None]:
    """Turn an exception in a hook into a counted, logged metrics error instead of a crash.

    A metric must never fail a batch: a negative count or a bad label is a bug to see on a
    dashboard (``poller_metrics_hook_errors_total``), not a reason to retry records.
    """
    name = hook.__name__

    @functools.wraps(hook)
    def guarded(self: PrometheusMetrics, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - counted and logged once per hook in _hook_failed
            self._hook_failed(name)

    return guarded


class PrometheusMetrics:
    """Exports the :class:`Metrics` hooks as Prometheus series from a private registry.

    Every instance owns its own :class:`~prometheus_client.CollectorRegistry` (never the
    global one), so two services or two tests in one process never collide. The server in
    :mod:`poller.observability.server` exposes :meth:`render` at ``/metrics``.

    Hooks are called once per batch, not per record; each is O(1): a cached labelled child
    and an increment. No hook raises: a failing one increments
    ``poller_metrics_hook_errors_total{hook}`` and logs a warning the first time.

    Series (all labelled by ``mapping``; per-shard ones also by ``shard``):

    * Lambda's ESM event counts (aws-esm.md §4.2): ``poller_polled_events_total``,
      ``poller_filtered_out_events_total``, ``poller_invoked_events_total``,
      ``poller_failed_invoke_events_total``, ``poller_dropped_events_total``,
      ``poller_on_failure_destination_delivered_events_total``, ``poller_deleted_events_total``,
      and ``poller_destination_delivery_failures_total{destination_type}``;
    * invocations: ``poller_invocations_total{outcome}``,
      ``poller_invocation_duration_seconds`` and ``poller_batch_size`` histograms,
      ``poller_retries_total``, ``poller_handler_threads_abandoned_total``;
    * shards: ``poller_iterator_age_milliseconds`` (Lambda's unit),
      ``poller_millis_behind_latest``, ``poller_checkpoint_writes_total``,
      ``poller_checkpoint_failures_total``, ``poller_checkpoint_age_seconds`` (computed at
      scrape time);
    * leases: ``poller_leases_held``, ``poller_lease_events_total{event}``,
      ``poller_dependency_errors_total{operation}``;
    * SQS: ``poller_sqs_in_flight_batches``, ``poller_sqs_concurrency``,
      ``poller_visibility_extensions_total``;
    * mappings: ``poller_mapping_up`` (1 while the mapping's runner runs, 0 while it cannot
      start or restarts after a crash);
    * the process: ``poller_info{version}``, ``poller_start_time_seconds``, and the standard
      ``process_*``, ``python_info`` and ``python_gc_*`` series.

    Args:
        registry: where to register; a new private registry when omitted.
        clock: wall-clock seconds; checkpoint ages and the start time are read from it.
        process_metrics: also export the standard process, platform and GC collectors.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._failed_hooks: set[str] = set()
        reg = self.registry
        by_mapping = ("mapping",)
        by_shard = ("mapping", "shard")

        def counter(
            name: str, doc: str, labels: tuple[str, ...] = by_mapping
        ) -> _Children[Counter]:
            return _Children(Counter(name, doc, labels, registry=reg))

        def gauge(name: str, doc: str, labels: tuple[str, ...] = by_mapping) -> _Children[Gauge]:
            return _Children(Gauge(name, doc, labels, registry=reg))

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> _Children[Histogram]:
            return _Children(Histogram(name, doc, by_mapping, registry=reg, buckets=buckets))

        # Lambda's ESM event counts.
        self._polled = counter(
            "poller_polled_events_total",
            "Records read from the source (Lambda PolledEventCount).",
        )
        self._filtered = counter(
            "poller_filtered_out_events_total",
            "Records removed by filter criteria (Lambda FilteredOutEventCount).",
        )
        self._invoked = counter(
            "poller_invoked_events_total",
            "Records in invocations that ran, again on every retry (Lambda InvokedEventCount).",
        )
        self._failed_invoke = counter(
            "poller_failed_invoke_events_total",
            "Records of failed invocations plus records listed in batchItemFailures "
            "(Lambda FailedInvokeEventCount).",
        )
        self._dropped = counter(
            "poller_dropped_events_total",
            "Records given up without a destination, or whose destination delivery failed "
            "(Lambda DroppedEventCount).",
        )
        self._sent = counter(
            "poller_on_failure_destination_delivered_events_total",
            "Records delivered to the on-failure destination "
            "(Lambda OnFailureDestinationDeliveredEventCount).",
        )
        self._deleted = counter(
            "poller_deleted_events_total",
            "SQS messages deleted after processing (Lambda DeletedEventCount).",
        )
        self._delivery_failures = counter(
            "poller_destination_delivery_failures_total",
            "Failed sends to the on-failure destination (Lambda DestinationDeliveryFailures).",
            ("mapping", "destination_type"),
        )
        self._destination_blocked = gauge(
            "poller_destination_blocked",
            "Batches waiting on an on-failure destination that refuses for a permanent reason "
            "(access denied, no such queue, topic or bucket); above 0 needs an operator.",
        )
        self._retention_gaps = counter(
            "poller_retention_gaps_total",
            "Times a shard's position was older than the stream's retention and reading went "
            "on from the oldest record held (the records in between were trimmed).",
            by_shard,
        )

        # Invocations.
        self._invocations = counter(
            "poller_invocations_total",
            "Invocations of the target by outcome: success, function_error, timeout, "
            "throttle, service_error, partial_failure.",
            ("mapping", "outcome"),
        )
        self._duration = histogram(
            "poller_invocation_duration_seconds",
            "Wall time of one invocation of the target, seconds.",
            DURATION_BUCKETS,
        )
        self._batch_size = histogram(
            "poller_batch_size", "Records in one invocation.", BATCH_SIZE_BUCKETS
        )
        self._retries = counter(
            "poller_retries_total",
            "Batches (or parts of batches) invoked again after a failure.",
        )
        self._abandoned_threads = counter(
            "poller_handler_threads_abandoned_total",
            "Threads of sync Python handlers left running after a timeout or the drain deadline.",
        )

        # Shards.
        self._iterator_age = gauge(
            "poller_iterator_age_milliseconds",
            "Lambda IteratorAge: now minus the arrival of the last record of the shard's "
            "latest finished batch, milliseconds.",
            by_shard,
        )
        self._behind = gauge(
            "poller_millis_behind_latest",
            "Kinesis MillisBehindLatest of the shard's latest read, milliseconds.",
            by_shard,
        )
        self._checkpoint_writes = counter(
            "poller_checkpoint_writes_total", "Checkpoints written for the shard.", by_shard
        )
        self._checkpoint_failures = counter(
            "poller_checkpoint_failures_total", "Checkpoint writes that failed.", by_shard
        )
        self._checkpoint_age = _CheckpointAge(clock)
        reg.register(self._checkpoint_age)

        # Leases.
        self._leases = gauge("poller_leases_held", "Shard leases this replica holds.")
        self._lease_events = counter(
            "poller_lease_events_total",
            "Lease changes by event: taken, stolen, lost, handed_off.",
            ("mapping", "event"),
        )
        self._dependency_errors = counter(
            "poller_dependency_errors_total",
            "Failed calls to an AWS dependency (lease table, ListShards) by operation; the "
            "mapping logs them, backs off and retries.",
            ("mapping", "operation"),
        )

        # SQS.
        self._sqs_in_flight = gauge(
            "poller_sqs_in_flight_batches", "SQS batches received and not yet settled."
        )
        self._sqs_concurrency = gauge("poller_sqs_concurrency", "SQS pollers currently running.")
        self._visibility = counter(
            "poller_visibility_extensions_total",
            "Messages whose visibility timeout was extended, once per message and extension.",
        )

        # Mappings.
        self._mapping_up = gauge(
            "poller_mapping_up",
            "1 while the mapping runs; 0 while it cannot reach its source or restarts after a "
            "crash (it keeps retrying, the other mappings run on).",
        )

        # The process and the metrics themselves.
        self._hook_errors = counter(
            "poller_metrics_hook_errors_total",
            "Metrics hooks that failed (a bug: the hook's call was not counted).",
            ("hook",),
        )
        Info("poller", "The running poller.", registry=reg).info({"version": __version__})
        Gauge(
            "poller_start_time_seconds", "When the service started, Unix seconds.", registry=reg
        ).set(clock())
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (content type ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    def _hook_failed(self, hook: str) -> None:
        self._hook_errors(hook).inc()
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            log.warning("metrics.hook_failed", hook=hook, exc_info=True)

    # -- Lambda's event counts, per mapping ------------------------------------------------
    @_never_raises
    def records_polled(self, mapping: str, count: int) -> None:
        """Count records read from the source; an empty poll (0) creates the series."""
        self._polled(mapping).inc(count)

    @_never_raises
    def records_filtered(self, mapping: str, count: int) -> None:
        """Count records removed by filter criteria."""
        self._filtered(mapping).inc(count)

    @_never_raises
    def records_invoked(self, mapping: str, count: int) -> None:
        """Count records in an invocation that ran."""
        self._invoked(mapping).inc(count)

    @_never_raises
    def records_failed_invoke(self, mapping: str, count: int) -> None:
        """Count records of a failed invocation or listed in ``batchItemFailures``."""
        self._failed_invoke(mapping).inc(count)

    @_never_raises
    def records_dropped(self, mapping: str, count: int) -> None:
        """Count records given up."""
        self._dropped(mapping).inc(count)

    @_never_raises
    def records_sent_to_destination(self, mapping: str, count: int) -> None:
        """Count records delivered to the on-failure destination."""
        self._sent(mapping).inc(count)

    @_never_raises
    def records_deleted(self, mapping: str, count: int) -> None:
        """Count SQS messages deleted."""
        self._deleted(mapping).inc(count)

    @_never_raises
    def destination_delivery_failed(self, mapping: str, destination_type: str) -> None:
        """Count one failed send to the on-failure destination."""
        self._delivery_failures(mapping, destination_type).inc()

    @_never_raises
    def destination_blocked(self, mapping: str, blocked: bool) -> None:
        """One more (True) or one fewer (False) batch blocked by its destination."""
        gauge = self._destination_blocked(mapping)
        if blocked:
            gauge.inc()
        else:
            gauge.dec()

    @_never_raises
    def retention_gap(self, mapping: str, shard: str) -> None:
        """Count a retention gap of the shard."""
        self._retention_gaps(mapping, shard).inc()

    # -- invocations ------------------------------------------------------------------------
    @_never_raises
    def invocation(
        self, mapping: str, outcome: str, duration_seconds: float, batch_size: int
    ) -> None:
        """Count one invocation by outcome and observe its duration and batch size.

        The first invocation of a mapping creates every outcome's series at 0, so that ratios
        such as errors over all invocations have both sides from the start.
        """
        if (mapping, outcome) not in self._invocations:
            for known in INVOCATION_OUTCOMES:
                self._invocations(mapping, known)
        self._invocations(mapping, outcome).inc()
        self._duration(mapping).observe(duration_seconds)
        self._batch_size(mapping).observe(batch_size)

    @_never_raises
    def retry(self, mapping: str) -> None:
        """Count one retry."""
        self._retries(mapping).inc()

    @_never_raises
    def handler_thread_abandoned(self, mapping: str) -> None:
        """Count one abandoned handler thread."""
        self._abandoned_threads(mapping).inc()

    # -- shard progress ---------------------------------------------------------------------
    @_never_raises
    def iterator_age(self, mapping: str, shard: str, age_ms: float) -> None:
        """Set the shard's iterator age, milliseconds."""
        self._iterator_age(mapping, shard).set(age_ms)

    @_never_raises
    def millis_behind_latest(self, mapping: str, shard: str, millis: int) -> None:
        """Set how far the shard's reader is behind the tip of the stream."""
        self._behind(mapping, shard).set(millis)

    @_never_raises
    def checkpoint_written(self, mapping: str, shard: str) -> None:
        """Count a checkpoint write and restart the shard's checkpoint age at 0."""
        self._checkpoint_writes(mapping, shard).inc()
        self._checkpoint_age.written(mapping, shard)

    @_never_raises
    def checkpoint_failed(self, mapping: str, shard: str) -> None:
        """Count a failed checkpoint write; the checkpoint age keeps growing."""
        self._checkpoint_failures(mapping, shard).inc()

    @_never_raises
    def shard_released(self, mapping: str, shard: str) -> None:
        """Remove every series of the shard. A later hook for the shard creates them anew."""
        for per_shard in (
            self._iterator_age,
            self._behind,
            self._checkpoint_writes,
            self._checkpoint_failures,
        ):
            per_shard.remove(mapping, shard)
        self._checkpoint_age.forget(mapping, shard)

    # -- leases (several replicas) ----------------------------------------------------------
    @_never_raises
    def leases_held(self, mapping: str, count: int) -> None:
        """Set the number of leases held."""
        self._leases(mapping).set(count)

    @_never_raises
    def lease_event(self, mapping: str, event: str) -> None:
        """Count a lease change; the first one of a mapping creates every event's series."""
        if (mapping, event) not in self._lease_events:
            for known in LEASE_EVENTS:
                self._lease_events(mapping, known)
        self._lease_events(mapping, event).inc()

    @_never_raises
    def dependency_error(self, mapping: str, operation: str) -> None:
        """Count a failed call to an AWS dependency."""
        self._dependency_errors(mapping, operation).inc()

    # -- SQS --------------------------------------------------------------------------------
    @_never_raises
    def sqs_in_flight(self, mapping: str, batches: int) -> None:
        """Set the number of SQS batches in flight."""
        self._sqs_in_flight(mapping).set(batches)

    @_never_raises
    def sqs_concurrency(self, mapping: str, pollers: int) -> None:
        """Set the number of SQS pollers."""
        self._sqs_concurrency(mapping).set(pollers)

    @_never_raises
    def visibility_extended(self, mapping: str, messages: int) -> None:
        """Count messages whose visibility timeout was extended."""
        self._visibility(mapping).inc(messages)

    # -- the service ------------------------------------------------------------------------
    @_never_raises
    def mapping_up(self, mapping: str, up: bool) -> None:
        """Set whether the mapping runs."""
        self._mapping_up(mapping).set(1 if up else 0)


# == Recording (tests) ========================================================================


def _hook_parameters() -> dict[str, tuple[str, ...]]:
    """Each hook of :class:`Metrics` and its parameter names, read from the Protocol."""
    return {
        name: tuple(inspect.signature(member).parameters)[1:]
        for name, member in vars(Metrics).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


#: Each hook's parameter names, in order, after ``self``.
HOOK_PARAMETERS: Final = _hook_parameters()

#: The hooks that report an amount, and which parameter holds it.
_AMOUNTS: Final = {
    "records_polled": "count",
    "records_filtered": "count",
    "records_invoked": "count",
    "records_failed_invoke": "count",
    "records_dropped": "count",
    "records_sent_to_destination": "count",
    "records_deleted": "count",
    "visibility_extended": "messages",
}


class RecordingMetrics:
    """An in-memory :class:`Metrics` for pipeline tests: records every hook call in order.

    ``strict`` (the default) turns misuse into a ``ValueError`` at the call site, where a
    test sees it: a negative amount, duration or batch size, or an ``outcome`` or lease
    ``event`` outside :data:`INVOCATION_OUTCOMES` and :data:`LEASE_EVENTS`. (Production
    metrics never raise; these are the bugs they would count in
    ``poller_metrics_hook_errors_total``.)

    Attributes:
        calls: every call as ``(hook name, positional arguments)``, in call order.
    """

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    # -- queries ----------------------------------------------------------------------------
    def calls_to(self, hook: str, mapping: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The arguments, by parameter name, of every call to ``hook`` that matches.

        Args:
            hook: the hook's name, e.g. ``"invocation"``.
            mapping: only calls for this mapping; every mapping when omitted.
            **match: only calls whose named arguments equal these, e.g. ``outcome="timeout"``.

        Raises:
            ValueError: ``hook`` or a name in ``match`` is not a parameter of the hook.
        """
        names = HOOK_PARAMETERS.get(hook)
        if names is None:
            raise ValueError(f"no hook {hook!r}; hooks: {', '.join(sorted(HOOK_PARAMETERS))}")
        if mapping is not None:
            match["mapping"] = mapping
        unknown = set(match) - set(names)
        if unknown:
            raise ValueError(f"{hook}() has no parameter {', '.join(sorted(unknown))}")
        found = []
        for name, args in self.calls:
            if name != hook:
                continue
            named = dict(zip(names, args, strict=True))
            if all(named[key] == value for key, value in match.items()):
                found.append(named)
        return found

    def count(self, hook: str, mapping: str | None = None, **match: Any) -> int:
        """The total of an amount hook (``records_*``, ``visibility_extended``), or else
        the number of matching calls. Arguments as for :meth:`calls_to`."""
        calls = self.calls_to(hook, mapping, **match)
        amount = _AMOUNTS.get(hook)
        if amount is None:
            return len(calls)
        return sum(int(call[amount]) for call in calls)

    def last(self, hook: str, mapping: str | None = None, **match: Any) -> dict[str, Any] | None:
        """The arguments of the last matching call (a gauge's current value), or ``None``."""
        calls = self.calls_to(hook, mapping, **match)
        return calls[-1] if calls else None

    def hooks(self) -> list[str]:
        """The names of the hooks called, in call order."""
        return [name for name, _ in self.calls]

    def clear(self) -> None:
        """Forget every call."""
        self.calls.clear()

    # -- recording --------------------------------------------------------------------------
    def _record(self, hook: str, *args: Any) -> None:
        if self.strict:
            _check_call(hook, HOOK_PARAMETERS[hook], args)
        self.calls.append((hook, args))

    def records_polled(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_polled", mapping, count)

    def records_filtered(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_filtered", mapping, count)

    def records_invoked(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_invoked", mapping, count)

    def records_failed_invoke(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_failed_invoke", mapping, count)

    def records_dropped(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_dropped", mapping, count)

    def records_sent_to_destination(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_sent_to_destination", mapping, count)

    def records_deleted(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("records_deleted", mapping, count)

    def destination_delivery_failed(self, mapping: str, destination_type: str) -> None:
        """Recorded."""
        self._record("destination_delivery_failed", mapping, destination_type)

    def destination_blocked(self, mapping: str, blocked: bool) -> None:
        """Recorded."""
        self._record("destination_blocked", mapping, blocked)

    def retention_gap(self, mapping: str, shard: str) -> None:
        """Recorded."""
        self._record("retention_gap", mapping, shard)

    def invocation(
        self, mapping: str, outcome: str, duration_seconds: float, batch_size: int
    ) -> None:
        """Recorded."""
        self._record("invocation", mapping, outcome, duration_seconds, batch_size)

    def retry(self, mapping: str) -> None:
        """Recorded."""
        self._record("retry", mapping)

    def handler_thread_abandoned(self, mapping: str) -> None:
        """Recorded."""
        self._record("handler_thread_abandoned", mapping)

    def iterator_age(self, mapping: str, shard: str, age_ms: float) -> None:
        """Recorded."""
        self._record("iterator_age", mapping, shard, age_ms)

    def millis_behind_latest(self, mapping: str, shard: str, millis: int) -> None:
        """Recorded."""
        self._record("millis_behind_latest", mapping, shard, millis)

    def checkpoint_written(self, mapping: str, shard: str) -> None:
        """Recorded."""
        self._record("checkpoint_written", mapping, shard)

    def checkpoint_failed(self, mapping: str, shard: str) -> None:
        """Recorded."""
        self._record("checkpoint_failed", mapping, shard)

    def shard_released(self, mapping: str, shard: str) -> None:
        """Recorded."""
        self._record("shard_released", mapping, shard)

    def leases_held(self, mapping: str, count: int) -> None:
        """Recorded."""
        self._record("leases_held", mapping, count)

    def lease_event(self, mapping: str, event: str) -> None:
        """Recorded."""
        self._record("lease_event", mapping, event)

    def dependency_error(self, mapping: str, operation: str) -> None:
        """Recorded."""
        self._record("dependency_error", mapping, operation)

    def sqs_in_flight(self, mapping: str, batches: int) -> None:
        """Recorded."""
        self._record("sqs_in_flight", mapping, batches)

    def sqs_concurrency(self, mapping: str, pollers: int) -> None:
        """Recorded."""
        self._record("sqs_concurrency", mapping, pollers)

    def visibility_extended(self, mapping: str, messages: int) -> None:
        """Recorded."""
        self._record("visibility_extended", mapping, messages)

    def mapping_up(self, mapping: str, up: bool) -> None:
        """Recorded."""
        self._record("mapping_up", mapping, up)


#: Parameters that can never be negative.
_NON_NEGATIVE: Final = frozenset(
    {"count", "messages", "batches", "pollers", "duration_seconds", "batch_size", "millis"}
)
#: Parameters with a closed set of values.
_ALLOWED: Final[dict[str, tuple[str, ...]]] = {
    "outcome": INVOCATION_OUTCOMES,
    "event": LEASE_EVENTS,
}


def _check_call(hook: str, names: tuple[str, ...], args: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` for an argument no correct caller passes."""
    for name, value in zip(names, args, strict=True):
        if name in _NON_NEGATIVE and value < 0:
            raise ValueError(f"{hook}({name}={value!r}): must not be negative")
        allowed = _ALLOWED.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{hook}({name}={value!r}): expected one of {', '.join(allowed)}")


if TYPE_CHECKING:

    def _implements_metrics(
        prometheus: PrometheusMetrics, recording: RecordingMetrics, null: NullMetrics
    ) -> tuple[Metrics, Metrics, Metrics]:
        return prometheus, recording, null
