"""The container image's entrypoint, and the deployment files, checked without a Docker engine.

No image can be built here, so the image's contract is checked piece by piece:

* **A fresh install runs the image's command.** The project is built into a wheel, the way the
  Dockerfile's build stage builds it, and installed with ``--no-deps`` into a new virtual
  environment. That environment gets the dependencies by a ``.pth`` line naming the project
  venv's site-packages (a directory named in a ``.pth`` file is put on ``sys.path`` but its own
  ``.pth`` files are not read, so the project's editable install of poller stays invisible).
  What this proves: the wheel holds every module and the ``poller`` console script, and the
  dependencies it declares are satisfied (``pip check``). What it does not: that PyPI resolves
  the same versions at image build time. The wheel is built offline
  (``--no-build-isolation --no-index``) from a copy of the sources, so nothing is downloaded and
  no ``build/`` directory is written into the work tree.
* **The Dockerfile says what the docs say.** Its ENTRYPOINT, CMD, HEALTHCHECK, USER and
  STOPSIGNAL lines appear verbatim in deploy/README.md, the HEALTHCHECK command is the ECS
  health check, and it is run against a local HTTP server.
* **The deployment files hold together.** Alert rules and dashboard queries parse as PromQL and
  name only poller's metrics; the ECS JSON is valid input for botocore's RegisterTaskDefinition
  and CreateService models; stopTimeout exceeds the drain timeout; the IAM policies grant no
  ``"Resource": "*"`` where an ARN is possible; every ``${VAR}`` the baked config needs is set.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.session
import promql_parser
import pytest
import yaml
from botocore.validate import ParamValidator
from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

from poller.checkpoints.dynamodb.items import VIEW_ATTRIBUTES, VIEW_INDEX
from poller.config import ShutdownSettings, load_settings
from poller.config.models.service import DEFAULT_METRICS_PORT
from poller.observability.metrics.catalog import METRICS, Kind

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
ECS_CONFIG = DEPLOY / "config" / "poller.ecs.yaml"
LOCALSTACK_CONFIG = DEPLOY / "config" / "poller.localstack.yaml"
TASK_DEFINITION = DEPLOY / "ecs" / "task-definition.json"
SERVICE = DEPLOY / "ecs" / "service.json"
IAM_POLICY = DEPLOY / "iam" / "task-role-policy.json"
TEMPLATE = DEPLOY / "cloudformation" / "poller.yaml"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
SCRAPE = DEPLOY / "prometheus" / "scrape-config.yaml"
DASHBOARD = DEPLOY / "grafana" / "poller-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"
IMAGE_CONFIG_PATH = "/etc/poller/poller.yaml"
IMAGE_UID = "10001"

#: The series poller's hooks feed, from the metric table itself, so that a new metric is known
#: here the moment it is declared. Histograms add _bucket/_sum/_count.
POLLER_METRICS = frozenset(spec.name for spec in METRICS)
HISTOGRAMS = frozenset(spec.name for spec in METRICS if spec.kind is Kind.HISTOGRAM)
#: Series that are not poller's: Prometheus's own, and the CloudWatch exporter's queue depth.
OTHER_METRICS = {"up", "aws_sqs_approximate_number_of_messages_visible_average"}

#: IAM actions with no resource-level permissions, for which "*" is the only possible Resource.
NO_RESOURCE_LEVEL_ACTIONS = {
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
}

#: What the task role needs (/work/shared/reference/aws-esm.md and the README), by statement.
REQUIRED_ACTIONS = {
    "SourceKinesisRead": {
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    },
    "SourceDynamoDBStreamsRead": {
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
    },
    # The *Batch variants are authorized by these actions; IAM has no separate names for them.
    "SourceSqsConsume": {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
    },
    # Oversized messages of a FIFO queue with a redrive policy, moved by poller (send_copy).
    "SourceSqsDeadLetterMove": {"sqs:SendMessage", "sqs:GetQueueUrl"},
    "TargetLambdaInvoke": {"lambda:InvokeFunction"},
    "OnFailureDestinationSqs": {"sqs:SendMessage", "sqs:GetQueueUrl"},
    "OnFailureDestinationSns": {"sns:Publish"},
    "OnFailureDestinationS3": {"s3:PutObject"},
    "LeaseTable": {
        "dynamodb:BatchGetItem",
        "dynamodb:CreateTable",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Scan",
        "dynamodb:Query",
    },
    "ControlApiSecret": {"secretsmanager:GetSecretValue"},
}

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


# ------------------------------------------------------------------------------ Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    @property
    def line(self) -> str:
        return f"{self.keyword} {self.args}"


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """The Dockerfile's instructions by build stage, continuation lines joined, comments dropped."""
    stages: list[list[Instruction]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # blank lines and comments, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def runtime_stage() -> dict[str, Instruction]:
    """The last stage's instructions by keyword (the last of a keyword wins, as in Docker)."""
    return {i.keyword: i for i in dockerfile_stages(DOCKERFILE.read_text())[-1]}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    assert all(isinstance(item, str) for item in value)
    return value


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and its exec-form command."""
    args = runtime_stage()["HEALTHCHECK"].args
    options_text, _, command = args.partition(" CMD ")
    options = dict(option.removeprefix("--").split("=", 1) for option in options_text.split())
    return options, exec_form(command)


def image_command() -> list[str]:
    stage = runtime_stage()
    return exec_form(stage["ENTRYPOINT"].args) + exec_form(stage["CMD"].args)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching pattern wins)."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerfile_stages_are_pinned_and_runtime_has_no_build_tools() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) == 2, "a build stage and a runtime stage"
    for stage in stages:
        image = stage[0].args.split()[0]
        assert image == "python:3.11-slim-bookworm", image
    runtime = " ".join(i.line for i in stages[-1])
    for tool in ("apt-get", "gcc", "build-essential", "curl"):
        assert tool not in runtime
    # The wheels come in through bind mounts, so no layer of the image holds them.
    assert "COPY --from" not in runtime
    assert "--mount=type=bind,from=build" in runtime


def test_dockerfile_contract_lines() -> None:
    stage = runtime_stage()
    assert exec_form(stage["ENTRYPOINT"].args) == ["poller"]
    assert exec_form(stage["CMD"].args) == ["run", "--config", IMAGE_CONFIG_PATH]
    assert stage["USER"].args == f"{IMAGE_UID}:{IMAGE_UID}"
    assert stage["STOPSIGNAL"].args == "SIGTERM"
    assert stage["EXPOSE"].args == str(DEFAULT_METRICS_PORT)
    assert stage["VOLUME"].args == '["/var/lib/poller"]'
    env = " ".join(
        i.args for i in dockerfile_stages(DOCKERFILE.read_text())[-1] if i.keyword == "ENV"
    )
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    options, command = healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert f"'{DEFAULT_METRICS_PORT}'" in command[2]
    assert options["retries"] == "3"
    # urlopen gives up before Docker's own timeout kills the check.
    assert "timeout=4" in command[2]
    assert options["timeout"] == "5s"


def test_readme_shows_the_dockerfile_contract_verbatim() -> None:
    readme = (DEPLOY / "README.md").read_text()
    code = "\n".join(re.findall(r"```dockerfile\n(.*?)```", readme, flags=re.DOTALL))
    documented = {Instruction(*line.split(" ", 1)).line for line in code.splitlines() if line}
    stage = runtime_stage()
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK", "USER", "STOPSIGNAL"):
        assert stage[keyword].line in documented, f"deploy/README.md lacks: {stage[keyword].line}"


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source  # COPY's last argument is the destination; every one before it a source.
        for stage in dockerfile_stages(DOCKERFILE.read_text())
        for i in stage
        if i.keyword == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context?"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    for private in (".git/config", ".venv/bin/python", "tests/conftest.py", ".work/x.db"):
        assert dockerignored(private, patterns), f"{private} would enter the build context"
    assert dockerignored("poller/__pycache__/cli.cpython-311.pyc", patterns)


# ------------------------------------------------------------------------------ a fresh install


@dataclass(frozen=True)
class FreshInstall:
    venv: Path
    bin: Path
    wheel: Path
    workdir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a container: no POLLER_/ESM_ variables, no PYTHONPATH."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith(("POLLER_", "ESM_", "PYTHON"))
        }
        path = f"{self.bin}{os.pathsep}{keep.get('PATH', os.defpath)}"
        return {**keep, "PATH": path, "PYTHONUNBUFFERED": "1", **extra}

    def run(
        self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the image would: its first word looked up in the venv's bin."""
        executable = shutil.which(argv[0], path=str(self.bin))
        assert executable is not None, f"{argv[0]} is not installed in {self.bin}"
        return subprocess.run(
            [executable, *argv[1:]],
            cwd=self.workdir,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _copy_sources(destination: Path) -> None:
    """What the Dockerfile's build stage copies: pyproject.toml, README.md and the package."""
    destination.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", destination)
    shutil.copy2(ROOT / "README.md", destination)
    shutil.copytree(
        ROOT / "poller", destination / "poller", ignore=shutil.ignore_patterns("__pycache__")
    )


def _pip(*args: str | Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    base = tmp_path_factory.mktemp("fresh-install")
    _copy_sources(base / "src")
    wheels = base / "wheels"
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, base / "src")
    (wheel,) = wheels.glob("poller-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    _pip("--python", python, "install", "--no-index", "--no-deps", wheel)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    project_paths = dict.fromkeys(
        [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    (Path(site) / "_project_dependencies.pth").write_text("\n".join(project_paths) + "\n")
    workdir = base / "work"
    workdir.mkdir()
    return FreshInstall(venv=venv, bin=venv / "bin", wheel=wheel, workdir=workdir)


def test_fresh_install_imports_poller_from_the_wheel(fresh: FreshInstall) -> None:
    result = fresh.run(["python", "-c", "import poller; print(poller.__file__)"])
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(fresh.venv), result.stdout
    # Every module of the source tree is in the wheel (a package missing from
    # [tool.setuptools.packages.find] would fail only in the image).
    installed = Path(result.stdout.strip()).parent
    sources = {p.relative_to(ROOT / "poller") for p in (ROOT / "poller").rglob("*.py")}
    missing = {p for p in sources if not (installed / p).exists()}
    assert not missing, f"not in the wheel: {sorted(map(str, missing))}"


def test_fresh_install_dependencies_are_satisfied(fresh: FreshInstall) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", fresh.bin / "python", "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_prints_the_version(fresh: FreshInstall) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = fresh.run([exec_form(runtime_stage()["ENTRYPOINT"].args)[0], "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"poller {version}"


def test_entrypoint_validates_the_localstack_config(fresh: FreshInstall) -> None:
    result = fresh.run(
        ["poller", "validate", "--config", str(LOCALSTACK_CONFIG)],
        env=fresh.env(**compose_environment()),
    )
    assert result.returncode == 0, result.stderr
    assert "valid (1 mapping(s): orders)" in result.stdout


def test_image_command_with_an_invalid_config_exits_2_with_one_line_per_problem(
    fresh: FreshInstall,
) -> None:
    bad = fresh.workdir / "bad.yaml"
    bad.write_text(
        "mappings:\n"
        "  - name: orders\n"
        "    event_source_arn: arn:aws:kinesis:us-east-1:123456789012:stream/orders\n"
        "    starting_position: LATEST\n"
        "    batch_size: 20000\n"
        "    target: {type: lambda, function_name: process-orders}\n"
    )
    command = [str(bad) if arg == IMAGE_CONFIG_PATH else arg for arg in image_command()]
    assert command != image_command(), "the CMD no longer names /etc/poller/poller.yaml"
    result = fresh.run(command)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"poller: invalid configuration in {bad}:")
    assert "  - mappings[0] (orders).batch_size: 20000 is out of range" in result.stderr
    assert "Traceback" not in result.stderr


def test_image_command_with_the_baked_config_and_no_environment_names_what_is_missing(
    fresh: FreshInstall,
) -> None:
    """The image's default CMD, started with no task environment, fails fast and says why."""
    command = [str(ECS_CONFIG) if arg == IMAGE_CONFIG_PATH else arg for arg in image_command()]
    result = fresh.run(command)
    assert result.returncode == 2, result.stdout + result.stderr
    for variable in required_variables(ECS_CONFIG):
        assert f"environment variable {variable} is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_image_command_runs_the_service_and_drains_on_sigterm(fresh: FreshInstall) -> None:
    """The image's CMD form against the embedded emulator: ready, then SIGTERM, then exit 0."""
    (fresh.workdir / "entry_handlers.py").write_text(
        "def handle(event, context):\n    return None\n"
    )
    config = fresh.workdir / "embedded.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "embedded": {
                    "enabled": True,
                    "shard_count": 1,
                    "traffic": {"records_per_second": 20},
                },
                "checkpoints": {"path": str(fresh.workdir / "checkpoints.db")},
                "logging": {"format": "json"},
                "observability": {"port": 0},
                "mappings": [
                    {
                        "name": "entry",
                        "event_source_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/entry",
                        "starting_position": "TRIM_HORIZON",
                        "target": {"type": "python", "handler": "entry_handlers:handle"},
                    }
                ],
            }
        )
    )
    command = [str(config) if arg == IMAGE_CONFIG_PATH else arg for arg in image_command()]
    executable = shutil.which(command[0], path=str(fresh.bin))
    assert executable is not None
    log = fresh.workdir / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable, *command[1:]],
            cwd=fresh.workdir,
            env=fresh.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_event(log, proc, "batch.processed", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = [line.get("event") for line in _json_lines(log)]
    assert "shutdown.requested" in events
    assert events[-1] == "service.stopped", events[-5:]


def _json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


def _wait_for_event(log: Path, proc: subprocess.Popen[bytes], event: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.get("event") == event for line in _json_lines(log)):
            return
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"no {event} within {timeout}s:\n{log.read_text()}")


