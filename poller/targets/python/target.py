"""The Python target: delivers a batch to a handler function in this process.

Data flow::

    engine (streams, queues) --event dict--> PythonTarget.invoke
        --private copy, context--> HandlerCalls.run --handler(event, context)--> user code
        <--_Run (settled where it ran)-- Verdicts --InvokeResult--> back to the caller

:class:`PythonTarget` owns the parts: :class:`~poller.targets.python.calls.HandlerCalls` runs
the handler (threads, handler loop, timeouts, abandoned calls) and
:class:`~poller.targets.python.verdicts.Verdicts` classifies each run as Lambda would.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Callable
from typing import Any

from poller.targets import handler_loop as handler_loop_module
from poller.targets.handler_loop import HandlerLoop
from poller.targets.python.calls import HandlerCalls, LoopBusy
from poller.targets.python.context import LambdaContext
from poller.targets.python.loading import Handler
from poller.targets.python.runs import _private_copy
from poller.targets.python.verdicts import Verdicts
from poller.targets.threads import HandlerThreads, ThreadsExhausted
from poller.types import InvokeResult

#: Sync handler calls one target may run at once, each in a thread of its own pool.
DEFAULT_MAX_THREADS = 100

#: Abandoned threads (handlers still running after their timeout) one target may have before
#: it refuses new sync calls as a throttle: a handler that hangs on every batch costs a
#: bounded number of threads, not one more per retry.
DEFAULT_MAX_ABANDONED = 32


class PythonTarget:
    """Calls a Python handler in-process, with Lambda's timeout and error semantics.

    A handler that times out cannot be stopped: Python cannot kill a thread, and an async
    handler may ignore its cancellation. The invocation returns a timeout at once (an async
    handler gets :data:`ABANDON_GRACE` seconds to honour its cancellation) and the pipeline
    moves on; the handler runs on, abandoned, in a daemon thread or on the handler loop, so
    it never keeps the process alive after shutdown. Abandoned calls are counted
    (``on_thread_abandoned``) and bounded (``max_abandoned``): past the bound, invocations
    are refused as throttles until some return. Handlers should check
    ``context.get_remaining_time_in_millis()`` in long loops.

    Args:
        handler: ``handler(event, context)``, sync or async.
        timeout_seconds: how long an invocation may run.
        function_arn: the identifier in logs and failure records; defaults to
            ``python:<module>:<function>``.
        function_name: ``context.function_name``; defaults to the handler's name.
        memory_limit_in_mb: ``context.memory_limit_in_mb`` (informational only).
        max_threads: sync invocations that may run at once.
        max_abandoned: abandoned calls beyond which invocations are throttled.
        on_thread_abandoned: called each time a call is abandoned.
        handler_loop: where async handlers run; the process-wide one when omitted.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        timeout_seconds: float,
        function_arn: str | None = None,
        function_name: str | None = None,
        memory_limit_in_mb: int = 128,
        max_threads: int = DEFAULT_MAX_THREADS,
        max_abandoned: int = DEFAULT_MAX_ABANDONED,
        on_thread_abandoned: Callable[[], None] | None = None,
        handler_loop: HandlerLoop | None = None,
    ) -> None:
        self._timeout = timeout_seconds
        name = getattr(handler, "__qualname__", None) or type(handler).__name__
        module = getattr(handler, "__module__", None) or "unknown"
        self.function_arn = function_arn or f"python:{module}:{name}"
        self.function_name = function_name or name.rsplit(".", 1)[-1]
        self._memory = str(memory_limit_in_mb)
        today = datetime.datetime.now(datetime.UTC)
        self._log_stream = f"{today:%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        loop = handler_loop or handler_loop_module.SHARED
        self._threads = HandlerThreads(
            name=f"poller-handler-{self.function_name}",
            max_running=max_threads,
            max_abandoned=max_abandoned,
            on_abandoned=on_thread_abandoned,
        )
        self._calls = HandlerCalls(
            handler,
            timeout_seconds=timeout_seconds,
            loop=loop,
            threads=self._threads,
            max_abandoned=max_abandoned,
            on_abandoned=on_thread_abandoned,
        )
        self._verdicts = Verdicts(
            self.function_arn,
            timeout_seconds=timeout_seconds,
            calls=self._calls,
            threads=self._threads,
            loop=loop,
        )

    @property
    def abandoned_threads(self) -> int:
        """Abandoned calls (sync handlers' threads, async handlers' tasks) still running."""
        return self._threads.abandoned + self._calls.abandoned_tasks

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Run the handler once with a copy of ``event``; never raises for a failed run.

        Raises:
            the cancellation exception, only when the caller itself is cancelled.
        """
        context = self._context()
        request_id = context.aws_request_id
        try:
            run = await self._calls.run(_private_copy(event), context)
        except ThreadsExhausted as exc:
            return self._verdicts.throttled(exc, request_id)
        except LoopBusy:
            return self._verdicts.loop_busy(request_id)
        if run is None:
            return self._verdicts.abandoned(request_id)
        return self._verdicts.result(run, request_id)

    async def aclose(self) -> None:
        """Let idle handler threads end; abandoned ones end when their handler returns."""
        self._threads.close()

    def _context(self) -> LambdaContext:
        """A fresh context whose deadline starts now."""
        return LambdaContext(
            function_name=self.function_name,
            invoked_function_arn=self.function_arn,
            aws_request_id=str(uuid.uuid4()),
            log_group_name=f"/aws/lambda/{self.function_name}",
            log_stream_name=self._log_stream,
            memory_limit_in_mb=self._memory,
            _deadline=time.monotonic() + self._timeout,
        )
