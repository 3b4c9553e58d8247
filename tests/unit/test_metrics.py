"""Tests of poller.observability.metrics: each hook's series, labels, the private registry,
shard release, scrape-time checkpoint age, histogram buckets, and RecordingMetrics."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from poller import __version__
from poller.observability.metrics import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS,
    HOOK_PARAMETERS,
    INVOCATION_OUTCOMES,
    LEASE_EVENTS,
    Metrics,
    NullMetrics,
    PrometheusMetrics,
    RecordingMetrics,
)


class FakeClock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(clock: FakeClock) -> PrometheusMetrics:
    return PrometheusMetrics(clock=clock, process_metrics=False)


def value(metrics: PrometheusMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def bucket_counts(
    metrics: PrometheusMetrics, histogram: str, upper_bounds: Iterable[str]
) -> dict[str, float | None]:
    """The cumulative count of each ``le`` bucket of ``histogram`` for the mapping "orders"."""
    return {
        le: value(metrics, f"{histogram}_bucket", mapping="orders", le=le) for le in upper_bounds
    }


def series(metrics: PrometheusMetrics, prefix: str = "poller_") -> dict[tuple[str, Any], float]:
    """Every sample whose name starts with ``prefix``, without ``_created`` timestamps."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def changed(metrics: PrometheusMetrics, act: Callable[[], None]) -> dict[tuple[str, Any], float]:
    """The samples that ``act`` added or changed (bucket samples included)."""
    before = series(metrics)
    act()
    after = series(metrics)
    return {key: v for key, v in after.items() if before.get(key) != v}


# -- each hook changes exactly its series ----------------------------------------------------

COUNT_HOOKS = [
    ("records_polled", "poller_polled_events_total"),
    ("records_filtered", "poller_filtered_out_events_total"),
    ("records_invoked", "poller_invoked_events_total"),
    ("records_failed_invoke", "poller_failed_invoke_events_total"),
    ("records_dropped", "poller_dropped_events_total"),
    ("records_sent_to_destination", "poller_on_failure_destination_delivered_events_total"),
    ("records_deleted", "poller_deleted_events_total"),
    ("records_oversized", "poller_oversized_records_total"),
    ("records_expired_by_retention", "poller_retention_expired_events_total"),
    ("batch_item_failures", "poller_batch_item_failures_total"),
    ("visibility_extended", "poller_visibility_extensions_total"),
]


@pytest.mark.parametrize(("hook", "name"), COUNT_HOOKS)
def test_count_hook_adds_its_amount_to_its_counter_only(
    metrics: PrometheusMetrics, hook: str, name: str
) -> None:
    diff = changed(metrics, lambda: getattr(metrics, hook)("orders", 7))
    assert diff == {(name, (("mapping", "orders"),)): 7.0}

    getattr(metrics, hook)("orders", 5)
    getattr(metrics, hook)("payments", 2)
    assert value(metrics, name, mapping="orders") == 12.0
    assert value(metrics, name, mapping="payments") == 2.0


def test_an_empty_poll_creates_the_series_at_zero(metrics: PrometheusMetrics) -> None:
    assert value(metrics, "poller_polled_events_total", mapping="orders") is None
    metrics.records_polled("orders", 0)
    assert value(metrics, "poller_polled_events_total", mapping="orders") == 0.0


def test_destination_delivery_failed_counts_by_destination_type(
    metrics: PrometheusMetrics,
) -> None:
    diff = changed(metrics, lambda: metrics.destination_delivery_failed("orders", "sqs"))
    key = (
        "poller_destination_delivery_failures_total",
        (("destination_type", "sqs"), ("mapping", "orders")),
    )
    assert diff == {key: 1.0}
    metrics.destination_delivery_failed("orders", "sqs")
    metrics.destination_delivery_failed("orders", "sns")
    name = "poller_destination_delivery_failures_total"
    assert value(metrics, name, mapping="orders", destination_type="sqs") == 2.0
    assert value(metrics, name, mapping="orders", destination_type="sns") == 1.0