# ------------------------------------------------------------------------------ the health check


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        body = b"ok\n" if code == 200 else b"unhealthy\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Health", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (500, False)])
def test_healthcheck_command_follows_healthz(
    fresh: FreshInstall,
    health_server: tuple[ThreadingHTTPServer, type[_Health]],
    status: int,
    healthy: bool,
) -> None:
    server, handler = health_server
    handler.status = status
    _, command = healthcheck()
    port = str(server.server_address[1])
    result = fresh.run(command, env=fresh.env(POLLER_OBSERVABILITY__PORT=port), timeout=30)
    assert (result.returncode == 0) is healthy, (result.returncode, result.stderr)


def test_healthcheck_command_fails_when_nothing_listens(fresh: FreshInstall) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = str(server.server_address[1])
    server.server_close()  # the port is free now: connections are refused
    _, command = healthcheck()
    result = fresh.run(command, env=fresh.env(POLLER_OBSERVABILITY__PORT=port), timeout=30)
    assert result.returncode != 0


def test_healthcheck_is_the_same_in_the_image_the_task_definition_and_the_template() -> None:
    options, command = healthcheck()
    ecs = container()["healthCheck"]
    assert ecs["command"] == ["CMD", *command]
    cfn = cfn_container()["HealthCheck"]
    assert cfn["Command"] == ["CMD", *command]
    for check in (ecs, {k[0].lower() + k[1:]: v for k, v in cfn.items()}):
        assert f"{check['interval']}s" == options["interval"]
        assert f"{check['timeout']}s" == options["timeout"]
        assert str(check["retries"]) == options["retries"]
        assert f"{check['startPeriod']}s" == options["start-period"]


