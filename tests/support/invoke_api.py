"""A test double of the AWS Lambda Invoke API, running Python callables as functions.

Why it exists: the Lambda target must be tested through a real aiobotocore client speaking
HTTP (botocore is never mocked), and nothing available here runs a Lambda function without
Docker or an AWS account: moto's Invoke echoes or returns canned results and never reports a
``FunctionError``. So this server speaks the part of the wire protocol the poller uses,
``POST /2015-03-31/functions/{FunctionName}/invocations``, closely enough that botocore
parses it as it parses AWS:

* the function may be named by name, ``name:qualifier``, partial ARN or full ARN
  (URL-encoded), with an optional ``Qualifier`` query parameter;
* success answers 200 with the JSON result, ``X-Amz-Executed-Version`` and
  ``x-amzn-RequestId``;
* a function that raises answers 200 with ``X-Amz-Function-Error: Unhandled`` and
  ``{"errorMessage", "errorType", "stackTrace"}``; one that runs past its timeout answers the
  same header with ``Sandbox.Timedout`` and "<request id> Task timed out after N.NN seconds";
* service errors are REST-JSON: the code in ``x-amzn-ErrorType``, the body
  ``{"Type": "User", "message": ...}``: unknown function (404 ``ResourceNotFoundException``),
  throttle (429 ``TooManyRequestsException``, raised by a function as :class:`Throttled`),
  payload over 6 MB (413 ``RequestTooLargeException``), body not JSON (400).

Every request is recorded as an :class:`Invocation` for assertions. The server runs on its
own event loop in a background thread, bound to 127.0.0.1 on a free port, so sync pytest
fixtures can use it as a context manager and other processes (service subprocesses in the
end-to-end tests) can reach it at :attr:`InvokeApiServer.url`::

    with InvokeApiServer() as server:
        server.register("fn", handler, timeout=2.0)
        ...  # point a Lambda client at server.url
        server.wait_for_invocations(1, function="fn")
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from aiohttp import web

from tests.support.http_server import ThreadedServer

#: Lambda's limit on a synchronous invocation's request payload, in bytes.
INVOKE_PAYLOAD_LIMIT = 6 * 1024 * 1024

#: The body size aiohttp accepts, above the limit so that the 413 comes from us, as Lambda's.
_MAX_BODY = 4 * INVOKE_PAYLOAD_LIMIT

#: A function: ``fn(event, context)``, sync or async. ``bytes`` results are sent as they are
#: (as a custom runtime may answer); anything else is sent as JSON.
Function = Callable[..., Any]


class InvokeApiError(Exception):
    """Raised by a registered function to make the API answer a service error instead.

    Args:
        message: the error's ``message``.
        status: the HTTP status.
        code: the error code (botocore's ``Error.Code``).
        extra: more members of the error body, such as ``Reason``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 500,
        code: str = "ServiceException",
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.extra = dict(extra or {})


class Throttled(InvokeApiError):
    """Raised by a registered function to answer Lambda's throttle (429)."""

    def __init__(self, reason: str = "ReservedFunctionConcurrentInvocationLimitExceeded") -> None:
        super().__init__(
            "Rate Exceeded.",
            status=429,
            code="TooManyRequestsException",
            extra={"Reason": reason},
        )


@dataclass(frozen=True, slots=True)
class Invocation:
    """One request the server answered.

    Attributes:
        function: the function name (from the name or ARN in the path).
        qualifier: the qualifier, from the query or the ARN, or None.
        event: the parsed request payload (None when it was not JSON).
        outcome: ``success``, ``error``, ``timeout``, ``throttled``, ``service_error``,
            ``not_found`` or ``rejected`` (a request the API refused before running anything).
        request_id: the ``x-amzn-RequestId`` of the answer.
        started_at: epoch seconds when the request arrived.
        duration: seconds spent answering.
    """

    function: str
    qualifier: str | None
    event: Any
    outcome: str
    request_id: str
    started_at: float
    duration: float


@dataclass(slots=True)
class FunctionContext:
    """The ``context`` a registered function receives (the Lambda runtime's attributes)."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    aws_request_id: str
    memory_limit_in_mb: str = "128"
    log_group_name: str = ""
    log_stream_name: str = "2026/01/01/[$LATEST]0000"
    _deadline: float = field(default=0.0, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function times out."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True, slots=True)
class _Registered:
    """A registered function and its settings."""

    handler: Function
    timeout: float
    version: str
    qualifiers: frozenset[str] | None


@dataclass(slots=True)
class _Answer:
    """An HTTP answer to send, and how to record it."""

    status: int
    body: bytes
    outcome: str
    headers: dict[str, str] = field(default_factory=dict)


class InvokeApiServer:
    """The Invoke API on 127.0.0.1, served from a background thread.

    Args:
        region: the region in function ARNs.
        account_id: the account in function ARNs.
    """

    def __init__(self, *, region: str = "us-east-1", account_id: str = "123456789012") -> None:
        self.region = region
        self.account_id = account_id
        self._functions: dict[str, _Registered] = {}
        self._invocations: list[Invocation] = []
        self._changed = threading.Condition()
        self._server = ThreadedServer(self._app, name="invoke-api", shutdown_timeout=1.0)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """The endpoint URL to give a Lambda client."""
        return self._server.url

    def start(self) -> InvokeApiServer:
        """Bind a free port and serve in a background thread; returns once accepting."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        self._server.stop()

    def __enter__(self) -> InvokeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/2015-03-31/functions/{function}/invocations", self._handle)
        return app

    # -- functions and records -----------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Function,
        *,
        timeout: float = 3.0,
        version: str = "$LATEST",
        qualifiers: Iterable[str] | None = None,
    ) -> str:
        """Register (or replace) a function.

        Args:
            name: the function name.
            handler: ``fn(event, context)``, sync or async. Sync ones run in worker threads.
            timeout: seconds before the invocation answers ``Sandbox.Timedout``.
            version: ``X-Amz-Executed-Version`` when the qualifier is not a version number.
            qualifiers: the versions and aliases that exist; None accepts any.

        Returns:
            The function's unqualified ARN.
        """
        allowed = frozenset(qualifiers) if qualifiers is not None else None
        with self._changed:
            self._functions[name] = _Registered(handler, timeout, version, allowed)
        return self.function_arn(name)

    def unregister(self, name: str) -> None:
        """Remove a function; later invocations answer ``ResourceNotFoundException``."""
        with self._changed:
            self._functions.pop(name, None)

    def function_arn(self, name: str, qualifier: str | None = None) -> str:
        """The ARN of ``name`` in this server's region and account."""
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn

    def invocations(self, function: str | None = None) -> list[Invocation]:
        """The requests answered so far, oldest first, optionally of one function."""
        with self._changed:
            return [i for i in self._invocations if function is None or i.function == function]

    def wait_for_invocations(
        self, count: int, *, function: str | None = None, timeout: float = 10.0
    ) -> list[Invocation]:
        """Block until at least ``count`` requests (of ``function``) were answered.

        Blocks the calling thread; from async code run it with ``anyio.to_thread.run_sync``.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                seen = [i for i in self._invocations if function is None or i.function == function]
                if len(seen) >= count:
                    return seen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(seen)} of {count} invocations within {timeout} s")
                self._changed.wait(remaining)

    def clear(self) -> None:
        """Forget the recorded invocations."""
        with self._changed:
            self._invocations.clear()

    def _record(self, invocation: Invocation) -> None:
        with self._changed:
            self._invocations.append(invocation)
            self._changed.notify_all()

    # -- the API ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        """Answer one Invoke request and record it."""
        request_id = str(uuid.uuid4())
        started, clock = time.time(), time.monotonic()
        name, qualifier, event = request.match_info["function"], None, None
        try:
            name, qualifier = _split_function_name(name, request.query.get("Qualifier"))
            event = await _read_event(request)
            answer = await self._invoke(name, qualifier, event, request_id)
        except InvokeApiError as exc:
            answer = _error_answer(exc)
        answer.headers["x-amzn-RequestId"] = request_id
        self._record(
            Invocation(
                name,
                qualifier,
                event,
                answer.outcome,
                request_id,
                started,
                time.monotonic() - clock,
            )
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def _invoke(
        self, name: str, qualifier: str | None, event: Any, request_id: str
    ) -> _Answer:
        """Run the function, answering as Lambda does for its result, error or timeout."""
        with self._changed:
            function = self._functions.get(name)
        if function is None or (
            qualifier is not None
            and function.qualifiers is not None
            and qualifier not in function.qualifiers
        ):
            raise InvokeApiError(
                f"Function not found: {self.function_arn(name, qualifier)}",
                status=404,
                code="ResourceNotFoundException",
            )
        version = qualifier if qualifier and qualifier.isdigit() else function.version
        context = FunctionContext(
            function_name=name,
            function_version=version,
            invoked_function_arn=self.function_arn(name, qualifier),
            aws_request_id=request_id,
            log_group_name=f"/aws/lambda/{name}",
            _deadline=time.monotonic() + function.timeout,
        )
        answer = await _run(function, event, context)
        answer.headers["X-Amz-Executed-Version"] = version
        return answer


def _split_function_name(raw: str, query_qualifier: str | None) -> tuple[str, str | None]:
    """The function name and qualifier from any form of ``FunctionName`` and ``Qualifier``."""
    parts = raw.split(":")
    if raw.startswith("arn:") and len(parts) in (7, 8) and parts[5] == "function":
        name, embedded = parts[6], (parts[7] if len(parts) == 8 else None)
    elif len(parts) in (3, 4) and parts[1] == "function":
        name, embedded = parts[2], (parts[3] if len(parts) == 4 else None)
    elif len(parts) in (1, 2) and not raw.startswith("arn:"):
        name, embedded = parts[0], (parts[1] if len(parts) == 2 else None)
    else:
        raise InvokeApiError(
            f"Invalid function name: {raw}", status=400, code="InvalidParameterValueException"
        )
    if embedded and query_qualifier and embedded != query_qualifier:
        raise InvokeApiError(
            "The derived qualifier from the function name does not match the specified qualifier.",
            status=400,
            code="InvalidParameterValueException",
        )
    return name, query_qualifier or embedded


async def _read_event(request: web.Request) -> Any:
    """The request payload as JSON, refused as Lambda refuses it when too large or invalid."""
    invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    if invocation_type != "RequestResponse":
        # The poller only invokes synchronously; anything else is a bug worth failing loudly.
        raise InvokeApiError(
            f"InvocationType {invocation_type} is not supported by this test double",
            status=400,
            code="InvalidParameterValueException",
        )
    body = await request.read()
    if len(body) > INVOKE_PAYLOAD_LIMIT:
        raise InvokeApiError(
            f"Request must be smaller than {INVOKE_PAYLOAD_LIMIT} bytes for the InvokeFunction "
            "operation",
            status=413,
            code="RequestTooLargeException",
        )
    if not body:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise InvokeApiError(
            "Could not parse request body into json",
            status=400,
            code="InvalidRequestContentException",
        ) from None


async def _run(function: _Registered, event: Any, context: FunctionContext) -> _Answer:
    """Call the function within its timeout and turn the result into an answer."""
    failure: Exception | None = None
    result: Any = None
    with anyio.move_on_after(function.timeout) as scope:
        try:
            result = await _call(function.handler, event, context)
        except InvokeApiError:
            raise
        except Exception as exc:
            failure = exc
    if scope.cancel_called:
        message = f"{context.aws_request_id} Task timed out after {function.timeout:.2f} seconds"
        timed_out = {"errorType": "Sandbox.Timedout", "errorMessage": message}
        return _function_error(timed_out, "timeout")
    if failure is not None:
        return _function_error(
            {
                "errorMessage": str(failure),
                "errorType": type(failure).__name__,
                "stackTrace": _user_stack(failure),
            },
            "error",
        )
    return _result_answer(result)


def _user_stack(exc: BaseException) -> list[str]:
    """The traceback from the function's own frame on, as Lambda reports it."""
    frames = traceback.extract_tb(exc.__traceback__)
    anyio_dir = os.path.dirname(anyio.__file__)
    while frames and (frames[0].filename == __file__ or anyio_dir in frames[0].filename):
        frames.pop(0)
    return traceback.format_list(frames)