def test_invocation_counts_outcome_and_observes_duration_and_batch_size(
    metrics: PrometheusMetrics,
) -> None:
    diff = changed(metrics, lambda: metrics.invocation("orders", "timeout", 0.3, 40))

    outcomes = {
        labels: v for (name, labels), v in diff.items() if name == "poller_invocations_total"
    }
    # Every outcome appears at the first invocation: only the reported one is 1.
    assert outcomes == {(("mapping", "orders"), ("outcome", "timeout")): 1.0} | {
        (("mapping", "orders"), ("outcome", o)): 0.0 for o in INVOCATION_OUTCOMES if o != "timeout"
    }
    assert value(metrics, "poller_invocation_duration_seconds_count", mapping="orders") == 1.0
    assert value(metrics, "poller_invocation_duration_seconds_sum", mapping="orders") == 0.3
    assert value(metrics, "poller_batch_size_count", mapping="orders") == 1.0
    assert value(metrics, "poller_batch_size_sum", mapping="orders") == 40.0
    assert {name for name, _ in diff} == {
        "poller_invocations_total",
        "poller_invocation_duration_seconds_bucket",
        "poller_invocation_duration_seconds_count",
        "poller_invocation_duration_seconds_sum",
        "poller_batch_size_bucket",
        "poller_batch_size_count",
        "poller_batch_size_sum",
    }

    metrics.invocation("orders", "success", 0.01, 10)
    metrics.invocation("orders", "success", 0.02, 10)
    assert value(metrics, "poller_invocations_total", mapping="orders", outcome="success") == 2.0
    assert value(metrics, "poller_invocations_total", mapping="orders", outcome="timeout") == 1.0
    assert value(metrics, "poller_invocations_total", mapping="orders", outcome="throttle") == 0.0


def test_duration_buckets_span_a_millisecond_to_fifteen_minutes(
    metrics: PrometheusMetrics,
) -> None:
    assert DURATION_BUCKETS[0] == 0.001
    assert DURATION_BUCKETS[-1] == 900.0
    metrics.invocation("orders", "success", 0.0007, 1)  # <= 1 ms
    metrics.invocation("orders", "success", 0.2, 1)  # <= 250 ms
    metrics.invocation("orders", "timeout", 899.0, 1)  # <= 15 min
    metrics.invocation("orders", "timeout", 1000.0, 1)  # only +Inf
    expected = {"0.001": 1.0, "0.1": 1.0, "0.25": 2.0, "600.0": 2.0, "900.0": 3.0, "+Inf": 4.0}
    assert bucket_counts(metrics, "poller_invocation_duration_seconds", expected) == expected


def test_batch_size_buckets_span_one_to_ten_thousand_records(metrics: PrometheusMetrics) -> None:
    assert BATCH_SIZE_BUCKETS[0] == 1
    assert BATCH_SIZE_BUCKETS[-1] == 10000
    for size in (1, 10, 100, 10000):
        metrics.invocation("orders", "success", 0.1, size)
    expected = {
        "1.0": 1.0,
        "5.0": 1.0,
        "10.0": 2.0,
        "100.0": 3.0,
        "5000.0": 3.0,
        "10000.0": 4.0,
        "+Inf": 4.0,
    }
    assert bucket_counts(metrics, "poller_batch_size", expected) == expected


def test_retry_counts_one_per_call(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.retry("orders"))
    assert diff == {("poller_retries_total", (("mapping", "orders"),)): 1.0}
    metrics.retry("orders")
    assert value(metrics, "poller_retries_total", mapping="orders") == 2.0


@pytest.mark.parametrize(
    ("hook", "name"),
    [
        ("iterator_age", "poller_iterator_age_milliseconds"),
        ("millis_behind_latest", "poller_millis_behind_latest"),
    ],
)
def test_shard_gauges_hold_the_latest_value_per_shard(
    metrics: PrometheusMetrics, hook: str, name: str
) -> None:
    diff = changed(metrics, lambda: getattr(metrics, hook)("orders", "shardId-0", 1500))
    assert diff == {(name, (("mapping", "orders"), ("shard", "shardId-0"))): 1500.0}
    getattr(metrics, hook)("orders", "shardId-0", 20)
    getattr(metrics, hook)("orders", "shardId-1", 9000)
    assert value(metrics, name, mapping="orders", shard="shardId-0") == 20.0
    assert value(metrics, name, mapping="orders", shard="shardId-1") == 9000.0


