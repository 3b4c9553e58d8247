"""Fixtures of the component tier: the in-memory fakes of ``poller.testing``, fresh per test.

The tier drives the real stream engine (processor, reader, runner) through these fakes only:
no emulator, no subprocess, no network, so each test runs in milliseconds to a second.
"""

from __future__ import annotations

import anyio
import pytest

from poller.testing import FakeStreamApi, MemoryCheckpointStore, RecordingMetrics, RecordingTarget


@pytest.fixture
def api() -> FakeStreamApi:
    return FakeStreamApi()


@pytest.fixture
def target() -> RecordingTarget:
    return RecordingTarget()


@pytest.fixture
def store() -> MemoryCheckpointStore:
    return MemoryCheckpointStore()


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
async def stopping() -> anyio.Event:
    """The shutdown signal (an anyio Event is made inside the event loop)."""
    return anyio.Event()
