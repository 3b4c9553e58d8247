"""Hostile review of ``poller replay`` (issue 15): two operators, one state file.

The replay id is a hash of the command, and its progress lives in one SQLite file, so the same
command run twice at once (two terminals, a retried CI job) names the same replay. Its
progress then has two writers: each must not deliver what the other delivers, or the second
must refuse to start. ``poller replay`` runs as the operator runs it (``python -m poller``);
the target is the file sink handler, each batch made slow so that the two runs overlap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.integration.stream_errors_harness import stream_with
from tests.integration.test_replay import write
from tests.support import file_sink
from tests.support.aws import aws_client, put_records, stream_arn, unique
from tests.support.process import REPO, run_cli, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Path]:
    """The file sink's output, named in this process's environment (the commands inherit it)."""
    path = tmp_path / "sink.jsonl"
    saved = os.environ.get("POLLER_TEST_SINK")
    os.environ["POLLER_TEST_SINK"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("POLLER_TEST_SINK", None)
    else:
        os.environ["POLLER_TEST_SINK"] = saved


def start_replay(config: Path, start: float, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "poller", "replay", "--config", str(config), "--mapping", "m"]
    command += ["--from", f"{start:.3f}"]
    slow = {**os.environ, "POLLER_TEST_SLEEP": "0.15"}
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=slow, stdout=out, stderr=subprocess.STDOUT)


async def test_two_replays_with_one_state_file_do_not_deliver_a_record_twice(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    stream = unique("review15twice")
    start = time.time() - 1
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(30)])
    config = write(tmp_path, moto_url, stream, batch_size=2)

    first = start_replay(config, start, tmp_path / "first.log")
    second = start_replay(config, start, tmp_path / "second.log")
    try:
        wait_for(lambda: first.poll() is not None and second.poll() is not None, 60, "both end")
    finally:
        first.kill()
        second.kill()
        first.wait()
        second.wait()

    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    counts = Counter(seq for _, seq in file_sink.delivered(sink))
    assert set(counts) == set(written), logs[-2000:]
    twice = sorted((seq for seq, n in counts.items() if n > 1), key=int)
    assert twice == [], f"{len(twice)} of {len(written)} records delivered twice\n{logs[-2000:]}"


async def run_replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: run_cli("replay", "--config", str(config), "--mapping", "m", *args)
    )


@pytest.mark.parametrize("content", [b"this is not SQLite", b"SQLite format 3\x00" + b"\x01" * 200])
async def test_a_state_file_that_is_not_sqlite_is_refused_and_kept(
    moto_url: str, tmp_path: Path, sink: Path, content: bytes
) -> None:
    """Guard: ``--state`` names a file that is not a replay state (a typo, another tool's file):
    one line naming it, exit 2, nothing delivered, and the file left as it was."""
    stream = unique("review15state")
    start = time.time() - 1
    await stream_with(moto_url, stream, [("k1", b"x")])
    config = write(tmp_path, moto_url, stream)
    state = tmp_path / "precious.bin"
    state.write_bytes(content)

    done = await run_replay(config, "--from", f"{start:.3f}", "--state", str(state))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-1500:]
    assert str(state) in done.stderr
    assert state.read_bytes() == content
    assert file_sink.delivered(sink) == []


async def test_a_replay_on_the_lease_backend_never_touches_the_lease_table(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Guard: with the lease backend configured, a replay neither creates nor reads the lease
    table (it keeps its own progress), so it cannot disturb the running replicas."""
    stream = unique("review15leases")
    start = time.time() - 1
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(3)])
    table = unique("leases")
    raw = service_config(
        moto_url,
        stream_mapping("m", stream_arn(stream), "tests.support.file_sink:handler"),
        checkpoints={"backend": "dynamodb", "table": table},
    )
    config = write_config(tmp_path / "poller.yaml", raw)

    done = await run_replay(config, "--from", f"{start:.3f}")

    assert done.returncode == 0, done.stdout + done.stderr
    assert [seq for _, seq in file_sink.delivered(sink)] == written
    async with aws_client("dynamodb", moto_url) as ddb:
        tables = (await ddb.list_tables())["TableNames"]
    assert table not in tables


async def test_records_written_during_an_open_ended_replay_are_not_replayed(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """``--to`` left out means the first run's start: records written while the replay runs
    are the live service's, not the replay's; the replay ends at that instant."""
    stream = unique("review15during")
    start = time.time() - 1
    before = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(10)])
    config = write(tmp_path, moto_url, stream, batch_size=2)
    proc = start_replay(config, start, tmp_path / "replay.log")
    try:
        await wait_until(lambda: file_sink.delivered(sink), 30, "the replay under way")
        async with aws_client("kinesis", moto_url) as kinesis:
            later = await put_records(kinesis, stream, [(f"late{i}", b"y", None) for i in range(6)])
        await wait_until(lambda: proc.poll() is not None, 30, "the replay to end")
    finally:
        proc.kill()
        proc.wait()

    log = (tmp_path / "replay.log").read_text()
    assert proc.returncode == 0, log[-2000:]
    assert [seq for _, seq in file_sink.delivered(sink)] == before, log[-2000:]
    assert not {seq for _, seq in later} & {seq for _, seq in file_sink.delivered(sink)}


async def test_a_replay_killed_with_sigkill_resumes_without_a_gap(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Guard: SIGKILL (no handler runs, nothing is flushed) after three batches; the same
    command again delivers every record not yet delivered, repeating at most the batch that
    was in flight."""
    stream = unique("review15kill")
    start = time.time() - 1
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(20)])
    config = write(tmp_path, moto_url, stream, batch_size=2)
    proc = start_replay(config, start, tmp_path / "first.log")
    try:
        await wait_until(lambda: len(file_sink.read(str(sink))) >= 3, 30, "three batches")
    finally:
        proc.kill()
        proc.wait()
    first = [seq for _, seq in file_sink.delivered(sink)]
    assert len(first) < len(written)

    done = await run_replay(config, "--from", f"{start:.3f}")

    assert done.returncode == 0, done.stdout + done.stderr
    counts = Counter(seq for _, seq in file_sink.delivered(sink))
    assert set(counts) == set(written)
    repeated = [seq for seq, n in counts.items() if n > 1]
    assert len(repeated) <= 2, repeated