# ------------------------------------------------------------------------------ ECS


def container() -> dict[str, Any]:
    (definition,) = json.loads(TASK_DEFINITION.read_text())["containerDefinitions"]
    assert isinstance(definition, dict)
    return definition


def task_environment() -> dict[str, str]:
    return {item["name"]: item["value"] for item in container()["environment"]}


def compose_environment() -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE.read_text())
    return {str(k): str(v) for k, v in compose["services"]["poller"]["environment"].items()}


def required_variables(config: Path) -> set[str]:
    """The ``${VAR}`` references without a default in a config's values (not its comments)."""

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    return {
        name
        for text in strings(yaml.safe_load(config.read_text()))
        for name, default in _REFERENCE.findall(text)
        if not default
    }


def drain_timeout(config: Path, environment: dict[str, str]) -> float:
    """shutdown.drain_timeout_seconds as the service would see it: override, file, or default."""
    override = environment.get("POLLER_SHUTDOWN__DRAIN_TIMEOUT_SECONDS")
    section = yaml.safe_load(config.read_text()).get("shutdown") or {}
    if override is not None:
        section = {**section, "drain_timeout_seconds": yaml.safe_load(override)}
    return ShutdownSettings.model_validate(section).drain_timeout_seconds


def _botocore_problems(document: dict[str, Any], service: str, operation: str) -> str:
    model = botocore.session.get_session().get_service_model(service)
    report = ParamValidator().validate(document, model.operation_model(operation).input_shape)
    return report.generate_report() if report.has_errors() else ""


