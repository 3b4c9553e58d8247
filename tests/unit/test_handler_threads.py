"""The handler thread pool (poller.targets.threads): what an idle worker keeps alive.

A sync Python handler's call holds the handler's private copy of the event: a whole batch of
records. A worker waiting for its next call must not keep the last one, or every idle thread
(up to a hundred per target) pins a batch in memory outside the read budget.
"""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest

from poller.targets.threads import HandlerThreads
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


class _Call:
    """A call that can be watched through a weak reference (a closure cannot)."""

    def __call__(self) -> str:
        return "done"


async def test_an_idle_worker_does_not_keep_its_last_call_alive() -> None:
    threads = HandlerThreads(name="test", max_running=2, max_abandoned=2, idle_seconds=30)
    call = _Call()
    watched = weakref.ref(call)
    try:
        assert await threads.run(call) == "done"
        del call
        # The worker parks (offers itself for the next call) just after it wakes us.
        await wait_until(lambda: len(threads._idle) == 1, 5, "the worker parked")
        gc.collect()
        assert watched() is None, "the idle worker still refers to its last call"
        assert threads.threads == 1  # the worker itself lives on, idle
    finally:
        threads.close()


async def test_a_parked_worker_is_reused_for_the_next_call() -> None:
    threads = HandlerThreads(name="test", max_running=1, max_abandoned=1, idle_seconds=30)
    try:
        assert await threads.run(_Call()) == "done"
        await wait_until(lambda: len(threads._idle) == 1, 5, "the worker parked")
        with anyio.fail_after(5):
            assert await threads.run(_Call()) == "done"
        assert threads.threads == 1
    finally:
        threads.close()
