"""Waits that shutdown cuts short: every pause of the SQS engine (between receives that
failed, between failed batches, between scaling decisions) ends when ``stopping`` is set, so
that the drain never waits out a backoff."""

from __future__ import annotations

import anyio


async def pause(stopping: anyio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless shutdown begins first; False when it did."""
    with anyio.move_on_after(seconds):
        await stopping.wait()
        return False
    return True
