"""Prometheus export of the hooks: one series family per row of the metric table.

Data flow: a hook call reaches :meth:`PrometheusMetrics._report` on the event loop, which runs
the updates compiled from :data:`~poller.observability.metrics.catalog.METRICS` for that hook
(a cached labelled child and an increment, a set or an observation, once per batch);
:mod:`poller.observability.server` renders the private registry at ``/metrics`` from its own
thread, where Prometheus scrapes it.

Series labelled by ``mapping`` may carry extra labels fixed per mapping (:class:`MappingLabels`:
its tags, ``tag_<key>``). Configuration is static, so their names are set at construction and
each call only appends the mapping's constant values to the label values its row picks.
"""

from __future__ import annotations

import itertools
import operator
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from poller import __version__
from poller.observability.metrics.catalog import METRICS, Kind, MetricSpec
from poller.observability.metrics.hooks import HOOK_PARAMETERS, Metrics

_M = TypeVar("_M", bound=MetricWrapperBase)
_Args = tuple[Any, ...]
_Labels = tuple[Any, ...]
#: One step of a hook: an update or a removal of one series, given the hook's arguments.
_Step = Callable[[_Args], None]

log = structlog.get_logger("poller.metrics")


@dataclass(frozen=True)
class MappingLabels:
    """Labels added to every series that has a ``mapping`` label, with values fixed per
    mapping (the mapping's tags named by ``observability.metric_tag_labels``).

    Attributes:
        names: the extra label names, appended after a series' own labels.
        values: per mapping name, its values in ``names`` order; a mapping not listed gets
            ``""`` for each.
    """

    names: tuple[str, ...] = ()
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mapping, values in self.values.items():
            if len(values) != len(self.names):
                raise ValueError(
                    f"mapping {mapping}: {len(values)} label values for {len(self.names)} names"
                )

    def of(self, mapping: str) -> tuple[str, ...]:
        """The mapping's values, ``""`` for each when it has none."""
        return self.values.get(mapping) or ("",) * len(self.names)


class _Children(Generic[_M]):
    """The labelled children of one metric, cached so that ``.labels()`` runs once per series."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[_Labels, _M] = {}

    def __call__(self, values: _Labels) -> _M:
        child = self._children.get(values)
        if child is None:
            # A series without labels is its own child (prometheus_client refuses .labels()).
            child = self._metric.labels(*values) if values else self._metric
            self._children[values] = child
        return child

    def __contains__(self, values: _Labels) -> bool:
        return values in self._children

    def label_sets(self) -> list[_Labels]:
        """The label values of every series made so far."""
        return list(self._children)

    def remove(self, values: _Labels) -> None:
        """Forget the series with these label values; a no-op when there is none."""
        self._children.pop(values, None)
        self._metric.remove(*values)


class _ScrapeAge(Collector):
    """A :data:`Kind.AGE` gauge: now minus the last call of its hook, computed at scrape time.

    The value keeps growing while the hook is not called (a shard that writes no
    checkpoint), so an alert fires although nothing reports. Written from the event loop,
    read from the scrape thread: both go through a lock.
    """

    def __init__(
        self, spec: MetricSpec, labels: tuple[str, ...], clock: Callable[[], float]
    ) -> None:
        self._spec = spec
        self._labels = labels
        self._clock = clock
        self._lock = threading.Lock()
        self._touched_at: dict[_Labels, float] = {}

    def touch(self, values: _Labels) -> None:
        at = self._clock()
        with self._lock:
            self._touched_at[values] = at

    def forget(self, values: _Labels) -> None:
        with self._lock:
            self._touched_at.pop(values, None)

    def label_sets(self) -> list[_Labels]:
        """The label values of every series touched and not forgotten."""
        with self._lock:
            return list(self._touched_at)

    def describe(self) -> Iterable[Metric]:
        """Declare the name to the registry without computing values."""
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        """One sample per label set whose hook was called and that is not forgotten."""
        with self._lock:
            touched = list(self._touched_at.items())
        now = self._clock()
        family = self._family()
        for values, at in touched:
            family.add_metric(values, max(0.0, now - at))
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._spec.name, self._spec.help, labels=self._labels)


def _picker(hook: str, names: tuple[str, ...]) -> Callable[[_Args], _Labels]:
    """Take the arguments named ``names`` out of a call of ``hook``, as a tuple."""
    positions = tuple(HOOK_PARAMETERS[hook].index(name) for name in names)
    if positions == tuple(range(len(positions))):  # the usual case: mapping[, shard, ...]
        return operator.itemgetter(slice(len(positions)))
    return lambda args: tuple(args[i] for i in positions)


def _updater(spec: MetricSpec) -> Callable[[Any, _Args], None]:
    """How one call of the spec's hook changes its labelled child, by :class:`Kind`."""
    at = HOOK_PARAMETERS[spec.hook].index(spec.value) if spec.value is not None else -1
    updates: dict[Kind, Callable[[Any, _Args], None]] = {
        Kind.COUNTER: (lambda c, a: c.inc(a[at])) if at >= 0 else (lambda c, a: c.inc()),
        Kind.GAUGE: lambda c, a: c.set(a[at]),
        Kind.FLAG: lambda c, a: c.set(1 if a[at] else 0),
        Kind.UP_DOWN: lambda c, a: c.inc() if a[at] else c.dec(),
        Kind.HISTOGRAM: lambda c, a: c.observe(a[at]),
    }
    return updates[spec.kind]


