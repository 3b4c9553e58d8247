"""``poller status``'s text form: the report of :mod:`poller.status_report` as aligned tables.

Data flow::

    reports (one per mapping) --render_report--> sources table (each mapping's ARN and tags
        on a line under it), failures-waiting table, shards table, then one line per error
        too long for a cell

Cells show ``-`` for nothing to show, ``unknown`` where a probe failed (its error follows the
tables); numbers are right-aligned.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

_SHARD_COLUMNS = (
    ("MAPPING", "mapping"),
    ("SHARD", "shard_id"),
    ("OWNER", "owner"),
    ("CHECKPOINT", "checkpoint"),
    ("CKPT AGE(s)", "checkpoint_age_seconds"),
    ("ITER AGE(s)", "iterator_age_seconds"),
    ("PENDING", "pending_owner"),
    ("COUNTER", "counter"),
    ("SWITCHES", "owner_switches"),
)
_NUMERIC_SHARD_KEYS = frozenset(
    {"checkpoint_age_seconds", "iterator_age_seconds", "counter", "owner_switches"}
)
#: Columns only the lease backend fills (a lease always has a counter); left out with SQLite.
_LEASE_ONLY = frozenset({"pending_owner", "counter", "owner_switches"})


def aligned_table(
    header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Collection[int]
) -> str:
    """Rows of cells under ``header``, columns two spaces apart, ``numeric`` ones right-aligned,
    trailing blanks stripped."""
    return "\n".join(_aligned_lines(header, cells, numeric))


def _aligned_lines(
    header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Collection[int]
) -> list[str]:
    """:func:`aligned_table`'s lines, the header's first, one per row of cells."""
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = []
    for line in [header, *cells]:
        padded = [
            text.rjust(widths[i]) if i in numeric else text.ljust(widths[i])
            for i, text in enumerate(line)
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


def render_report(reports: Sequence[dict[str, Any]]) -> str:
    """The whole text output of ``poller status``."""
    parts = [_sources(reports), _failures(reports), _shards(reports)]
    errors = _errors(reports)
    if errors:
        parts.append("\n".join(["ERRORS", *errors]))
    return "\n\n".join(parts)


def _sources(reports: Sequence[dict[str, Any]]) -> str:
    """The sources table, each mapping's row followed by its identity line (kept out of the
    columns: an ARN is wider than any of them)."""
    cells = [[r["name"], r["source"], r["state"], r["error"] or ""] for r in reports]
    header, *rows = _aligned_lines(["MAPPING", "SOURCE", "STATE", "ERROR"], cells, set())
    lines = [header]
    for row, report in zip(rows, reports, strict=True):
        lines += [row, identity_line(report)]
    return "\n".join(lines)


def identity_line(report: dict[str, Any]) -> str:
    """``  <event source mapping ARN>  tags: k=v, k=v`` (``tags: -`` when there are none)."""
    tags = ", ".join(f"{_tag_text(k)}={_tag_text(v)}" for k, v in report["tags"].items()) or "-"
    return f"  {report['event_source_mapping_arn']}  tags: {tags}"


def waiting_cell(failures: dict[str, Any]) -> str:
    """How many failure records wait: a count, ``10000+``, ``unknown``, ``n/a`` or ``-``."""
    if failures["error"]:
        return "unknown"
    if failures["count"] is None:
        return "n/a" if failures["destination"] else "-"
    return f"{failures['count']}+" if failures["capped"] else str(failures["count"])


def _failures(reports: Sequence[dict[str, Any]]) -> str:
    cells = []
    for report in reports:
        failures = report["failures_waiting"]
        in_flight = failures["in_flight"]
        cells.append(
            [
                report["name"],
                waiting_cell(failures),
                "-" if in_flight is None else str(in_flight),
                failures["destination"] or "-",
                failures["error"] or failures["note"] or "",
            ]
        )
    header = ["MAPPING", "FAILURES WAITING", "IN FLIGHT", "DESTINATION", "NOTE"]
    return aligned_table(header, cells, {1, 2})


def _shard_cell(key: str, row: dict[str, Any]) -> str:
    if key == "iterator_age_seconds" and row["iterator_error"]:
        return "unknown"
    value = row.get(key)
    if value is None:
        return "-"
    if key.endswith("_seconds"):
        return f"{value:.1f}"
    return str(value)


def _shards(reports: Sequence[dict[str, Any]]) -> str:
    rows = [{**row, "mapping": report["name"]} for report in reports for row in report["shards"]]
    if not rows:
        return "no shards"
    leased = any(row["counter"] is not None for row in rows)
    columns = [(title, key) for title, key in _SHARD_COLUMNS if leased or key not in _LEASE_ONLY]
    cells = [[_shard_cell(key, row) for _, key in columns] for row in rows]
    numeric = {i for i, (_, key) in enumerate(columns) if key in _NUMERIC_SHARD_KEYS}
    return aligned_table([title for title, _ in columns], cells, numeric)


def _errors(reports: Sequence[dict[str, Any]]) -> list[str]:
    """One line per failed store read or shard probe of a mapping whose source is up (a
    source down is already in the first table)."""
    lines = []
    for report in reports:
        if report["checkpoints_error"]:
            lines.append(f"{report['name']}: checkpoints: {report['checkpoints_error']}")
        if report["state"] != "up":
            continue
        lines.extend(
            f"{report['name']} {row['shard_id']}: {row['iterator_error']}"
            for row in report["shards"]
            if row["iterator_error"]
        )
    return lines


def _tag_text(text: str) -> str:
    """A tag key or value as written, or JSON-quoted (line separators escaped) when it holds
    ``=``, a separator other than the space, or edge spaces that would make the line ambiguous."""
    plain = text.isprintable() and "=" not in text and text == text.strip() and text != ""
    if plain:
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in quoted)
