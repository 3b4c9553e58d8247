"""Tests of the metric table (poller.observability.metrics.catalog): every row is exported as
declared, a new row or hook needs no other edit, strict recording follows the rows, and
check_specs refuses a row no hook can feed."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from poller.observability.metrics import (
    HOOK_PARAMETERS,
    METRICS,
    Kind,
    Metrics,
    MetricSpec,
    PrometheusMetrics,
    RecordingMetrics,
    check_specs,
    hook,
)

PROMETHEUS_TYPES = {
    Kind.COUNTER: "counter",
    Kind.GAUGE: "gauge",
    Kind.FLAG: "gauge",
    Kind.UP_DOWN: "gauge",
    Kind.HISTOGRAM: "histogram",
    Kind.AGE: "gauge",
}
SAMPLES_BY_TYPE: dict[str, Any] = {"str": "x", "int": 3, "float": 0.5, "bool": True}


def sample_arguments(hook_name: str) -> dict[str, Any]:
    """A valid argument for each parameter of the hook: its closed label's first value, or a
    value of its annotated type."""
    closed = {
        label: values[0]
        for spec in METRICS
        if spec.hook == hook_name
        for label, values in spec.closed_labels.items()
    }
    parameters = list(inspect.signature(getattr(Metrics, hook_name)).parameters.values())[1:]
    return {p.name: closed.get(p.name, SAMPLES_BY_TYPE[p.annotation]) for p in parameters}


def call_every_feeding_hook(metrics: Metrics) -> None:
    for name in dict.fromkeys(spec.hook for spec in METRICS):
        getattr(metrics, name)(**sample_arguments(name))


def sample_name(spec: MetricSpec) -> str:
    return f"{spec.name}_count" if spec.kind is Kind.HISTOGRAM else spec.name


# -- the table is what is exported ----------------------------------------------------------


def test_every_row_is_exported_with_its_type_help_and_labels() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    call_every_feeding_hook(metrics)
    text = metrics.render().decode()
    for spec in METRICS:
        assert f"# HELP {spec.name} {spec.help}\n" in text
        assert f"# TYPE {spec.name} {PROMETHEUS_TYPES[spec.kind]}\n" in text
        arguments = sample_arguments(spec.hook)
        labels = {label: str(arguments[label]) for label in spec.labels}
        assert metrics.registry.get_sample_value(sample_name(spec), labels) is not None, spec.name


def test_rows_are_exported_in_table_order() -> None:
    text = PrometheusMetrics(process_metrics=False).render().decode()
    positions = [text.index(f"# HELP {spec.name} ") for spec in METRICS]
    assert positions == sorted(positions)


def test_a_new_row_on_an_existing_hook_needs_no_other_edit() -> None:
    extra = (
        MetricSpec("poller_test_retries_total", Kind.COUNTER, "Test.", "retry"),
        MetricSpec(
            "poller_test_lag", Kind.GAUGE, "Test.", "iterator_age", ("mapping", "shard"),
            value="age_ms", forgotten_by="shard_released",
        ),
    )  # fmt: skip
    check_specs((*METRICS, *extra))
    metrics = PrometheusMetrics(process_metrics=False, specs=(*METRICS, *extra))

    metrics.retry("orders")
    metrics.retry("orders")
    metrics.iterator_age("orders", "shardId-0", 250.0)

    value = metrics.registry.get_sample_value
    assert value("poller_test_retries_total", {"mapping": "orders"}) == 2.0
    assert value("poller_retries_total", {"mapping": "orders"}) == 2.0
    assert value("poller_test_lag", {"mapping": "orders", "shard": "shardId-0"}) == 250.0
    metrics.shard_released("orders", "shardId-0")
    assert value("poller_test_lag", {"mapping": "orders", "shard": "shardId-0"}) is None


def test_closed_labels_create_every_value_at_the_first_call() -> None:
    spec = MetricSpec(
        "poller_test_pairs_total", Kind.COUNTER, "Test.", "invocation",
        ("outcome", "mapping"),  # labels in another order than the hook's parameters
        closed_labels={"outcome": ("success", "timeout")},
    )  # fmt: skip
    metrics = PrometheusMetrics(process_metrics=False, specs=(spec,))
    metrics.invocation("orders", "timeout", 0.1, 1)
    samples = {
        (s.labels["outcome"], s.value)
        for family in metrics.registry.collect()
        if family.name == "poller_test_pairs"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {("success", 0.0), ("timeout", 1.0)}


def test_a_new_hook_is_one_declaration_that_every_implementation_inherits() -> None:
    class WithNewHook(RecordingMetrics):
        @hook
        def records_archived(self, mapping: str, count: int) -> None:
            """Records archived."""

    recording = WithNewHook(strict=False)
    recording.records_archived("orders", 4)
    recording.records_archived(count=1, mapping="payments")
    assert recording.calls == [
        ("records_archived", ("orders", 4)),
        ("records_archived", ("payments", 1)),
    ]


# -- hook calls -------------------------------------------------------------------------------


def test_keyword_arguments_reach_the_implementation_in_declared_order() -> None:
    recording = RecordingMetrics()
    recording.invocation(batch_size=3, mapping="orders", duration_seconds=0.1, outcome="success")
    recording.iterator_age("orders", age_ms=5.0, shard="shardId-0")
    assert recording.calls == [
        ("invocation", ("orders", "success", 0.1, 3)),
        ("iterator_age", ("orders", "shardId-0", 5.0)),
    ]


def test_a_call_that_does_not_fit_the_declaration_raises_type_error() -> None:
    recording: Any = RecordingMetrics()
    with pytest.raises(TypeError):
        recording.records_polled("orders")
    with pytest.raises(TypeError):
        recording.records_polled("orders", 1, 2)
    with pytest.raises(TypeError):
        recording.records_polled("orders", amount=1)
    assert recording.calls == []


# -- strict recording follows the table --------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [s for s in METRICS if s.kind in (Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM) and s.value],
    ids=lambda s: s.name,
)
def test_strict_recording_refuses_a_negative_value_unless_the_row_allows_it(
    spec: MetricSpec,
) -> None:
    assert spec.value is not None
    arguments = sample_arguments(spec.hook) | {spec.value: -1}
    call = getattr(RecordingMetrics(), spec.hook)
    if spec.may_be_negative:
        call(**arguments)
    else:
        with pytest.raises(ValueError, match=f"{spec.value}=-1.*must not be negative"):
            call(**arguments)


@pytest.mark.parametrize("spec", [s for s in METRICS if s.closed_labels], ids=lambda s: s.name)
def test_strict_recording_refuses_a_value_outside_a_closed_label(spec: MetricSpec) -> None:
    for label, values in spec.closed_labels.items():
        arguments = sample_arguments(spec.hook) | {label: "unheard-of"}
        with pytest.raises(ValueError, match=f"expected one of {', '.join(values)}"):
            getattr(RecordingMetrics(), spec.hook)(**arguments)


def test_recording_sums_the_amount_of_every_counter_row_with_a_value() -> None:
    recording = RecordingMetrics()
    amount_rows = [s for s in METRICS if s.kind is Kind.COUNTER and s.value]
    for spec in amount_rows:
        assert spec.value is not None
        for amount in (2, 5):
            getattr(recording, spec.hook)(**sample_arguments(spec.hook) | {spec.value: amount})
    assert {spec.hook: recording.count(spec.hook) for spec in amount_rows} == {
        spec.hook: 7 for spec in amount_rows
    }


# -- check_specs --------------------------------------------------------------------------------

GOOD = MetricSpec("poller_test_total", Kind.COUNTER, "Test.", "retry")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hook": "retried"}, "hook 'retried' is not a Metrics hook"),
        ({"labels": ("mapping", "shard")}, r"label shard is not a parameter of retry\(\)"),
        ({"value": "count"}, r"value 'count' is not a parameter of retry\(\)"),
        ({"kind": Kind.GAUGE}, "a gauge needs a value"),
        (
            {"kind": Kind.HISTOGRAM, "hook": "leases_held", "value": "count"},
            "a histogram needs buckets",
        ),
        ({"buckets": (1.0, 2.0)}, "a counter takes no buckets"),
        ({"kind": Kind.AGE, "hook": "leases_held", "value": "count"}, "an age takes no value"),
        ({"closed_labels": {"outcome": ("a",)}}, "closed label outcome is not one of its labels"),
        ({"forgotten_by": "forget"}, "forgotten_by 'forget' is not a Metrics hook"),
        (
            {"hook": "lease_event", "labels": ("mapping", "event"), "forgotten_by": "retry"},
            r"retry\(\) cannot forget it: no event",
        ),
    ],
)
def test_check_specs_refuses_a_row_its_hook_cannot_feed(
    change: dict[str, Any], message: str
) -> None:
    bad = dataclasses.replace(GOOD, **change)
    check_specs([GOOD], {"retry": ("mapping",)})  # the unchanged row is fine
    with pytest.raises(ValueError, match=f"metric poller_test_total: {message}"):
        check_specs([bad], HOOK_PARAMETERS | {"retry": ("mapping",)})


def test_check_specs_refuses_a_name_declared_twice() -> None:
    with pytest.raises(ValueError, match="metric poller_test_total: declared twice"):
        check_specs([GOOD, GOOD], {"retry": ("mapping",)})


def test_check_specs_refuses_a_hook_that_feeds_nothing() -> None:
    hooks = {"retry": ("mapping",), "records_archived": ("mapping", "count")}
    with pytest.raises(ValueError, match="hook records_archived: feeds no metric"):
        check_specs([GOOD], hooks)


def test_every_hook_of_metrics_feeds_or_forgets_a_row_of_the_table() -> None:
    fed = {spec.hook for spec in METRICS} | {spec.forgotten_by for spec in METRICS}
    assert set(HOOK_PARAMETERS) <= fed