def test_checkpoint_written_counts_and_starts_the_age(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.checkpoint_written("orders", "shardId-0"))
    labels = (("mapping", "orders"), ("shard", "shardId-0"))
    assert diff == {
        ("poller_checkpoint_writes_total", labels): 1.0,
        ("poller_checkpoint_age_seconds", labels): 0.0,
    }


def test_checkpoint_failed_counts_only_failures(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.checkpoint_failed("orders", "shardId-0"))
    labels = (("mapping", "orders"), ("shard", "shardId-0"))
    assert diff == {("poller_checkpoint_failures_total", labels): 1.0}


def test_checkpoint_age_is_computed_at_scrape_time(
    metrics: PrometheusMetrics, clock: FakeClock
) -> None:
    name = "poller_checkpoint_age_seconds"
    assert value(metrics, name, mapping="orders", shard="shardId-0") is None

    metrics.checkpoint_written("orders", "shardId-0")
    clock.now += 42.5  # no hook is called: the shard is stuck
    assert value(metrics, name, mapping="orders", shard="shardId-0") == 42.5
    clock.now += 60
    assert value(metrics, name, mapping="orders", shard="shardId-0") == 102.5

    metrics.checkpoint_failed("orders", "shardId-0")  # a failed write does not reset it
    assert value(metrics, name, mapping="orders", shard="shardId-0") == 102.5
    metrics.checkpoint_written("orders", "shardId-0")
    clock.now += 1
    assert value(metrics, name, mapping="orders", shard="shardId-0") == 1.0


def test_shard_released_removes_every_series_of_that_shard_only(
    metrics: PrometheusMetrics, clock: FakeClock
) -> None:
    for shard in ("shardId-0", "shardId-1"):
        metrics.iterator_age("orders", shard, 100)
        metrics.millis_behind_latest("orders", shard, 200)
        metrics.checkpoint_written("orders", shard)
        metrics.checkpoint_failed("orders", shard)
    metrics.records_polled("orders", 3)
    before = series(metrics)

    metrics.shard_released("orders", "shardId-0")

    after = series(metrics)
    removed = {key for key in before if key not in after}
    assert removed == {
        (name, (("mapping", "orders"), ("shard", "shardId-0")))
        for name in (
            "poller_iterator_age_milliseconds",
            "poller_millis_behind_latest",
            "poller_checkpoint_writes_total",
            "poller_checkpoint_failures_total",
            "poller_checkpoint_age_seconds",
        )
    }
    assert all(after[key] == before[key] for key in after)
    assert b'shard="shardId-0"' not in metrics.render()

    # Releasing again, or a shard never seen, is harmless.
    metrics.shard_released("orders", "shardId-0")
    metrics.shard_released("orders", "never-seen")
    # A shard that comes back starts afresh.
    clock.now += 10
    metrics.checkpoint_written("orders", "shardId-0")
    assert (
        value(metrics, "poller_checkpoint_writes_total", mapping="orders", shard="shardId-0") == 1.0
    )
    assert (
        value(metrics, "poller_checkpoint_age_seconds", mapping="orders", shard="shardId-0") == 0.0
    )


def test_leases_held_is_a_gauge_per_mapping(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.leases_held("orders", 4))
    assert diff == {("poller_leases_held", (("mapping", "orders"),)): 4.0}
    metrics.leases_held("orders", 1)
    assert value(metrics, "poller_leases_held", mapping="orders") == 1.0


def test_lease_event_counts_by_event_with_every_event_present(
    metrics: PrometheusMetrics,
) -> None:
    diff = changed(metrics, lambda: metrics.lease_event("orders", "stolen"))
    assert diff == {
        ("poller_lease_events_total", (("event", e), ("mapping", "orders"))): float(e == "stolen")
        for e in LEASE_EVENTS
    }
    metrics.lease_event("orders", "stolen")
    metrics.lease_event("orders", "taken")
    assert value(metrics, "poller_lease_events_total", mapping="orders", event="stolen") == 2.0
    assert value(metrics, "poller_lease_events_total", mapping="orders", event="taken") == 1.0
    assert value(metrics, "poller_lease_events_total", mapping="orders", event="lost") == 0.0


