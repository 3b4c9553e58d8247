"""Integration tests of the targets: Lambda, HTTP and in-process Python handlers.

The Lambda target is exercised through a real aiobotocore client talking HTTP to the
Invoke-API test double (``tests.support.invoke_api``); nothing in botocore is patched. The
HTTP target talks to a small aiohttp server on the test's own loop. Every test asserts the
exact :class:`~poller.types.Outcome` and the fields the pipeline reads.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import pytest
import structlog.testing
from aiohttp import web

from poller.aws.clients import ClientFactory
from poller.config import HttpTargetConfig, LambdaTargetConfig, PythonTargetConfig
from poller.errors import ConfigError, HandlerImportError
from poller.targets import build_target
from poller.targets.http import REQUEST_ID_HEADER, HttpTarget
from poller.targets.lambda_ import (
    LAMBDA_INVOKE_CONFIG,
    LambdaTarget,
    encode_event,
    function_arn_for,
)
from poller.targets.python import PythonTarget, load_handler
from poller.types import InvokeResult, Outcome, Target
from tests.support import handlers
from tests.support.invoke_api import (
    INVOKE_PAYLOAD_LIMIT,
    InvokeApiError,
    InvokeApiServer,
    Throttled,
)

pytestmark = pytest.mark.anyio

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
ACCOUNT = "123456789012"
EVENT = {
    "Records": [
        {
            "eventID": "shardId-000000000000:49590338",
            "eventSource": "aws:kinesis",
            "kinesis": {"sequenceNumber": "49590338", "data": "aGVsbG8=", "partitionKey": "k"},
        }
    ]
}
FAILURES = {"batchItemFailures": [{"itemIdentifier": "49590338"}]}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- Lambda ----------------------------------------------------------------------------------


class Gathering:
    """Invocations of "gathering" in flight now, the most ever in flight at once, and the
    event that lets them answer (made in the server's own event loop, on first use)."""

    now = 0
    most = 0
    full: anyio.Event | None = None

    @classmethod
    def reset(cls) -> None:
        cls.now = cls.most = 0
        cls.full = None


#: How many invocations "gathering" waits for before it answers (or GATHER_SECONDS pass).
GATHER = 25
GATHER_SECONDS = 10.0


async def _gathering(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers once GATHER invocations are in flight at once (or after GATHER_SECONDS): how
    many a client runs concurrently shows in ``Gathering.most``, whatever the load."""
    if Gathering.full is None:
        Gathering.full = anyio.Event()
    Gathering.now += 1
    Gathering.most = max(Gathering.most, Gathering.now)
    if Gathering.most >= GATHER:
        Gathering.full.set()
    try:
        with anyio.move_on_after(GATHER_SECONDS):
            await Gathering.full.wait()
    finally:
        Gathering.now -= 1
    return {"request": context.aws_request_id}


def _service_failure(event: dict[str, Any], context: Any) -> None:
    raise InvokeApiError("Internal error", status=500, code="ServiceException")


def _throttle(event: dict[str, Any], context: Any) -> None:
    raise Throttled()


@pytest.fixture(scope="module")
def invoke_api() -> Iterator[InvokeApiServer]:
    """One Invoke-API server for the module, with the functions the tests call."""
    with InvokeApiServer(account_id=ACCOUNT) as server:
        server.register("partial", lambda event, context: FAILURES)
        server.register("raw-text", lambda event, context: b"not json at all")
        server.register("empty", lambda event, context: b"")
        server.register("fail", handlers.fail)
        server.register("slow", handlers.sleep, timeout=0.3)
        server.register("gathering", _gathering, timeout=GATHER_SECONDS + 5.0)
        server.register("throttled", _throttle)
        server.register("broken", _service_failure)
        server.register("versioned", handlers.count_records, qualifiers=["7", "live"])
        yield server


@pytest.fixture
async def lambda_client(invoke_api: InvokeApiServer) -> AsyncIterator[Any]:
    """A real aiobotocore Lambda client, configured as the service configures it."""
    factory = ClientFactory(
        region="us-east-1", endpoint_url=invoke_api.url, credentials=CREDENTIALS
    )
    try:
        yield await factory.client("lambda", purpose="invoke", config=LAMBDA_INVOKE_CONFIG)
    finally:
        await factory.aclose()


def lambda_target(client: Any, name: str, qualifier: str | None = None) -> LambdaTarget:
    arn = function_arn_for(name, qualifier, partition="aws", region="us-east-1", account_id=ACCOUNT)
    return LambdaTarget(client, function_name=name, qualifier=qualifier, function_arn=arn)


async def build_in_test_account(config: Any, factory: ClientFactory) -> Target:
    """:func:`build_target` in partition aws, region us-east-1 and the tests' account."""
    return await build_target(
        config, clients=factory, partition="aws", region="us-east-1", account_id=ACCOUNT
    )


def only_invocation(server: InvokeApiServer, result: InvokeResult) -> Any:
    """The one recorded request that produced ``result`` (so botocore did not retry)."""
    matching = [i for i in server.invocations() if i.request_id == result.request_id]
    assert len(matching) == 1
    return matching[0]


async def test_lambda_success_returns_the_json_response(
    invoke_api: InvokeApiServer, lambda_client: Any
) -> None:
    result = await lambda_target(lambda_client, "partial").invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == FAILURES
    assert result.payload_is_json is True
    assert result.status_code == 200
    assert result.function_error is None
    assert result.executed_version == "$LATEST"
    assert result.error is None
    recorded = only_invocation(invoke_api, result)
    assert (recorded.function, recorded.qualifier, recorded.event) == ("partial", None, EVENT)


@pytest.mark.parametrize(
    ("function", "payload", "is_json"),
    [("raw-text", "not json at all", False), ("empty", None, True)],
)
async def test_lambda_success_with_a_body_that_is_not_json(
    lambda_client: Any, function: str, payload: Any, is_json: bool
) -> None:
    result = await lambda_target(lambda_client, function).invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == payload
    assert result.payload_is_json is is_json


async def test_lambda_function_error_carries_the_error_payload(
    invoke_api: InvokeApiServer, lambda_client: Any
) -> None:
    result = await lambda_target(lambda_client, "fail").invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.status_code == 200
    assert result.payload["errorType"] == "ValueError"
    assert result.payload["errorMessage"] == "boom"
    assert result.error == "function error (Unhandled): ValueError"  # no message: may hold data
    assert only_invocation(invoke_api, result).outcome == "error"


async def test_lambda_timeout_is_its_own_outcome(lambda_client: Any) -> None:
    result = await lambda_target(lambda_client, "slow").invoke({"sleep": 1.0})

    assert result.outcome is Outcome.TIMEOUT
    assert result.function_error == "Unhandled"
    assert result.status_code == 200
    assert result.payload == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"{result.request_id} Task timed out after 0.30 seconds",
    }


@pytest.mark.parametrize(
    ("function", "outcome", "status", "error_mentions", "recorded_outcome"),
    [
        pytest.param(
            "throttled",
            Outcome.THROTTLE,
            429,
            ("TooManyRequestsException", "ReservedFunctionConcurrentInvocationLimitExceeded"),
            "throttled",
            id="throttle",
        ),
        pytest.param(
            "broken", Outcome.SERVICE_ERROR, 500, ("ServiceException",), "service_error", id="5xx"
        ),
    ],
)
async def test_lambda_throttle_and_service_5xx_are_not_retried_by_botocore(
    invoke_api: InvokeApiServer,
    lambda_client: Any,
    function: str,
    outcome: Outcome,
    status: int,
    error_mentions: tuple[str, ...],
    recorded_outcome: str,
) -> None:
    """A throttle and a service 5xx each come back as their outcome after one request: the
    pipeline, not botocore, decides about retries."""
    result = await lambda_target(lambda_client, function).invoke(EVENT)

    assert result.outcome is outcome
    assert result.status_code == status
    assert result.error is not None
    for mention in error_mentions:
        assert mention in result.error
    assert only_invocation(invoke_api, result).outcome == recorded_outcome


async def test_lambda_unknown_function_is_a_service_error(lambda_client: Any) -> None:
    result = await lambda_target(lambda_client, "missing").invoke(EVENT)

    assert result.outcome is Outcome.SERVICE_ERROR
    assert result.status_code == 404
    assert result.error is not None
    assert "ResourceNotFoundException" in result.error
    assert f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:missing" in result.error


async def test_lambda_payload_over_the_limit_is_a_function_error(lambda_client: Any) -> None:
    big = {"Records": [{"data": "x" * INVOKE_PAYLOAD_LIMIT}]}

    result = await lambda_target(lambda_client, "partial").invoke(big)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.status_code == 413
    assert result.error is not None
    assert "payload limit" in result.error
    assert "RequestTooLargeException" in result.error


async def test_lambda_unreachable_endpoint_is_a_quick_service_error() -> None:
    factory = ClientFactory(
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        credentials=CREDENTIALS,
    )
    try:
        client = await factory.client("lambda", purpose="invoke", config=LAMBDA_INVOKE_CONFIG)
        started = time.monotonic()
        result = await lambda_target(client, "partial").invoke(EVENT)
    finally:
        await factory.aclose()

    assert time.monotonic() - started < 5
    assert result.outcome is Outcome.SERVICE_ERROR
    assert result.status_code is None
    assert result.error is not None
    assert "EndpointConnectionError" in result.error
    assert "127.0.0.1" in result.error
    assert uuid.UUID(result.request_id)


@pytest.mark.parametrize(("qualifier", "version"), [("7", "7"), ("live", "$LATEST")])
async def test_lambda_qualifier_is_passed_through(
    invoke_api: InvokeApiServer, lambda_client: Any, qualifier: str, version: str
) -> None:
    target = lambda_target(lambda_client, "versioned", qualifier)

    result = await target.invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"count": 1}
    assert result.executed_version == version
    assert only_invocation(invoke_api, result).qualifier == qualifier
    assert (
        target.function_arn == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:versioned:{qualifier}"
    )


