"""A fault-scheduling HTTP proxy in front of an AWS emulator, for failure-path tests.

Emulators cannot be told to expire an iterator now, throttle the next read, go dark for ten
seconds or lose the answer to a write they applied, and tests must not patch boto. So the
service's clients are pointed at this proxy, which forwards every request to the emulator
unchanged unless a test scheduled a fault for it. The client sees real HTTP, real AWS error
bodies and real broken connections.

Every AWS dependency goes through it (Kinesis, DynamoDB Streams, the DynamoDB lease table, SQS,
SNS, S3 and the Lambda Invoke API), so operations are named per protocol:

* JSON protocols: the ``X-Amz-Target`` header (``Kinesis_20131202.GetRecords``,
  ``DynamoDB_20120810.UpdateItem``, ``AmazonSQS.ReceiveMessage``);
* query protocol: the service and the ``Action`` form field (``SNS.Publish``);
* REST protocols: the service and the call the method and path pattern make
  (``S3.PutObject``, ``Lambda.Invoke`` for ``POST /2015-03-31/functions/F/invocations``).

A test names operations exactly, by their short name (``GetRecords`` matches every
``*.GetRecords``) or by a shell pattern (``DynamoDB_20120810.*``); ``None`` means every call.

Faults (each may be limited to a number of calls, a probability, a start delay and a duration):

* :meth:`fail`, :meth:`error_rate`, :meth:`throttle`: answer with an AWS error instead of
  forwarding;
* :meth:`outage`: every matching call fails (an error answer, or a dropped connection) for a
  while;
* :meth:`drop`: close the connection without answering, the request never forwarded;
* :meth:`lose_responses`: forward (the emulator applies the write), then drop the connection or
  answer 500 instead of the real answer;
* :meth:`latency`: hold the request before forwarding it.

:meth:`rewrite` changes the JSON of the emulator's successful answers to one operation (e.g.
make records look older than they are). Random choices come from ``random.Random(seed)``, so a
schedule replays for a seed (request interleaving across clients is still the OS's). Every
forwarded request is recorded (operation and parsed body) unless ``record=False``, and every
injected fault is counted by kind (:attr:`injected`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

from tests.support.http_server import ThreadedServer

#: What a rule does to a matching call.
Action = Literal["error", "drop", "lose_drop", "lose_error", "delay"]
#: What to do instead of answering during an outage or after a lost write.
Mode = Literal["error", "drop"]
Operations = str | Iterable[str] | None

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_LAMBDA_INVOKE = re.compile(r"^/2015-03-31/functions/[^/]+/invocations/?$")
_SERVICE_NAMES = {"sns": "SNS", "s3": "S3", "lambda": "Lambda", "sqs": "SQS", "sts": "STS"}
_S3_CALLS = {
    ("PUT", True): "PutObject",
    ("GET", True): "GetObject",
    ("HEAD", True): "HeadObject",
    ("DELETE", True): "DeleteObject",
    ("PUT", False): "CreateBucket",
    ("GET", False): "ListObjects",
    ("HEAD", False): "HeadBucket",
    ("DELETE", False): "DeleteBucket",
}


@dataclass
class Rule:
    """One scheduled fault: what it does, to which calls, how often and when."""

    action: Action
    kind: str  # how it is counted in :attr:`FaultProxy.injected`
    operations: tuple[str, ...] | None  # None: every call
    rate: float = 1.0
    remaining: float = math.inf
    start: float = 0.0  # time.monotonic() bounds
    end: float = math.inf
    status: int = 500
    code: str = "InternalFailure"
    message: str = "injected"
    seconds: float = 0.0  # the delay of a latency rule
    jitter: float = 0.0

    def applies(self, operation: str, now: float) -> bool:
        if self.remaining <= 0 or not self.start <= now < self.end:
            return False
        return self.operations is None or any(
            matches(pattern, operation) for pattern in self.operations
        )


def matches(pattern: str, operation: str) -> bool:
    """Whether ``pattern`` (an exact name, a short name or a shell pattern) names ``operation``."""
    return (
        pattern == operation
        or operation.endswith("." + pattern)
        or fnmatch.fnmatchcase(operation, pattern)
    )


def operation_name(method: str, path: str, headers: Any, body: bytes) -> str:
    """The AWS operation a request calls (see the module docstring for the naming)."""
    target = headers.get("X-Amz-Target")
    if target:
        return str(target)
    found = _CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
    service = found.group(1) if found else ""
    label = _SERVICE_NAMES.get(service, service or "REST")
    form = "x-www-form-urlencoded" in headers.get("Content-Type", "")
    if form and b"Action=" in body:
        action = urllib.parse.parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        return f"{label}.{action}"
    if _LAMBDA_INVOKE.match(path):
        return "Lambda.Invoke"
    if service == "s3":
        has_key = "/" in path.strip("/")
        return "S3." + _S3_CALLS.get((method, has_key), method)
    return f"{label}.{method} {re.sub(r'/[^/]+', '/{}', path) or '/'}"


def _protocol(operation: str, headers: Any) -> str:
    if headers.get("X-Amz-Target"):
        return "json"
    if operation.startswith(("SNS.", "SQS.", "STS.")) and " " not in operation:
        return "query"
    return "rest-json" if operation.startswith("Lambda.") else "rest-xml"


def error_response(protocol: str, status: int, code: str, message: str) -> web.Response:
    """An AWS error in the protocol's own format, so botocore parses the code."""
    if protocol == "json":
        body = json.dumps({"__type": code, "message": message})
        return web.Response(text=body, status=status, content_type="application/x-amz-json-1.1")
    if protocol == "rest-json":
        return web.Response(
            text=json.dumps({"Type": "Service", "message": message}),
            status=status,
            content_type="application/json",
            headers={"x-amzn-ErrorType": code},
        )
    error = f"<Code>{code}</Code><Message>{message}</Message>"
    if protocol == "query":
        kind = "Sender" if status < 500 else "Receiver"
        text = (
            f"<ErrorResponse><Error><Type>{kind}</Type>{error}</Error>"
            "<RequestId>fault-proxy</RequestId></ErrorResponse>"
        )
    else:
        text = f"<Error>{error}<RequestId>fault-proxy</RequestId></Error>"
    return web.Response(text=text, status=status, content_type="text/xml")


