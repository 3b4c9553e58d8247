"""``metrics_config`` (AWS MetricsConfig) on every mapping: ``[]`` or ``[EventCount]``, the
Kafka-only values refused as such; accepted for compatibility, it switches nothing."""

from __future__ import annotations

from typing import Any

import pytest

from poller.config import parse_settings
from poller.config.models.mapping_base import MetricsConfig
from poller.errors import ConfigError

KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
DYNAMODB = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
WHERE = "mappings[0] (orders).metrics_config"


def mapping(arn: str = KINESIS, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "orders",
        "event_source_arn": arn,
        "target": {"type": "python", "handler": "json:loads"},
        **fields,
    }
    if arn != QUEUE:
        entry["starting_position"] = "TRIM_HORIZON"
    return entry


def problem(config: Any, arn: str = KINESIS) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"mappings": [mapping(arn, metrics_config=config)]})
    [only] = caught.value.problems
    return only


@pytest.mark.parametrize("arn", [KINESIS, DYNAMODB, QUEUE])
def test_absent_by_default(arn: str) -> None:
    assert parse_settings({"mappings": [mapping(arn)]}).mappings[0].metrics_config is None


@pytest.mark.parametrize("arn", [KINESIS, DYNAMODB, QUEUE])
@pytest.mark.parametrize("metrics", [[], ["EventCount"]])
def test_accepted_for_every_source(arn: str, metrics: list[str]) -> None:
    loaded = parse_settings({"mappings": [mapping(arn, metrics_config={"metrics": metrics})]})
    assert loaded.mappings[0].metrics_config == MetricsConfig(metrics=metrics)  # type: ignore[arg-type]


def test_empty_object_means_no_metrics() -> None:
    loaded = parse_settings({"mappings": [mapping(metrics_config={})]})
    assert loaded.mappings[0].metrics_config == MetricsConfig()
    assert loaded.mappings[0].metrics_config is not None
    assert loaded.mappings[0].metrics_config.metrics == []


@pytest.mark.parametrize("value", ["ErrorCount", "KafkaMetrics"])
@pytest.mark.parametrize("arn", [KINESIS, QUEUE])
def test_kafka_only_values_are_refused_as_such(value: str, arn: str) -> None:
    assert problem({"metrics": [value]}, arn) == (
        f"{WHERE}.metrics[0]: {value!r} is Kafka-only (AWS accepts it for Amazon MSK and "
        "self-managed Kafka event sources); allowed EventCount"
    )


def test_unknown_values_are_refused() -> None:
    text = problem({"metrics": ["eventcount"]})
    assert text.startswith(f"{WHERE}.metrics[0]: 'eventcount' is not allowed")
    assert "EventCount" in text


def test_at_most_one_item() -> None:
    text = problem({"metrics": ["EventCount", "EventCount"]})
    assert text.startswith(f"{WHERE}.metrics: ")
    assert "allowed at most 1" in text


def test_unknown_keys_are_refused() -> None:
    assert problem({"Metrics": ["EventCount"]}).startswith(f"{WHERE}.Metrics")