async def test_lambda_unknown_qualifier_is_a_service_error(lambda_client: Any) -> None:
    result = await lambda_target(lambda_client, "versioned", "9").invoke(EVENT)

    assert result.outcome is Outcome.SERVICE_ERROR
    assert result.status_code == 404


async def test_lambda_function_named_by_arn(
    invoke_api: InvokeApiServer, lambda_client: Any
) -> None:
    arn = invoke_api.function_arn("versioned", "live")
    target = LambdaTarget(lambda_client, function_name=arn, qualifier=None, function_arn=arn)

    result = await target.invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    recorded = only_invocation(invoke_api, result)
    assert (recorded.function, recorded.qualifier) == ("versioned", "live")


async def test_lambda_invocations_run_concurrently(lambda_client: Any) -> None:
    """25 invocations at once are all in flight together at the function: botocore's default
    pool of 10 connections would hold the others back (counted by the function, not timed)."""
    target = lambda_target(lambda_client, "gathering")
    results: list[InvokeResult] = []
    Gathering.reset()

    async def one() -> None:
        results.append(await target.invoke(EVENT))

    async with anyio.create_task_group() as tg:
        for _ in range(GATHER):
            tg.start_soon(one)

    assert Gathering.most == GATHER
    assert [r.outcome for r in results] == [Outcome.SUCCESS] * GATHER
    assert len({r.request_id for r in results}) == GATHER


