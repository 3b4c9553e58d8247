"""``poller status``'s parts without AWS: the iterator-age rule over a fake of our StreamApi,
the read-only SQLite reader, the exit-status rule and the text tables."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from poller.config import parse_settings
from poller.ports import RecordsPage, StartPosition
from poller.status_failures import failures_row
from poller.status_probes import iterator_age, read_sqlite_checkpoints
from poller.status_render import render_report, waiting_cell
from poller.status_report import report_is_healthy
from poller.types import Checkpoint

pytestmark = pytest.mark.anyio

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/s"


def kinesis_mapping(**fields: Any) -> Any:
    settings = parse_settings(
        {
            "mappings": [
                {
                    "name": "m",
                    "event_source_arn": ARN,
                    "starting_position": "TRIM_HORIZON",
                    "target": {"type": "python", "handler": "tests.support.recorder:record"},
                    **fields,
                }
            ]
        }
    )
    return settings.mappings[0]


class FakeStream:
    """A StreamApi fake: one page per iterator, and the positions it was opened at."""

    def __init__(self, records: list[dict[str, Any]], behind: int | None) -> None:
        self.records, self.behind = records, behind
        self.opened: list[StartPosition] = []

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        self.opened.append(position)
        return "it"

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        assert limit == 1
        return RecordsPage(self.records[:1], "next", self.behind)

    def arrival_of(self, raw: dict[str, Any]) -> float:
        return float(raw["at"])


async def test_age_is_the_first_unread_records_and_reading_resumes_after_the_checkpoint() -> None:
    stream = FakeStream([{"at": time.time() - 30}], behind=1000)
    age = await iterator_age(stream, kinesis_mapping(), "s0", Checkpoint("42"), None)  # type: ignore[arg-type]
    assert stream.opened == [StartPosition("AFTER_SEQUENCE_NUMBER", "42")]
    assert age.seconds == pytest.approx(30, abs=2)
    assert age.unread_record_age_seconds == age.seconds
    assert age.millis_behind_latest == 1000


async def test_without_a_record_the_age_is_millis_behind_latest_or_zero() -> None:
    behind = await iterator_age(FakeStream([], 2500), kinesis_mapping(), "s0", None, None)  # type: ignore[arg-type]
    caught_up = await iterator_age(FakeStream([], None), kinesis_mapping(), "s0", None, None)  # type: ignore[arg-type]
    assert (behind.seconds, behind.unread_record_age_seconds) == (2.5, None)
    assert caught_up.seconds == 0


async def test_a_latest_mapping_without_checkpoint_starts_at_its_pin_or_the_tip() -> None:
    latest = kinesis_mapping(starting_position="LATEST")
    stream = FakeStream([], None)
    assert (await iterator_age(stream, latest, "s0", None, None)).seconds == 0  # type: ignore[arg-type]
    assert stream.opened == []  # never started: it will begin at the tip
    await iterator_age(stream, latest, "s0", None, 1700000000.0)  # type: ignore[arg-type]
    assert stream.opened == [StartPosition("AT_TIMESTAMP", timestamp=1700000000.0)]


async def test_sqlite_reader_is_read_only_and_reads_an_older_schema(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    assert await read_sqlite_checkpoints(missing) == ({}, {})
    assert not missing.exists()  # read-only: nothing created
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE checkpoints (mapping TEXT, shard_id TEXT, sequence_number TEXT,"
            " start_timestamp REAL, updated_at REAL)"
        )
        conn.execute("INSERT INTO checkpoints VALUES ('m', 's0', '7', NULL, 1.5)")
    shards, pins = await read_sqlite_checkpoints(db)
    [stored] = shards["m"]
    assert (stored.shard_id, stored.checkpoint, stored.written_at) == ("s0", Checkpoint("7"), 1.5)
    assert pins == {}


def shard_row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "shard_id": "shardId-000000000000",
        "owner": None,
        "pending_owner": None,
        "checkpoint": "42",
        "checkpoint_age_seconds": 1.25,
        "finished": False,
        "closed": False,
        "iterator_age_seconds": 3.0,
        "millis_behind_latest": None,
        "unread_record_age_seconds": 3.0,
        "iterator_error": None,
        "counter": None,
        "owner_switches": None,
        "parent_ids": [],
    }
    return {**row, **fields}


def report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "m",
        "source": "kinesis",
        "event_source_arn": ARN,
        "event_source_mapping_arn": "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:u",
        "tags": {},
        "state": "up",
        "error": None,
        "checkpoints_error": None,
        "failures_waiting": failures_row(None, None, note="no on-failure destination"),
        "shards": [shard_row()],
    }
    return {**base, **fields}


def test_exit_status_rule_counts_anything_down() -> None:
    assert report_is_healthy([report()])
    assert not report_is_healthy([report(state="down", error="x")])
    assert not report_is_healthy([report(checkpoints_error="x")])
    assert not report_is_healthy([report(failures_waiting=failures_row("a", "sqs", error="x"))])
    assert not report_is_healthy([report(shards=[shard_row(iterator_error="x")])])
    disabled = report(state="disabled", shards=[shard_row(iterator_error="mapping disabled")])
    assert report_is_healthy([disabled])


def test_waiting_cell() -> None:
    assert waiting_cell(failures_row("arn", "sqs", count=3, in_flight=1)) == "3"
    assert waiting_cell(failures_row("arn", "s3", count=10000, capped=True)) == "10000+"
    assert waiting_cell(failures_row("arn", "sns", note="n/a (SNS keeps nothing)")) == "n/a"
    assert waiting_cell(failures_row("arn", "sqs", error="down")) == "unknown"
    assert waiting_cell(failures_row(None, None)) == "-"


def test_text_tables_leave_out_lease_columns_with_sqlite_and_list_errors() -> None:
    text = render_report(
        [report(shards=[shard_row(), shard_row(shard_id="s1", iterator_error="boom")])]
    )
    sources, failures, shards, errors = text.split("\n\n")
    assert sources.splitlines()[1].split() == ["m", "kinesis", "up"]
    assert failures.splitlines()[1].split()[:4] == ["m", "-", "-", "-"]
    assert shards.splitlines()[0].split() == [
        "MAPPING", "SHARD", "OWNER", "CHECKPOINT", "CKPT", "AGE(s)", "ITER", "AGE(s)"
    ]  # fmt: skip
    assert shards.splitlines()[1].split() == ["m", "shardId-000000000000", "-", "42", "1.2", "3.0"]
    assert shards.splitlines()[2].split()[-1] == "unknown"
    assert errors.splitlines() == ["ERRORS", "m s1: boom"]
