"""The default metrics port: one constant, named by every file that deploys poller, and no
stale 9100 left where users copy from.

9100 is node_exporter's port in Prometheus's default port allocations, and node_exporter runs
on most hosts Prometheus scrapes; poller moved off it. The Dockerfile, deploy/, config/ and
README.md may name 9100 only in the one sentence that says so (:data:`MOVE_NOTE`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from poller.config.models.service import DEFAULT_METRICS_PORT, ObservabilitySettings
from tests.support.process import REPO

NODE_EXPORTER_PORT = 9100
#: The one sentence allowed to name the old port (in README.md and deploy/README.md), compared
#: with every run of white space as one space, so that Markdown may wrap it anywhere.
MOVE_NOTE = (
    f"The default was {NODE_EXPORTER_PORT} before; that is node_exporter's port, which most "
    f"scraped hosts already use, so scrape configs and security groups that name "
    f"{NODE_EXPORTER_PORT} must move to {DEFAULT_METRICS_PORT} (or set "
    f"`observability.port: {NODE_EXPORTER_PORT}` to keep the old port)."
)
_OLD_PORT = re.compile(rf"(?<![0-9]){NODE_EXPORTER_PORT}(?![0-9])")


def scanned_files() -> list[Path]:
    """What users copy the port from: the Dockerfile, README.md, deploy/ and config/."""
    trees = [path for tree in ("deploy", "config") for path in (REPO / tree).rglob("*")]
    return [REPO / "Dockerfile", REPO / "README.md", *sorted(p for p in trees if p.is_file())]


def stale_mentions(text: str) -> list[str]:
    """The lines of ``text`` that name the old port outside :data:`MOVE_NOTE`, or [] if the
    note is its only mention."""
    rest = " ".join(text.split()).replace(MOVE_NOTE, "")
    if not _OLD_PORT.search(rest):
        return []
    # Some mention is outside the note: show every line naming the port (the note's too, as
    # a line cannot be told apart from the note once wrapped).
    return [line.strip() for line in text.splitlines() if _OLD_PORT.search(line)]


def test_the_default_port_is_the_constant_and_not_node_exporters() -> None:
    assert ObservabilitySettings().port == DEFAULT_METRICS_PORT
    assert DEFAULT_METRICS_PORT != NODE_EXPORTER_PORT
    assert 1024 <= DEFAULT_METRICS_PORT <= 65535, "a port the non-root image may bind"


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_names_the_old_port(path: Path) -> None:
    """Every mention of 9100 in what users copy is the note that the port moved."""
    assert stale_mentions(path.read_text(encoding="utf-8")) == []


def test_the_scan_finds_the_old_port_outside_the_note_only() -> None:
    wrapped_note = "Ports.\n" + "\n  ".join(MOVE_NOTE.split(" ")) + "\n"
    assert stale_mentions(wrapped_note) == []
    assert stale_mentions(wrapped_note + "curl localhost:9100/metrics\n") != []
    assert stale_mentions("EXPOSE 9100\n") == ["EXPOSE 9100"]
    assert stale_mentions("port: 91000\nuid 19100\n") == []


def _runtime_instruction(keyword: str) -> str:
    """The argument text of the Dockerfile's last ``keyword`` instruction (line continuations
    joined)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(keyword + " ")]
    return lines[-1].removeprefix(keyword + " ")


def _health_command_port(command: str) -> str:
    """The port a health check falls back to when POLLER_OBSERVABILITY__PORT is unset."""
    match = re.search(r"'POLLER_OBSERVABILITY__PORT', '([0-9]+)'", command)
    assert match, command
    return match[1]


def test_the_image_exposes_and_checks_the_default_port() -> None:
    assert _runtime_instruction("EXPOSE") == str(DEFAULT_METRICS_PORT)
    assert _health_command_port(_runtime_instruction("HEALTHCHECK")) == str(DEFAULT_METRICS_PORT)


def test_the_ecs_task_definition_names_the_default_port() -> None:
    document = json.loads((REPO / "deploy/ecs/task-definition.json").read_text())
    (container,) = document["containerDefinitions"]
    assert [m["containerPort"] for m in container["portMappings"]] == [DEFAULT_METRICS_PORT]
    assert container["dockerLabels"]["PROMETHEUS_EXPORTER_PORT"] == str(DEFAULT_METRICS_PORT)
    command = container["healthCheck"]["command"][-1]
    assert _health_command_port(command) == str(DEFAULT_METRICS_PORT)


def test_the_cloudformation_template_names_the_default_port() -> None:
    # Read as text: its !GetAtt and !Ref tags are not plain YAML.
    text = (REPO / "deploy/cloudformation/poller.yaml").read_text()
    assert re.findall(r"ContainerPort: ([0-9]+)", text) == [str(DEFAULT_METRICS_PORT)]
    labels = re.findall(r'PROMETHEUS_EXPORTER_PORT: "([0-9]+)"', text)
    assert labels == [str(DEFAULT_METRICS_PORT)]
    assert _health_command_port(text) == str(DEFAULT_METRICS_PORT)


def _yaml(relative: str) -> Any:
    return yaml.safe_load((REPO / relative).read_text())


@pytest.mark.parametrize(
    "relative",
    [
        "config/embedded.yaml",
        "deploy/config/poller.ecs.yaml",
        "deploy/config/poller.localstack.yaml",
    ],
)
def test_the_shipped_configs_use_the_default_port(relative: str) -> None:
    assert _yaml(relative)["observability"]["port"] == DEFAULT_METRICS_PORT


def test_compose_publishes_the_default_port_on_loopback() -> None:
    ports = _yaml("deploy/docker-compose.yml")["services"]["poller"]["ports"]
    assert ports == [f"127.0.0.1:{DEFAULT_METRICS_PORT}:{DEFAULT_METRICS_PORT}"]
