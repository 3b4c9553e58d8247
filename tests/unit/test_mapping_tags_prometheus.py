"""Tag labels and ``poller_mapping_info`` in the Prometheus export.

Every hook is called once with plausible arguments (built from its signature, so a hook added
later is covered too); then every exported sample is checked: a series with a ``mapping``
label also has each ``tag_<key>`` label with the mapping's value ("" when unset), and no other
series (process, platform, GC, ``poller_info``, the read budget) has any.
"""

from __future__ import annotations

import typing
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from poller.app import Service, mapping_labels
from poller.config import Settings, parse_settings
from poller.observability.metrics import HOOK_PARAMETERS, METRICS, Metrics, PrometheusMetrics
from poller.observability.metrics.prometheus import MappingLabels

TAGGED, UNTAGGED, UNKNOWN = "orders", "jobs", "not-configured"
NAMES = ("tag_team", "tag_cost_center")
LABELS = MappingLabels(NAMES, {TAGGED: ("payments", "4711"), UNTAGGED: ("", "")})
SHARD = "shardId-000000000000"
#: Hooks that only remove series (calling them first would hide what the others made).
FORGETTERS = {spec.forgotten_by for spec in METRICS if spec.forgotten_by} - {
    spec.hook for spec in METRICS
}
CLOSED = {name: values for spec in METRICS for name, values in spec.closed_labels.items()}


def arguments(hook: str, mapping: str) -> tuple[Any, ...]:
    """One valid call of ``hook`` for ``mapping``, from the hook's declared types."""
    hints = typing.get_type_hints(getattr(Metrics, hook))
    values: list[Any] = []
    for name in HOOK_PARAMETERS[hook]:
        kind = hints[name]
        if name == "mapping":
            values.append(mapping)
        elif name in CLOSED:
            values.append(CLOSED[name][0])
        elif kind is bool:
            values.append(True)
        elif kind is str:
            values.append(SHARD if name == "shard" else f"{name}-value")
        else:
            values.append(kind(1))
    return tuple(values)


def call_every_hook(metrics: Metrics, mapping: str) -> None:
    for hook in HOOK_PARAMETERS:
        if hook not in FORGETTERS:
            getattr(metrics, hook)(*arguments(hook, mapping))


def samples(metrics: PrometheusMetrics) -> list[Sample]:
    text = metrics.render().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def hook_errors(metrics: PrometheusMetrics) -> list[Sample]:
    return [s for s in samples(metrics) if s.name == "poller_metrics_hook_errors_total"]


def test_every_mapping_series_carries_the_tag_labels() -> None:
    metrics = PrometheusMetrics(mapping_labels=LABELS)
    for mapping in (TAGGED, UNTAGGED, UNKNOWN):
        call_every_hook(metrics, mapping)
    assert not hook_errors(metrics)
    expected = {
        TAGGED: {"tag_team": "payments", "tag_cost_center": "4711"},
        UNTAGGED: {"tag_team": "", "tag_cost_center": ""},
        UNKNOWN: {"tag_team": "", "tag_cost_center": ""},
    }
    mapping_samples = [s for s in samples(metrics) if "mapping" in s.labels]
    seen = {s.name.removesuffix("_total").removesuffix("_bucket") for s in mapping_samples}
    families = {spec.name.removesuffix("_total") for spec in METRICS if "mapping" in spec.labels}
    assert families <= seen  # every row labelled by mapping was exported
    for sample in mapping_samples:
        tags = {k: v for k, v in sample.labels.items() if k.startswith("tag_")}
        assert tags == expected[sample.labels["mapping"]], sample


def test_no_other_series_carries_them() -> None:
    metrics = PrometheusMetrics(mapping_labels=LABELS)
    call_every_hook(metrics, TAGGED)
    others = [s for s in samples(metrics) if "mapping" not in s.labels]
    names = {s.name for s in others}
    assert {"poller_info", "poller_start_time_seconds", "poller_read_budget_bytes"} <= names
    assert any(name.startswith("process_") for name in names)
    for sample in others:
        assert not any(label.startswith("tag_") for label in sample.labels), sample


def test_without_tag_labels_the_series_are_unchanged() -> None:
    metrics = PrometheusMetrics()
    call_every_hook(metrics, TAGGED)
    assert not hook_errors(metrics)
    for sample in samples(metrics):
        assert not any(label.startswith("tag_") for label in sample.labels), sample
    [polled] = [s for s in samples(metrics) if s.name == "poller_polled_events_total"]
    assert polled.labels == {"mapping": TAGGED}