@pytest.mark.parametrize(
    ("hook", "name"),
    [
        ("sqs_in_flight", "poller_sqs_in_flight_batches"),
        ("sqs_concurrency", "poller_sqs_concurrency"),
        ("provisioned_pollers", "poller_provisioned_pollers"),
    ],
)
def test_sqs_gauges_hold_the_latest_value(metrics: PrometheusMetrics, hook: str, name: str) -> None:
    diff = changed(metrics, lambda: getattr(metrics, hook)("jobs", 6))
    assert diff == {(name, (("mapping", "jobs"),)): 6.0}
    getattr(metrics, hook)("jobs", 2)
    assert value(metrics, name, mapping="jobs") == 2.0


def test_mapping_up_is_a_gauge_of_one_or_zero(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.mapping_up("orders", False))
    assert diff == {("poller_mapping_up", (("mapping", "orders"),)): 0.0}
    metrics.mapping_up("orders", True)
    assert value(metrics, "poller_mapping_up", mapping="orders") == 1.0
    metrics.mapping_up("orders", False)
    assert value(metrics, "poller_mapping_up", mapping="orders") == 0.0


def test_mapping_info_is_one_with_the_identity_as_labels(metrics: PrometheusMetrics) -> None:
    arn = "arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:u-1"
    diff = changed(metrics, lambda: metrics.mapping_info("orders", "u-1", arn, "kinesis", True))
    labels = (
        ("event_source_mapping_arn", arn),
        ("mapping", "orders"),
        ("source", "kinesis"),
        ("uuid", "u-1"),
    )
    assert diff == {("poller_mapping_info", labels): 1.0}


def test_destination_blocked_counts_blocked_batches(metrics: PrometheusMetrics) -> None:
    metrics.destination_blocked("orders", True)
    metrics.destination_blocked("orders", True)
    assert value(metrics, "poller_destination_blocked", mapping="orders") == 2.0
    metrics.destination_blocked("orders", False)
    assert value(metrics, "poller_destination_blocked", mapping="orders") == 1.0


def test_retention_gaps_count_per_shard(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.retention_gap("orders", "shard-1"))
    assert diff == {
        ("poller_retention_gaps_total", (("mapping", "orders"), ("shard", "shard-1"))): 1.0
    }


def test_subscription_counters_create_every_reason_at_zero(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.subscription_ended("orders", "expired"))
    ended = "poller_efo_subscriptions_ended_total"
    assert diff[(ended, (("mapping", "orders"), ("reason", "expired")))] == 1.0
    assert value(metrics, ended, mapping="orders", reason="shard_end") == 0.0
    metrics.subscription_failed("orders", "resource_in_use")
    metrics.subscription_failed("orders", "resource_in_use")
    failed = "poller_efo_subscriptions_failed_total"
    assert value(metrics, failed, mapping="orders", reason="resource_in_use") == 2.0
    assert value(metrics, failed, mapping="orders", reason="connection") == 0.0


def test_subscriptions_started_and_push_latency(metrics: PrometheusMetrics) -> None:
    metrics.subscription_started("orders")
    metrics.push_latency("orders", 0.07)
    metrics.push_latency("orders", 3.0)
    started = "poller_efo_subscriptions_started_total"
    assert value(metrics, started, mapping="orders") == 1.0
    latency = "poller_efo_push_latency_seconds"
    assert value(metrics, f"{latency}_count", mapping="orders") == 2.0
    assert value(metrics, f"{latency}_bucket", mapping="orders", le="0.075") == 1.0
    assert value(metrics, f"{latency}_sum", mapping="orders") == 3.07


def test_abandoned_handler_threads_count_per_mapping(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.handler_thread_abandoned("orders"))
    assert diff == {("poller_handler_threads_abandoned_total", (("mapping", "orders"),)): 1.0}