async def _call(handler: Function, event: Any, context: FunctionContext) -> Any:
    """Await an async function; run a sync one in a worker thread it may outlive."""
    if inspect.iscoroutinefunction(handler):
        return await handler(event, context)
    call = functools.partial(handler, event, context)
    result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    return await result if inspect.isawaitable(result) else result


def _result_answer(result: Any) -> _Answer:
    """A 200 answer carrying the function's result."""
    if isinstance(result, bytes):
        return _Answer(200, result, "success")
    try:
        body = json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        error = {"errorMessage": f"Unable to marshal response: {exc}"}
        return _function_error({**error, "errorType": "Runtime.MarshalError"}, "error")
    return _Answer(200, body, "success", {"Content-Type": "application/json"})


def _function_error(payload: dict[str, Any], outcome: str) -> _Answer:
    """A 200 answer flagged ``X-Amz-Function-Error: Unhandled``."""
    headers = {"Content-Type": "application/json", "X-Amz-Function-Error": "Unhandled"}
    return _Answer(200, json.dumps(payload).encode(), outcome, headers)


def _error_answer(exc: InvokeApiError) -> _Answer:
    """A REST-JSON service error, as botocore parses it into a ``ClientError``."""
    body = {"Type": "User" if exc.status < 500 else "Service", "message": exc.message, **exc.extra}
    outcomes = {429: "throttled", 404: "not_found"}
    outcome = outcomes.get(exc.status, "rejected" if exc.status < 500 else "service_error")
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": exc.code}
    return _Answer(exc.status, json.dumps(body).encode(), outcome, headers)