@pytest.mark.parametrize(
    ("name", "qualifier", "expected"),
    [
        ("fn", None, "arn:aws:lambda:us-east-1:123456789012:function:fn"),
        ("fn", "live", "arn:aws:lambda:us-east-1:123456789012:function:fn:live"),
        ("fn:3", None, "arn:aws:lambda:us-east-1:123456789012:function:fn:3"),
        ("999999999999:function:fn", "2", "arn:aws:lambda:us-east-1:999999999999:function:fn:2"),
        (
            "arn:aws-cn:lambda:cn-north-1:999999999999:function:fn",
            None,
            "arn:aws-cn:lambda:cn-north-1:999999999999:function:fn",
        ),
        (
            "arn:aws:lambda:eu-west-1:999999999999:function:fn",
            "prod",
            "arn:aws:lambda:eu-west-1:999999999999:function:fn:prod",
        ),
        (
            "arn:aws:lambda:eu-west-1:999999999999:function:fn:prod",
            "prod",
            "arn:aws:lambda:eu-west-1:999999999999:function:fn:prod",
        ),
    ],
)
def test_function_arn_formation(name: str, qualifier: str | None, expected: str) -> None:
    arn = function_arn_for(name, qualifier, partition="aws", region="us-east-1", account_id=ACCOUNT)
    assert arn == expected


