"""The metric table: every series a hook feeds, declared once, in :data:`METRICS`.

Data flow: a hook of :class:`~poller.observability.metrics.hooks.Metrics` carries its
arguments here by name. Each :class:`MetricSpec` row says which hook feeds the series, which
of the hook's arguments are its labels and which is its value, and how the value changes it
(:class:`Kind`). :class:`~poller.observability.metrics.prometheus.PrometheusMetrics` builds its
collectors and its hook dispatch from the rows; strict
:class:`~poller.observability.metrics.recording.RecordingMetrics` derives from them which
arguments must not be negative, which have a closed set of values, and which hooks report an
amount. :func:`check_specs` refuses an inconsistent table at import time.

Event counts follow Lambda's ESM metric definitions (docs/aws-esm.md §4.2).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from poller.observability.metrics.hooks import HOOK_PARAMETERS

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

#: Push latency buckets, seconds: AWS pushes about 70 ms after the put.
PUSH_LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: The values of ``reason`` in :meth:`Metrics.subscription_ended`.
SUBSCRIPTION_END_REASONS: Final = ("expired", "shard_end", "stopped")
#: The values of ``reason`` in :meth:`Metrics.subscription_failed`.
SUBSCRIPTION_FAILURE_REASONS: Final = (
    "resource_in_use",
    "limit_exceeded",
    "not_found",
    "connection",
    "stream_error",
    "other",
)

BY_MAPPING: Final = ("mapping",)
BY_SHARD: Final = ("mapping", "shard")


class Kind(enum.Enum):
    """How a hook call changes a series, and the Prometheus type it is exported as."""

    COUNTER = "counter"  # adds the value (1 when the spec has none)
    GAUGE = "gauge"  # set to the value
    FLAG = "flag"  # gauge: 1 when the value is true, else 0
    UP_DOWN = "up_down"  # gauge: one up when the value is true, one down when false
    HISTOGRAM = "histogram"  # observes the value
    AGE = "age"  # gauge computed at scrape time: seconds since the hook's last call


#: The kinds whose value is a number (the others take a flag or no value).
NUMERIC_KINDS: Final = frozenset({Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM})


@dataclass(frozen=True)
class MetricSpec:
    """One exported series family and the hook that feeds it.

    Attributes:
        name: the Prometheus name, e.g. ``poller_retries_total``.
        kind: how a call of ``hook`` changes the series.
        help: the ``# HELP`` text.
        hook: the :class:`Metrics` hook that feeds the series.
        labels: the hook's parameters whose values label the series, in label order.
        value: the hook's parameter holding the amount, value or flag (none for a counter
            that counts calls, and for an age).
        buckets: a histogram's upper bounds.
        closed_labels: labels with a closed set of values: the first call for a new set of
            the other labels creates the series of every value, at 0, so that ratios have
            both sides from the start; strict recording refuses any other value.
        forgotten_by: a hook whose call removes the series with its labels' values (it must
            take the same label parameters).
        may_be_negative: the value can legitimately be below 0; strict recording refuses a
            negative value of every other numeric spec.
    """

    name: str
    kind: Kind
    help: str
    hook: str
    labels: tuple[str, ...] = BY_MAPPING
    value: str | None = None
    buckets: tuple[float, ...] = ()
    closed_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forgotten_by: str | None = None
    may_be_negative: bool = False


def _events(name: str, help: str, hook: str) -> MetricSpec:
    """A counter of records per mapping, Lambda's ESM event counts: the hook's ``count``."""
    return MetricSpec(name, Kind.COUNTER, help, hook, value="count")


#: Every series fed by a hook, in exposition order.
METRICS: Final[tuple[MetricSpec, ...]] = (
    # -- Lambda's ESM event counts ------------------------------------------------------------
    _events(
        "poller_polled_events_total",
        "Records read from the source; an empty read adds 0 (Lambda PolledEventCount).",
        "records_polled",
    ),
    _events(
        "poller_filtered_out_events_total",
        "Records removed by filter criteria; 0 when every record matched "
        "(Lambda FilteredOutEventCount).",
        "records_filtered",
    ),
    _events(
        "poller_invoked_events_total",
        "Records of every invocation attempt, throttles and retries included, counted at "
        "its start (Lambda InvokedEventCount).",
        "records_invoked",
    ),
    _events(
        "poller_failed_invoke_events_total",
        "Records of invocation attempts that did not succeed, or whose answer listed "
        "batchItemFailures (the whole batch), counted at their end "
        "(Lambda FailedInvokeEventCount).",
        "records_failed_invoke",
    ),
    _events(
        "poller_dropped_events_total",
        "Stream records given up for age or retries without a destination; not retention "
        "expiry (Lambda DroppedEventCount).",
        "records_dropped",
    ),
    _events(
        "poller_on_failure_destination_delivered_events_total",
        "Records delivered to the on-failure destination "
        "(Lambda OnFailureDestinationDeliveredEventCount).",
        "records_sent_to_destination",
    ),
    _events(
        "poller_deleted_events_total",
        "SQS messages deleted after processing; a refused delete adds 0 "
        "(Lambda DeletedEventCount).",
        "records_deleted",
    ),
    _events(
        "poller_oversized_records_total",
        "Records too large for any invocation, given up without an invocation or a retry: "
        "sent to the on-failure destination, or dropped without one.",
        "records_oversized",
    ),
    _events(
        "poller_retention_expired_events_total",
        "Stream records given up without an on-failure destination because they outlived the "
        "stream's retention (not in Lambda's DroppedEventCount, which excludes them).",
        "records_expired_by_retention",
    ),
    _events(
        "poller_batch_item_failures_total",
        "Distinct items listed in non-empty batchItemFailures responses (the whole batch "
        "counts in poller_failed_invoke_events_total).",
        "batch_item_failures",
    ),
    MetricSpec(
        "poller_destination_delivery_failures_total",
        Kind.COUNTER,
        "Failed sends to the on-failure destination, one per attempt: the batch waits and "
        "sends again (Lambda DestinationDeliveryFailures).",
        "destination_delivery_failed",
        labels=("mapping", "destination_type"),
    ),
    MetricSpec(
        "poller_destination_blocked",
        Kind.UP_DOWN,
        "Batches waiting on an on-failure destination that refuses for a permanent reason "
        "(access denied, no such queue, topic or bucket); above 0 needs an operator.",
        "destination_blocked",
        value="blocked",
    ),
    MetricSpec(
        "poller_retention_gaps_total",
        Kind.COUNTER,
        "Times a shard's position was older than the stream's retention and reading went "
        "on from the oldest record held (the records in between were trimmed).",
        "retention_gap",
        labels=BY_SHARD,
    ),
    # -- enhanced fan-out ------------------------------------------------------------------------
    MetricSpec(
        "poller_efo_subscriptions_started_total",
        Kind.COUNTER,
        "SubscribeToShard subscriptions opened (enhanced fan-out).",
        "subscription_started",
    ),
    MetricSpec(
        "poller_efo_subscriptions_ended_total",
        Kind.COUNTER,
        "Subscriptions ended without an error, by reason: expired (the service ended it), "
        "shard_end, stopped (shard stopped, drained or lease lost).",
        "subscription_ended",
        labels=("mapping", "reason"),
        closed_labels={"reason": SUBSCRIPTION_END_REASONS},
    ),
    MetricSpec(
        "poller_efo_subscriptions_failed_total",
        Kind.COUNTER,
        "Subscribe calls and open subscriptions that failed, by reason: resource_in_use, "
        "limit_exceeded, not_found, connection, stream_error, other.",
        "subscription_failed",
        labels=("mapping", "reason"),
        closed_labels={"reason": SUBSCRIPTION_FAILURE_REASONS},
    ),
    MetricSpec(
        "poller_efo_push_latency_seconds",
        Kind.HISTOGRAM,
        "Seconds from a pushed event's newest record arriving in the stream to its records "
        "reaching the batcher (enhanced fan-out).",
        "push_latency",
        value="seconds",
        buckets=PUSH_LATENCY_BUCKETS,
    ),
    # -- invocations ----------------------------------------------------------------------------
    MetricSpec(
        "poller_invocations_total",
        Kind.COUNTER,
        "Invocations of the target by outcome: success, function_error, timeout, "
        "throttle, service_error, partial_failure.",
        "invocation",
        labels=("mapping", "outcome"),
        closed_labels={"outcome": INVOCATION_OUTCOMES},
    ),
    MetricSpec(
        "poller_invocation_duration_seconds",
        Kind.HISTOGRAM,
        "Wall time of one invocation of the target, seconds.",
        "invocation",
        value="duration_seconds",
        buckets=DURATION_BUCKETS,
    ),
    MetricSpec(
        "poller_batch_size",
        Kind.HISTOGRAM,
        "Records in one invocation.",
        "invocation",
        value="batch_size",
        buckets=BATCH_SIZE_BUCKETS,
    ),
    MetricSpec(
        "poller_retries_total",
        Kind.COUNTER,
        "Batches (or parts of batches) invoked again after a failure.",
        "retry",
    ),
    MetricSpec(
        "poller_handler_threads_abandoned_total",
        Kind.COUNTER,
        "Threads of sync Python handlers left running after a timeout or the drain deadline.",
        "handler_thread_abandoned",
    ),
    # -- shards (forgotten when the shard is released) ----------------------------------------
    MetricSpec(
        "poller_iterator_age_milliseconds",
        Kind.GAUGE,
        "Lambda IteratorAge: now minus the arrival of the last record of the shard's "
        "latest finished batch, milliseconds.",
        "iterator_age",
        labels=BY_SHARD,
        value="age_ms",
        forgotten_by="shard_released",
        may_be_negative=True,  # an arrival stamped by another clock can be in our future
    ),
    MetricSpec(
        "poller_millis_behind_latest",
        Kind.GAUGE,
        "Kinesis MillisBehindLatest of the shard's latest read, milliseconds.",
        "millis_behind_latest",
        labels=BY_SHARD,
        value="millis",
        forgotten_by="shard_released",
    ),
    MetricSpec(
        "poller_checkpoint_writes_total",
        Kind.COUNTER,
        "Checkpoints written for the shard.",
        "checkpoint_written",
        labels=BY_SHARD,
        forgotten_by="shard_released",
    ),
    MetricSpec(
        "poller_checkpoint_failures_total",
        Kind.COUNTER,
        "Checkpoint writes that failed.",
        "checkpoint_failed",
        labels=BY_SHARD,
        forgotten_by="shard_released",
    ),
    MetricSpec(  # keeps growing while a stuck shard writes nothing, so an alert can fire
        "poller_checkpoint_age_seconds",
        Kind.AGE,
        "Seconds since the shard's last successful checkpoint write, at scrape time.",
        "checkpoint_written",
        labels=BY_SHARD,
        forgotten_by="shard_released",
    ),
    # -- the read budget ------------------------------------------------------------------------
    MetricSpec(
        "poller_read_buffered_bytes",
        Kind.GAUGE,
        "Event bytes of the mapping's records read and not settled yet (held in memory).",
        "read_buffered",
        value="size_bytes",
    ),
    MetricSpec(
        "poller_read_buffered_records",
        Kind.GAUGE,
        "The mapping's records read and not settled yet (held in memory).",
        "read_buffered",
        value="records",
    ),
    MetricSpec(
        "poller_read_budget_bytes",
        Kind.GAUGE,
        "The process's read budget (memory.read_budget_mib), bytes.",
        "read_budget",
        labels=(),
        value="budget_bytes",
    ),
    MetricSpec(
        "poller_read_budget_used_bytes",
        Kind.GAUGE,
        "Bytes held against the read budget: records buffered and reads in flight.",
        "read_budget",
        labels=(),
        value="used_bytes",
    ),
    # -- leases ---------------------------------------------------------------------------------
    MetricSpec(
        "poller_leases_held",
        Kind.GAUGE,
        "Shard leases this replica holds.",
        "leases_held",
        value="count",
    ),
    MetricSpec(
        "poller_lease_events_total",
        Kind.COUNTER,
        "Lease changes by event: taken, stolen, lost, handed_off.",
        "lease_event",
        labels=("mapping", "event"),
        closed_labels={"event": LEASE_EVENTS},
    ),
    MetricSpec(
        "poller_dependency_errors_total",
        Kind.COUNTER,
        "Failed calls to an AWS dependency (lease table, ListShards) by operation; the "
        "mapping logs them, backs off and retries.",
        "dependency_error",
        labels=("mapping", "operation"),
    ),
    # -- SQS ------------------------------------------------------------------------------------
    MetricSpec(
        "poller_sqs_in_flight_batches",
        Kind.GAUGE,
        "SQS batches received and not yet settled.",
        "sqs_in_flight",
        value="batches",
    ),
    MetricSpec(
        "poller_sqs_concurrency",
        Kind.GAUGE,
        "SQS batch slots running now: one per poller, ten per provisioned poller.",
        "sqs_concurrency",
        value="pollers",
    ),
    MetricSpec(
        "poller_provisioned_pollers",
        Kind.GAUGE,
        "SQS event pollers running in provisioned mode (Lambda ProvisionedPollers).",
        "provisioned_pollers",
        value="pollers",
    ),
    MetricSpec(
        "poller_visibility_extensions_total",
        Kind.COUNTER,
        "Messages whose visibility timeout was extended, once per message and extension.",
        "visibility_extended",
        value="messages",
    ),
    # -- mappings -------------------------------------------------------------------------------
    MetricSpec(
        "poller_mapping_up",
        Kind.FLAG,
        "1 while the mapping runs; 0 while it cannot reach its source or restarts after a "
        "crash (it keeps retrying, the other mappings run on).",
        "mapping_up",
        value="up",
    ),
    MetricSpec(
        "poller_mapping_info",
        Kind.FLAG,
        "1 for every mapping the service runs: its uuid, event source mapping ARN and source "
        "type, as labels to join on.",
        "mapping_info",
        labels=("mapping", "uuid", "event_source_mapping_arn", "source"),
        value="present",
    ),
)


def check_specs(
    specs: Sequence[MetricSpec], hooks: Mapping[str, tuple[str, ...]] = HOOK_PARAMETERS
) -> None:
    """Refuse a table that a hook cannot feed: a ``ValueError`` naming the spec and field.

    Also refuses a hook that feeds and forgets nothing, so that a new hook without a row
    fails at import rather than exporting nothing.
    """
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"metric {spec.name}: declared twice")
        seen.add(spec.name)
        _check_spec(spec, hooks)
    used = {spec.hook for spec in specs} | {spec.forgotten_by for spec in specs}
    idle = sorted(set(hooks) - used)
    if idle:
        raise ValueError(f"hook {', '.join(idle)}: feeds no metric; add a MetricSpec")


def _check_spec(spec: MetricSpec, hooks: Mapping[str, tuple[str, ...]]) -> None:
    parameters = hooks.get(spec.hook)
    if parameters is None:
        raise _bad(spec, f"hook {spec.hook!r} is not a Metrics hook")
    if unknown := [label for label in spec.labels if label not in parameters]:
        raise _bad(spec, f"label {', '.join(unknown)} is not a parameter of {spec.hook}()")
    if spec.value is not None and spec.value not in parameters:
        raise _bad(spec, f"value {spec.value!r} is not a parameter of {spec.hook}()")
    if unknown := [label for label in spec.closed_labels if label not in spec.labels]:
        raise _bad(spec, f"closed label {', '.join(unknown)} is not one of its labels")
    if spec.forgotten_by is not None:
        forgetting = hooks.get(spec.forgotten_by)
        if forgetting is None:
            raise _bad(spec, f"forgotten_by {spec.forgotten_by!r} is not a Metrics hook")
        if missing := [label for label in spec.labels if label not in forgetting]:
            raise _bad(spec, f"{spec.forgotten_by}() cannot forget it: no {', '.join(missing)}")
    _check_shape(spec)


def _check_shape(spec: MetricSpec) -> None:
    """The fields its kind needs: a value (but an age has none), buckets for a histogram."""
    if spec.value is None and spec.kind not in (Kind.COUNTER, Kind.AGE):
        raise _bad(spec, f"a {spec.kind.value} needs a value")
    if spec.value is not None and spec.kind is Kind.AGE:
        raise _bad(spec, "an age takes no value: it is the time since its hook's last call")
    if spec.kind is Kind.HISTOGRAM and not spec.buckets:
        raise _bad(spec, "a histogram needs buckets")
    if spec.buckets and spec.kind is not Kind.HISTOGRAM:
        raise _bad(spec, f"a {spec.kind.value} takes no buckets")


def _bad(spec: MetricSpec, problem: str) -> ValueError:
    return ValueError(f"metric {spec.name}: {problem}")


check_specs(METRICS)
