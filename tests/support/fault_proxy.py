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
make records look older than they are; for ``SubscribeToShard``, each
``SubscribeToShardEvent``). Random choices come from ``random.Random(seed)``, so a schedule
replays for a seed (request interleaving across clients is still the OS's). Every forwarded
request is recorded (operation and parsed body) unless ``record=False``, and every injected fault
is counted by kind (:attr:`injected`).

Enhanced fan-out (``Kinesis_20131202.SubscribeToShard``) is relayed as a stream, frame by frame
(``application/vnd.amazon.eventstream``; frames are split on their length prefix and checked by
botocore's :class:`~botocore.eventstream.EventStreamBuffer`), so a subscription lives as long as
the emulator keeps it open. The per-call faults above apply to a subscribe call before it is
forwarded. On top of them:

* ``inject_initial_response`` (on by default): the proxy sends the ``initial-response`` event
  itself as soon as the emulator answers, and drops the emulator's own if it sends one
  (kinesis-local sends none, and botocore refuses a stream without one);
* :meth:`end_subscriptions` ends the stream cleanly at a frame boundary, as AWS does after a
  subscription's 5 minutes; :meth:`break_subscriptions` aborts the connection, optionally in the
  middle of a frame; :meth:`subscription_error` sends an exception frame and ends (botocore then
  raises ``EventStreamError``, a ``ClientError`` with the code) — each optionally for one shard,
  after some events or seconds, a limited number of times;
* ``exclusive_subscriptions`` refuses a subscribe while another one through the proxy to the same
  (consumer, shard) is open (``ResourceInUseException``), and ``subscribe_rate_limit`` refuses a
  second subscribe to one (consumer, shard) within a second (``LimitExceededException``), as AWS
  does and emulators don't;
* every subscription is observed (:meth:`subscriptions`, :meth:`open_subscriptions`,
  :meth:`wait_open_subscriptions`): its events relayed and how it ended. A client that closes its
  connection (the service dropping a lease) is noticed within :data:`_WATCH_INTERVAL`; the proxy
  then closes the emulator's stream at once.
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
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from tests.support.http_server import ThreadedServer
from tests.support.waiting import wait_until

#: What a rule does to a matching call.
Action = Literal["error", "drop", "lose_drop", "lose_error", "delay"]
#: What to do instead of answering during an outage or after a lost write.
Mode = Literal["error", "drop"]
Operations = str | Iterable[str] | None
#: What a subscription fault does: end the stream cleanly, abort the connection, or send an
#: exception frame and end.
SubscriptionAction = Literal["end", "break", "error"]
#: How a relayed subscription ended: the emulator ended it (``upstream_end``), an injected
#: clean end (``end``), an injected abort (``abort``), an injected exception frame (``error``),
#: the client closed its connection (``client_closed``), the emulator's connection failed or sent
#: a malformed frame (``upstream_broken``), or the proxy stopped (``proxy_closed``).
Ending = Literal[
    "upstream_end", "end", "abort", "error", "client_closed", "upstream_broken", "proxy_closed"
]

SUBSCRIBE = "Kinesis_20131202.SubscribeToShard"
EVENT_STREAM = "application/vnd.amazon.eventstream"
INITIAL_RESPONSE = {
    ":message-type": "event",
    ":event-type": "initial-response",
    ":content-type": "application/json",
}
_FAULT_ENDINGS: dict[SubscriptionAction, Ending] = {
    "end": "end",
    "error": "error",
    "break": "abort",
}
#: How often a relay checks that its client is still connected and its deadlines (seconds).
_WATCH_INTERVAL = 0.05
_RELAYED_HEADERS = (
    "content-type",
    "x-amzn-requestid",
    "x-amz-id-2",
    "etag",
    "x-amzn-errortype",
    "x-amz-function-error",
    "x-amz-log-result",
    "x-amz-executed-version",
)

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


def encode_event(headers: Mapping[str, str | bytes], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32 of those eight
    bytes), headers (name length, name, type 7 string or 6 bytes, value length, value), payload,
    and the CRC32 of everything before it."""
    raw = bytearray()
    for name, value in headers.items():
        kind, data = (7, value.encode()) if isinstance(value, str) else (6, value)
        encoded_name = name.encode()
        raw += bytes([len(encoded_name)]) + encoded_name + bytes([kind])
        raw += len(data).to_bytes(2, "big") + data
    total = 12 + len(raw) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(raw).to_bytes(4, "big")
    head = prelude + zlib.crc32(prelude).to_bytes(4, "big") + bytes(raw) + payload
    return head + zlib.crc32(head).to_bytes(4, "big")


def exception_event(code: str, message: str) -> bytes:
    """The frame AWS sends when a subscription fails; botocore raises ``EventStreamError``."""
    headers = {":message-type": "exception", ":exception-type": code}
    headers[":content-type"] = "application/json"
    return encode_event(headers, json.dumps({"message": message}).encode())


class FrameSplitter:
    """Cuts a byte stream into whole event-stream frames, each kept raw (to relay it as is) and
    decoded by botocore (which checks both CRCs); a bad frame raises botocore's ParserError."""

    def __init__(self) -> None:
        self._pending = b""
        self._decoder = EventStreamBuffer()

    def feed(self, chunk: bytes) -> list[tuple[bytes, EventStreamMessage]]:
        self._pending += chunk
        frames = []
        while len(self._pending) >= 4:
            total = int.from_bytes(self._pending[:4], "big")
            if len(self._pending) < total:
                break
            raw, self._pending = self._pending[:total], self._pending[total:]
            self._decoder.add_data(raw)
            frames.append((raw, next(self._decoder)))
        return frames


@dataclass
class SubscriptionFault:
    """A scheduled fault in relayed subscriptions: fires in a subscription (to ``shard_id``,
    None: any) once it relayed ``after_events`` events or lasted ``after_seconds``, whichever
    comes first, and at most ``remaining`` times in all."""

    action: SubscriptionAction
    shard_id: str | None = None
    after_events: int | None = None
    after_seconds: float | None = None
    remaining: float = 1
    mid_frame: bool = False  # break: cut the next frame in half first
    code: str = "InternalFailureException"
    message: str = "injected"

    def due(self, subscription: Subscription, now: float) -> bool:
        if self.remaining <= 0 or self.shard_id not in (None, subscription.shard_id):
            return False
        late = self.after_seconds is not None and now - subscription.started >= self.after_seconds
        if self.after_events is None:
            return late or self.after_seconds is None
        return late or subscription.events >= self.after_events


@dataclass
class Subscription:
    """One SubscribeToShard relayed through the proxy, as the test sees it."""

    consumer_arn: str
    shard_id: str
    starting_position: dict[str, Any]
    started: float  # time.monotonic()
    #: Event frames relayed to the client, the initial-response not counted (exceptions are).
    events: int = 0
    records: int = 0
    #: Whether the emulator's stream lacked the initial-response the proxy sent.
    injected_initial_response: bool = False
    ending: Ending | None = None  # None while open
    ended: float | None = None

    @property
    def open(self) -> bool:
        return self.ending is None


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
    #: Send the initial-response event at once, dropping the emulator's (kinesis-local has none).
    inject_initial_response: bool = True
    #: Refuse a SubscribeToShard while one to the same (consumer, shard) is open here.
    exclusive_subscriptions: bool = False
    #: Refuse more than one SubscribeToShard a second per (consumer, shard), as AWS does.
    subscribe_rate_limit: bool = False
    _subscriptions: list[Subscription] = field(default_factory=list)
    _subscription_faults: list[SubscriptionFault] = field(default_factory=list)
    _last_subscribe: dict[tuple[str, str], float] = field(default_factory=dict)
    _closing: bool = False

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

    def end_subscriptions(
        self,
        *,
        after_seconds: float | None = None,
        after_events: int | None = None,
        shard_id: str | None = None,
        times: float = 1,
    ) -> SubscriptionFault:
        """End subscriptions cleanly at a frame boundary once they lasted ``after_seconds`` or
        relayed ``after_events`` events (neither: right after the initial response), as AWS
        does after 5 minutes; the client's event loop just ends."""
        fault = SubscriptionFault("end", shard_id, after_events, after_seconds, times)
        return self._add_subscription_fault(fault)

    def break_subscriptions(
        self,
        *,
        after_events: int = 0,
        mid_frame: bool = False,
        after_seconds: float | None = None,
        shard_id: str | None = None,
        times: float = 1,
    ) -> SubscriptionFault:
        """Abort the connection of subscriptions once they relayed ``after_events`` events (or
        lasted ``after_seconds``); ``mid_frame`` first relays half of the next frame, so the
        connection dies inside it."""
        fault = SubscriptionFault(
            "break", shard_id, after_events, after_seconds, times, mid_frame=mid_frame
        )
        return self._add_subscription_fault(fault)

    def subscription_error(
        self,
        *,
        after_events: int = 0,
        code: str = "InternalFailureException",
        message: str = "injected",
        after_seconds: float | None = None,
        shard_id: str | None = None,
        times: float = 1,
    ) -> SubscriptionFault:
        """Send an exception frame (``:exception-type: code``) once subscriptions relayed
        ``after_events`` events, then end them; aiobotocore's event loop raises
        ``botocore.exceptions.EventStreamError`` with ``response["Error"]["Code"] == code``."""
        fault = SubscriptionFault(
            "error", shard_id, after_events, after_seconds, times, code=code, message=message
        )
        return self._add_subscription_fault(fault)

    def _add_subscription_fault(self, fault: SubscriptionFault) -> SubscriptionFault:
        with self._lock:
            self._subscription_faults.append(fault)
        return fault

    def remove(self, rule: Rule | SubscriptionFault) -> None:
        """Unschedule one rule or subscription fault."""
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]
            self._subscription_faults = [f for f in self._subscription_faults if f is not rule]

    def heal(self, operation: str | None = None) -> None:
        """Stop injecting faults into ``operation`` (None: into every operation, subscription
        faults included; ``SubscribeToShard`` also clears the subscription faults)."""
        with self._lock:
            if operation is None or matches(operation, SUBSCRIBE):
                self._subscription_faults.clear()
            if operation is None:
                self._rules.clear()
            else:
                self._rules = [r for r in self._rules if operation not in (r.operations or ())]

    def rewrite(
        self, operation: str, change: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> None:
        """Pass every successful JSON answer to ``operation`` (for ``SubscribeToShard``: every
        ``SubscribeToShardEvent``) through ``change`` (None: stop)."""
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
        """Bodies of the forwarded calls of ``operation`` (named as rules name operations: in
        full, by short name or by pattern), in order."""
        with self._lock:
            return [body for op, body in self.requests if matches(operation, op)]

    def subscriptions(self, shard_id: str | None = None) -> list[Subscription]:
        """The subscriptions relayed so far (to ``shard_id``, None: all), oldest first."""
        with self._lock:
            return [s for s in self._subscriptions if shard_id in (None, s.shard_id)]

    def open_subscriptions(self, shard_id: str | None = None) -> int:
        """How many relayed subscriptions (to ``shard_id``, None: all) are open now."""
        return sum(s.open for s in self.subscriptions(shard_id))

    async def wait_open_subscriptions(
        self, count: int, shard_id: str | None = None, limit: float = 10.0
    ) -> None:
        """Wait (at most ``limit`` seconds) until exactly ``count`` subscriptions (to
        ``shard_id``) are open."""
        what = f"{count} open subscription(s) to {shard_id or 'any shard'} through the proxy"
        await wait_until(lambda: self.open_subscriptions(shard_id) == count, limit, what)

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
        if matches(SUBSCRIBE, operation) and (
            refusal := self._refuse_subscribe(operation, _parsed(body))
        ):
            return refusal
        if self.record:
            with self._lock:
                self.requests.append((operation, _parsed(body)))
        if matches(SUBSCRIBE, operation):
            return await self._subscribe(request, operation, body)
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
            change = self._rewrite_for(operation)
            if change is not None and upstream.status == 200 and data:
                data = json.dumps(change(json.loads(data))).encode()
            return web.Response(body=data, status=upstream.status, headers=_relayed(upstream))

    def _rewrite_for(self, operation: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The :meth:`rewrite` of ``operation`` (named in full, by short name or pattern)."""
        with self._lock:
            if operation in self._rewrites:
                return self._rewrites[operation]
            return next((c for p, c in self._rewrites.items() if matches(p, operation)), None)

    # -- subscriptions (SubscribeToShard) ---------------------------------------------------

    def _refuse_subscribe(self, operation: str, call: dict[str, Any]) -> web.Response | None:
        """The AWS error for a subscribe that ``exclusive_subscriptions`` or
        ``subscribe_rate_limit`` refuses, else None (and the call counts for the rate)."""
        consumer, shard = str(call.get("ConsumerARN")), str(call.get("ShardId"))
        now = time.monotonic()
        with self._lock:
            busy = any(
                s.open and (s.consumer_arn, s.shard_id) == (consumer, shard)
                for s in self._subscriptions
            )
            last = self._last_subscribe.get((consumer, shard), -math.inf)
            if self.exclusive_subscriptions and busy:
                kind, code = "resource_in_use", "ResourceInUseException"
                message = f"Another active subscription exists for this consumer: {consumer}"
            elif self.subscribe_rate_limit and now - last < 1.0:
                kind, code = "limit_exceeded", "LimitExceededException"
                message = f"Rate exceeded for consumer {consumer} and shard {shard}"
            else:
                self._last_subscribe[(consumer, shard)] = now
                return None
            self.injected[kind] += 1
            self._faulted[operation] = self._faulted.get(operation, 0) + 1
        return error_response("json", 400, code, message)

    async def _subscribe(
        self, request: web.Request, operation: str, body: bytes
    ) -> web.StreamResponse:
        """Forward a SubscribeToShard and relay its event stream frame by frame; an error
        answer (not an event stream) is relayed whole, like any other call."""
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        # A subscription lasts minutes: the session's total timeout must not cut it.
        endless = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._session.post(
            self.upstream + request.path_qs, data=body, headers=headers, timeout=endless
        ) as upstream:
            if upstream.status != 200 or EVENT_STREAM not in upstream.headers.get(
                "Content-Type", ""
            ):
                data = await upstream.read()
                return web.Response(body=data, status=upstream.status, headers=_relayed(upstream))
            for rule in self._draw(operation, ("lose_drop", "lose_error")):
                upstream.close()
                if rule.action == "lose_drop":
                    return self._hang_up(request)
                return error_response("json", 500, "InternalFailure", "response lost (injected)")
            call = _parsed(body)
            subscription = Subscription(
                str(call.get("ConsumerARN")),
                str(call.get("ShardId")),
                dict(call.get("StartingPosition") or {}),
                time.monotonic(),
            )
            response = web.StreamResponse(status=200, headers=_relayed(upstream))
            with self._lock:
                self._subscriptions.append(subscription)
            try:
                await response.prepare(request)
                ending = await self._relay(request, upstream, response, subscription, operation)
            except (TimeoutError, ConnectionError, aiohttp.ClientError) as failure:
                # Writing to a closed client raises ConnectionResetError (aiohttp's own is both
                # that and a ClientError); anything else comes from the emulator's side.
                client = isinstance(failure, ConnectionResetError) or _gone(request)
                ending = self._ended(subscription, "client_closed" if client else "upstream_broken")
            finally:
                upstream.close()  # at once: the emulator's side of the subscription ends too
                if subscription.ending is None:
                    with self._lock:
                        subscription.ending = "upstream_broken"
                        subscription.ended = time.monotonic()
            if ending in ("abort", "upstream_broken", "proxy_closed"):
                _abort(request)
            return response

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        subscription: Subscription,
        operation: str,
    ) -> Ending:
        """Copy frames until the emulator ends the stream, a fault fires, the client leaves or
        the proxy stops; return (and record) how the subscription ended."""
        frames = FrameSplitter()
        # With injection on, the client gets its initial-response at once (as from AWS; botocore
        # waits for it before returning from the call), and the emulator's own is swallowed.
        answered = self.inject_initial_response
        if answered:
            await response.write(encode_event(INITIAL_RESPONSE, b"{}"))
        first = True
        while True:
            if self._closing:
                return self._ended(subscription, "proxy_closed")
            if _gone(request):
                return self._ended(subscription, "client_closed")
            # A mid-frame break waits for a frame to cut; every other fault fires between frames.
            if answered and (fault := self._fire(subscription, with_frame=False)):
                return await self._inject(response, subscription, fault, None)
            try:
                chunk = await asyncio.wait_for(upstream.content.readany(), _WATCH_INTERVAL)
            except TimeoutError:
                continue
            if not chunk:
                # Recorded before the client can see it: a test woken by the end finds it.
                self._ended(subscription, "upstream_end")
                await response.write_eof()
                return "upstream_end"
            try:
                decoded = frames.feed(chunk)
            except ParserError:  # a corrupt frame (length, CRC) from the emulator
                return self._ended(subscription, "upstream_broken")
            for raw, message in decoded:
                initial = message.headers.get(":event-type") == "initial-response"
                if first:
                    first = False
                    subscription.injected_initial_response = answered and not initial
                    if initial and not answered:
                        await response.write(raw)
                    answered = True
                    if initial:
                        continue
                if fault := self._fire(subscription, with_frame=True):
                    return await self._inject(response, subscription, fault, raw)
                # Counted first: a client never sees an event the proxy has not counted.
                self._count(subscription, message)
                await response.write(self._rewritten(raw, message, operation))

    def _fire(self, subscription: Subscription, *, with_frame: bool) -> SubscriptionFault | None:
        """The first subscription fault due in ``subscription`` that can fire now (a mid-frame
        break needs a frame ``with_frame``), counted as fired."""
        now = time.monotonic()
        with self._lock:
            for fault in self._subscription_faults:
                needs_frame = fault.action == "break" and fault.mid_frame
                if fault.due(subscription, now) and (with_frame or not needs_frame):
                    fault.remaining -= 1
                    self.injected[f"subscription_{fault.action}"] += 1
                    return fault
        return None

    async def _inject(
        self,
        response: web.StreamResponse,
        subscription: Subscription,
        fault: SubscriptionFault,
        pending: bytes | None,
    ) -> Ending:
        """Carry out ``fault``; ``pending`` is the frame that arrived when it fired (if any),
        not relayed (a mid-frame break sends its first half). The ending is recorded before
        the client can see it."""
        self._ended(subscription, _FAULT_ENDINGS[fault.action])
        if fault.action == "end":
            await response.write_eof()
            return "end"
        if fault.action == "error":
            with self._lock:
                subscription.events += 1
            await response.write(exception_event(fault.code, fault.message))
            await response.write_eof()
            return "error"
        if pending is not None and fault.mid_frame:
            await response.write(pending[: len(pending) // 2])
        return "abort"

    def _rewritten(self, raw: bytes, message: EventStreamMessage, operation: str) -> bytes:
        """``raw``, or its re-encoding when a :meth:`rewrite` changes the operation's events."""
        change = self._rewrite_for(operation)
        if change is None or message.headers.get(":event-type") != "SubscribeToShardEvent":
            return raw
        return encode_event(
            message.headers, json.dumps(change(json.loads(message.payload))).encode()
        )

    def _count(self, subscription: Subscription, message: EventStreamMessage) -> None:
        records = 0
        if message.headers.get(":event-type") == "SubscribeToShardEvent":
            records = len(json.loads(message.payload).get("Records") or ())
        with self._lock:
            subscription.events += 1
            subscription.records += records

    def _ended(self, subscription: Subscription, ending: Ending) -> Ending:
        with self._lock:
            subscription.ending, subscription.ended = ending, time.monotonic()
        return ending

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
        # Open subscriptions would hold the server's shutdown for minutes: abort them first.
        self._closing = True
        if self._server is not None:
            self._server.stop()


def _relayed(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    """The emulator's answer headers a client may read (never framing ones)."""
    return {k: v for k, v in upstream.headers.items() if k.lower() in _RELAYED_HEADERS}


def _gone(request: web.Request) -> bool:
    """Whether the client closed its connection (aiohttp drops the transport then)."""
    return request.transport is None or request.transport.is_closing()


def _abort(request: web.Request) -> None:
    """Reset the client's connection, discarding anything unsent (no clean end of stream)."""
    if request.transport is not None:
        request.transport.abort()


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
