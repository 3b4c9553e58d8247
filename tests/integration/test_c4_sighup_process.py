"""SIGHUP on a real ``poller run`` process: the file's mappings apply without a restart.

The service reads a one-shard Kinesis stream on moto and delivers to the file sink. Its
file's ``batch_size`` is changed and SIGHUP sent: the mapping drains and restarts with the new
size, and across the change every record is delivered exactly once, in shard order. A file
that no longer validates is refused and the service runs on.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import aws_client, put_records, stream_arn, stream_holding, unique
from tests.support.process import Launch, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def document(tmp_path: Path, moto_url: str, stream: str, batch_size: Any) -> dict[str, Any]:
    return service_config(
        moto_url,
        stream_mapping(
            "proc",
            stream_arn(stream),
            "tests.support.file_sink:handler",
            batch_size=batch_size,
            maximum_batching_window_in_seconds=0,
        ),
        checkpoints={"path": str(tmp_path / "checkpoints.db")},
        logging={"format": "json"},
    )


async def put_more(moto_url: str, stream: str, count: int) -> list[tuple[str, str]]:
    async with aws_client("kinesis", moto_url) as kinesis:
        return await put_records(kinesis, stream, ((f"n{i}", b"{}", None) for i in range(count)))


def test_sighup_applies_a_new_batch_size_with_no_loss_and_refuses_a_bad_file(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    stream = unique("hup")
    [written] = anyio.run(stream_holding, moto_url, stream, [[(f"k{i}", b"{}") for i in range(40)]])
    sink, path = tmp_path / "sink.jsonl", tmp_path / "poller.yaml"
    write_config(path, document(tmp_path, moto_url, stream, 10))
    proc = launch(path, "run.log", file_sink.env(sink))
    proc.wait_ready()
    wait_for(lambda: len(file_sink.delivered(sink)) >= 40, 60, "the first records")
    before = len(file_sink.read(str(sink)))

    write_config(path, document(tmp_path, moto_url, stream, 3))
    proc.signal(signal.SIGHUP)
    wait_for(lambda: len(proc.events("mapping.applied")) >= 2, 30, "the mapping restarted")
    written += anyio.run(put_more, moto_url, stream, 12)
    wait_for(lambda: len(file_sink.delivered(sink)) >= 52, 60, "the records put after")

    write_config(path, document(tmp_path, moto_url, stream, "many"))
    proc.signal(signal.SIGHUP)
    wait_for(lambda: proc.events("config.reload_failed"), 30, "the bad file refused")
    written += anyio.run(put_more, moto_url, stream, 5)
    wait_for(lambda: len(file_sink.delivered(sink)) >= 57, 60, "delivery goes on")

    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert file_sink.delivered(sink) == written  # exactly once, in shard order
    batches = file_sink.read(str(sink))
    assert all(len(batch["records"]) <= 10 for batch in batches[:before])
    assert all(len(batch["records"]) <= 3 for batch in batches[before:])
    assert [e["then"] for e in proc.events("mapping.drained")] == ["restart"]
    assert len(proc.events("mapping.applied")) == 2
    assert "Traceback" not in proc.log_path.read_text()