def test_forgotten_series_go_with_their_tag_labels() -> None:
    per_shard = {spec.name for spec in METRICS if spec.forgotten_by}
    assert per_shard, "no row is forgotten by a hook any more"
    metrics = PrometheusMetrics(mapping_labels=LABELS)
    call_every_hook(metrics, TAGGED)
    assert any(s.name in per_shard for s in samples(metrics))
    for hook in FORGETTERS:
        getattr(metrics, hook)(*arguments(hook, TAGGED))
    assert not hook_errors(metrics)
    assert not [s for s in samples(metrics) if s.name in per_shard]


def test_closed_label_series_start_at_zero_with_the_tag_labels() -> None:
    spec = next(s for s in METRICS if s.closed_labels and "mapping" in s.labels)
    metrics = PrometheusMetrics(mapping_labels=LABELS)
    getattr(metrics, spec.hook)(*arguments(spec.hook, TAGGED))
    [(label, values)] = spec.closed_labels.items()
    exported = [s for s in samples(metrics) if s.labels.get(label) in values]
    assert {s.labels[label] for s in exported} == set(values)
    assert all(s.labels["tag_team"] == "payments" for s in exported)


def test_mapping_info_is_one_per_mapping_with_its_identity() -> None:
    metrics = PrometheusMetrics(mapping_labels=LABELS)
    arn = "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:x"
    metrics.mapping_info(TAGGED, "uuid-1", arn, "kinesis", True)
    [info] = [s for s in samples(metrics) if s.name == "poller_mapping_info"]
    assert info.value == 1
    assert info.labels == {
        "mapping": TAGGED,
        "uuid": "uuid-1",
        "event_source_mapping_arn": arn,
        "source": "kinesis",
        "tag_team": "payments",
        "tag_cost_center": "4711",
    }


def test_label_values_must_match_the_names() -> None:
    with pytest.raises(ValueError, match="mapping orders: 1 label values for 2 names"):
        MappingLabels(NAMES, {"orders": ("x",)})


# -- the service's wiring (poller.app) ---------------------------------------------------------

STREAM = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
QUEUE = "arn:aws:sqs:eu-west-1:123456789012:jobs"


def settings(**observability: Any) -> Settings:
    target = {"type": "python", "handler": "json:loads"}
    return parse_settings(
        {
            "observability": {"port": 0, "host": "127.0.0.1", **observability},
            "mappings": [
                {
                    "name": TAGGED,
                    "event_source_arn": STREAM,
                    "starting_position": "LATEST",
                    "tags": {"team": "payments", "cost-center": "4711", "other": "x"},
                    "target": target,
                },
                {"name": UNTAGGED, "event_source_arn": QUEUE, "target": target},
                {"name": "off", "event_source_arn": QUEUE, "enabled": False, "target": target},
            ],
        }
    )


def test_mapping_labels_follow_the_configured_keys() -> None:
    labels = mapping_labels(settings(metric_tag_labels=["team", "cost-center"]))
    assert labels.names == NAMES
    assert labels.of(TAGGED) == ("payments", "4711")
    assert labels.of(UNTAGGED) == ("", "")


def test_no_configured_keys_means_no_labels() -> None:
    assert mapping_labels(settings()).names == ()


@pytest.mark.anyio
async def test_service_exports_mapping_info_for_every_mapping_it_runs() -> None:
    config = settings(metric_tag_labels=["team"])
    service = Service(config)
    assert service._prometheus is not None
    infos = {
        s.labels["mapping"]: s
        for s in samples(service._prometheus)
        if s.name == "poller_mapping_info"
    }
    assert set(infos) == {TAGGED, UNTAGGED}  # not the disabled one
    for mapping in config.mappings[:2]:
        labels = infos[mapping.name].labels
        assert labels["uuid"] == mapping.mapping_uuid
        assert labels["event_source_mapping_arn"] == mapping.event_source_mapping_arn("us-east-1")
        assert labels["event_source_mapping_arn"].startswith(
            "arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:"
        )
        assert labels["source"] == mapping.source
    assert infos[TAGGED].labels["tag_team"] == "payments"
    assert infos[UNTAGGED].labels["tag_team"] == ""