def _variants(spec: MetricSpec) -> Callable[[_Labels], Iterable[_Labels]]:
    """The label sets that the first call for ``values`` creates: one per closed value."""
    closed = [(spec.labels.index(label), known) for label, known in spec.closed_labels.items()]

    def variants(values: _Labels) -> Iterable[_Labels]:
        for choice in itertools.product(*(known for _, known in closed)):
            variant = list(values)
            for (position, _), chosen in zip(closed, choice, strict=True):
                variant[position] = chosen
            yield tuple(variant)

    return variants


class PrometheusMetrics(Metrics):
    """Exports the :class:`Metrics` hooks as Prometheus series from a private registry.

    Every instance owns its own :class:`~prometheus_client.CollectorRegistry` (never the
    global one), so two services or two tests in one process never collide. The server in
    :mod:`poller.observability.server` exposes :meth:`render` at ``/metrics``.

    The series are the rows of :data:`~poller.observability.metrics.catalog.METRICS` (all
    labelled by ``mapping``; per-shard ones also by ``shard``; then by the names of
    ``mapping_labels``), followed by
    ``poller_metrics_hook_errors_total{hook}``, ``poller_info{version}``,
    ``poller_start_time_seconds``, and the standard ``process_*``, ``python_info`` and
    ``python_gc_*`` series.

    Hooks are called once per batch, not per record; each is O(1): a cached labelled child
    and an update per row. No hook raises: a failing one increments
    ``poller_metrics_hook_errors_total{hook}`` and logs a warning the first time.

    Args:
        registry: where to register; a new private registry when omitted.
        clock: wall-clock seconds; ages and the start time are read from it.
        process_metrics: also export the standard process, platform and GC collectors.
        specs: the table to export (tests give their own).
        mapping_labels: extra labels of every series with a ``mapping`` label (the mapping's
            tags); none by default.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
        process_metrics: bool = True,
        specs: Sequence[MetricSpec] = METRICS,
        mapping_labels: MappingLabels = MappingLabels(),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._mapping_labels = mapping_labels
        self._failed_hooks: set[str] = set()
        #: Per series labelled by mapping: where its mapping label is, and its series.
        self._by_mapping: list[
            tuple[int, Callable[[_Labels], None], Callable[[], list[_Labels]]]
        ] = []
        steps: defaultdict[str, list[_Step]] = defaultdict(list)
        for spec in specs:
            self._add(spec, steps)
        self._steps: Final = {hook: tuple(steps[hook]) for hook in HOOK_PARAMETERS}
        self._add_service_series(process_metrics)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (content type ``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    def forget_mapping(self, mapping: str) -> None:
        """Drop every series of ``mapping`` (a mapping deleted at run time), so that a
        mapping that is gone does not linger on dashboards with its last values."""
        for at, forget, label_sets in self._by_mapping:
            for values in label_sets():
                if values[at] == mapping:
                    forget(values)

    def _report(self, hook: str, args: _Args) -> None:
        """Run the hook's updates; a failure is counted, never raised (a metric must never
        fail a batch: a negative count or a bad label is a bug to see on a dashboard)."""
        try:
            for step in self._steps[hook]:
                step(args)
        except Exception:  # noqa: BLE001 - counted and logged once per hook in _hook_failed
            self._hook_failed(hook)

    def _wrong_call(self, hook: str, error: TypeError) -> None:
        """Count a hook called with the wrong arguments, as any failing hook (never raised)."""
        self._hook_failed(hook)

    def _hook_failed(self, hook: str) -> None:
        self._hook_errors((hook,)).inc()
        if hook not in self._failed_hooks:
            self._failed_hooks.add(hook)
            log.warning("metrics.hook_failed", hook=hook, exc_info=True)

    # -- building ---------------------------------------------------------------------------
    def _add(self, spec: MetricSpec, steps: defaultdict[str, list[_Step]]) -> None:
        """Register the spec's series and append its update (and removal) to its hooks."""
        names = self._label_names(spec)
        labels = self._with_mapping_labels(spec, _picker(spec.hook, spec.labels))
        if spec.kind is Kind.AGE:
            age = _ScrapeAge(spec, names, self._clock)
            self.registry.register(age)
            steps[spec.hook].append(lambda args: age.touch(labels(args)))
            forget: Callable[[_Labels], None] = age.forget
            made: Callable[[], list[_Labels]] = age.label_sets
        else:
            children = self._children(spec, names)
            steps[spec.hook].append(self._update(spec, children, labels))
            forget = children.remove
            made = children.label_sets
        if "mapping" in spec.labels:
            self._by_mapping.append((spec.labels.index("mapping"), forget, made))
        if spec.forgotten_by is not None:
            forgotten = self._with_mapping_labels(spec, _picker(spec.forgotten_by, spec.labels))
            steps[spec.forgotten_by].append(lambda args: forget(forgotten(args)))

    def _label_names(self, spec: MetricSpec) -> tuple[str, ...]:
        """The spec's labels, then the mapping labels when the spec is labelled by mapping."""
        if "mapping" not in spec.labels:
            return spec.labels
        return spec.labels + self._mapping_labels.names

    def _with_mapping_labels(
        self, spec: MetricSpec, pick: Callable[[_Args], _Labels]
    ) -> Callable[[_Args], _Labels]:
        """``pick``, followed by the mapping's fixed label values when the spec has some."""
        extra = self._mapping_labels
        if not extra.names or "mapping" not in spec.labels:
            return pick  # the usual case costs nothing more
        at = spec.labels.index("mapping")

        def pick_with_mapping_labels(args: _Args) -> _Labels:
            values = pick(args)
            return values + extra.of(values[at])

        return pick_with_mapping_labels

    def _children(self, spec: MetricSpec, names: tuple[str, ...]) -> _Children[Any]:
        reg = self.registry
        if spec.kind is Kind.COUNTER:
            return _Children(Counter(spec.name, spec.help, names, registry=reg))
        if spec.kind is Kind.HISTOGRAM:
            metric = Histogram(spec.name, spec.help, names, registry=reg, buckets=spec.buckets)
            return _Children(metric)
        return _Children(Gauge(spec.name, spec.help, names, registry=reg))

    @staticmethod
    def _update(
        spec: MetricSpec, children: _Children[Any], labels: Callable[[_Args], _Labels]
    ) -> _Step:
        change = _updater(spec)
        if not spec.closed_labels:
            return lambda args: change(children(labels(args)), args)
        variants = _variants(spec)

        def update_creating_every_closed_value(args: _Args) -> None:
            values = labels(args)
            if values not in children:
                for variant in variants(values):
                    children(variant)
            change(children(values), args)

        return update_creating_every_closed_value

    def _add_service_series(self, process_metrics: bool) -> None:
        """The series no hook feeds: failed hooks, the version, the start time, the process."""
        reg = self.registry
        self._hook_errors = _Children(
            Counter(
                "poller_metrics_hook_errors_total",
                "Metrics hooks that failed (a bug: the hook's call was not counted).",
                ("hook",),
                registry=reg,
            )
        )
        Info("poller", "The running poller.", registry=reg).info({"version": __version__})
        Gauge(
            "poller_start_time_seconds", "When the service started, Unix seconds.", registry=reg
        ).set(self._clock())
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
