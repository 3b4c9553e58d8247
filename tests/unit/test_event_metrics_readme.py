"""The README's metric definitions ("Metrics and health", "Metric definitions") match the metric
table (poller.observability.metrics.catalog.METRICS): every row names an exported series,
every series has one row, and a series whose help names a Lambda metric says so in the row's
"AWS metric" column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from poller.observability.metrics import METRICS, MetricSpec

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Metrics and health"
#: A row of the definitions tables: its first cell names one series, labels optional.
ROW = re.compile(r"^\| `(?P<name>poller_[a-z_]+)(?:\{[a-z_,]*\})?` \|")
#: The columns: series, AWS metric, sources, definition, differences.
COLUMNS = 5
#: How a series' help names the Lambda metric it follows.
LAMBDA_METRIC = re.compile(r"\(Lambda (?P<metric>[A-Za-z]+)\)")


def section() -> str:
    """The README's "Metrics and health" section, up to the next section of its level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n### ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def rows() -> dict[str, list[str]]:
    """Each series named by a row, with the row's cells."""
    found: dict[str, list[str]] = {}
    for line in section().splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        name = match["name"]
        assert name not in found, f"{name}: two rows"
        found[name] = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
    return found


def test_every_row_names_an_exported_series() -> None:
    exported = {spec.name for spec in METRICS}
    named = set(rows())
    assert named, f"no metric definition rows under {SECTION!r} in README.md"
    assert sorted(named - exported) == []


def test_every_exported_series_has_a_row() -> None:
    assert sorted({spec.name for spec in METRICS} - set(rows())) == []


def test_every_row_has_the_five_columns() -> None:
    wrong = {name: len(cells) for name, cells in rows().items() if len(cells) != COLUMNS}
    assert wrong == {}


@pytest.mark.parametrize(
    "spec", [s for s in METRICS if LAMBDA_METRIC.search(s.help)], ids=lambda s: s.name
)
def test_a_series_that_follows_a_lambda_metric_names_it(spec: MetricSpec) -> None:
    match = LAMBDA_METRIC.search(spec.help)
    assert match is not None
    row = rows().get(spec.name)
    assert row is not None, f"{spec.name}: no row"
    assert match["metric"] in row[1], f"{spec.name}: the AWS column should name {match['metric']}"