def test_events_are_sent_as_compact_utf8_json() -> None:
    assert encode_event({"a": [1, "é"], "b": None}) == '{"a":[1,"é"],"b":null}'.encode()
    # A lone surrogate cannot be UTF-8; it is sent escaped, as the source had it.
    assert encode_event({"a": "\ud800"}) == b'{"a":"\\ud800"}'


async def test_build_target_makes_a_lambda_target(invoke_api: InvokeApiServer) -> None:
    factory = ClientFactory(
        region="us-east-1", endpoint_url=invoke_api.url, credentials=CREDENTIALS
    )
    config = LambdaTargetConfig(type="lambda", function_name="partial")
    try:
        target = await build_in_test_account(config, factory)
        result = await target.invoke(EVENT)
        await target.aclose()
    finally:
        await factory.aclose()

    assert target.function_arn == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:partial"
    assert result.outcome is Outcome.SUCCESS
    assert result.payload == FAILURES


async def test_build_target_rejects_an_unknown_type() -> None:
    factory = ClientFactory(region="us-east-1", credentials=CREDENTIALS)
    with pytest.raises(ConfigError, match="unknown target type 'kafka'"):
        await build_in_test_account(SimpleNamespace(type="kafka"), factory)


# -- HTTP ------------------------------------------------------------------------------------