def test_dependency_errors_count_per_operation(metrics: PrometheusMetrics) -> None:
    diff = changed(metrics, lambda: metrics.dependency_error("orders", "balance"))
    assert diff == {
        ("poller_dependency_errors_total", (("mapping", "orders"), ("operation", "balance"))): 1.0
    }


def test_read_budget_gauges_hold_the_latest_values(metrics: PrometheusMetrics) -> None:
    metrics.read_buffered("orders", 30, 4096)
    metrics.read_budget(1 << 20, 5000)
    assert value(metrics, "poller_read_buffered_records", mapping="orders") == 30.0
    assert value(metrics, "poller_read_buffered_bytes", mapping="orders") == 4096.0
    assert value(metrics, "poller_read_budget_bytes") == float(1 << 20)
    assert value(metrics, "poller_read_budget_used_bytes") == 5000.0


def test_every_protocol_hook_is_covered_by_these_tests() -> None:
    covered = {hook for hook, _ in COUNT_HOOKS} | {
        "destination_delivery_failed",
        "invocation",
        "retry",
        "iterator_age",
        "millis_behind_latest",
        "checkpoint_written",
        "checkpoint_failed",
        "shard_released",
        "leases_held",
        "lease_event",
        "sqs_in_flight",
        "sqs_concurrency",
        "mapping_up",
        "destination_blocked",
        "retention_gap",
        "handler_thread_abandoned",
        "dependency_error",
        "read_buffered",
        "read_budget",
        "subscription_started",
        "subscription_ended",
        "subscription_failed",
        "push_latency",
        "provisioned_pollers",
        "mapping_info",
    }
    assert covered == set(HOOK_PARAMETERS)


# -- the process, the registry and failure handling -------------------------------------------


def test_info_and_start_time(clock: FakeClock) -> None:
    metrics = PrometheusMetrics(clock=clock, process_metrics=False)
    clock.now += 100
    assert value(metrics, "poller_info", version=__version__) == 1.0
    assert value(metrics, "poller_start_time_seconds") == 1_700_000_000.0


def test_process_metrics_are_in_the_private_registry_when_asked_for() -> None:
    with_process = PrometheusMetrics()
    without = PrometheusMetrics(process_metrics=False)
    assert with_process.registry.get_sample_value("python_info", _python_info_labels()) == 1.0
    assert without.registry.get_sample_value("python_info", _python_info_labels()) is None


def _python_info_labels() -> dict[str, str]:
    major, minor, patchlevel = platform.python_version_tuple()
    return {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patchlevel,
        "version": platform.python_version(),
    }


def test_each_instance_has_its_own_registry() -> None:
    first = PrometheusMetrics(process_metrics=False)
    second = PrometheusMetrics()  # would raise "Duplicated timeseries" on a shared registry
    first.records_polled("orders", 3)
    assert first.registry is not second.registry
    assert value(first, "poller_polled_events_total", mapping="orders") == 3.0
    assert value(second, "poller_polled_events_total", mapping="orders") is None


def test_nothing_is_registered_in_the_global_registry() -> None:
    PrometheusMetrics().records_polled("orders", 1)
    assert REGISTRY.get_sample_value("poller_polled_events_total", {"mapping": "orders"}) is None


def test_an_injected_registry_is_used() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, process_metrics=False)
    metrics.retry("orders")
    assert metrics.registry is registry
    assert registry.get_sample_value("poller_retries_total", {"mapping": "orders"}) == 1.0


def test_a_failing_hook_does_not_raise_and_is_counted(metrics: PrometheusMetrics) -> None:
    metrics.records_polled("orders", 4)
    metrics.records_polled("orders", -1)  # Counter.inc refuses negative amounts
    metrics.records_polled("orders", -2)
    assert value(metrics, "poller_polled_events_total", mapping="orders") == 4.0
    assert value(metrics, "poller_metrics_hook_errors_total", hook="records_polled") == 2.0


def test_render_is_the_text_exposition(metrics: PrometheusMetrics) -> None:
    metrics.records_invoked("orders", 3)
    text = metrics.render().decode()
    assert "# TYPE poller_invoked_events_total counter" in text
    assert 'poller_invoked_events_total{mapping="orders"} 3.0' in text
    assert "# TYPE poller_checkpoint_age_seconds gauge" in text


