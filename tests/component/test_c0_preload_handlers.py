"""The control API's Python functions are imported at start-up, not on the event loop when a
mapping is first created (where a slow import would stall every running mapping)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import anyio
import pytest

from poller.config import parse_settings
from poller.control.store_memory import MemoryMappingStore
from poller.errors import HandlerImportError
from poller.testing import FakeStreamApi, RecordingTarget
from tests.component.test_c4_reconcile import FakeSourceService, config, running

pytestmark = pytest.mark.anyio


def handler_module(tmp_path: Path) -> str:
    name = f"preload_probe_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("def handle(event, context):\n    return None\n")
    return name


async def test_function_handlers_are_imported_before_the_service_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    module = handler_module(tmp_path)
    functions = {"fn": {"type": "python", "handler": f"{module}:handle"}}
    settings = parse_settings(
        {**config(tmp_path, api=True), "control_api": {"enabled": True, "functions": functions}}
    )
    service = FakeSourceService(
        settings, api=FakeStreamApi(), target=RecordingTarget(), store=MemoryMappingStore()
    )
    assert module not in sys.modules
    async with running(service):
        assert module in sys.modules


async def test_a_function_handler_that_does_not_import_stops_start_up(tmp_path: Path) -> None:
    functions = {"fn": {"type": "python", "handler": "no_such_module_here_at_all:handle"}}
    settings = parse_settings(
        {**config(tmp_path, api=True), "control_api": {"enabled": True, "functions": functions}}
    )
    service = FakeSourceService(
        settings, api=FakeStreamApi(), target=RecordingTarget(), store=MemoryMappingStore()
    )
    with pytest.raises((HandlerImportError, BaseExceptionGroup)) as caught:
        with anyio.fail_after(30):
            await service.run(handle_signals=False)
    leaf: BaseException = caught.value
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, HandlerImportError)
    assert "no_such_module_here_at_all" in str(leaf)