class Endpoint:
    """A small HTTP endpoint on the test's loop that records what it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.release = anyio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        answers: dict[str, Callable[[], Awaitable[web.StreamResponse]]] = {
            "/json": self._json,
            "/slow": self._slow,
        }
        if request.path in answers:
            return await answers[request.path]()
        fixed = {
            "/empty": web.Response(status=200),
            "/text": web.Response(text="accepted"),
            "/created": web.Response(status=201, text='{"ok": true}'),
            "/500": web.Response(status=500, text='{"error": "oops"}'),
            "/404": web.Response(status=404),
            "/429": web.Response(status=429),
            "/redirect": web.Response(status=302, headers={"Location": "/json"}),
        }
        return fixed[request.path]

    async def _json(self) -> web.StreamResponse:
        return web.json_response(FAILURES)

    async def _slow(self) -> web.StreamResponse:
        await self.release.wait()
        return web.json_response({})


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    server = Endpoint()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def http_target(url: str, timeout: float = 5.0, **headers: str) -> HttpTarget:
    return HttpTarget(None, url=url, headers=headers, timeout_seconds=timeout)


async def invoke_once(target: Target, event: dict[str, Any] = EVENT) -> InvokeResult:
    try:
        return await target.invoke(event)
    finally:
        await target.aclose()


async def test_http_2xx_with_json_body_is_success(endpoint: Endpoint) -> None:
    result = await invoke_once(http_target(endpoint.url + "/json"))

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == FAILURES
    assert result.payload_is_json is True
    assert result.status_code == 200
    assert result.function_error is None


@pytest.mark.parametrize(
    ("path", "status", "payload", "is_json"),
    [
        ("/empty", 200, None, True),
        ("/text", 200, "accepted", False),
        ("/created", 201, {"ok": True}, True),
    ],
)
async def test_http_2xx_bodies(
    endpoint: Endpoint, path: str, status: int, payload: Any, is_json: bool
) -> None:
    result = await invoke_once(http_target(endpoint.url + path))

    assert result.outcome is Outcome.SUCCESS
    assert result.status_code == status
    assert result.payload == payload
    assert result.payload_is_json is is_json


@pytest.mark.parametrize(
    ("path", "status", "payload"),
    [("/500", 500, {"error": "oops"}), ("/404", 404, None), ("/redirect", 302, None)],
)
async def test_http_error_statuses_are_function_errors(
    endpoint: Endpoint, path: str, status: int, payload: Any
) -> None:
    result = await invoke_once(http_target(endpoint.url + path))

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.status_code == status
    assert result.payload == payload
    assert result.error == f"endpoint answered HTTP {status}"
    assert [p for p, _, _ in endpoint.requests] == [path]  # the redirect was not followed


async def test_http_429_is_a_throttle(endpoint: Endpoint) -> None:
    result = await invoke_once(http_target(endpoint.url + "/429"))

    assert result.outcome is Outcome.THROTTLE
    assert result.status_code == 429
    assert result.function_error is None


async def test_http_request_timeout_is_a_timeout(endpoint: Endpoint) -> None:
    started = time.monotonic()
    result = await invoke_once(http_target(endpoint.url + "/slow", timeout=0.3))

    assert 0.3 <= time.monotonic() - started < 2
    assert result.outcome is Outcome.TIMEOUT
    assert result.status_code is None
    assert result.error == "endpoint timed out"


async def test_http_connection_refused_is_a_service_error() -> None:
    result = await invoke_once(http_target(f"http://127.0.0.1:{closed_port()}/x"))

    assert result.outcome is Outcome.SERVICE_ERROR
    assert result.status_code is None
    assert result.error is not None
    assert "unreachable" in result.error


async def test_http_sends_compact_json_and_headers(endpoint: Endpoint) -> None:
    target = http_target(endpoint.url + "/json", Authorization="Bearer t0ken", X_Team="data")

    result = await invoke_once(target)

    assert result.outcome is Outcome.SUCCESS
    [(_, headers, body)] = endpoint.requests
    assert body == json.dumps(EVENT, separators=(",", ":")).encode()
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["X_Team"] == "data"
    assert headers[REQUEST_ID_HEADER] == result.request_id
    assert uuid.UUID(result.request_id)


async def test_build_target_makes_an_http_target(endpoint: Endpoint) -> None:
    config = HttpTargetConfig(
        type="http", url=endpoint.url + "/json", headers={"X-Api-Key": "k"}, timeout_seconds=2
    )
    factory = ClientFactory(region="us-east-1", credentials=CREDENTIALS)

    target = await build_in_test_account(config, factory)
    result = await invoke_once(target)

    assert target.function_arn == endpoint.url + "/json"
    assert result.outcome is Outcome.SUCCESS
    assert endpoint.requests[0][1]["X-Api-Key"] == "k"


async def test_http_target_identity_hides_credentials_and_query() -> None:
    target = http_target("https://user:secret@example.com/hook?token=abc")
    assert target.function_arn == "https://example.com/hook"
    await target.aclose()


async def test_http_shared_session_is_left_open(endpoint: Endpoint) -> None:
    async with aiohttp.ClientSession() as session:
        target = HttpTarget(session, url=endpoint.url + "/json", headers={}, timeout_seconds=5)
        first = await target.invoke(EVENT)
        await target.aclose()
        await target.aclose()

        assert not session.closed
        assert first.outcome is Outcome.SUCCESS


# -- Python ----------------------------------------------------------------------------------


def python_target(handler: Any, timeout: float = 5.0) -> PythonTarget:
    return PythonTarget(handler, timeout_seconds=timeout)


async def test_python_sync_handler_success() -> None:
    target = python_target(handlers.count_records)

    result = await target.invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"count": 1}
    assert result.payload_is_json is True
    assert result.function_error is None
    assert result.executed_version == "$LATEST"
    assert uuid.UUID(result.request_id)
    assert target.function_arn == "python:tests.support.handlers:count_records"


async def test_python_async_handler_success() -> None:
    result = await python_target(handlers.async_ok).invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"count": 1}


async def test_python_none_result_is_success() -> None:
    result = await python_target(handlers.mutate_event).invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload is None
    assert len(EVENT["Records"]) == 1  # the handler got a copy
    assert "mutated" not in EVENT


async def test_python_exception_is_a_function_error() -> None:
    result = await python_target(handlers.fail).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.payload["errorType"] == "ValueError"
    assert result.payload["errorMessage"] == "boom"
    assert result.payload["requestId"] == result.request_id
    assert "handlers.py" in result.payload["stackTrace"][0]
    assert result.error == "function error (Unhandled): ValueError"


async def test_python_exception_log_names_the_code_but_not_the_data() -> None:
    def reject(event: dict[str, Any], context: Any) -> None:
        raise KeyError(f"bad record {event['Records'][0]['kinesis']['data']}")

    with structlog.testing.capture_logs() as logs:
        result = await python_target(reject).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert "aGVsbG8=" in result.payload["errorMessage"]  # the payload is Lambda's, data and all
    [entry] = [e for e in logs if e["event"] == "python_handler_raised"]
    assert entry["error_type"] == "KeyError"
    assert "in reject" in entry["stack"]
    assert "aGVsbG8=" not in json.dumps(entry)
    assert "aGVsbG8=" not in (result.error or "")


async def test_python_sys_exit_is_a_function_error() -> None:
    def leave(event: dict[str, Any], context: Any) -> None:
        sys.exit(3)

    result = await python_target(leave).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "Runtime.ExitError"


async def test_python_sync_timeout_abandons_the_thread() -> None:
    release, finished = threading.Event(), threading.Event()

    def stuck(event: dict[str, Any], context: Any) -> str:
        release.wait(10)
        finished.set()
        return "late"

    try:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            result = await python_target(stuck, timeout=0.2).invoke(EVENT)
            elapsed = time.monotonic() - started
    finally:
        release.set()

    assert 0.2 <= elapsed < 1
    assert result.outcome is Outcome.TIMEOUT
    assert result.function_error == "Unhandled"
    assert result.payload == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"{result.request_id} Task timed out after 0.20 seconds",
    }
    assert any(e["event"] == "python_handler_abandoned" for e in logs)
    # The abandoned thread was not killed: it runs on until its handler returns.
    assert await anyio.to_thread.run_sync(finished.wait, 5)


async def test_python_async_timeout_cancels_the_handler() -> None:
    cancelled = anyio.Event()

    async def forever(event: dict[str, Any], context: Any) -> None:
        try:
            await anyio.sleep(10)
        finally:
            cancelled.set()

    started = time.monotonic()
    result = await python_target(forever, timeout=0.2).invoke(EVENT)

    assert 0.2 <= time.monotonic() - started < 1
    assert result.outcome is Outcome.TIMEOUT
    assert result.function_error == "Unhandled"
    assert result.payload["errorType"] == "Sandbox.Timedout"
    assert cancelled.is_set()


async def test_python_unserializable_result_is_a_marshal_error() -> None:
    result = await python_target(handlers.unserializable).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.payload["errorType"] == "Runtime.MarshalError"
    assert result.payload["errorMessage"] == (
        "Unable to marshal response: Object of type set is not JSON serializable"
    )


async def test_python_context_fields_and_remaining_time() -> None:
    target = python_target(handlers.context_fields, timeout=3.0)

    result = await target.invoke({"sleep": 0.05})

    assert result.outcome is Outcome.SUCCESS
    fields = result.payload
    assert fields["function_name"] == "context_fields"
    assert fields["function_version"] == "$LATEST"
    assert fields["invoked_function_arn"] == "python:tests.support.handlers:context_fields"
    assert fields["memory_limit_in_mb"] == "128"
    assert fields["aws_request_id"] == result.request_id
    assert fields["log_group_name"] == "/aws/lambda/context_fields"
    assert "[$LATEST]" in fields["log_stream_name"]
    assert 2500 < fields["remaining_first"] <= 3000
    assert fields["remaining_after"] <= fields["remaining_first"] - 40


async def test_python_sync_handler_runs_off_the_event_loop() -> None:
    release = threading.Event()
    results: list[InvokeResult] = []

    def blocking(event: dict[str, Any], context: Any) -> str:
        release.wait(5)
        return "done"

    target = python_target(blocking)

    async def invoke() -> None:
        results.append(await target.invoke(EVENT))

    async with anyio.create_task_group() as tg:
        tg.start_soon(invoke)
        ticks = 0
        for _ in range(5):  # the loop keeps serving this task while the handler blocks
            await anyio.sleep(0.01)
            ticks += 1
        assert ticks == 5
        assert results == []
        release.set()

    assert results[0].outcome is Outcome.SUCCESS
    assert results[0].payload == "done"


async def test_python_handler_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "local_handlers_for_test.py").write_text(
        "def handle(event, context):\n    return {'n': len(event['Records'])}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "local_handlers_for_test", raising=False)

    handler = load_handler("local_handlers_for_test:handle")
    result = await python_target(handler).invoke(EVENT)

    assert str(tmp_path) in sys.path
    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"n": 1}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.support.no_such_module:ok", "module 'tests.support.no_such_module' not found"),
        ("tests.support.handlers:missing", "has no attribute 'missing'"),
        ("tests.support.handlers:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
        ("tests.support.handlers", "must have the form 'package.module:function'"),
        (":ok", "must have the form"),
    ],
)
def test_load_handler_errors(path: str, message: str) -> None:
    with pytest.raises(HandlerImportError, match=message):
        load_handler(path)


def test_load_handler_reports_a_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_handlers_for_test.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_handlers_for_test", raising=False)

    with pytest.raises(HandlerImportError, match="importing handler module") as caught:
        load_handler("broken_handlers_for_test:handle")

    assert "not_installed_dependency" in str(caught.value)


async def test_build_target_makes_a_python_target() -> None:
    config = PythonTargetConfig(type="python", handler="tests.support.handlers:ok")
    factory = ClientFactory(region="us-east-1", credentials=CREDENTIALS)

    target = await build_in_test_account(config, factory)
    result = await target.invoke(EVENT)

    assert target.function_arn == "python:tests.support.handlers:ok"
    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"batchItemFailures": []}


async def test_example_log_batch_logs_positions_but_no_data() -> None:
    target = python_target(load_handler("examples.handlers:log_batch"))
    event = {
        "Records": [
            {
                **EVENT["Records"][0],
                "kinesis": {"sequenceNumber": str(n), "data": "c2VjcmV0", "partitionKey": "k"},
            }
            for n in (5, 6, 7)
        ]
    }

    with structlog.testing.capture_logs() as logs:
        result = await target.invoke(event)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload is None
    [entry] = [e for e in logs if e["event"] == "handler.batch_received"]
    assert entry["records"] == 3
    assert entry["shard"] == "shardId-000000000000"
    assert (entry["first_sequence_number"], entry["last_sequence_number"]) == ("5", "7")
    assert "c2VjcmV0" not in json.dumps(entry)
