"""``poller validate`` with the control API on: a file with no mapping is valid, and the API's
own handlers and address are checked on this host like the mappings' (poller.cli)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from poller.cli import main

BASE = """\
aws: {region: us-east-1}
checkpoints: {backend: sqlite, path: CHECKPOINTS}
observability: {enabled: false}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "poller.yaml"
    path.write_text(text.replace("CHECKPOINTS", str(tmp_path / "c.db")))
    return str(path)


def test_no_mapping_is_valid_when_the_control_api_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE + "control_api: {enabled: true, port: 0}\nmappings: []\n")
    assert main(["validate", "--config", path]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}: valid (0 mappings: they are created through the control API)"
    )


def test_no_mapping_with_the_control_api_off_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE + "mappings: []\n")
    assert main(["validate", "--config", path]) == 2
    assert "control_api" in capsys.readouterr().err


def test_a_control_api_function_whose_handler_does_not_import_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + (
        "control_api:\n"
        "  enabled: true\n"
        "  port: 0\n"
        "  functions:\n"
        "    orders: {type: python, handler: 'no_such_module:handle'}\n"
        "mappings: []\n"
    )
    path = write(tmp_path, text)
    assert main(["validate", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "control_api.functions.orders.handler: handler module 'no_such_module' not found" in err
    assert main(["validate", "--config", path, "--config-only"]) == 0


def test_a_taken_control_api_port_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = BASE + f"control_api: {{enabled: true, port: {port}}}\nmappings: []\n"
        assert main(["validate", "--config", write(tmp_path, text)]) == 2
    assert f"control_api: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
