"""The service in the test's own event loop: started, awaited until ready, stopped gracefully.

Tests that need no OS process run :class:`poller.app.Service` here, so they can steer the
handlers and read what they recorded directly; ``tests/support/process.py`` has the OS process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from poller.app import Service
from poller.config import Settings
from tests.support.waiting import wait_until


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """Run the service until the block ends, then stop it gracefully and wait for the exit."""
    service = Service(settings)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.run(handle_signals=False))
        with anyio.fail_after(30):
            await service.ready.wait()
        try:
            yield service
        finally:
            service.request_stop()


async def run_until(
    settings: Settings, condition: Callable[[], Any], limit: float, what: str
) -> Any:
    """Run the service until ``condition`` holds (see :func:`wait_until`), then stop it; return
    the condition's answer."""
    async with running(settings):
        return await wait_until(condition, limit, what)
