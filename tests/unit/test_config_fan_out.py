"""Tests of the enhanced fan-out settings of a Kinesis mapping: a consumer ARN as the event
source (as Lambda takes it) or ``enhanced_fan_out: {consumer_name}`` on a stream ARN."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import ARN, DDB_ARN, config, dict_problems, kinesis, load_dict, mapping

CONSUMER_ARN = f"{ARN}/consumer/orders-efo:1733356800"


def test_a_consumer_arn_reads_pushed_and_names_the_stream_everywhere(tmp_path: Path) -> None:
    settings = load_dict(tmp_path, config(mappings=[mapping(event_source_arn=CONSUMER_ARN)]))
    orders = kinesis(settings)
    assert orders.reads_pushed
    assert orders.consumer_arn == CONSUMER_ARN
    assert orders.stream_arn == ARN
    assert orders.stream_name == "orders"
    assert (orders.region, orders.account_id, orders.partition) == (
        "us-east-1",
        "123456789012",
        "aws",
    )


def test_a_stream_arn_polls_unless_fan_out_is_asked_for(tmp_path: Path) -> None:
    polled = kinesis(load_dict(tmp_path, config()))
    assert not polled.reads_pushed
    assert polled.consumer_arn is None
    assert polled.stream_arn == ARN
    data = config(mappings=[mapping(enhanced_fan_out={"consumer_name": "poller-orders"})])
    pushed = kinesis(load_dict(tmp_path, data))
    assert pushed.reads_pushed
    assert pushed.consumer_arn is None  # registered (or found) by name at start
    assert pushed.enhanced_fan_out is not None
    assert pushed.enhanced_fan_out.consumer_name == "poller-orders"


@pytest.mark.parametrize(
    "arn",
    [
        f"{ARN}/consumer/orders-efo",  # no creation timestamp: AWS's ARNs always carry one
        f"{ARN}/consumer/:1733356800",
        f"{ARN}/consumer/bad name:1733356800",
        f"{ARN}/consumer/c:17333x",
        f"{ARN}/consumers/c:1733356800",
    ],
)
def test_malformed_consumer_arns_are_refused_naming_both_forms(tmp_path: Path, arn: str) -> None:
    [problem] = dict_problems(tmp_path, config(mappings=[mapping(event_source_arn=arn)]))
    assert problem.startswith(f"mappings[0] (orders).event_source_arn: '{arn}' is not valid")
    assert "stream/<name>/consumer/<consumer>:<creation epoch>" in problem


def test_fan_out_with_a_consumer_arn_is_refused(tmp_path: Path) -> None:
    data = config(
        mappings=[
            mapping(event_source_arn=CONSUMER_ARN, enhanced_fan_out={"consumer_name": "other"})
        ]
    )
    [problem] = dict_problems(tmp_path, data)
    assert problem == (
        f"mappings[0] (orders).enhanced_fan_out: is set but event_source_arn '{CONSUMER_ARN}' "
        "is already a consumer ARN; give either a stream ARN with enhanced_fan_out, or a "
        "consumer ARN alone"
    )


@pytest.mark.parametrize("name", ["", "has space", "x" * 129, "slash/no"])
def test_consumer_names_follow_aws_rules(tmp_path: Path, name: str) -> None:
    data = config(mappings=[mapping(enhanced_fan_out={"consumer_name": name})])
    [problem] = dict_problems(tmp_path, data)
    assert problem.startswith("mappings[0] (orders).enhanced_fan_out.consumer_name: ")


def test_fan_out_is_refused_on_dynamodb_streams(tmp_path: Path) -> None:
    data = config(
        mappings=[mapping(event_source_arn=DDB_ARN, enhanced_fan_out={"consumer_name": "c"})]
    )
    [problem] = dict_problems(tmp_path, data)
    assert problem.startswith("mappings[0] (orders).enhanced_fan_out: unknown field")