def test_hot_path_reuses_labelled_children(metrics: PrometheusMetrics) -> None:
    calls = 0
    original = Counter.labels

    def counting_labels(self: Counter, *args: Any, **kwargs: Any) -> Counter:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Counter, "labels", counting_labels)
        for _ in range(100):
            metrics.records_polled("orders", 1)
    assert calls == 1
    assert value(metrics, "poller_polled_events_total", mapping="orders") == 100.0


# -- RecordingMetrics ---------------------------------------------------------------------------


def test_implementations_satisfy_the_protocol() -> None:
    implementations: list[Metrics] = [
        NullMetrics(),
        RecordingMetrics(),
        PrometheusMetrics(process_metrics=False),
    ]
    for impl in implementations:
        for hook in HOOK_PARAMETERS:
            assert callable(getattr(impl, hook))


def test_recording_metrics_records_every_call_in_order() -> None:
    recording = RecordingMetrics()
    recording.records_polled("orders", 10)
    recording.invocation("orders", "partial_failure", 0.5, 10)
    recording.records_failed_invoke("orders", 2)
    recording.checkpoint_written("orders", "shardId-0")
    assert recording.calls == [
        ("records_polled", ("orders", 10)),
        ("invocation", ("orders", "partial_failure", 0.5, 10)),
        ("records_failed_invoke", ("orders", 2)),
        ("checkpoint_written", ("orders", "shardId-0")),
    ]
    assert recording.hooks() == [
        "records_polled",
        "invocation",
        "records_failed_invoke",
        "checkpoint_written",
    ]


def test_recording_metrics_totals() -> None:
    recording = RecordingMetrics()
    recording.records_invoked("orders", 10)
    recording.records_invoked("orders", 5)
    recording.records_invoked("payments", 1)
    recording.visibility_extended("jobs", 3)
    recording.invocation("orders", "success", 0.1, 10)
    recording.invocation("orders", "timeout", 3.0, 5)
    recording.invocation("payments", "success", 0.1, 1)
    recording.iterator_age("orders", "shardId-0", 100)
    recording.iterator_age("orders", "shardId-0", 40)

    assert recording.count("records_invoked", "orders") == 15  # amounts are summed
    assert recording.count("records_invoked") == 16
    assert recording.count("records_dropped", "orders") == 0
    assert recording.count("visibility_extended", "jobs") == 3
    assert recording.count("invocation", "orders") == 2  # other hooks count calls
    assert recording.count("invocation", outcome="success") == 2
    assert recording.count("invocation", "orders", outcome="timeout") == 1
    assert recording.last("iterator_age", "orders", shard="shardId-0") == {
        "mapping": "orders",
        "shard": "shardId-0",
        "age_ms": 40,
    }
    assert recording.last("iterator_age", "payments") is None
    assert recording.calls_to("invocation", "orders", outcome="timeout") == [
        {"mapping": "orders", "outcome": "timeout", "duration_seconds": 3.0, "batch_size": 5}
    ]
    recording.clear()
    assert recording.calls == []


def test_recording_metrics_rejects_unknown_hooks_and_parameters() -> None:
    recording = RecordingMetrics()
    with pytest.raises(ValueError, match="no hook 'records_pulled'"):
        recording.count("records_pulled")
    with pytest.raises(ValueError, match="has no parameter shard"):
        recording.count("records_polled", shard="shardId-0")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.records_polled("orders", -1), r"records_polled\(count=-1\)"),
        (lambda r: r.invocation("orders", "boom", 0.1, 1), "expected one of success"),
        (lambda r: r.invocation("orders", "success", -0.1, 1), "duration_seconds=-0.1"),
        (lambda r: r.lease_event("orders", "grabbed"), "expected one of taken"),
        (lambda r: r.sqs_in_flight("jobs", -1), "batches=-1"),
    ],
)
def test_strict_recording_metrics_reject_misuse(
    call: Callable[[RecordingMetrics], None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call(RecordingMetrics())
    lenient = RecordingMetrics(strict=False)
    call(lenient)
    assert len(lenient.calls) == 1
