"""The guard every target goes through: any exception from a target is an invocation outcome.

Data flow::

    ShardProcessor --event dict--> GuardedTarget.invoke --> Target.invoke (Lambda, HTTP, Python)
    ShardProcessor <--InvokeResult-- the target's result, or a function error for what it raised

Targets promise never to raise for a failed invocation, but a library can still raise what a
target did not foresee (aiohttp's ``ValueError`` for a header it refuses, a handler's
``KeyboardInterrupt``). Raised into a shard task, that would crash the shard or the whole
service, again on every retry of the same batch. :func:`build_target
<poller.targets.build_target>` wraps every target in :class:`GuardedTarget`, so a new target
type gets the rule without writing it again: whatever a target raises (``BaseException``
included) becomes a counted function error, so the batch is retried and, at the end of its
retries, sent to the destination. The one exception is a genuine cancellation of the caller
(shutdown, a lost lease), which is the caller's own and always propagates.
"""

from __future__ import annotations

import math
import traceback
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from poller.types import InvokeResult, Outcome

if TYPE_CHECKING:
    from poller.types import Target

_log = structlog.get_logger(__name__)


def caller_cancelled() -> bool:
    """Whether a cancel scope around the current task has been cancelled.

    anyio reports an effective deadline of minus infinity once any enclosing scope is
    cancelled. That tells a genuine cancellation of ours apart from a cancellation exception
    that user code raised by itself, which must be reported like any other error.
    """
    return anyio.current_effective_deadline() == -math.inf


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the running backend's cancellation exception."""
    return isinstance(exc, anyio.get_cancelled_exc_class())


def must_propagate(exc: BaseException) -> bool:
    """Whether ``exc`` is a genuine cancellation of the caller, never an invocation result."""
    return is_cancellation(exc) and caller_cancelled()


class GuardedTarget:
    """Wraps a target so that whatever it raises becomes an :class:`InvokeResult`.

    Args:
        target: any :class:`~poller.types.Target`.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self.function_arn = target.function_arn

    @property
    def inner(self) -> Target:
        """The wrapped target (tests and diagnostics)."""
        return self._target

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Invoke the wrapped target once; only a genuine cancellation of ours propagates."""
        try:
            return await self._target.invoke(event)
        except BaseException as exc:  # every failure of a target is a result
            if must_propagate(exc):
                raise
            return self._raised(exc)

    async def aclose(self) -> None:
        """Close the wrapped target."""
        await self._target.aclose()

    def _raised(self, exc: BaseException) -> InvokeResult:
        """A counted function error for an exception the target let through."""
        error_type = type(exc).__name__
        # The stack names code; the message may quote a header or record, so it is left out.
        stack = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
        _log.error(
            "target.raised",
            function_arn=self.function_arn,
            error_type=error_type,
            stack=stack,
            detail="reported as a function error; the batch is retried, then given up",
        )
        return InvokeResult(
            outcome=Outcome.FUNCTION_ERROR,
            payload={"errorType": error_type, "errorMessage": f"the target raised {error_type}"},
            function_error="Unhandled",
            request_id=str(uuid.uuid4()),
            error=f"target raised {error_type}",
        )
