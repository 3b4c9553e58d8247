"""Hostile review of issue 16 items 6-8 (tags, event source mapping ARNs, UUIDs, tag labels,
DynamoDB Local ARNs): regression tests for what broke, and the probes that held.

Where it sits: configuration (``poller.config``) --> identity (``mapping_uuid``,
``event_source_mapping_arn``) --> ``poller status`` text (``poller.status_render``) and the
Prometheus export (``poller.observability.metrics.prometheus``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.config import Settings, parse_settings
from poller.config.loading import load_settings
from poller.errors import ConfigError
from poller.observability.metrics import METRICS, PrometheusMetrics
from poller.observability.metrics.prometheus import MappingLabels
from poller.status_render import identity_line

KINESIS = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
QUEUE = "arn:aws:sqs:eu-west-1:123456789012:jobs"
LOCAL_STREAM = "arn:aws:dynamodb:ddblocal:000000000000:table/orders/stream/2024-01-01T00:00:00.000"
SOME_UUID = "14e0db71-5d35-4eb5-b481-8945cf9d10c2"


def stream_mapping(name: str = "orders", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "event_source_arn": KINESIS,
        "starting_position": "TRIM_HORIZON",
        "target": {"type": "python", "handler": "json:loads"},
        **fields,
    }


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document)
    return caught.value.problems


# -- breaks ---------------------------------------------------------------------------------


def test_two_mappings_given_one_uuid_are_refused() -> None:
    """AWS never gives two mappings one UUID. Two mappings configured with the same ``uuid``
    (in any case) would share one event source mapping ARN and one S3 failure-record prefix
    ``aws/lambda/<uuid>/``, and their ``poller_mapping_info`` rows would claim one identity."""
    document = {
        "mappings": [
            stream_mapping("orders", uuid=SOME_UUID),
            stream_mapping("audit", uuid=SOME_UUID.upper()),
        ]
    }
    found = problems(document)
    assert any(SOME_UUID in problem for problem in found), found


def _tagged_config(tmp_path: Path) -> Path:
    path = tmp_path / "poller.yaml"
    path.write_text(
        "observability:\n"
        "  metric_tag_labels: [CostCenter]\n"
        "mappings:\n"
        "  - name: orders\n"
        f"    event_source_arn: {KINESIS}\n"
        "    starting_position: TRIM_HORIZON\n"
        '    target: {type: python, handler: "json:loads"}\n'
        "    tags: {CostCenter: a1}\n",
        encoding="utf-8",
    )
    return path


def test_an_environment_override_of_a_tag_replaces_that_tag(tmp_path: Path) -> None:
    """``POLLER_MAPPINGS__orders__TAGS__CostCenter=b2`` should set tag ``CostCenter``. Tag keys
    are case-sensitive (AWS's and poller's), but the override lower-cases every field segment,
    so it adds a second tag ``costcenter`` and the exported ``tag_CostCenter`` label keeps
    ``a1``."""
    environ = {"POLLER_MAPPINGS__orders__TAGS__CostCenter": "b2"}
    settings = load_settings(_tagged_config(tmp_path), environ=environ)
    assert settings.mappings[0].tags == {"CostCenter": "b2"}


def _tags_as_shown(tags: dict[str, str]) -> str:
    return identity_line({"event_source_mapping_arn": "arn:aws:lambda:x", "tags": tags})


def test_status_text_tells_apart_tags_that_differ_where_the_equals_sign_is() -> None:
    """``=`` is allowed in tag keys and values (AWS's pattern), so ``k=v`` joined with ``, ``
    shows ``{"a=b": "c"}`` and ``{"a": "b=c"}`` as the same text."""
    assert _tags_as_shown({"a=b": "c"}) != _tags_as_shown({"a": "b=c"})


def test_status_text_keeps_one_identity_line_for_a_tag_with_a_line_separator() -> None:
    r"""U+2028 and U+2029 are in ``\p{Z}``, so AWS (and poller) accept them in tags; printed
    raw, they end the line for every reader that splits on Unicode line boundaries
    (``str.splitlines``, many editors and log viewers), so a tag can forge a status line."""
    line = _tags_as_shown({"note": "ok\u2028orders  kinesis  HEALTHY"})
    assert len(line.splitlines()) == 1, line.splitlines()


# -- probes that held -----------------------------------------------------------------------


def settings_of(*mappings: dict[str, Any], **sections: Any) -> Settings:
    return parse_settings({"mappings": list(mappings), **sections})


@pytest.mark.parametrize(
    ("source_arn", "expected_prefix"),
    [
        (KINESIS, "arn:aws:lambda:us-east-1:123456789012:"),
        (
            "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/orders",
            "arn:aws-cn:lambda:cn-north-1:123456789012:",
        ),
        (
            "arn:aws-us-gov:kinesis:us-gov-west-1:123456789012:stream/orders",
            "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:",
        ),
        (
            "arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/c:1700000000",
            "arn:aws:lambda:eu-west-1:123456789012:",
        ),
    ],
)
def test_the_mapping_arn_takes_partition_region_and_account_from_the_source(
    source_arn: str, expected_prefix: str
) -> None:
    mapping = settings_of(stream_mapping(event_source_arn=source_arn)).mappings[0]
    arn = mapping.event_source_mapping_arn("ap-south-1")
    assert arn == f"{expected_prefix}event-source-mapping:{mapping.mapping_uuid}"


def test_an_sqs_mapping_arn_uses_the_queue_region_and_a_derived_uuid() -> None:
    queue = {"name": "jobs", "event_source_arn": QUEUE, "target": stream_mapping()["target"]}
    mapping = settings_of(queue).mappings[0]
    uuid = str(uuid5(NAMESPACE_URL, f"poller:jobs:{QUEUE}"))
    assert mapping.event_source_mapping_arn("us-east-1") == (
        f"arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:{uuid}"
    )


def test_stream_uuids_keep_the_derivation_stored_keys_depend_on() -> None:
    """The derivation from before issue 16 (``_StreamMapping.mapping_uuid``), spelled out."""
    mapping = settings_of(stream_mapping()).mappings[0]
    assert mapping.mapping_uuid == str(uuid5(NAMESPACE_URL, f"poller:orders:{KINESIS}"))


def test_a_dynamodb_local_mapping_arn_takes_the_configured_region() -> None:
    aws = {"region": "eu-west-3", "endpoints": {"dynamodbstreams": "http://127.0.0.1:8000"}}
    mapping = settings_of(stream_mapping(event_source_arn=LOCAL_STREAM), aws=aws).mappings[0]
    assert mapping.event_source_mapping_arn("eu-west-3").startswith(
        "arn:aws:lambda:eu-west-3:000000000000:event-source-mapping:"
    )


@pytest.mark.parametrize(
    "aws",
    [
        {"region": "us-east-1"},
        {"region": "us-east-1", "endpoints": {"dynamodb": "http://127.0.0.1:8000"}},
        {"endpoints": {"dynamodbstreams": "http://127.0.0.1:8000"}},
    ],
    ids=["no-endpoint", "dynamodb-endpoint-only", "no-region"],
)
def test_a_dynamodb_local_mapping_without_endpoint_or_region_is_refused(
    aws: dict[str, Any],
) -> None:
    found = problems({"aws": aws, "mappings": [stream_mapping(event_source_arn=LOCAL_STREAM)]})
    assert any("DynamoDB Local" in problem for problem in found), found


def _exported(metrics: PrometheusMetrics) -> list[dict[str, str]]:
    text = metrics.render()
    decoded = text.decode() if isinstance(text, bytes) else text
    return [
        sample.labels
        for family in text_string_to_metric_families(decoded)
        for sample in family.samples
        if family.name == "poller_iterator_age_milliseconds"
    ]


def test_tag_labels_follow_a_series_through_its_removal_and_default_for_unknown_mappings() -> None:
    labels = MappingLabels(("tag_team",), {"orders": ("payments",)})
    metrics = PrometheusMetrics(process_metrics=False, mapping_labels=labels)
    metrics.iterator_age("orders", "shardId-1", 5.0)
    metrics.iterator_age("reloaded", "shardId-1", 5.0)
    teams = {(s["mapping"], s["tag_team"]) for s in _exported(metrics)}
    assert teams == {("orders", "payments"), ("reloaded", "")}
    metrics.shard_released("orders", "shardId-1")
    assert [s["mapping"] for s in _exported(metrics)] == ["reloaded"]


def test_no_catalog_label_can_collide_with_a_tag_label() -> None:
    """Tag labels are ``tag_<key>``; the load-time collision check compares them only with
    each other, so no series' own label may start with ``tag_``."""
    own = {label for spec in METRICS for label in spec.labels}
    assert own
    assert not [label for label in own if label.startswith("tag_")]
