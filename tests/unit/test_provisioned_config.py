"""``provisioned_poller_config`` on an SQS mapping: AWS's ranges (minimum 2-200, maximum
2-10,000), their defaults for ``{}``, minimum above maximum, and the refusal to combine it
with ``scaling_config.maximum_concurrency``; loaded through the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from poller.config import SqsMapping
from poller.config.models.sqs import ProvisionedPollerConfig
from poller.queues.runner import most_pollers
from tests.unit.test_config import Q0, config, load_dict, sqs_mapping, sqs_problems

FIELD = f"{Q0}.provisioned_poller_config"


def loaded(tmp_path: Path, **fields: Any) -> SqsMapping:
    mapping = load_dict(tmp_path, config(mappings=[sqs_mapping(**fields)])).mappings[0]
    assert isinstance(mapping, SqsMapping)
    return mapping


def test_an_empty_section_gives_aws_defaults(tmp_path: Path) -> None:
    mapping = loaded(tmp_path, provisioned_poller_config={})
    assert mapping.provisioned_poller_config == ProvisionedPollerConfig(
        minimum_pollers=2, maximum_pollers=200
    )
    assert most_pollers(mapping) == 200


def test_without_the_section_the_default_mode_runs(tmp_path: Path) -> None:
    mapping = loaded(tmp_path)
    assert mapping.provisioned_poller_config is None
    assert most_pollers(mapping) == mapping.maximum_concurrency


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"minimum_pollers": 2, "maximum_pollers": 2}, (2, 2)),
        ({"minimum_pollers": 200}, (200, 200)),
        ({"maximum_pollers": 10000}, (2, 10000)),
        ({"minimum_pollers": 20, "maximum_pollers": 500}, (20, 500)),
    ],
)
def test_the_edges_of_aws_ranges_are_accepted(
    tmp_path: Path, section: dict[str, int], expected: tuple[int, int]
) -> None:
    got = loaded(tmp_path, provisioned_poller_config=section).provisioned_poller_config
    assert got is not None
    assert (got.minimum_pollers, got.maximum_pollers) == expected


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"minimum_pollers": 1},
            f"{FIELD}.minimum_pollers: 1 is out of range; allowed 2 to 200 (AWS MinimumPollers)",
        ),
        (
            {"minimum_pollers": 201, "maximum_pollers": 500},
            f"{FIELD}.minimum_pollers: 201 is out of range; allowed 2 to 200 (AWS MinimumPollers)",
        ),
        (
            {"maximum_pollers": 1},
            f"{FIELD}.maximum_pollers: 1 is out of range; allowed 2 to 10000 (AWS MaximumPollers)",
        ),
        (
            {"maximum_pollers": 10001},
            f"{FIELD}.maximum_pollers: 10001 is out of range; allowed 2 to 10000 "
            "(AWS MaximumPollers)",
        ),
        (
            {"minimum_pollers": 50, "maximum_pollers": 40},
            f"{FIELD}.maximum_pollers: 40 is less than minimum_pollers (50); allowed 50 to "
            "10000 (AWS MaximumPollers)",
        ),
    ],
)
def test_out_of_range_pollers_are_refused(
    tmp_path: Path, section: dict[str, int], expected: str
) -> None:
    assert sqs_problems(tmp_path, provisioned_poller_config=section) == [expected]


def test_a_minimum_alone_always_fits_under_the_default_maximum(tmp_path: Path) -> None:
    """The default maximum is 200, the top of the minimum's range."""
    got = loaded(tmp_path, provisioned_poller_config={"minimum_pollers": 200})
    assert got.provisioned_poller_config == ProvisionedPollerConfig(
        minimum_pollers=200, maximum_pollers=200
    )


def test_provisioned_mode_and_maximum_concurrency_are_refused_together(tmp_path: Path) -> None:
    problems = sqs_problems(
        tmp_path,
        provisioned_poller_config={"minimum_pollers": 5},
        scaling_config={"maximum_concurrency": 10},
    )
    assert len(problems) == 1
    [problem] = problems
    assert problem.startswith(f"{Q0}: ")
    assert "provisioned_poller_config" in problem
    assert "scaling_config.maximum_concurrency" in problem
    assert "AWS refuses them together" in problem


def test_an_empty_scaling_config_is_allowed_with_provisioned_mode(tmp_path: Path) -> None:
    mapping = loaded(tmp_path, provisioned_poller_config={}, scaling_config={})
    assert mapping.provisioned_poller_config is not None


def test_unknown_keys_in_the_section_are_refused(tmp_path: Path) -> None:
    [problem] = sqs_problems(tmp_path, provisioned_poller_config={"poller_group_name": "g"})
    assert problem.startswith(f"{FIELD}.poller_group_name: unknown field")
