"""``poller status`` in the test's process: the report collected from a ``SqliteCheckpointStore``
in tmp_path and a ``FakeStreamApi`` stream, rendered as JSON and as tables, and the exit status.

The two seams replaced are the source probe (``poller.status.source_error``, the one AWS call
of the probe) and the stream's adapter (``poller.status_report.source_api``); checkpoint reading,
shard listing, iterator probes, failures-waiting rows and rendering are the real code.
Hermetic: no emulator, no network, no subprocess (tests/integration/test_status_command.py runs
the command against moto).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from poller import status, status_report
from poller.aws.clients import ClientFactory
from poller.checkpoints.dynamodb import Lease
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import Settings, load_settings
from poller.errors import SourceError
from poller.testing import FakeStreamApi, Put
from poller.types import SHARD_END, Checkpoint
from tests.support.status_keys import FAILURE_KEYS, MAPPING_KEYS, SHARD_KEYS

MAPPING, DISABLED = "orders", "archive"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
OTHER_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/archive"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:failures"
CAUGHT_UP, BEHIND, ENDED = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002"
#: How long ago the unread records of BEHIND arrived.
BEHIND_SECONDS = 300.0


def mapping(name: str, arn: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "event_source_arn": arn,
        "starting_position": "TRIM_HORIZON",
        "target": {"type": "python", "handler": "json:loads"},
        **fields,
    }


def load(tmp_path: Path) -> Settings:
    """An enabled mapping reporting failures to SNS, and a disabled one, both over SQLite."""
    document = {
        "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"},
        "checkpoints": {"backend": "sqlite", "path": str(tmp_path / "checkpoints.db")},
        "observability": {"host": "127.0.0.1", "port": 0},
        "mappings": [
            mapping(
                MAPPING,
                STREAM_ARN,
                destination_config={"on_failure": {"destination_arn": TOPIC_ARN}},
            ),
            mapping(DISABLED, OTHER_ARN, enabled=False),
        ],
    }
    path = tmp_path / "poller.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_settings(path)


def build_stream() -> tuple[FakeStreamApi, dict[str, Checkpoint]]:
    """A caught-up shard, one with records unread for BEHIND_SECONDS, and one read to its end;
    the checkpoints that make them so."""
    api = FakeStreamApi()
    long_ago = time.time() - BEHIND_SECONDS
    for shard in (CAUGHT_UP, BEHIND, ENDED):
        api.add_shard(shard)
    last = api.add_page(CAUGHT_UP, [Put("k", b"a"), Put("k", b"b")])[-1]
    first = api.add_page(BEHIND, [Put("k", b"c", arrival=long_ago) for _ in range(3)])[0]
    api.add_page(ENDED, [Put("k", b"d")])
    api.close_shard(ENDED)
    return api, {
        CAUGHT_UP: Checkpoint(sequence_number=api.sequence_of(last)),
        BEHIND: Checkpoint(sequence_number=api.sequence_of(first)),
        ENDED: Checkpoint(sequence_number=SHARD_END),
    }


async def store_checkpoints(db: Path, name: str, checkpoints: dict[str, Checkpoint]) -> None:
    store = await SqliteCheckpointStore(db).open()
    try:
        for shard, checkpoint in checkpoints.items():
            await store.put(name, shard, checkpoint)
    finally:
        await store.aclose()


def serve_fakes(
    monkeypatch: pytest.MonkeyPatch, api: FakeStreamApi, source_error: str | None
) -> None:
    """The source probe answers ``source_error``; the stream is ``api``."""

    async def probe(*_: Any, **__: Any) -> str | None:
        return source_error

    async def stream_api(*_: Any) -> FakeStreamApi:
        return api

    monkeypatch.setattr(status, "source_error", probe)
    monkeypatch.setattr(status_report, "source_api", stream_api)


def json_report(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    exit_status = status.status_command(settings, as_json=True)
    return exit_status, json.loads(capsys.readouterr().out)


@pytest.fixture
def checkpointed(tmp_path: Path) -> tuple[Settings, FakeStreamApi]:
    settings = load(tmp_path)
    api, checkpoints = build_stream()
    anyio.run(store_checkpoints, tmp_path / "checkpoints.db", MAPPING, checkpoints)
    anyio.run(
        store_checkpoints, tmp_path / "checkpoints.db", DISABLED, {BEHIND: checkpoints[BEHIND]}
    )
    return settings, api


def test_json_report_shows_iterator_ages_per_shard(
    checkpointed: tuple[Settings, FakeStreamApi],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, api = checkpointed
    serve_fakes(monkeypatch, api, source_error=None)

    exit_status, document = json_report(settings, capsys)

    assert exit_status == 0
    assert document["backend"] == "sqlite"
    assert [m["name"] for m in document["mappings"]] == [MAPPING, DISABLED]
    report, disabled = document["mappings"]
    assert set(report) == MAPPING_KEYS
    assert set(report["failures_waiting"]) == FAILURE_KEYS
    assert report["state"] == "up"
    assert report["failures_waiting"]["destination"] == TOPIC_ARN
    assert report["failures_waiting"]["count"] is None  # SNS keeps nothing to count
    rows = {row["shard_id"]: row for row in report["shards"]}
    assert all(set(row) == SHARD_KEYS for row in rows.values())
    assert rows[CAUGHT_UP]["iterator_age_seconds"] == 0
    assert rows[CAUGHT_UP]["unread_record_age_seconds"] is None
    assert rows[BEHIND]["iterator_age_seconds"] >= BEHIND_SECONDS - 1
    assert rows[BEHIND]["checkpoint_age_seconds"] >= 0
    assert rows[ENDED]["finished"]
    assert rows[ENDED]["closed"]
    assert rows[ENDED]["checkpoint"] == SHARD_END
    assert rows[ENDED]["iterator_age_seconds"] is None
    assert rows[ENDED]["iterator_error"] is None
    # A disabled mapping: its stored checkpoints, no probe (and that is not "down").
    assert disabled["state"] == "disabled"
    assert [row["shard_id"] for row in disabled["shards"]] == [BEHIND]
    assert disabled["shards"][0]["iterator_error"] == "mapping disabled"
    assert disabled["failures_waiting"]["destination"] is None


def test_text_report_lists_sources_failures_and_shards(
    checkpointed: tuple[Settings, FakeStreamApi],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, api = checkpointed
    serve_fakes(monkeypatch, api, source_error=None)

    assert status.status_command(settings) == 0

    out = capsys.readouterr().out
    for name in (MAPPING, DISABLED, CAUGHT_UP, BEHIND, ENDED, TOPIC_ARN, SHARD_END):
        assert name in out
    assert "disabled" in out


def test_a_source_down_is_shown_in_place_and_exits_1(
    checkpointed: tuple[Settings, FakeStreamApi],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, api = checkpointed
    serve_fakes(monkeypatch, api, source_error="stream not found")

    exit_status, document = json_report(settings, capsys)

    assert exit_status == 1
    report = document["mappings"][0]
    assert (report["state"], report["error"]) == ("down", "stream not found")
    # The stored checkpoints are still shown; their ages are unknown, not guessed.
    open_rows = [row for row in report["shards"] if not row["finished"]]
    assert {row["shard_id"] for row in open_rows} == {CAUGHT_UP, BEHIND}
    assert all(row["iterator_age_seconds"] is None for row in open_rows)
    assert all("stream not found" in row["iterator_error"] for row in open_rows)

    assert status.status_command(settings) == 1
    assert "stream not found" in capsys.readouterr().out


def test_a_failed_shard_probe_is_shown_in_its_row_and_exits_1(
    checkpointed: tuple[Settings, FakeStreamApi],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, api = checkpointed
    api.add_error(CAUGHT_UP, SourceError("throttled"))
    serve_fakes(monkeypatch, api, source_error=None)

    exit_status, document = json_report(settings, capsys)

    assert exit_status == 1
    rows = {row["shard_id"]: row for row in document["mappings"][0]["shards"]}
    assert "throttled" in rows[CAUGHT_UP]["iterator_error"]
    assert rows[CAUGHT_UP]["iterator_age_seconds"] is None
    assert rows[BEHIND]["iterator_error"] is None  # the other shards are still probed


def test_an_unreadable_checkpoint_database_is_reported_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load(tmp_path)
    (tmp_path / "checkpoints.db").write_bytes(b"not a database" * 100)
    api, _ = build_stream()
    serve_fakes(monkeypatch, api, source_error=None)

    exit_status, document = json_report(settings, capsys)

    assert exit_status == 1
    report = document["mappings"][0]
    assert report["checkpoints_error"]
    assert "checkpoints.db" in report["checkpoints_error"]
    # The listed shards are shown, with an unknown age: measured from the wrong position,
    # it would mislead.
    assert {row["shard_id"] for row in report["shards"]} == {CAUGHT_UP, BEHIND, ENDED}
    assert all(row["iterator_age_seconds"] is None for row in report["shards"])


def lease(shard: str, **fields: Any) -> Lease:
    values: dict[str, Any] = {
        "mapping": MAPPING,
        "shard_id": shard,
        "owner": "replica-1",
        "counter": 7,
        "checkpoint": Checkpoint(sequence_number="42"),
        "parent_ids": (),
        "pending_owner": None,
        "owner_switches": 2,
        "renewed_at": 1000.0,
        **fields,
    }
    return Lease(**values)


def test_status_row_and_render_status() -> None:
    row = status.status_row(lease(CAUGHT_UP, parent_ids=("p",)), now=1012.5)
    assert row["age_seconds"] == 12.5
    assert (row["owner"], row["counter"], row["owner_switches"]) == ("replica-1", 7, 2)
    assert (row["checkpoint"], row["parent_ids"]) == ("42", ["p"])
    unowned = status.status_row(
        lease(BEHIND, owner=None, checkpoint=None, renewed_at=None), now=1012.5
    )
    assert (unowned["owner"], unowned["checkpoint"], unowned["age_seconds"]) == (None, None, None)

    table = status.render_status([row, unowned]).splitlines()

    assert table[0].split() == [
        "MAPPING",
        "SHARD",
        "OWNER",
        "CHECKPOINT",
        "PENDING",
        "AGE(s)",
        "COUNTER",
        "SWITCHES",
    ]
    assert table[1].split()[1:] == [CAUGHT_UP, "replica-1", "42", "-", "12.5", "7", "2"]
    assert table[2].split()[1:5] == [BEHIND, "-", "-", "-"]
    assert status.render_status([]) == "no leases"


def test_format_checkpoint_and_render_sources() -> None:
    assert status.format_checkpoint(None) is None
    assert status.format_checkpoint(Checkpoint(sequence_number=SHARD_END)) == SHARD_END
    assert status.format_checkpoint(Checkpoint(start_timestamp=0.25)) == (
        "start@1970-01-01T00:00:00.250Z"
    )
    rows = [
        {"mapping": MAPPING, "source": "kinesis", "state": "up", "error": ""},
        {"mapping": DISABLED, "source": "dynamodb", "state": "down", "error": "denied"},
    ]
    lines = status.render_sources(rows).splitlines()
    assert lines[0].split() == ["MAPPING", "SOURCE", "STATE", "ERROR"]
    assert lines[1].split() == [MAPPING, "kinesis", "up"]
    assert lines[2].split() == [DISABLED, "dynamodb", "down", "denied"]


class UnlistableStream(FakeStreamApi):
    """A stream whose ListShards fails."""

    async def list_shards(self) -> Any:
        raise SourceError("ListShards: access denied")


def test_a_stream_that_cannot_be_listed_makes_the_mapping_down(
    checkpointed: tuple[Settings, FakeStreamApi],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, _ = checkpointed
    serve_fakes(monkeypatch, UnlistableStream(), source_error=None)

    exit_status, document = json_report(settings, capsys)

    assert exit_status == 1
    report = document["mappings"][0]
    assert report["state"] == "down"
    assert "listing shards" in report["error"]
    assert "access denied" in report["error"]
    # The stored shards are still shown, with unknown ages.
    assert {row["shard_id"] for row in report["shards"]} == {CAUGHT_UP, BEHIND, ENDED}


def test_source_status_probes_every_enabled_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(tmp_path)
    serve_fakes(monkeypatch, FakeStreamApi(), source_error="no such stream")

    async def probe_all() -> list[dict[str, str]]:
        factory = ClientFactory(region="us-east-1", endpoint_url="http://127.0.0.1:9")
        try:
            return await status.source_status(settings, factory)
        finally:
            await factory.aclose()

    rows = anyio.run(probe_all)

    assert rows == [
        {"mapping": MAPPING, "source": "kinesis", "state": "down", "error": "no such stream"}
    ]
