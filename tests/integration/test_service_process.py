"""The service as a real OS process: SIGKILL crash recovery, SIGTERM drain, and the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.process import REPO, ServiceProcess, wait_for, write_config

pytestmark = pytest.mark.slow


def service_config(tmp_path: Path, moto_url: str, stream: str, **mapping: Any) -> Path:
    return write_config(
        tmp_path / "poller.yaml",
        {
            "aws": {"region": "us-east-1", "endpoint_url": moto_url},
            "checkpoints": {"path": str(tmp_path / "checkpoints.db")},
            "observability": {"host": "127.0.0.1", "port": 0},
            "logging": {"format": "json"},
            "shutdown": {"drain_timeout_seconds": 20},
            "mappings": [
                {
                    "name": "proc",
                    "event_source_arn": stream_arn(stream),
                    "starting_position": "TRIM_HORIZON",
                    "target": {"type": "python", "handler": "tests.support.file_sink:handler"},
                    **mapping,
                }
            ],
        },
    )


def setup_stream(moto_url: str, shards: int, per_shard: int) -> tuple[str, list[tuple[str, str]]]:
    """Create a stream and put ``per_shard`` records into each shard; return what was written."""

    async def go() -> tuple[str, list[tuple[str, str]]]:
        name = unique("proc")
        async with aws_client("kinesis", moto_url) as kinesis:
            listing = await create_stream(kinesis, name, shards)
            written: list[tuple[str, str]] = []
            for shard in listing:
                records = ((f"k{i}", b"{}", hash_key_for(shard)) for i in range(per_shard))
                written += await put_records(kinesis, name, records)
        return name, written

    return anyio.run(go)


def delivered(sink: Path) -> list[tuple[str, str]]:
    return [
        (shard, seq) for batch in file_sink.read(str(sink)) for shard, seq, _ in batch["records"]
    ]


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


def test_sigkill_mid_run_loses_nothing(
    tmp_path: Path, moto_url: str, processes: list[ServiceProcess]
) -> None:
    """After SIGKILL and restart every record is delivered; duplicates are at most the
    in-flight batch of each shard."""
    stream, written = setup_stream(moto_url, shards=4, per_shard=500)
    sink = tmp_path / "sink.jsonl"
    config = service_config(tmp_path, moto_url, stream, batch_size=50)
    env = {"POLLER_TEST_SINK": str(sink), "POLLER_TEST_SLEEP": "0.05"}
    first = ServiceProcess(config, tmp_path / "run1.log", env).start()
    processes.append(first)
    wait_for(lambda: len(delivered(sink)) >= 600, 60, "600 deliveries before the kill")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    killed_at = len(delivered(sink))
    assert killed_at < len(written), "the kill must land mid-run"

    second = ServiceProcess(config, tmp_path / "run2.log", env).start()
    processes.append(second)
    wait_for(lambda: set(delivered(sink)) >= set(written), 90, "every record after the restart")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0

    got = delivered(sink)
    assert set(got) == set(written)
    duplicates: dict[str, int] = defaultdict(int)
    for (shard, _), n in Counter(got).items():
        duplicates[shard] += n - 1
    assert all(d <= 50 for d in duplicates.values()), duplicates
    order: dict[str, list[str]] = defaultdict(list)
    for shard, seq in dict.fromkeys(got):  # first delivery of each record
        order[shard].append(seq)
    expected: dict[str, list[str]] = defaultdict(list)
    for shard, seq in written:
        expected[shard].append(seq)
    assert order == expected


def test_sigterm_drains_in_flight_batch_and_checkpoints(
    tmp_path: Path, moto_url: str, processes: list[ServiceProcess]
) -> None:
    """SIGTERM during a slow batch: the batch completes, is checkpointed, and the exit is 0."""
    stream, written = setup_stream(moto_url, shards=1, per_shard=30)
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    config = service_config(tmp_path, moto_url, stream, batch_size=10)
    env = {
        "POLLER_TEST_SINK": str(sink),
        "POLLER_TEST_SLEEP": "2",
        "POLLER_TEST_STARTED": str(started),
    }
    proc = ServiceProcess(config, tmp_path / "run.log", env).start()
    processes.append(proc)
    wait_for(lambda: started.exists() and started.read_text().strip(), 30, "a batch in flight")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    got = delivered(sink)
    assert got == written[: len(got)]
    assert len(got) == 10, "exactly the in-flight batch completed; no new batch was taken"
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        (checkpoint,) = db.execute(
            "SELECT sequence_number FROM checkpoints WHERE mapping = 'proc'"
        ).fetchone()
    assert checkpoint == got[-1][1]
    events = [line["event"] for line in proc.logs()]
    for step in (
        "signal.received",
        "shutdown.intake_stopped",
        "shutdown.drained",
        "service.stopped",
    ):
        assert step in events, f"{step} missing from {events}"
    assert events.index("shutdown.drained") < events.index("service.stopped")


def test_validate_rejects_bad_config_without_traceback(tmp_path: Path) -> None:
    """`poller validate` exits 2 and names the field, value and range; no traceback."""
    bad = write_config(
        tmp_path / "bad.yaml",
        {
            "mappings": [
                {
                    "name": "orders",
                    "event_source_arn": stream_arn("s"),
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 20000,
                    "target": {"type": "python", "handler": "examples.handlers:log_batch"},
                }
            ]
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "poller", "validate", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "batch_size" in result.stderr
    assert "20000" in result.stderr
    assert "10000" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_accepts_shipped_configs() -> None:
    """Every example configuration in config/ validates."""
    shipped = sorted((REPO / "config").glob("*.yaml"))
    assert {p.name for p in shipped} >= {
        "embedded.yaml",
        "example-aws.yaml",
        "example-localstack.yaml",
    }
    for path in shipped:
        result = subprocess.run(
            [sys.executable, "-m", "poller", "validate", "--config", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (path, result.stderr)


def test_signal_delivered_twice_at_once_still_drains(
    tmp_path: Path, moto_url: str, processes: list[ServiceProcess]
) -> None:
    """A supervisor that signals the process and its group delivers SIGINT twice in quick
    succession: that is one request, so the in-flight batch still completes, the exit is clean,
    and no KeyboardInterrupt escapes."""
    stream, written = setup_stream(moto_url, shards=1, per_shard=20)
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    config = service_config(tmp_path, moto_url, stream, batch_size=10)
    env = {
        "POLLER_TEST_SINK": str(sink),
        "POLLER_TEST_SLEEP": "1.5",
        "POLLER_TEST_STARTED": str(started),
    }
    proc = ServiceProcess(config, tmp_path / "run.log", env).start()
    processes.append(proc)
    wait_for(lambda: started.exists() and started.read_text().strip(), 30, "a batch in flight")
    proc.signal(signal.SIGINT)
    wait_for(lambda: proc.events("signal.received"), 10, "the first signal handled")
    proc.signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert delivered(sink) == written[:10]
    received = proc.events("signal.received")
    assert [e["forced"] for e in received] == [False, False]
    assert proc.events("service.stopped")
    assert "Traceback" not in proc.log_path.read_text()


def test_sigkill_during_retries_loses_nothing(
    tmp_path: Path, moto_url: str, processes: list[ServiceProcess]
) -> None:
    """A shard retrying a failing record is killed; its checkpoint never passed the record, so
    after a restart (the function fixed) every record is delivered."""

    async def put() -> tuple[str, list[tuple[str, str]]]:
        name = unique("kill")
        async with aws_client("kinesis", moto_url) as kinesis:
            shards = await create_stream(kinesis, name, 2)
            written: list[tuple[str, str]] = []
            for s, shard in enumerate(shards):
                keys = [("poison" if s == 0 and i == 20 else f"k{i}") for i in range(60)]
                written += await put_records(
                    kinesis, name, ((k, b"{}", hash_key_for(shard)) for k in keys)
                )
        return name, written

    stream, written = anyio.run(put)
    sink, flag = tmp_path / "sink.jsonl", tmp_path / "failing"
    flag.write_text("poison records fail while this file exists")
    config = service_config(tmp_path, moto_url, stream, batch_size=10)
    env = {"POLLER_TEST_SINK": str(sink), "POLLER_TEST_FAIL_FLAG": str(flag)}
    first = ServiceProcess(config, tmp_path / "run1.log", env).start()
    processes.append(first)
    wait_for(lambda: len(first.events("batch.failed")) >= 2, 60, "the poison batch retrying")
    first.signal(signal.SIGKILL)
    first.wait()
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        stored = dict(db.execute("SELECT shard_id, sequence_number FROM checkpoints").fetchall())
    poison_shard, poison_seq = written[20]
    assert int(stored.get(poison_shard) or 0) < int(poison_seq), (
        "checkpoint passed the failing record"
    )
    assert (poison_shard, poison_seq) not in delivered(sink)

    flag.unlink()
    second = ServiceProcess(config, tmp_path / "run2.log", env).start()
    processes.append(second)
    wait_for(lambda: set(delivered(sink)) >= set(written), 60, "every record after the restart")
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    assert set(delivered(sink)) == set(written)


def test_unreachable_dependency_at_startup_is_one_clear_line(tmp_path: Path) -> None:
    """No credentials for the lease table: exit 1 with one line naming the table and the cause."""
    config = write_config(
        tmp_path / "nocreds.yaml",
        {
            "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"},
            "checkpoints": {"backend": "dynamodb", "table": "leases-missing"},
            "observability": {"enabled": False},
            "mappings": [
                {
                    "name": "m",
                    "event_source_arn": stream_arn("s"),
                    "starting_position": "TRIM_HORIZON",
                    "target": {"type": "python", "handler": "examples.handlers:noop"},
                }
            ],
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    result = subprocess.run(
        [sys.executable, "-m", "poller", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "poller: cannot start: lease table leases-missing" in result.stderr
    assert "credentials" in result.stderr
    assert "Traceback" not in result.stderr
