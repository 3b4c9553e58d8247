"""Hostile review of ``poller status`` (issue 15): ``--json`` read by scripts, a lease table
that does not exist, and a stream with many shards.

A monitoring script runs ``poller status --json | jq``: whatever goes wrong, stdout must be a
JSON document (the exit status says how bad it is), or the script breaks on a parse error
instead of reporting the problem.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from tests.support.aws import aws_client, create_stream, stream_arn, unique
from tests.support.process import run_cli, write_config
from tests.support.service_config import service_config, stream_mapping

pytestmark = pytest.mark.anyio

HANDLER = "tests.support.recorder:record"


async def status_cli(path: Path, *flags: str) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(
        lambda: run_cli("status", "--config", str(path), *flags, timeout=60)
    )
    return done.returncode, done.stdout, done.stderr


async def test_json_output_is_a_json_document_even_when_the_config_does_not_load(
    tmp_path: Path,
) -> None:
    path = tmp_path / "poller.yaml"
    path.write_text("mappings: [\n")

    code, out, err = await status_cli(path, "--json")

    assert code == 2, out + err
    document = json.loads(out)  # raises on an empty or non-JSON stdout
    assert isinstance(document, dict)


async def test_a_lease_table_that_does_not_exist_is_an_error_in_its_place(
    moto_url: str, tmp_path: Path
) -> None:
    """Guard: the configured lease table was never created: exit 1, a JSON document whose
    mapping names the error, the shards still listed, all within the probes' bounds."""
    name = unique("review15status")
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, name, 1)
    raw = service_config(
        moto_url,
        stream_mapping("m", stream_arn(name), HANDLER),
        checkpoints={"backend": "dynamodb", "table": unique("absent")},
    )
    path = write_config(tmp_path / "poller.yaml", raw)
    began = time.monotonic()

    code, out, err = await status_cli(path, "--json")

    assert time.monotonic() - began < 30
    assert code == 1, out + err
    [mapping] = json.loads(out)["mappings"]
    assert mapping["checkpoints_error"], mapping
    assert [row["shard_id"] for row in mapping["shards"]] == ["shardId-000000000000"]


async def test_a_stream_with_many_shards_is_reported_shard_by_shard(
    moto_url: str, tmp_path: Path
) -> None:
    """Guard: 150 shards (more than one probe wave of 16, and more than one ListShards page
    of 100 where the adapter asks for 100): each is listed once with its iterator age."""
    name = unique("review15wide")
    async with aws_client("kinesis", moto_url) as kinesis:
        shards = await create_stream(kinesis, name, 150)
    raw = service_config(
        moto_url,
        stream_mapping("m", stream_arn(name), HANDLER),
        checkpoints={"path": str(tmp_path / "c.db")},
    )
    path = write_config(tmp_path / "poller.yaml", raw)

    code, out, err = await status_cli(path, "--json")

    assert code == 0, out + err
    [mapping] = json.loads(out)["mappings"]
    rows = mapping["shards"]
    assert sorted(row["shard_id"] for row in rows) == sorted(s["ShardId"] for s in shards)
    assert all(row["iterator_error"] is None for row in rows), rows[:3]