def test_task_definition_is_valid_register_task_definition_input() -> None:
    document = json.loads(TASK_DEFINITION.read_text())
    assert _botocore_problems(document, "ecs", "RegisterTaskDefinition") == ""
    assert document["requiresCompatibilities"] == ["FARGATE"]
    assert document["networkMode"] == "awsvpc"
    assert document["taskRoleArn"].startswith("arn:aws:iam::")
    assert document["executionRoleArn"].startswith("arn:aws:iam::")


def test_task_definition_stop_timeout_exceeds_the_drain_timeout() -> None:
    definition = container()
    drain = drain_timeout(ECS_CONFIG, task_environment())
    # ECS sends SIGKILL stopTimeout seconds after SIGTERM; keep 10 s for closing and leases.
    assert definition["stopTimeout"] >= drain + 10, (definition["stopTimeout"], drain)
    assert definition["stopTimeout"] <= 120, "Fargate's maximum"


def test_task_definition_container_settings() -> None:
    definition = container()
    assert definition["essential"] is True
    assert [m["containerPort"] for m in definition["portMappings"]] == [DEFAULT_METRICS_PORT]
    assert definition["logConfiguration"]["logDriver"] == "awslogs"
    assert definition["linuxParameters"]["initProcessEnabled"] is True
    assert definition["dockerLabels"]["PROMETHEUS_EXPORTER_PORT"] == str(DEFAULT_METRICS_PORT)
    assert definition["dockerLabels"]["PROMETHEUS_EXPORTER_PATH"] == "/metrics"
    assert "command" not in definition, "the image's CMD is the command"
    mounts = {m["containerPath"] for m in definition["mountPoints"]}
    assert "/var/lib/poller" in mounts
    env = task_environment()
    missing = required_variables(ECS_CONFIG) - env.keys()
    assert not missing, f"the baked config needs {sorted(missing)}"
    assert any(name.startswith("POLLER_") for name in env), "an override example"


