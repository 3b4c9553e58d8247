"""Review 13e: the read budget's setting (``memory.read_budget_mib``) set by a hostile
environment override (``POLLER_MEMORY__READ_BUDGET_MIB``): every value the budget cannot be
made of is refused by name, with the override that set it; the accepted extremes make a
budget the service can run with (at least one byte, never a float)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.config import load_settings
from poller.errors import ConfigError
from poller.streams.budget import ReadBudget
from tests.unit.test_config import MAPPING_YAML

OVERRIDE = "POLLER_MEMORY__READ_BUDGET_MIB"


def load(tmp_path: Path, value: str) -> ReadBudget:
    path = tmp_path / "poller.yaml"
    path.write_text(MAPPING_YAML, encoding="utf-8")
    settings = load_settings(path, environ={OVERRIDE: value})
    return ReadBudget(settings.memory.read_budget_bytes)


@pytest.mark.parametrize(
    "value", ["0", "-1", "-0.5", "1e300", "abc", "nan", "inf", "-inf", "", "true", "[64]"]
)
def test_a_budget_that_cannot_be_is_refused_naming_the_field_and_the_override(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, value)
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("memory.read_budget_mib: "), problems
    assert OVERRIDE in problems[0], problems


@pytest.mark.parametrize(
    ("value", "total"),
    [("1e-300", 1), ("1e-9", 1), (" 2 ", 2 * 1024 * 1024), ("1048576", 1024**4)],
)
def test_extreme_accepted_budgets_are_whole_bytes_of_at_least_one(
    tmp_path: Path, value: str, total: int
) -> None:
    budget = load(tmp_path, value)
    assert budget.total == total
    assert type(budget.total) is int
