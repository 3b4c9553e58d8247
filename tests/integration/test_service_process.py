"""The service as a real OS process: SIGKILL crash recovery, SIGTERM drain, and the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import stream_arn, stream_holding, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.process import (
    REPO,
    Launch,
    ServiceProcess,
    assert_graceful_shutdown,
    run_cli,
    write_config,
)
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import queue_arn
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def proc_config(tmp_path: Path, moto_url: str, stream: str, **mapping: Any) -> Path:
    """A configuration with mapping ``proc`` on ``stream``, delivering to the file sink."""
    return write_config(
        tmp_path / "poller.yaml",
        service_config(
            moto_url,
            stream_mapping(
                "proc", stream_arn(stream), "tests.support.file_sink:handler", **mapping
            ),
            checkpoints={"path": str(tmp_path / "checkpoints.db")},
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 20},
        ),
    )


def setup_stream(
    moto_url: str, shards: int, per_shard: int, poison_at: int | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """Create a stream and put ``per_shard`` records into each shard (in the first shard, the
    one at index ``poison_at`` with partition key ``poison``); return what was written."""
    name = unique("proc")
    records = [
        [("poison" if (s, i) == (0, poison_at) else f"k{i}", b"{}") for i in range(per_shard)]
        for s in range(shards)
    ]
    written = anyio.run(stream_holding, moto_url, name, records)
    return name, [pair for shard in written for pair in shard]


def slow_batch_in_flight(
    tmp_path: Path, moto_url: str, launch: Launch, per_shard: int, sleep: float
) -> tuple[ServiceProcess, list[tuple[str, str]], Path]:
    """The service on a one-shard stream of ``per_shard`` records, in batches of ten that
    take ``sleep`` seconds each, caught with its first batch in the handler; returns the
    process, the records written and the sink."""
    stream, written = setup_stream(moto_url, shards=1, per_shard=per_shard)
    sink, started = tmp_path / "sink.jsonl", tmp_path / "started"
    config = proc_config(tmp_path, moto_url, stream, batch_size=10)
    proc = launch(config, "run.log", file_sink.env(sink, sleep=sleep, started=started))
    wait_for(lambda: started.exists() and started.read_text().strip(), 30, "a batch in flight")
    return proc, written, sink


def restart_until_delivered(
    launch: Launch,
    config: Path,
    env: dict[str, str],
    sink: Path,
    written: list[tuple[str, str]],
    limit: float,
) -> None:
    """Start the service again, let it run until every written record is in the sink, then
    stop it with SIGTERM: the exit must be clean."""
    second = launch(config, "run2.log", env)
    wait_for(
        lambda: set(file_sink.delivered(sink)) >= set(written),
        limit,
        "every record after the restart",
    )
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_sigkill_mid_run_loses_nothing(tmp_path: Path, moto_url: str, launch: Launch) -> None:
    """After SIGKILL and restart every record is delivered; duplicates are at most the
    in-flight batch of each shard."""
    stream, written = setup_stream(moto_url, shards=4, per_shard=500)
    sink = tmp_path / "sink.jsonl"
    config = proc_config(tmp_path, moto_url, stream, batch_size=50)
    env = file_sink.env(sink, sleep=0.05)
    first = launch(config, "run1.log", env)
    wait_for(lambda: len(file_sink.delivered(sink)) >= 600, 60, "600 deliveries before the kill")
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    killed_at = len(file_sink.delivered(sink))
    assert killed_at < len(written), "the kill must land mid-run"

    restart_until_delivered(launch, config, env, sink, written, 90)

    got = file_sink.delivered(sink)
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
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """SIGTERM during a slow batch: the batch completes, is checkpointed, and the exit is 0."""
    proc, written, sink = slow_batch_in_flight(tmp_path, moto_url, launch, 30, sleep=2)
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    got = file_sink.delivered(sink)
    assert got == written[: len(got)]
    assert len(got) == 10, "exactly the in-flight batch completed; no new batch was taken"
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        (checkpoint,) = db.execute(
            "SELECT sequence_number FROM checkpoints WHERE mapping = 'proc'"
        ).fetchone()
    assert checkpoint == got[-1][1]
    assert_graceful_shutdown(proc)


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
    result = run_cli("validate", "--config", str(bad))
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
        result = run_cli("validate", "--config", str(path))
        assert result.returncode == 0, (path, result.stderr)


def test_signal_delivered_twice_at_once_still_drains(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """A supervisor that signals the process and its group delivers SIGINT twice in quick
    succession: that is one request, so the in-flight batch still completes, the exit is clean,
    and no KeyboardInterrupt escapes."""
    proc, written, sink = slow_batch_in_flight(tmp_path, moto_url, launch, 20, sleep=1.5)
    proc.signal(signal.SIGINT)
    wait_for(lambda: proc.events("signal.received"), 10, "the first signal handled")
    proc.signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert file_sink.delivered(sink) == written[:10]
    received = proc.events("signal.received")
    assert [e["forced"] for e in received] == [False, False]
    assert proc.events("service.stopped")
    assert "Traceback" not in proc.log_path.read_text()


def test_sigkill_during_retries_loses_nothing(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """A shard retrying a failing record is killed; its checkpoint never passed the record, so
    after a restart (the function fixed) every record is delivered."""

    stream, written = setup_stream(moto_url, shards=2, per_shard=60, poison_at=20)
    sink, flag = tmp_path / "sink.jsonl", tmp_path / "failing"
    flag.write_text("poison records fail while this file exists")
    config = proc_config(tmp_path, moto_url, stream, batch_size=10)
    env = file_sink.env(sink, fail_flag=flag)
    first = launch(config, "run1.log", env)
    wait_for(lambda: len(first.events("batch.failed")) >= 2, 60, "the poison batch retrying")
    first.signal(signal.SIGKILL)
    first.wait()
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        stored = dict(db.execute("SELECT shard_id, sequence_number FROM checkpoints").fetchall())
    poison_shard, poison_seq = written[20]
    assert int(stored.get(poison_shard) or 0) < int(poison_seq), (
        "checkpoint passed the failing record"
    )
    assert (poison_shard, poison_seq) not in file_sink.delivered(sink)

    flag.unlink()
    restart_until_delivered(launch, config, env, sink, written, 60)
    assert set(file_sink.delivered(sink)) == set(written)


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
    result = run_cli("run", "--config", str(config), env=env, timeout=60)
    assert result.returncode == 1
    assert "poller: cannot start: lease table leases-missing" in result.stderr
    assert "credentials" in result.stderr
    assert "Traceback" not in result.stderr


# -- start-up outages ---------------------------------------------------------------------------


def lease_config(tmp_path: Path, moto_url: str, mapping: dict[str, Any], dynamodb_url: str) -> Path:
    """A configuration on the dynamodb (lease) backend whose lease table is at
    ``dynamodb_url``, with ``mapping``, JSON logs and a 20 s drain."""
    return write_config(
        tmp_path / "poller.yaml",
        service_config(
            moto_url,
            mapping,
            checkpoints={"backend": "dynamodb", "table": unique("leases")},
            endpoints={"dynamodb": dynamodb_url},
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 20},
        ),
    )


def readyz_status(proc: ServiceProcess) -> int:
    [listening] = wait_for(lambda: proc.events("observability.listening"), 10, "the endpoint")
    try:
        with urllib.request.urlopen(f"{listening['url']}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def alive(proc: ServiceProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is None


def running_with(proc: ServiceProcess, event: str, count: int, limit: float) -> None:
    """Wait until the running process logged ``event`` ``count`` times; fail if it exits."""
    wait_for(
        lambda: len(proc.events(event)) >= count or not alive(proc), limit, f"{count} x {event}"
    )
    assert alive(proc), proc.log_path.read_text()


# serial: it waits 20 s for two start-up retries of a process that other workers' load on
# 2 cores slows down.
@pytest.mark.serial
def test_lease_table_outage_at_start_up_is_waited_out(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """DescribeTable and Scan fail for 8 s as the service starts: it does not exit; it logs
    the retries and is alive but not ready; once the table answers it starts, delivers every
    record and stops cleanly."""
    stream, written = setup_stream(moto_url, shards=1, per_shard=20)
    sink = tmp_path / "sink.jsonl"
    mapping = stream_mapping("proc", stream_arn(stream), "tests.support.file_sink:handler")
    with FaultProxy(moto_url) as proxy:
        proxy.outage(8, ["DescribeTable", "Scan"])
        proc = launch(
            lease_config(tmp_path, moto_url, mapping, proxy.url), "run.log", file_sink.env(sink)
        )
        running_with(proc, "lease_table.unavailable", 2, 20)
        assert readyz_status(proc) == 503
        wait_for(
            lambda: set(file_sink.delivered(sink)) >= set(written),
            60,
            "every record once the lease table answers",
        )
        assert readyz_status(proc) == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "Traceback" not in proc.log_path.read_text()


@pytest.mark.parametrize("stuck_on", ["queue", "lease_table"])
def test_sigterm_during_start_up_retries_stops_promptly(
    tmp_path: Path, moto_url: str, launch: Launch, stuck_on: str
) -> None:
    """A service retrying start-up (its queue does not exist; its lease table does not answer)
    has nothing in flight: SIGTERM stops it within a couple of seconds, not after the 20 s
    drain timeout, and the exit is clean."""
    if stuck_on == "queue":
        missing = {"name": "jobs", "event_source_arn": queue_arn(unique("missing"))}
        mapping = {**missing, "target": {"type": "python", "handler": "examples.handlers:noop"}}
        config = write_config(
            tmp_path / "poller.yaml",
            service_config(
                moto_url,
                mapping,
                checkpoints={"path": str(tmp_path / "c.db")},
                logging={"format": "json"},
                shutdown={"drain_timeout_seconds": 20},
            ),
        )
        event = "retry.scheduled"
    else:
        mapping = stream_mapping("proc", stream_arn(unique("s")), "examples.handlers:noop")
        config = lease_config(tmp_path, moto_url, mapping, "http://127.0.0.1:9")
        event = "lease_table.unavailable"
    proc = launch(config, "run.log")
    running_with(proc, event, 2, 20)
    proc.signal(signal.SIGTERM)
    began = time.monotonic()
    assert proc.wait(15) == 0
    assert time.monotonic() - began < 3, "stopped only at the drain deadline"
    assert proc.events("service.stopped")