def test_ecs_config_is_valid_with_the_task_environment() -> None:
    """The baked production config is valid with the task definition's environment: the
    DynamoDB lease backend, and the metrics port the health check uses."""
    settings = load_settings(ECS_CONFIG, environ=task_environment())
    assert settings.checkpoints.backend == "dynamodb"
    assert settings.checkpoints.table
    assert settings.observability.port == DEFAULT_METRICS_PORT


def test_service_keeps_capacity_during_rolling_restarts() -> None:
    document = json.loads(SERVICE.read_text())
    assert _botocore_problems(document, "ecs", "CreateService") == ""
    assert document["desiredCount"] == 3
    deployment = document["deploymentConfiguration"]
    assert deployment["minimumHealthyPercent"] == 100
    assert deployment["maximumPercent"] == 200
    assert document["taskDefinition"] == json.loads(TASK_DEFINITION.read_text())["family"]


# ------------------------------------------------------------------------------ IAM


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    statements = policy["Statement"]
    return [statements] if isinstance(statements, dict) else list(statements)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_least_privilege(statements: list[dict[str, Any]]) -> None:
    sids = [s.get("Sid") for s in statements]
    assert all(sids), "every statement has a Sid"
    assert len(set(sids)) == len(sids), sids
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = _as_list(statement["Action"])
        assert not [a for a in actions if "*" in a], f"{statement['Sid']}: wildcard action"
        if "*" in _as_list(statement["Resource"]):
            too_broad = set(actions) - NO_RESOURCE_LEVEL_ACTIONS
            assert not too_broad, f'{statement["Sid"]}: "Resource": "*" for {sorted(too_broad)}'


