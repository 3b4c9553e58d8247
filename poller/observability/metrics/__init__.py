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

The package:

* :mod:`~poller.observability.metrics.hooks`: the :class:`Metrics` hooks, declared once
  (name, typed signature, meaning), and :class:`NullMetrics`;
* :mod:`~poller.observability.metrics.catalog`: :data:`METRICS`, the table of every series a
  hook feeds (:class:`MetricSpec`: name, :class:`Kind`, help, labels, value, buckets);
* :mod:`~poller.observability.metrics.prometheus`: :class:`PrometheusMetrics`, built from the
  table;
* :mod:`~poller.observability.metrics.recording`: :class:`RecordingMetrics`, whose strict
  checks are derived from the table.

How to add a metric: add one :class:`MetricSpec` row to :data:`METRICS` in ``catalog.py``,
naming the hook that feeds it, which of the hook's parameters label it and which holds its
value. Nothing else changes: Prometheus exports it, and strict recording checks its value.
When no existing hook reports the event, also declare the hook in :class:`Metrics`
(``hooks.py``): a typed signature and a docstring under ``@hook``; every implementation has it
from then on. :func:`~poller.observability.metrics.catalog.check_specs` refuses, at import, a
row that names an unknown hook or parameter, and a hook that feeds no row.

Event counts follow Lambda's ESM metric definitions (docs/aws-esm.md §4.2; the exact rules,
and where poller differs, are in the README's "Metric definitions"):

* polled: records of each successful read, 0 for an empty one (``PolledEventCount``);
* filtered out: records no filter matched, 0 when every record matched
  (``FilteredOutEventCount``);
* invoked: records of every invocation attempt, at its start, throttles and retries included
  (``InvokedEventCount``);
* failed invoke: records of every attempt that did not succeed, at its end, and the whole
  batch when the answer lists ``batchItemFailures`` (``FailedInvokeEventCount``); the listed
  items count in ``batch_item_failures``;
* dropped: stream records given up for their age or retries without a destination; not
  retention expiry (``DroppedEventCount``);
* sent to destination: records delivered to the on-failure destination
  (``OnFailureDestinationDeliveredEventCount``);
* deleted: SQS messages deleted after processing, 0 for a refused delete
  (``DeletedEventCount``).
"""

from poller.observability.metrics.catalog import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS,
    INVOCATION_OUTCOMES,
    LEASE_EVENTS,
    METRICS,
    SUBSCRIPTION_END_REASONS,
    SUBSCRIPTION_FAILURE_REASONS,
    Kind,
    MetricSpec,
    check_specs,
)
from poller.observability.metrics.hooks import HOOK_PARAMETERS, Metrics, NullMetrics, hook
from poller.observability.metrics.prometheus import PrometheusMetrics
from poller.observability.metrics.recording import RecordingMetrics

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "DURATION_BUCKETS",
    "HOOK_PARAMETERS",
    "INVOCATION_OUTCOMES",
    "LEASE_EVENTS",
    "METRICS",
    "SUBSCRIPTION_END_REASONS",
    "SUBSCRIPTION_FAILURE_REASONS",
    "Kind",
    "MetricSpec",
    "Metrics",
    "NullMetrics",
    "PrometheusMetrics",
    "RecordingMetrics",
    "check_specs",
    "hook",
]
