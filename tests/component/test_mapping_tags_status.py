"""``poller status`` shows each mapping's event source mapping ARN and tags: a line under the
mapping's row in the text form, ``event_source_mapping_arn`` and ``tags`` in ``--json``.

In the test's process, on fakes of our own interfaces: the source probe, the stream adapter
(a ``FakeStreamApi``) and the failures-waiting probe are replaced; collecting, the checkpoint
reader (SQLite in tmp_path) and rendering are the real code. No emulator, no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poller import status, status_report
from poller.config import AnyMapping, Settings, parse_settings
from poller.status_failures import failures_row
from poller.testing import FakeStreamApi

REGION = "eu-west-1"
STREAM = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
QUEUE = "arn:aws-cn:sqs:cn-north-1:210987654321:jobs"
UUID = "14e0db71-5d35-4eb5-b481-8945cf9d10c2"
TAGS = {"team": "payments", "cost-center": "4711", "Équipe": "été 2026"}


def load(tmp_path: Path) -> Settings:
    """A tagged stream mapping with a configured UUID, an untagged queue, a disabled one."""
    target = {"type": "python", "handler": "json:loads"}
    return parse_settings(
        {
            "aws": {"region": REGION, "endpoint_url": "http://127.0.0.1:9"},
            "checkpoints": {"backend": "sqlite", "path": str(tmp_path / "checkpoints.db")},
            "mappings": [
                {
                    "name": "orders",
                    "event_source_arn": STREAM,
                    "starting_position": "TRIM_HORIZON",
                    "uuid": UUID,
                    "tags": TAGS,
                    "target": target,
                },
                {"name": "jobs", "event_source_arn": QUEUE, "target": target},
                {
                    "name": "paused",
                    "event_source_arn": QUEUE,
                    "enabled": False,
                    "tags": {"env": "prod"},
                    "target": target,
                },
            ],
        }
    )


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Every source answers, the stream has one empty shard, no destination holds anything."""
    api = FakeStreamApi()
    api.add_shard("shardId-000000000000")

    async def probe(*_: Any, **__: Any) -> str | None:
        return None

    async def stream_api(*_: Any) -> FakeStreamApi:
        return api

    async def nothing_waiting(*_: Any) -> dict[str, Any]:
        return failures_row(None, None, note="no on-failure destination")

    monkeypatch.setattr(status, "source_error", probe)
    monkeypatch.setattr(status_report, "source_api", stream_api)
    monkeypatch.setattr(status_report, "failures_waiting", nothing_waiting)
    return load(tmp_path)


def expected_arn(mapping: AnyMapping) -> str:
    partition, region, account = mapping.partition, mapping.region, mapping.account_id
    return f"arn:{partition}:lambda:{region}:{account}:event-source-mapping:{mapping.mapping_uuid}"


def test_json_has_each_mappings_arn_and_tags(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.status_command(settings, as_json=True) == 0
    document = json.loads(capsys.readouterr().out)
    reports = {report["name"]: report for report in document["mappings"]}
    assert reports["orders"]["event_source_mapping_arn"] == (
        f"arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:{UUID}"
    )
    assert reports["orders"]["tags"] == TAGS
    assert list(reports["orders"]["tags"]) == list(TAGS)  # the configured order
    jobs, paused = settings.mappings[1], settings.mappings[2]
    assert reports["jobs"]["event_source_mapping_arn"] == expected_arn(jobs)
    assert reports["jobs"]["event_source_mapping_arn"].startswith(
        "arn:aws-cn:lambda:cn-north-1:210987654321:event-source-mapping:"
    )
    assert reports["jobs"]["tags"] == {}
    # A disabled mapping keeps its identity: it is configured, only not run.
    assert reports["paused"]["state"] == "disabled"
    assert reports["paused"]["event_source_mapping_arn"] == expected_arn(paused)
    assert reports["paused"]["tags"] == {"env": "prod"}
    assert expected_arn(jobs) != expected_arn(paused)  # the UUID differs by name


def test_text_has_an_identity_line_under_each_mapping(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.status_command(settings) == 0
    text = capsys.readouterr().out
    sources, failures, shards = text.rstrip("\n").split("\n\n")
    lines = sources.splitlines()
    assert lines[0].split() == ["MAPPING", "SOURCE", "STATE", "ERROR"]
    jobs, paused = settings.mappings[1], settings.mappings[2]
    assert lines[1].split() == ["orders", "kinesis", "up"]
    assert lines[2] == (
        f"  arn:aws:lambda:eu-west-1:123456789012:event-source-mapping:{UUID}  "
        "tags: team=payments, cost-center=4711, Équipe=été 2026"
    )
    assert lines[3].split() == ["jobs", "sqs", "up"]
    assert lines[4] == f"  {expected_arn(jobs)}  tags: -"
    assert lines[5].split() == ["paused", "sqs", "disabled"]
    assert lines[6] == f"  {expected_arn(paused)}  tags: env=prod"
    assert len(lines) == 7
    # The other tables are unchanged: one row per mapping, and the stream's shard.
    assert [line.split()[0] for line in failures.splitlines()[1:]] == ["orders", "jobs", "paused"]
    assert "shardId-000000000000" in shards
