"""The Python target: delivers a batch to a handler function in this process.

Data flow::

    ShardWorker --event dict--> PythonTarget.invoke --handler(event, context)--> user code
    ShardWorker <--InvokeResult-- classify(return value, exception or timeout)

The handler sees what a Lambda Python handler sees: a freshly decoded copy of the event (so
it may mutate it without touching the records the pipeline retries) and a context object
with the attributes of the Lambda runtime's. Results are shaped like Lambda's too: an
exception becomes an ``Unhandled`` function error with ``errorType``/``errorMessage``, a run
past the timeout becomes ``Sandbox.Timedout``, and a return value that is not JSON becomes
``Runtime.MarshalError``. Async handlers run on the event loop; sync handlers run in worker
threads so that a slow handler never stalls the other shards.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import inspect
import json
import marshal
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import structlog

from poller.errors import HandlerImportError
from poller.types import InvokeResult, Outcome

_log = structlog.get_logger(__name__)

#: Where anyio lives, so its frames can be left out of handler stack traces.
_ANYIO_DIR = os.path.dirname(anyio.__file__)

#: A handler: ``handler(event, context)``, sync or async, returning a JSON-serializable value.
Handler = Callable[..., Any]

#: Worker threads one target may keep busy at once; its own limiter keeps slow handlers from
#: exhausting anyio's default limiter, which other parts of the service share.
DEFAULT_MAX_THREADS = 100


def load_handler(path: str) -> Handler:
    """Import the handler named by ``path``.

    The current working directory is added to ``sys.path`` (at the end, so it never shadows
    installed packages) when missing: the ``poller`` console script does not put it there,
    and repo-local handlers such as ``examples.handlers:log_batch`` must still import.

    Args:
        path: ``package.module:function``; the function part may be dotted
            (``module:Class.method``).

    Returns:
        The callable.

    Raises:
        HandlerImportError: the path is malformed, the module does not import, the attribute
            is missing or is not callable.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HandlerImportError(f"handler {path!r} must have the form 'package.module:function'")
    _ensure_cwd_on_path()
    module = _import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerImportError(
                f"handler {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise HandlerImportError(
            f"handler {path!r}: {attribute!r} is a {type(target).__name__}, not a callable"
        )
    return target  # type: ignore[no-any-return]


