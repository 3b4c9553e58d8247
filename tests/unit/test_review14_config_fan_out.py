"""Hostile review 14: two mappings of one configuration that read through the same enhanced
fan-out consumer.

A consumer has one subscription per shard: a second SubscribeToShard to the same (consumer,
shard) is refused for 5 s and then takes the first one over (AWS; ministack does the same). Two
mappings on one consumer therefore keep taking each other's subscriptions over, every few
seconds, for ever: both fall seconds behind, log refusals without end and pay the churn
(measured on ministack through the fault proxy: 1 shard, 2 mappings, 20 s of traffic: each
subscription lived 3-7 s, 22 refusals logged). Lambda gives each mapping a consumer of its own;
the configuration is where this can be caught, so it must be refused there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import ARN, config, dict_problems, load_dict, mapping

CONSUMER_ARN = f"{ARN}/consumer/orders-efo:1733356800"
OTHER_TARGET = {"type": "python", "handler": "handlers:other"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"event_source_arn": CONSUMER_ARN}, {"event_source_arn": CONSUMER_ARN}),
        (
            {"enhanced_fan_out": {"consumer_name": "orders-efo"}},
            {"enhanced_fan_out": {"consumer_name": "orders-efo"}},
        ),
        # The same consumer, once by ARN and once by its name on its stream.
        ({"event_source_arn": CONSUMER_ARN}, {"enhanced_fan_out": {"consumer_name": "orders-efo"}}),
    ],
    ids=["same_arn", "same_name", "arn_and_name"],
)
def test_two_mappings_on_one_consumer_are_refused(
    tmp_path: Path, first: dict[str, object], second: dict[str, object]
) -> None:
    data = config(
        mappings=[
            mapping(name="orders", **first),
            mapping(name="audit", target=dict(OTHER_TARGET), **second),
        ]
    )
    problems = dict_problems(tmp_path, data)  # fails the test if the configuration loads
    assert any("orders-efo" in problem for problem in problems), problems


def test_two_mappings_on_one_stream_with_their_own_consumers_are_accepted(tmp_path: Path) -> None:
    data = config(
        mappings=[
            mapping(name="orders", event_source_arn=CONSUMER_ARN),
            mapping(
                name="audit",
                target=dict(OTHER_TARGET),
                enhanced_fan_out={"consumer_name": "audit-efo"},
            ),
            mapping(name="polled", target=dict(OTHER_TARGET)),
        ]
    )
    settings = load_dict(tmp_path, data)
    assert [m.name for m in settings.mappings] == ["orders", "audit", "polled"]