def _as_tuple(operations: Operations) -> tuple[str, ...] | None:
    if operations is None:
        return None
    if isinstance(operations, str):
        return (operations,)
    return tuple(operations)


@dataclass
class FaultProxy:
    upstream: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seed: int | None = None
    record: bool = True
    #: Injected faults by kind (error, throttle, outage, drop, lost_response, latency).
    injected: Counter[str] = field(default_factory=Counter)
    _rules: list[Rule] = field(default_factory=list)
    _faulted: dict[str, int] = field(default_factory=dict)
    _rewrites: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(init=False)
    url: str = ""
    _server: ThreadedServer | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    # -- scheduling faults ---------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Schedule ``rule`` (the methods below build rules for the common cases)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def _window(self, at: float, seconds: float | None) -> tuple[float, float]:
        """(start, end) on the monotonic clock: from ``at`` s from now, for ``seconds``."""
        start = time.monotonic() + at
        return start, math.inf if seconds is None else start + seconds

    def fail(
        self,
        operation: str,
        *,
        code: str,
        status: int = 400,
        message: str = "injected",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` with an AWS error."""
        ops = (operation,)
        self.add(Rule("error", "error", ops, 1.0, times, status=status, code=code, message=message))

    def error_rate(
        self,
        rate: float,
        operations: Operations = None,
        *,
        code: str = "InternalFailure",
        status: int = 500,
        seconds: float | None = None,
        at: float = 0.0,
    ) -> Rule:
        """Answer a fraction ``rate`` of the matching calls with an AWS error, for ``seconds``
        (None: until healed) starting ``at`` seconds from now."""
        start, end = self._window(at, seconds)
        return self.add(
            Rule(
                "error",
                "error",
                _as_tuple(operations),
                rate,
                status=status,
                code=code,
                start=start,
                end=end,
            )
        )

    def throttle(
        self,
        rate: float,
        operations: Operations = None,
        *,
        code: str = "ProvisionedThroughputExceededException",
        status: int = 400,
        seconds: float | None = None,
        at: float = 0.0,
    ) -> Rule:
        """Throttle a fraction ``rate`` of the matching calls (Kinesis' and DynamoDB's code by
        default; Lambda's is ``TooManyRequestsException``, 429)."""
        start, end = self._window(at, seconds)
        ops = _as_tuple(operations)
        return self.add(
            Rule("error", "throttle", ops, rate, status=status, code=code, start=start, end=end)
        )

    def outage(
        self,
        seconds: float,
        operations: Operations = None,
        *,
        at: float = 0.0,
        mode: Mode = "error",
        code: str = "ServiceUnavailable",
        status: int = 503,
    ) -> Rule:
        """Fail every matching call for ``seconds``, starting ``at`` seconds from now: answer
        ``status``/``code`` (``mode="error"``) or close the connection unanswered (``"drop"``)."""
        start, end = self._window(at, seconds)
        action: Action = "error" if mode == "error" else "drop"
        ops = _as_tuple(operations)
        return self.add(Rule(action, "outage", ops, status=status, code=code, start=start, end=end))

    def drop(
        self,
        rate: float = 1.0,
        operations: Operations = None,
        *,
        times: float = math.inf,
        seconds: float | None = None,
        at: float = 0.0,
    ) -> Rule:
        """Close the connection of matching calls without forwarding or answering them."""
        start, end = self._window(at, seconds)
        return self.add(
            Rule("drop", "drop", _as_tuple(operations), rate, times, start=start, end=end)
        )

    def lose_responses(
        self,
        operations: Operations = None,
        *,
        rate: float = 1.0,
        times: float = math.inf,
        mode: Mode = "drop",
        seconds: float | None = None,
        at: float = 0.0,
    ) -> Rule:
        """Forward matching calls (the upstream applies them), then drop the connection
        (``mode="drop"``) or answer 500 InternalFailure instead of the real answer."""
        start, end = self._window(at, seconds)
        action: Action = "lose_drop" if mode == "drop" else "lose_error"
        ops = _as_tuple(operations)
        return self.add(Rule(action, "lost_response", ops, rate, times, start=start, end=end))

    def latency(
        self,
        seconds: float,
        operations: Operations = None,
        *,
        jitter: float = 0.0,
        rate: float = 1.0,
        duration: float | None = None,
        at: float = 0.0,
    ) -> Rule:
        """Hold matching calls ``seconds`` (plus up to ``jitter``) before forwarding them."""
        start, end = self._window(at, duration)
        ops = _as_tuple(operations)
        return self.add(
            Rule(
                "delay", "latency", ops, rate, seconds=seconds, jitter=jitter, start=start, end=end
            )
        )

    def remove(self, rule: Rule) -> None:
        """Unschedule one rule."""
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def heal(self, operation: str | None = None) -> None:
        """Stop injecting faults into ``operation`` (None: into every operation)."""
        with self._lock:
            if operation is None:
                self._rules.clear()
            else:
                self._rules = [r for r in self._rules if operation not in (r.operations or ())]

    def rewrite(
        self, operation: str, change: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> None:
        """Pass every successful JSON answer to ``operation`` through ``change`` (None: stop)."""
        with self._lock:
            if change is None:
                self._rewrites.pop(operation, None)
            else:
                self._rewrites[operation] = change

    # -- what happened ----------------------------------------------------------------------

    def faulted(self, operation: str) -> int:
        """How many calls of ``operation`` were answered with an injected error."""
        with self._lock:
            return self._faulted.get(operation, 0)

    def calls(self, operation: str) -> list[dict[str, Any]]:
        """Bodies of the forwarded calls of ``operation``, in order."""
        with self._lock:
            return [body for op, body in self.requests if op == operation]

    # -- serving ----------------------------------------------------------------------------

    def _draw(self, operation: str, actions: tuple[Action, ...]) -> list[Rule]:
        """The rules with one of ``actions`` that fire for this call (each counted)."""
        now = time.monotonic()
        fired = []
        with self._lock:
            for rule in self._rules:
                if rule.action not in actions or not rule.applies(operation, now):
                    continue
                if rule.rate < 1.0 and self._random.random() >= rule.rate:
                    continue
                rule.remaining -= 1
                self.injected[rule.kind] += 1
                if rule.action == "error":
                    self._faulted[operation] = self._faulted.get(operation, 0) + 1
                fired.append(rule)
                if rule.action != "delay":
                    break  # one failure per call; delays add up
        return fired

    def _delay(self, rules: list[Rule]) -> float:
        with self._lock:
            return sum(r.seconds + self._random.uniform(0, r.jitter) for r in rules)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation = operation_name(request.method, request.path, request.headers, body)
        if delays := self._draw(operation, ("delay",)):
            await asyncio.sleep(self._delay(delays))
        for rule in self._draw(operation, ("error", "drop")):
            if rule.action == "drop":
                return self._hang_up(request)
            protocol = _protocol(operation, request.headers)
            return error_response(protocol, rule.status, rule.code, rule.message)
        if self.record:
            with self._lock:
                self.requests.append((operation, _parsed(body)))
        answer = await self._forward(request, operation, body)
        for rule in self._draw(operation, ("lose_drop", "lose_error")):
            if rule.action == "lose_drop":
                return self._hang_up(request)
            protocol = _protocol(operation, request.headers)
            return error_response(protocol, 500, "InternalFailure", "response lost (injected)")
        return answer

    def _hang_up(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer; aiohttp writes nothing to a closed one."""
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    async def _forward(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            data = await upstream.read()
            with self._lock:
                change = self._rewrites.get(operation)
            if change is not None and upstream.status == 200 and data:
                data = json.dumps(change(json.loads(data))).encode()
            passed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower()
                in ("content-type", "x-amzn-requestid", "x-amz-id-2", "etag", "x-amzn-errortype")
                or k.lower() in ("x-amz-function-error", "x-amz-log-result")
                or k.lower() == "x-amz-executed-version"
            }
            return web.Response(body=data, status=upstream.status, headers=passed)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.cleanup_ctx.append(self._upstream_session)
        return app

    async def _upstream_session(self, app: web.Application) -> AsyncIterator[None]:
        # Opened and closed in the server's own loop, the one that forwards through it.
        self._session = aiohttp.ClientSession()
        yield
        await self._session.close()

    def __enter__(self) -> FaultProxy:
        self._server = ThreadedServer(self._app, name="fault-proxy").start()
        self.url = self._server.url
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()


def _parsed(body: bytes) -> dict[str, Any]:
    """A request body as a dict: JSON, or a query form (first value per field), else empty."""
    if not body:
        return {}
    try:
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    if b"=" in body[:256]:
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        return {name: values[0] for name, values in form.items()}
    return {}
