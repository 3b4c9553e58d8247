"""The README's AWS CLI walkthrough (section "Control API") run as it is written, command by
command, against a live ``poller run``: create, get until Enabled, update, list, tag, disable,
enable, delete. Records put with the CLI are delivered by the mapping the CLI created.

The AWS CLI v1 lives in the machine's Python, not in the project's environment (it pins
botocore exactly); the test is skipped where ``aws`` is not on PATH. Every command and its
output go to ``.work/control-api-cli.txt``, the transcript the closing note quotes (the
example script's, to ``.work/control-api-cli-script.txt``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import REGION, stream_arn, unique
from tests.support.control_api import (
    SIGV4_KEY,
    control_config,
    control_section,
    python_function,
    sigv4_env,
    start_control_service,
)
from tests.support.process import REPO, Launch
from tests.support.replicas import make_stream
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("aws") is None, reason="the AWS CLI (aws) is not on PATH"),
]

TRANSCRIPT = REPO / ".work" / "control-api-cli.txt"
SCRIPT_TRANSCRIPT = REPO / ".work" / "control-api-cli-script.txt"
FUNCTION = "orders-handler"


class Cli:
    """Runs ``aws`` with the API as endpoint, appending each command and its output to the
    transcript."""

    def __init__(self, endpoint: str, env: dict[str, str], cwd: Path) -> None:
        self.endpoint, self.env, self.cwd = endpoint, env, cwd
        TRANSCRIPT.parent.mkdir(exist_ok=True)
        TRANSCRIPT.write_text(f"# AWS CLI against a live poller run ({endpoint})\n")

    def run(self, *args: str, ok: bool | None = True, quiet: bool = False) -> Any:
        """The command's JSON answer, or its error text; ``ok`` says whether it must succeed
        (None: either)."""
        command = ["aws", *args, f"--endpoint-url={self.endpoint}"]
        done = subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=self.cwd, timeout=60
        )
        if not quiet:
            with TRANSCRIPT.open("a") as out:
                out.write(f"\n$ {' '.join(command)}\n{done.stdout}{done.stderr}")
                out.write(f"[exit {done.returncode}]\n")
        if ok is not None:
            assert (done.returncode == 0) == ok, f"{command}: {done.stdout}{done.stderr}"
        if done.returncode == 0 and done.stdout.strip():
            return json.loads(done.stdout)
        return done.stderr

    def until(self, state: str, uuid: str) -> dict[str, Any]:
        """get-event-source-mapping until State is ``state`` (polls quietly, then shows it)."""

        def reached() -> bool:
            answer = self.run("lambda", "get-event-source-mapping", "--uuid", uuid, quiet=True)
            return bool(answer["State"] == state)

        wait_for(reached, 90, f"State {state}", interval=0.5)
        shown: dict[str, Any] = self.run("lambda", "get-event-source-mapping", "--uuid", uuid)
        return shown


def test_c5_readme_cli_walkthrough(tmp_path: Path, moto_url: str, launch: Launch) -> None:
    stream = unique("orders")
    anyio.run(make_stream, moto_url, stream, 1)
    sink = tmp_path / "sink.jsonl"
    functions = {FUNCTION: python_function("tests.support.file_sink:handler")}
    service = start_control_service(
        launch,
        tmp_path / "poller.yaml",
        lambda port: control_config(
            moto_url,
            control_section(port, sigv4=True, functions=functions),
            checkpoints={"path": str(tmp_path / "c.db")},
        ),
        "run.log",
        {**file_sink.env(sink), **sigv4_env()},
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": SIGV4_KEY[0],
        "AWS_SECRET_ACCESS_KEY": SIGV4_KEY[1],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_PAGER": "",
    }
    cli = Cli(service.url, env, tmp_path)
    arn = stream_arn(stream)

    created = cli.run(
        "lambda", "create-event-source-mapping", "--function-name", FUNCTION,
        "--event-source-arn", arn, "--starting-position", "TRIM_HORIZON",
        "--batch-size", "100", "--tags", "team=payments",
    )  # fmt: skip
    uuid, esm_arn = created["UUID"], created["EventSourceMappingArn"]
    assert created["State"] == "Creating"
    assert cli.until("Enabled", uuid)["BatchSize"] == 100

    put = subprocess.run(
        ["aws", "kinesis", "put-record", "--stream-name", stream, "--partition-key", "k1",
         "--data", "hello", f"--endpoint-url={moto_url}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True,
    )  # fmt: skip
    with TRANSCRIPT.open("a") as out:
        out.write(f"\n$ {' '.join(put.args)}\n{put.stdout}[exit {put.returncode}]\n")
    sequence = json.loads(put.stdout)["SequenceNumber"]
    wait_for(lambda: sequence in {s for _, s in file_sink.delivered(sink)}, 60, "the record")

    updated = cli.run("lambda", "update-event-source-mapping", "--uuid", uuid, "--batch-size", "10")
    assert (updated["State"], updated["BatchSize"]) == ("Updating", 10)
    cli.until("Enabled", uuid)
    listed = cli.run("lambda", "list-event-source-mappings", "--event-source-arn", arn)
    assert [m["UUID"] for m in listed["EventSourceMappings"]] == [uuid]

    cli.run("lambda", "tag-resource", "--resource", esm_arn, "--tags", "owner=ops")
    tags = cli.run("lambda", "list-tags", "--resource", esm_arn)
    assert tags["Tags"] == {"team": "payments", "owner": "ops"}

    disabled = cli.run("lambda", "update-event-source-mapping", "--uuid", uuid, "--no-enabled")
    assert disabled["State"] == "Disabling"
    cli.until("Disabled", uuid)
    enabled = cli.run("lambda", "update-event-source-mapping", "--uuid", uuid, "--enabled")
    assert enabled["State"] == "Enabling"
    cli.until("Enabled", uuid)

    deleted = cli.run("lambda", "delete-event-source-mapping", "--uuid", uuid)
    assert deleted["State"] == "Deleting"
    wait_for(
        lambda: (
            "ResourceNotFoundException"
            in str(
                cli.run("lambda", "get-event-source-mapping", "--uuid", uuid, ok=None, quiet=True)
            )
        ),
        90,
        "the mapping gone",
        interval=0.5,
    )
    missing = cli.run("lambda", "get-event-source-mapping", "--uuid", uuid, ok=False)
    assert "ResourceNotFoundException" in missing
    assert service.proc.proc is not None
    assert service.proc.proc.poll() is None


def test_c5_example_cli_script(tmp_path: Path, moto_url: str, launch: Launch) -> None:
    """``examples/control-api/cli.sh`` (the walkthrough as a script) runs to its end against a
    live service, and the record it puts is delivered by the mapping it created."""
    stream = unique("orders")
    anyio.run(make_stream, moto_url, stream, 1)
    sink = tmp_path / "sink.jsonl"
    functions = {FUNCTION: python_function("tests.support.file_sink:handler")}
    service = start_control_service(
        launch,
        tmp_path / "poller.yaml",
        lambda port: control_config(
            moto_url,
            control_section(port, functions=functions),
            checkpoints={"path": str(tmp_path / "c.db")},
        ),
        "run.log",
        file_sink.env(sink),
    )
    env = {**os.environ, "POLLER_API": service.url, "POLLER_EMULATOR": moto_url, "STREAM": stream}
    script = REPO / "examples" / "control-api" / "cli.sh"
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    SCRIPT_TRANSCRIPT.parent.mkdir(exist_ok=True)
    SCRIPT_TRANSCRIPT.write_text(
        f"# examples/control-api/cli.sh (exit {done.returncode})\n{done.stderr}"
    )
    assert done.returncode == 0, done.stderr
    assert "Deleted:" in done.stderr
    assert len(file_sink.delivered(sink)) == 1
