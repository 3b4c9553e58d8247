"""How the service waits before trying again: backoff schedules and the one retry helper.

Two kinds of waiting happen in the engines:

* Re-invoking a failed batch. The engine decides *whether* to retry (Lambda's rules) and asks
  :data:`INVOKE_BACKOFF` *how long* to wait.
* Repeating an infrastructure call that failed for a passing reason (ListShards, GetShardIterator,
  a checkpoint write, a throttled read). :func:`retrying` wraps these in tenacity with
  exponential backoff and jitter, retrying only errors marked ``retriable``.

botocore's own retries are off for reads and invokes, so exactly one layer retries each call.

Loops that cannot be a :func:`retrying` call (a failed invocation is a result, not an exception;
a supervisor restarts on anything; a wait must end when shutdown begins; a destination's
permanent refusal is waited out, never raised) keep their own loop over a :class:`Backoff`
defined beside them, and say why in a comment at the loop (``Not poller.retry.retrying: ...``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from poller.errors import PollerError

_T = TypeVar("_T")
log = structlog.get_logger("poller.retry")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: ``initial * multiplier**(attempt-1)``, ±jitter."""

    initial: float
    maximum: float
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** max(attempt - 1, 0))
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))  # noqa: S311 - not cryptographic


#: Between re-invocations of a failing batch. Capped so a recovered function resumes quickly.
INVOKE_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: After ProvisionedThroughputExceeded or a failed read.
READ_BACKOFF = Backoff(initial=0.5, maximum=10.0)


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, PollerError) and exc.retriable


def _log_before_sleep(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "retry.scheduled",
            call=what,
            attempt=state.attempt_number,
            wait_s=round(wait, 2),
            error=str(exc),
        )

    return before_sleep


async def retrying(
    what: str, fn: Callable[[], Awaitable[_T]], *, initial: float = 0.2, maximum: float = 10.0
) -> _T:
    """Run ``fn`` until it succeeds, retrying retriable poller errors with backoff.

    Non-retriable errors propagate at once. Cancellation (shutdown) interrupts the wait.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_is_retriable),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        before_sleep=_log_before_sleep(what),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: AsyncRetrying either returns or raises")  # pragma: no cover
