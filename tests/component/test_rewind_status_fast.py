"""``poller rewind`` on the SQLite backend, in the test's process: the command's real code
(``main``: planning, requests, the unserved apply, the report, exit codes) over a
``SqliteCheckpointStore`` in tmp_path, with the stream a ``FakeStreamApi`` put where the
command builds its ``StreamApi`` (``_stream_api``, the one seam: everything else is real).

Hermetic: no emulator, no network, no subprocess (tests/integration/test_rewind.py runs the
same command as a subprocess against moto and running services).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.operations import rewind
from poller.testing import FakeStreamApi, Put
from poller.types import SHARD_END, Checkpoint
from tests.component.harness import LIMIT
from tests.support.waiting import wait_until

MAPPING = "orders"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
OPEN_A, OPEN_B, ENDED = "shardId-000000000000", "shardId-000000000001", "shardId-000000000002"


def write_config(tmp_path: Path, **mapping_fields: Any) -> Path:
    """A configuration with one Kinesis mapping whose checkpoints are in tmp_path."""
    document = {
        "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"},
        "checkpoints": {"backend": "sqlite", "path": str(tmp_path / "checkpoints.db")},
        "observability": {"host": "127.0.0.1", "port": 0},
        "mappings": [
            {
                "name": MAPPING,
                "event_source_arn": STREAM_ARN,
                "starting_position": "TRIM_HORIZON",
                "target": {"type": "python", "handler": "json:loads"},
                **mapping_fields,
            }
        ],
    }
    path = tmp_path / "poller.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def stream_with_records() -> tuple[FakeStreamApi, dict[str, list[str]]]:
    """Two open shards of three records each; their sequence numbers, per shard."""
    api = FakeStreamApi()
    sequences: dict[str, list[str]] = {}
    for shard in (OPEN_A, OPEN_B):
        api.add_shard(shard)
        raws = api.add_page(shard, [Put("k", f"{shard}-{i}".encode()) for i in range(3)])
        sequences[shard] = [api.sequence_of(raw) for raw in raws]
    return api, sequences


async def store_checkpoints(db: Path, checkpoints: dict[str, Checkpoint]) -> None:
    store = await SqliteCheckpointStore(db).open()
    try:
        for shard, checkpoint in checkpoints.items():
            await store.put(MAPPING, shard, checkpoint)
    finally:
        await store.aclose()


async def stored_checkpoints(db: Path) -> dict[str, Checkpoint]:
    store = await SqliteCheckpointStore(db).open()
    try:
        return dict(await store.get_all(MAPPING))
    finally:
        await store.aclose()


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeStreamApi, dict[str, list[str]]]:
    """The fake stream, served where the command builds its StreamApi."""
    api, sequences = stream_with_records()

    async def fake_stream_api(*_: Any) -> FakeStreamApi:
        return api

    monkeypatch.setattr(rewind, "_stream_api", fake_stream_api)
    return api, sequences


def run_rewind(config: Path, *arguments: str) -> int:
    parser = argparse.ArgumentParser()
    rewind.add_arguments(parser)
    return rewind.main(
        parser.parse_args(["--config", str(config), "--mapping", MAPPING, *arguments])
    )


def caught_up(sequences: dict[str, list[str]]) -> dict[str, Checkpoint]:
    return {shard: Checkpoint(sequence_number=seqs[-1]) for shard, seqs in sequences.items()}


def seed_caught_up(
    tmp_path: Path, stream: tuple[FakeStreamApi, dict[str, list[str]]]
) -> tuple[Path, dict[str, list[str]], dict[str, Checkpoint]]:
    """The config, the stream's sequences, and every shard checkpointed at its last record
    (stored): the start of most tests here."""
    _, sequences = stream
    config = write_config(tmp_path)
    before = caught_up(sequences)
    anyio.run(store_checkpoints, tmp_path / "checkpoints.db", before)
    return config, sequences, before


def test_dry_run_prints_each_shard_current_to_new_and_changes_nothing(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _sequences, before = seed_caught_up(tmp_path, stream)

    assert run_rewind(config, "--to-trim-horizon", "--dry-run") == rewind.EXIT_OK

    out = capsys.readouterr().out
    assert "dry run" in out
    for shard, checkpoint in before.items():
        line = next(line for line in out.splitlines() if shard in line)
        assert f"AFTER_SEQUENCE_NUMBER {checkpoint.sequence_number} -> TRIM_HORIZON" in line
    assert anyio.run(stored_checkpoints, tmp_path / "checkpoints.db") == before


def test_rewind_with_no_service_running_writes_the_new_checkpoints(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, sequences, before = seed_caught_up(tmp_path, stream)

    assert run_rewind(config, "--to-trim-horizon", "--timeout", "0") == rewind.EXIT_OK

    out = capsys.readouterr().out
    for shard in sequences:
        line = next(line for line in out.splitlines() if shard in line)
        assert line.endswith(f"-> TRIM_HORIZON  applied by {rewind.COMMAND}"), line
    after = anyio.run(stored_checkpoints, tmp_path / "checkpoints.db")
    assert set(after) == set(before)
    for shard in sequences:
        assert after[shard] != before[shard], f"{shard} not moved: {after[shard]}"
        assert after[shard].sequence_number != before[shard].sequence_number


def test_to_sequence_moves_only_the_named_shard(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, sequences, before = seed_caught_up(tmp_path, stream)
    again = sequences[OPEN_A][1]

    status = run_rewind(config, "--to-sequence", f"{OPEN_A}={again}", "--timeout", "0")

    output = capsys.readouterr()
    assert status == rewind.EXIT_OK, output.err
    assert f"-> AT_SEQUENCE_NUMBER {again}  applied by {rewind.COMMAND}" in output.out
    after = anyio.run(stored_checkpoints, tmp_path / "checkpoints.db")
    assert after[OPEN_B] == before[OPEN_B]
    assert after[OPEN_A] != before[OPEN_A]
    assert after[OPEN_A].sequence_number == again


def test_to_sequence_past_the_checkpoint_is_refused_without_allow_skip(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, sequences = stream
    config = write_config(tmp_path)
    before = {shard: Checkpoint(sequence_number=seqs[0]) for shard, seqs in sequences.items()}
    anyio.run(store_checkpoints, tmp_path / "checkpoints.db", before)
    forward = f"{OPEN_A}={sequences[OPEN_A][2]}"

    status = run_rewind(config, "--to-sequence", forward, "--timeout", "0")

    assert status == rewind.EXIT_USAGE
    assert "--allow-skip" in capsys.readouterr().err
    assert anyio.run(stored_checkpoints, tmp_path / "checkpoints.db") == before


def test_a_shard_at_shard_end_is_left_alone_and_the_open_ones_move(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    api, sequences = stream
    api.add_shard(ENDED)
    api.close_shard(ENDED)
    config = write_config(tmp_path)
    before = {**caught_up(sequences), ENDED: Checkpoint(sequence_number=SHARD_END)}
    anyio.run(store_checkpoints, tmp_path / "checkpoints.db", before)

    # Without --open-shards-only a resharded stream is refused, and nothing changes.
    assert run_rewind(config, "--to-trim-horizon", "--timeout", "0") == rewind.EXIT_USAGE
    assert "resharded" in capsys.readouterr().err
    assert anyio.run(stored_checkpoints, tmp_path / "checkpoints.db") == before

    assert run_rewind(config, "--to-trim-horizon", "--open-shards-only", "--dry-run") == 0
    dry = capsys.readouterr().out
    assert any(ENDED in line and "left alone" in line for line in dry.splitlines())

    status = run_rewind(config, "--to-trim-horizon", "--open-shards-only", "--timeout", "0")

    assert status == rewind.EXIT_OK, capsys.readouterr().err
    after = anyio.run(stored_checkpoints, tmp_path / "checkpoints.db")
    assert after[ENDED].is_shard_end
    assert all(after[shard] != before[shard] for shard in sequences)


def test_refusals_exit_2(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path)
    # No database yet: the mapping has not run here.
    assert run_rewind(config, "--to-trim-horizon") == rewind.EXIT_USAGE
    assert "no checkpoint database" in capsys.readouterr().err
    assert run_rewind(config, "--to-latest", "--timeout", "-1") == rewind.EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


async def serve_from_this_process(db: Path, replica: str) -> None:
    """A ``services`` row naming this (living) process: a service serves the mapping."""
    store = await SqliteCheckpointStore(db).open()
    try:
        await store.serve(MAPPING, replica)
    finally:
        await store.aclose()


def test_with_a_service_running_the_requests_stay_pending_for_it(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, sequences, before = seed_caught_up(tmp_path, stream)
    anyio.run(serve_from_this_process, tmp_path / "checkpoints.db", "replica-1")

    assert run_rewind(config, "--to-latest", "--dry-run") == rewind.EXIT_OK
    assert "(owner replica-1)" in capsys.readouterr().out

    status = run_rewind(config, "--to-latest", "--timeout", "0")

    assert status == rewind.EXIT_NOT_APPLIED
    output = capsys.readouterr()
    for shard in sequences:
        line = next(line for line in output.out.splitlines() if shard in line)
        assert "NOT APPLIED (owner replica-1): pending" in line
    assert "did not apply" in output.err
    # The service applies them: this command wrote no checkpoint behind its back.
    assert anyio.run(stored_checkpoints, tmp_path / "checkpoints.db") == before


def test_an_unknown_mapping_or_an_sqs_one_is_refused(
    tmp_path: Path, stream: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    parser = argparse.ArgumentParser()
    rewind.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--mapping", "nope", "--to-latest"])
    assert rewind.main(args) == rewind.EXIT_USAGE
    assert "nope" in capsys.readouterr().err

    queue = "arn:aws:sqs:us-east-1:123456789012:orders"
    sqs_config = write_config(tmp_path, event_source_arn=queue)
    document = yaml.safe_load(sqs_config.read_text())
    del document["mappings"][0]["starting_position"]
    sqs_config.write_text(yaml.safe_dump(document))
    assert run_rewind(sqs_config, "--to-latest") == rewind.EXIT_USAGE
    assert "SQS queue" in capsys.readouterr().err


def test_a_shard_that_ends_while_the_request_waits_is_skipped_not_reopened(
    tmp_path: Path,
    stream: tuple[FakeStreamApi, dict[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The service reads OPEN_A to its end and stops while the requests wait for it; the
    command then applies them itself: OPEN_A stays at SHARD_END, OPEN_B moves."""
    _, sequences = stream
    config = write_config(tmp_path)
    db = tmp_path / "checkpoints.db"
    before = caught_up(sequences)
    anyio.run(store_checkpoints, db, before)
    anyio.run(serve_from_this_process, db, "replica-1")

    async def scenario() -> int:
        store = await SqliteCheckpointStore(db).open()
        try:
            async with anyio.create_task_group() as tg:
                result: list[int] = []

                async def command() -> None:
                    args = ("--to-trim-horizon", "--timeout", str(LIMIT))
                    result.append(await anyio.to_thread.run_sync(run_rewind, config, *args))

                tg.start_soon(command)
                await wait_until(
                    lambda: _all_pending(store, set(sequences)), LIMIT, "the requests written"
                )
                await store.put(MAPPING, OPEN_A, Checkpoint(sequence_number=SHARD_END))
                await store.unserve(MAPPING, "replica-1")
            return result[0]
        finally:
            await store.aclose()

    assert anyio.run(scenario) == rewind.EXIT_OK
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if OPEN_A in line)
    assert line.endswith("(SHARD_END): not moved"), line
    after = anyio.run(stored_checkpoints, db)
    assert after[OPEN_A].is_shard_end
    assert after[OPEN_B] != before[OPEN_B]


async def _all_pending(store: SqliteCheckpointStore, shards: set[str]) -> bool:
    return set(await store.pending_rewinds(MAPPING)) == shards
