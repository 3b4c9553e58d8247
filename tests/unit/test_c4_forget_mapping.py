"""``PrometheusMetrics.forget_mapping``: a mapping deleted at run time leaves no series behind,
and the other mappings' series stay (poller.observability.metrics.prometheus)."""

from __future__ import annotations

from poller.observability.metrics import PrometheusMetrics
from poller.observability.metrics.prometheus import MappingLabels


def series_of(metrics: PrometheusMetrics, mapping: str) -> list[str]:
    text = metrics.render().decode()
    return [line for line in text.splitlines() if f'mapping="{mapping}"' in line]


def feed(metrics: PrometheusMetrics, mapping: str) -> None:
    metrics.mapping_info(mapping, f"uuid-{mapping}", f"arn:{mapping}", "kinesis", True)
    metrics.mapping_up(mapping, True)
    metrics.invocation(mapping, "success", 0.1, 3)
    metrics.checkpoint_written(mapping, "shard-0")


def test_every_series_of_the_forgotten_mapping_goes_and_the_others_stay() -> None:
    metrics = PrometheusMetrics(
        process_metrics=False,
        mapping_labels=MappingLabels(("team",), {"gone": ("a",), "kept": ("b",)}),
    )
    feed(metrics, "gone")
    feed(metrics, "kept")
    kept_before = series_of(metrics, "kept")
    assert series_of(metrics, "gone")
    assert any("poller_checkpoint_age_seconds" in line for line in series_of(metrics, "gone"))

    metrics.forget_mapping("gone")

    assert series_of(metrics, "gone") == []
    kept_after = series_of(metrics, "kept")
    names = {line.split("{")[0] for line in kept_before}
    assert {line.split("{")[0] for line in kept_after} == names


def test_a_mapping_fed_again_after_being_forgotten_is_exported_again() -> None:
    metrics = PrometheusMetrics(process_metrics=False)
    feed(metrics, "back")
    metrics.forget_mapping("back")
    metrics.forget_mapping("never-seen")  # nothing to forget is fine
    feed(metrics, "back")
    assert any(line.startswith("poller_mapping_up{") for line in series_of(metrics, "back"))
