"""Verdicts on a Python handler's call: each run classified into an ``InvokeResult``.

Results are shaped like Lambda's: a return value is a success, an exception an ``Unhandled``
function error with ``errorType``/``errorMessage``, a run past the timeout ``Sandbox.Timedout``
(whenever it returns: an async handler that blocks its loop cannot be cancelled while it
blocks, and ``handler.blocked_event_loop`` is logged), and a call refused because too many
calls were abandoned, or because the handler loop was blocked, a throttle.
"""

from __future__ import annotations

from typing import Any

import structlog

from poller.targets.handler_loop import HandlerLoop
from poller.targets.python.calls import ABANDON_GRACE, HandlerCalls
from poller.targets.python.runs import _Run
from poller.targets.threads import HandlerThreads, ThreadsExhausted
from poller.types import InvokeResult, Outcome

_log = structlog.get_logger("poller.targets.python")

#: How far past its timeout an async handler may return before the event loop counts as
#: blocked: cancellation is delivered at the handler's next ``await``, which a busy loop may
#: delay by a few milliseconds but never by this much.
BLOCKED_LOOP_MARGIN = 0.5


class Verdicts:
    """Classifies the runs of one Python target the way Lambda would, logging what it sees.

    Args:
        function_arn: the target's identifier in logs.
        timeout_seconds: how long an invocation may run.
        calls: the target's calling machinery (sync or async; abandoned calls).
        threads: the target's worker threads (abandoned sync calls).
        loop: the handler loop (how long it has been blocked).
    """

    def __init__(
        self,
        function_arn: str,
        *,
        timeout_seconds: float,
        calls: HandlerCalls,
        threads: HandlerThreads,
        loop: HandlerLoop,
    ) -> None:
        self.function_arn = function_arn
        self._timeout = timeout_seconds
        self._calls = calls
        self._threads = threads
        self._loop = loop

    def result(self, run: _Run, request_id: str) -> InvokeResult:
        """Classify a finished run the way Lambda would."""
        # The clock also catches the async handler that blocked its loop past its deadline,
        # which kept the deadline from firing at all.
        if run.deadline_fired or run.elapsed > self._timeout:
            if self._calls.is_async and (not run.deadline_fired or self._blocked(run.elapsed)):
                self._log_blocked_loop(request_id, run.elapsed)
            return self._timed_out(request_id)
        if run.error is not None:
            if run.raised is not None:
                _log.warning(
                    "python_handler_raised",
                    function_arn=self.function_arn,
                    request_id=request_id,
                    error_type=run.error["errorType"],
                    stack=run.raised,
                )
            return _function_error({**run.error, "requestId": request_id}, request_id)
        return InvokeResult(
            outcome=Outcome.SUCCESS,
            payload=run.payload,
            status_code=200,
            executed_version="$LATEST",
            request_id=request_id,
        )

    def abandoned(self, request_id: str) -> InvokeResult:
        """An async handler that ignored its cancellation past the grace: a timeout."""
        blocked = self._loop.blocked_for()
        _log.warning(
            "handler.abandoned",
            function_arn=self.function_arn,
            request_id=request_id,
            timeout_seconds=self._timeout,
            abandoned_calls=self._calls.abandoned_tasks,
            event_loop_blocked=blocked > BLOCKED_LOOP_MARGIN,
            detail="the async handler did not stop when cancelled at its timeout (it ignores "
            "cancellation, awaits something that cannot be cancelled, or blocks its event "
            "loop); it runs on, abandoned, on the handler loop",
        )
        if blocked > BLOCKED_LOOP_MARGIN:
            self._log_blocked_loop(request_id, self._timeout + ABANDON_GRACE)
        return self._timed_out(request_id)

    def _blocked(self, elapsed: float) -> bool:
        """Whether a run that was cancelled at its deadline still ended far past it."""
        return elapsed > self._timeout + BLOCKED_LOOP_MARGIN

    def _log_blocked_loop(self, request_id: str, elapsed: float) -> None:
        """Say loudly that an async handler held its event loop past its timeout."""
        _log.warning(
            "handler.blocked_event_loop",
            function_arn=self.function_arn,
            request_id=request_id,
            duration_seconds=round(elapsed, 3),
            timeout_seconds=self._timeout,
            detail="an async handler blocked the handlers' event loop (every async handler "
            "waited; the service's own loop did not); run blocking code in a sync handler "
            "or with anyio.to_thread",
        )

    def throttled(self, exhausted: ThreadsExhausted, request_id: str) -> InvokeResult:
        """The result of a call refused because too many calls were abandoned."""
        _log.warning(
            "handler.threads_exhausted",
            function_arn=self.function_arn,
            request_id=request_id,
            abandoned_threads=exhausted.abandoned,
            detail="timed-out handlers are still running; retried with backoff until they end",
        )
        return InvokeResult(
            outcome=Outcome.THROTTLE,
            request_id=request_id,
            error=f"handler throttled: {exhausted}",
        )

    def loop_busy(self, request_id: str) -> InvokeResult:
        """The handler never started: the handler loop was blocked by some handler (perhaps
        another mapping's). A throttle, retried without counting, as on Lambda when no
        execution environment is free: this handler did nothing wrong."""
        _log.warning(
            "handler.loop_busy",
            function_arn=self.function_arn,
            request_id=request_id,
            blocked_seconds=round(self._loop.blocked_for(), 3),
            detail="the handlers' event loop is blocked; retried with backoff",
        )
        return InvokeResult(
            outcome=Outcome.THROTTLE,
            request_id=request_id,
            error="handler throttled: the handlers' event loop is blocked",
        )

    def _timed_out(self, request_id: str) -> InvokeResult:
        """The result of a run past the timeout, shaped like Lambda's."""
        if not self._calls.is_async:
            _log.warning(
                "python_handler_abandoned",
                function_arn=self.function_arn,
                request_id=request_id,
                timeout_seconds=self._timeout,
                abandoned_threads=self._threads.abandoned,
                detail="the handler's daemon thread keeps running until the handler returns",
            )
        message = f"{request_id} Task timed out after {self._timeout:.2f} seconds"
        return InvokeResult(
            outcome=Outcome.TIMEOUT,
            payload={"errorType": "Sandbox.Timedout", "errorMessage": message},
            status_code=200,
            function_error="Unhandled",
            executed_version="$LATEST",
            request_id=request_id,
            error=f"function timed out after {self._timeout:.2f} seconds",
        )


def _function_error(payload: dict[str, Any], request_id: str) -> InvokeResult:
    """An ``Unhandled`` function error carrying Lambda's error payload."""
    return InvokeResult(
        outcome=Outcome.FUNCTION_ERROR,
        payload=payload,
        status_code=200,
        function_error="Unhandled",
        executed_version="$LATEST",
        request_id=request_id,
        error=f"function error (Unhandled): {payload['errorType']}",
    )