def _ensure_cwd_on_path() -> None:
    """Append the working directory to ``sys.path`` unless it (or ``""``) is already there."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def _import_module(module_name: str) -> Any:
    """Import ``module_name``, turning every failure into a :class:`HandlerImportError`."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The module itself (or a parent package) is missing, as opposed to one of its imports.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise HandlerImportError(f"handler module {module_name!r} not found") from exc
        raise HandlerImportError(f"importing handler module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        # Any error raised by the module's top-level code (SyntaxError, a failing import...).
        raise HandlerImportError(
            f"importing handler module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


@dataclass(slots=True)
class LambdaContext:
    """The ``context`` a handler receives, with the attributes of Lambda's Python runtime.

    ``memory_limit_in_mb`` is a string, as the runtime's is (it reads it from an environment
    variable), so a handler that works here works on Lambda.
    """

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    memory_limit_in_mb: str
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(default=0.0, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation times out, never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class PythonTarget:
    """Calls a Python handler in-process, with Lambda's timeout and error semantics.

    A sync handler that times out cannot be stopped: Python cannot kill a thread. The
    invocation returns a timeout at once and the pipeline moves on, but the abandoned thread
    runs until the handler returns (and keeps the process from exiting until then). Handlers
    should check ``context.get_remaining_time_in_millis()`` in long loops.

    Args:
        handler: ``handler(event, context)``, sync or async.
        timeout_seconds: how long an invocation may run.
        function_arn: the identifier in logs and failure records; defaults to
            ``python:<module>:<function>``.
        function_name: ``context.function_name``; defaults to the handler's name.
        memory_limit_in_mb: ``context.memory_limit_in_mb`` (informational only).
        max_threads: sync invocations that may run at once.
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
    ) -> None:
        self._handler = handler
        self._is_async = _is_async_callable(handler)
        self._timeout = timeout_seconds
        name = getattr(handler, "__qualname__", None) or type(handler).__name__
        module = getattr(handler, "__module__", None) or "unknown"
        self.function_arn = function_arn or f"python:{module}:{name}"
        self.function_name = function_name or name.rsplit(".", 1)[-1]
        self._memory = str(memory_limit_in_mb)
        today = datetime.datetime.now(datetime.UTC)
        self._log_stream = f"{today:%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self._limiter = anyio.CapacityLimiter(max_threads)

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """Run the handler once with a copy of ``event``; never raises for a failed run."""
        context = self._context()
        request_id = context.aws_request_id
        event_copy = _private_copy(event)
        failure: BaseException | None = None
        value: Any = None
        with anyio.move_on_after(self._timeout) as scope:
            try:
                value = await self._call(event_copy, context)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any handler failure is a result
                failure = exc
        # cancel_called, not cancelled_caught: a handler that swallowed the cancellation and
        # returned after its deadline still ran too long.
        if scope.cancel_called:
            return self._timed_out(request_id)
        if failure is not None:
            return self._raised(failure, request_id)
        return _marshal(value, request_id)

    async def aclose(self) -> None:
        """Nothing to release; abandoned handler threads end when their handler returns."""

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

    async def _call(self, event: dict[str, Any], context: LambdaContext) -> Any:
        """Run the handler: awaited if async, in a worker thread if sync."""
        if self._is_async:
            return await self._handler(event, context)
        call = functools.partial(self._handler, event, context)
        value = await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)
        # A sync callable may still hand back an awaitable (a partial of an async function).
        if inspect.isawaitable(value):
            value = await value
        return value

    def _timed_out(self, request_id: str) -> InvokeResult:
        """The result of a run past the timeout, shaped like Lambda's."""
        if not self._is_async:
            _log.warning(
                "python_handler_abandoned",
                function_arn=self.function_arn,
                request_id=request_id,
                timeout_seconds=self._timeout,
                detail="the handler's thread keeps running until the handler returns",
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

    def _raised(self, exc: BaseException, request_id: str) -> InvokeResult:
        """The result of a handler that raised, shaped like the Lambda runtime's."""
        error_type = "Runtime.ExitError" if isinstance(exc, SystemExit) else type(exc).__name__
        stack = _user_stack(exc)
        # The stack names code, never data; the exception message may quote records, so it
        # goes into the payload (as on Lambda) but not into the log.
        _log.warning(
            "python_handler_raised",
            function_arn=self.function_arn,
            request_id=request_id,
            error_type=error_type,
            stack="".join(stack),
        )
        payload = {
            "errorMessage": str(exc),
            "errorType": error_type,
            "requestId": request_id,
            "stackTrace": stack,
        }
        return _function_error(payload, request_id)


def _private_copy(event: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the event, so a handler that mutates it cannot corrupt the records the
    pipeline retries or sends to a failure destination.

    Events hold only JSON types, which marshal copies five times faster than a JSON round trip
    (1.3 µs against 6.8 µs per Kinesis record); this is on the per-record path.
    """
    try:
        # S302: marshal only reads bytes it produced itself one line earlier.
        copied: dict[str, Any] = marshal.loads(marshal.dumps(event))  # noqa: S302
    except ValueError:  # a type marshal does not know: fall back to JSON's own rules
        copied = json.loads(json.dumps(event))
    return copied


def _marshal(value: Any, request_id: str) -> InvokeResult:
    """Serialize the return value as Lambda does; a value JSON cannot hold is an error."""
    try:
        # Round trip so the pipeline sees what Lambda would return (tuples as lists, keys as
        # strings), detached from any object the handler keeps.
        payload = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        error = {
            "errorMessage": f"Unable to marshal response: {exc}",
            "errorType": "Runtime.MarshalError",
            "requestId": request_id,
            "stackTrace": [],
        }
        return _function_error(error, request_id)
    return InvokeResult(
        outcome=Outcome.SUCCESS,
        payload=payload,
        status_code=200,
        executed_version="$LATEST",
        request_id=request_id,
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


def _user_stack(exc: BaseException) -> list[str]:
    """The traceback of ``exc`` from the handler's frame on, as Lambda's ``stackTrace``."""
    frames = traceback.extract_tb(exc.__traceback__)
    # Drop the leading frames of this module and of anyio's thread machinery.
    while frames and (frames[0].filename == __file__ or _ANYIO_DIR in frames[0].filename):
        frames.pop(0)
    return traceback.format_list(frames)


def _is_async_callable(handler: Handler) -> bool:
    """Whether calling ``handler`` returns a coroutine (functions and async ``__call__``)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        type(handler).__call__
    )