def test_iam_policy_is_least_privilege() -> None:
    policy = json.loads(IAM_POLICY.read_text())
    assert policy["Version"] == "2012-10-17"
    statements = _statements(policy)
    _check_least_privilege(statements)
    by_sid = {s["Sid"]: s for s in statements}
    for sid, actions in REQUIRED_ACTIONS.items():
        assert sid in by_sid, f"no {sid} statement"
        granted = set(_as_list(by_sid[sid]["Action"]))
        assert granted == actions, (sid, sorted(granted ^ actions))
        for resource in _as_list(by_sid[sid]["Resource"]):
            # Each action's service owns the resource: no kinesis action on a table ARN.
            services = {a.split(":")[0] for a in granted}
            assert resource.split(":")[2] in services, (sid, resource)


def test_cloudformation_task_role_matches_the_policy() -> None:
    template = cfn_yaml.load(str(TEMPLATE))
    role = template["Resources"]["TaskRole"]["Properties"]
    (inline,) = role["Policies"]
    statements = []
    for statement in _statements(inline["PolicyDocument"]):
        if "Fn::If" in statement:  # a conditional statement: check its "true" branch
            statement = statement["Fn::If"][1]
        statements.append(statement)
    _check_least_privilege(statements)
    reference = json.loads(IAM_POLICY.read_text())
    allowed = {a for s in _statements(reference) for a in _as_list(s["Action"])}
    allowed |= NO_RESOURCE_LEVEL_ACTIONS | {"kms:Decrypt"}
    granted = {a for s in statements for a in _as_list(s["Action"])}
    assert granted <= allowed, sorted(granted - allowed)


# ------------------------------------------------------------------------------ CloudFormation


def cfn_container() -> dict[str, Any]:
    template = cfn_yaml.load(str(TEMPLATE))
    (definition,) = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    return dict(definition)


