"""Terraform's ``aws_lambda_event_source_mapping`` against a live ``poller run``: the example
``examples/control-api/main.tf`` (a Kinesis and an SQS mapping) applied, changed, planned for
drift, and destroyed.

The AWS provider (hashicorp/aws) is installed offline from the filesystem mirror at
``/opt/tf-plugins``; the test is skipped where ``terraform`` or the mirror is missing. The
provider signs with SigV4 through the AWS SDK for Go, so this also proves the API's signature
check against a third SDK. Every command's output, and the AWS operations the provider called
(from its debug log), go to ``.work/control-api-terraform.txt`` for the closing note.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import botocore.session
import pytest
from botocore.exceptions import ClientError

from tests.support import file_sink
from tests.support.aws import CREDENTIALS, REGION, stream_arn, unique
from tests.support.control_api import (
    SIGV4_KEY,
    control_config,
    control_section,
    error_code,
    python_function,
    sigv4_env,
    start_control_service,
    wait_state,
)
from tests.support.process import REPO, Launch
from tests.support.replicas import make_stream
from tests.support.sqs import queue_arn

MIRROR = Path("/opt/tf-plugins")
EXAMPLE = REPO / "examples" / "control-api" / "main.tf"
TRANSCRIPT = REPO / ".work" / "control-api-terraform.txt"
FUNCTION = "orders-handler"

# serial (scripts/test runs it after the parallel workers, alone): each Terraform command
# starts the AWS provider, a 700 MB binary, and the provider's own timeouts (its waiters poll
# every few seconds) are easily outlasted on 2 cores shared with parallel workers.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH"),
    pytest.mark.skipif(
        not (MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir(),
        reason=f"no offline mirror of the hashicorp/aws provider at {MIRROR}",
    ),
]


class Terraform:
    """Runs ``terraform`` in a working directory of its own, offline, logging each command
    and its output to the transcript."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        cli_config = workdir / "terraform.rc"
        mirror = f'  filesystem_mirror {{\n    path = "{MIRROR}"\n  }}\n'
        cli_config.write_text(f"provider_installation {{\n{mirror}}}\n")
        self.debug_log = workdir / "terraform-debug.log"
        self.env = {
            **os.environ,
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_DATA_DIR": str(workdir / ".terraform"),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_LOG": "DEBUG",
            "TF_LOG_PATH": str(self.debug_log),
        }
        TRANSCRIPT.parent.mkdir(exist_ok=True)
        TRANSCRIPT.write_text(
            "# Terraform (hashicorp/aws from the offline mirror) against poller\n"
        )

    def run(self, *args: str, expect: int = 0) -> str:
        command = ["terraform", *args, "-no-color"]
        done = subprocess.run(
            command,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        with TRANSCRIPT.open("a") as out:
            out.write(f"\n$ {' '.join(command)}\n{done.stdout}{done.stderr}")
            out.write(f"[exit {done.returncode}]\n")
        assert done.returncode == expect, (
            f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def operations(self) -> list[str]:
        """The AWS operations the provider called, from its debug log, in first-call order."""
        text = self.debug_log.read_text(errors="replace") if self.debug_log.exists() else ""
        found = re.findall(r'rpc\.method"?[=:]\s*"?([A-Za-z0-9]+)', text)
        return list(dict.fromkeys(found))


def _moto_client(service: str, moto_url: str) -> Any:
    return botocore.session.get_session().create_client(
        service, region_name=REGION, endpoint_url=moto_url, **CREDENTIALS
    )


def _get(client: Any, uuid: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = client.get_event_source_mapping(UUID=uuid)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return answer


def test_c5_terraform_apply_change_plan_destroy(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """apply creates a Kinesis and an SQS mapping with their tags; a changed ``batch_size`` is
    applied in place; a plan right after shows no drift on either (exit 0); destroy deletes
    both (404)."""
    stream = unique("orders")
    anyio.run(make_stream, moto_url, stream, 1)
    queue = unique("orders-queue")
    _moto_client("sqs", moto_url).create_queue(QueueName=queue)
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
        {**file_sink.env(tmp_path / "sink.jsonl"), **sigv4_env()},
    )
    client = service.client()
    workdir = tmp_path / "tf"
    workdir.mkdir()
    shutil.copy(EXAMPLE, workdir / "main.tf")
    terraform = Terraform(workdir)
    variables = [
        f"-var=endpoint={service.url}",
        f"-var=access_key={SIGV4_KEY[0]}",
        f"-var=secret_key={SIGV4_KEY[1]}",
        f"-var=event_source_arn={stream_arn(stream)}",
        f"-var=function_name={FUNCTION}",
        f"-var=queue_arn={queue_arn(queue)}",
    ]
    try:
        terraform.run("init", "-input=false")
        terraform.run("apply", "-auto-approve", *variables)
        outputs = json.loads(terraform.run("output", "-json"))
        uuid, queue_uuid = outputs["uuid"]["value"], outputs["queue_uuid"]["value"]
        created = wait_state(client, uuid, "Enabled")
        assert (created["BatchSize"], created["EventSourceArn"]) == (100, stream_arn(stream))
        on_queue = wait_state(client, queue_uuid, "Enabled")
        assert (on_queue["BatchSize"], on_queue["EventSourceArn"]) == (10, queue_arn(queue))
        for made in (created, on_queue):
            tags = client.list_tags(Resource=made["EventSourceMappingArn"])["Tags"]
            assert tags == {"team": "payments"}

        terraform.run("apply", "-auto-approve", *variables, "-var=batch_size=10")
        changed = wait_state(client, uuid, "Enabled")
        assert (changed["UUID"], changed["BatchSize"]) == (uuid, 10)
        terraform.run("plan", "-detailed-exitcode", *variables, "-var=batch_size=10")

        terraform.run("destroy", "-auto-approve", *variables, "-var=batch_size=10")
        assert _get(client, uuid) is None
        assert _get(client, queue_uuid) is None
    finally:
        with TRANSCRIPT.open("a") as out:
            out.write(f"\n# AWS operations the provider called: {terraform.operations()}\n")
            out.write(f"# region {REGION}; audit lines: {len(service.audit())}\n")
