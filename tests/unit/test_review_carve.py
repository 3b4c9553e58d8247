"""Review of the issue-12 carve: behaviour the old modules had that the carved ones must keep.

Each test names the old behaviour (at commit 68d573c) it pins down.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from poller.observability.metrics import NullMetrics, PrometheusMetrics, RecordingMetrics


def _hook_errors(metrics: PrometheusMetrics, hook: str) -> float:
    value = metrics.registry.get_sample_value("poller_metrics_hook_errors_total", {"hook": hook})
    return value or 0.0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("m",), {}),  # an argument missing
        (("m", 1, 2), {}),  # one too many
        ((), {"mapping": "m", "cnt": 1}),  # a misspelt keyword
    ],
)
def test_a_wrongly_called_prometheus_hook_is_counted_not_raised(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    # The old PrometheusMetrics wrapped every hook in _never_raises, so a call with the wrong
    # arguments (a metrics bug) was counted in poller_metrics_hook_errors_total and never
    # failed the batch that reported it.
    metrics = PrometheusMetrics(process_metrics=False)
    hook = cast(Any, metrics.records_polled)
    hook(*args, **kwargs)
    assert _hook_errors(metrics, "records_polled") == 1.0
    metrics.records_polled("m", 2)  # the hook still works afterwards
    assert metrics.registry.get_sample_value("poller_polled_events_total", {"mapping": "m"}) == 2


@pytest.mark.parametrize("metrics", [NullMetrics(), RecordingMetrics()])
def test_other_metrics_still_raise_on_a_wrong_call(metrics: NullMetrics | RecordingMetrics) -> None:
    # The old NullMetrics and RecordingMetrics had plain methods: a wrong call was a TypeError.
    with pytest.raises(TypeError):
        cast(Any, metrics.records_polled)("m")