def test_cloudformation_template_resources() -> None:
    template = cfn_yaml.load(str(TEMPLATE))
    resources = template["Resources"]
    table = resources["LeaseTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [
        {"AttributeName": name, "AttributeType": "S"} for name in ("leaseKey", "mapping", "shardId")
    ]
    (view,) = table["GlobalSecondaryIndexes"]
    assert view["IndexName"] == VIEW_INDEX
    assert [k["AttributeName"] for k in view["KeySchema"]] == ["mapping", "shardId"]
    assert view["Projection"]["NonKeyAttributes"] == list(VIEW_ATTRIBUTES)
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert resources["LeaseTable"]["DeletionPolicy"] == "Retain"
    assert "RetentionInDays" in resources["LogGroup"]["Properties"]

    deployment = resources["Service"]["Properties"]["DeploymentConfiguration"]
    assert (deployment["MinimumHealthyPercent"], deployment["MaximumPercent"]) == (100, 200)
    target = resources["ScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    assert target["MinCapacity"] == {"Ref": "MinCapacity"}
    assert target["MaxCapacity"] == {"Ref": "MaxCapacity"}
    tracking = resources["CpuScalingPolicy"]["Properties"]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    metric = tracking["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    parameters = {"Image", "ClusterName", "Subnets", "SecurityGroups", "StreamArn", "FunctionArn"}
    assert parameters <= set(template["Parameters"])


def test_cloudformation_container_matches_the_task_definition() -> None:
    definition = cfn_container()
    env = {item["Name"]: item["Value"] for item in definition["Environment"]}
    assert set(env) == set(task_environment()) - {
        name for name in task_environment() if name.startswith("POLLER_MAPPINGS__")
    }
    drain = drain_timeout(ECS_CONFIG, {k: v for k, v in env.items() if isinstance(v, str)})
    assert definition["StopTimeout"] >= drain + 10
    assert definition["StopTimeout"] == container()["stopTimeout"]
    assert definition["LinuxParameters"]["InitProcessEnabled"] is True
    assert definition["DockerLabels"] == container()["dockerLabels"]
    assert "Command" not in definition


# ------------------------------------------------------------------------------ Prometheus


def _metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _known_metric(name: str) -> bool:
    if name in POLLER_METRICS or name in OTHER_METRICS:
        return True
    base, _, suffix = name.rpartition("_")
    return base in HISTOGRAMS and suffix in {"bucket", "sum", "count"}


def test_alert_rules_have_the_fields_and_parse() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
        used = _metric_names(rule["expr"])
        assert used, rule["alert"]
        unknown = {name for name in used if not _known_metric(name)}
        assert not unknown, (rule["alert"], unknown)
    for required in (
        "PollerIteratorAgeHigh",
        "PollerShardStuck",
        "PollerOnFailureDeliveries",
        "PollerDroppedEvents",
        "PollerDestinationDeliveryFailures",
        "PollerLeaseChurn",
        "PollerSqsBacklogRisk",
    ):
        assert required in names


def test_alert_rules_use_the_documented_conditions() -> None:
    exprs = {
        rule["alert"]: " ".join(rule["expr"].split())
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    assert "poller_checkpoint_age_seconds > 300" in exprs["PollerShardStuck"]
    assert "poller_millis_behind_latest > 0" in exprs["PollerShardStuck"]
    assert (
        "increase(poller_on_failure_destination_delivered_events_total[10m])"
        in exprs["PollerOnFailureDeliveries"]
    )
    assert 'poller_lease_events_total{event=~"stolen|lost"}[15m]' in exprs["PollerLeaseChurn"]
    assert "max by (mapping) (poller_iterator_age_milliseconds)" in exprs["PollerIteratorAgeHigh"]


def test_scrape_config_targets_the_task_port() -> None:
    (job,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    assert job["job_name"] == "poller"
    assert job["metrics_path"] == "/metrics"
    assert job["file_sd_configs"][0]["files"]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keep == [{"source_labels": ["container_name"], "regex": "poller", "action": "keep"}]
    assert container()["name"] == "poller"


# ------------------------------------------------------------------------------ Grafana


def test_dashboard_is_a_grafana_dashboard_with_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["mapping"]["type"] == "query"
    assert "label_values(" in variables["mapping"]["definition"]

    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    graphs = [p for p in panels if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in graphs)
    for wanted in (
        "iterator age",
        "throughput",
        "by outcome",
        "on-failure destination",
        "dropped",
        "leases held",
        "lease events",
        "checkpoint age",
        "sqs in-flight",
    ):
        assert wanted in titles, wanted
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'mapping=~"$mapping"' in expr, panel["title"]
            concrete = expr.replace("$__rate_interval", "5m").replace("$mapping", ".*")
            unknown = {n for n in _metric_names(concrete) if not _known_metric(n)}
            assert not unknown, (panel["title"], unknown)


# ------------------------------------------------------------------------------ docker compose


def test_compose_runs_the_image_with_the_localstack_config() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    localstack = compose["services"]["localstack"]
    image, _, tag = localstack["image"].partition(":")
    assert image == "localstack/localstack"
    assert tag, "pinned"
    assert tag != "latest"
    services = set(localstack["environment"]["SERVICES"].split(","))
    assert services == {"kinesis", "dynamodb", "sqs", "sns", "s3", "lambda"}
    for volume in localstack["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("."):
            scripts = list((DEPLOY / source).glob("*.sh"))
            assert scripts
            assert all(os.access(script, os.X_OK) for script in scripts)

    poller = compose["services"]["poller"]
    assert (DEPLOY / poller["build"]["context"] / poller["build"]["dockerfile"]).resolve() == (
        DOCKERFILE
    )
    assert poller["command"] == exec_form(runtime_stage()["CMD"].args)
    mounts = {target: source for source, target, *_ in (v.split(":") for v in poller["volumes"])}
    assert (DEPLOY / mounts[IMAGE_CONFIG_PATH]).resolve() == LOCALSTACK_CONFIG
    assert mounts["/var/lib/poller"] in compose["volumes"]
    assert poller["depends_on"]["localstack"]["condition"] == "service_healthy"

    settings = load_settings(LOCALSTACK_CONFIG, environ=compose_environment())
    assert settings.aws.endpoint_url == "http://localstack:4566"
    assert str(settings.checkpoints.path).startswith("/var/lib/poller/")
    grace = int(poller["stop_grace_period"].removesuffix("s"))
    assert grace >= settings.shutdown.drain_timeout_seconds + 10
