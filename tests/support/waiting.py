"""Waiting with a deadline: poll a condition until it holds, and fail by name when it does not.

Every test that waits for the service, an emulator or a subprocess waits here, so a wait never
hangs a test and its failure always says what was awaited. :func:`wait_for` blocks (for
synchronous tests and threads); :func:`wait_until` runs in the event loop and also accepts
conditions that return an awaitable (an emulator call), awaiting each answer.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import anyio


class Deadline:
    """``limit`` seconds from now; :meth:`check` fails, naming ``what``, once they have passed."""

    def __init__(self, limit: float, what: str) -> None:
        self.limit, self.what = limit, what
        self._at = time.monotonic() + limit

    def check(self) -> None:
        if time.monotonic() > self._at:
            raise AssertionError(f"timed out after {self.limit}s waiting for {self.what}")


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; blocks."""
    deadline = Deadline(timeout, what)
    while not (value := condition()):
        deadline.check()
        time.sleep(interval)
    return value


async def wait_until(
    condition: Callable[[], Any], limit: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` in the event loop until its answer (awaited if it is an awaitable) is
    truthy, and return that answer."""
    deadline = Deadline(limit, what)
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await anyio.sleep(interval)
