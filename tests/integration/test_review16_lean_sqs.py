"""Review 16 (hostile) of the SQS lean path against moto's server, faults injected by a proxy
in front of it (nothing patched): answers garbled or cut after moto handed messages out (no
message may be lost: they come back after their visibility timeout), errors the service may
answer (throttling, access denied, a 5xx with an HTML page), each compared with botocore's
reading of the very same bytes, and the number of requests one call makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from poller.aws.clients import ClientFactory
from poller.aws.translate import error_code, source_call
from poller.errors import SourceError
from tests.integration.test_lean_sqs import lean_for, receive_client
from tests.support.aws import CREDENTIALS
from tests.support.http_server import ForwardingProxy, clients_through
from tests.support.sqs import NewQueue, send_entries
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

JSON = "application/x-amz-json-1.0"


class FaultingProxy(ForwardingProxy):
    """Forwards every request to moto. ``mode`` spoils the next answers of ReceiveMessage:
    ``"cut"`` sends half of moto's body as if whole (a garbled answer), ``"reset"`` announces
    the whole body, sends half and drops the connection. ``canned`` answers requests without
    forwarding them. ``requests`` counts what reached the proxy."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.mode: str | None = None
        self.spoiled = 0
        self.canned: list[tuple[int, dict[str, str], bytes]] = []
        self.requests = 0
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        self.headers.append(dict(request.headers))
        if self.canned:
            status, headers, canned = self.canned.pop(0)
            return web.Response(status=status, body=canned, headers=headers)
        status, headers, data = await self.forward(request, body)
        receive = request.headers.get("X-Amz-Target", "").endswith("ReceiveMessage")
        if self.mode is None or not receive or b'"Messages"' not in data:
            return web.Response(status=status, body=data, headers=headers)
        self.spoiled += 1
        half = data[: len(data) // 2]
        if self.mode == "cut":
            return web.Response(status=status, body=half, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(half)
        assert request.transport is not None
        request.transport.close()
        return response


@pytest.fixture
async def proxied(sqs_url: str) -> AsyncIterator[tuple[FaultingProxy, ClientFactory]]:
    proxy = FaultingProxy(sqs_url)
    async with clients_through(proxy) as factory:
        yield proxy, factory


async def everything_comes_back(sqs: Any, url: str, bodies: set[str]) -> list[dict[str, Any]]:
    """Receive (directly from moto) until every body in ``bodies`` has been seen; return them."""
    seen: dict[str, dict[str, Any]] = {}

    async def received_all() -> bool:
        page = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        for message in page.get("Messages", []):
            seen[message["Body"]] = message
        return bodies <= set(seen)

    await wait_until(received_all, 30.0, f"{sorted(bodies)} back", 0.2)
    return list(seen.values())


@pytest.mark.parametrize("mode", ["cut", "reset"])
async def test_messages_of_a_spoiled_receive_answer_come_back_and_none_is_lost(
    proxied: tuple[FaultingProxy, ClientFactory], sqs: Any, new_queue: NewQueue, mode: str
) -> None:
    """moto hands three messages out, and their answer is garbled (or cut by a connection
    reset) on its way: the lean receive reports no message it could not read, and every one
    of the three comes back after the (1 s) visibility timeout, received a second time."""
    proxy, factory = proxied
    queue = await new_queue(f"review16-{mode}", visibility_timeout=1)
    bodies = {"one", "two 😀", "three"}
    await send_entries(sqs, queue.url, [{"MessageBody": b} for b in sorted(bodies)])
    client = await receive_client(factory)
    lean = lean_for(client, "ReceiveMessage")
    proxy.mode = mode
    params = {"QueueUrl": queue.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
    try:
        page: dict[str, Any] = await lean.call(params)
    except SourceError:
        page = {}
    proxy.mode = None
    assert proxy.spoiled == 1
    assert all(m["Body"] in bodies for m in page.get("Messages", []))
    back = await everything_comes_back(sqs, queue.url, bodies)
    assert {m["Body"] for m in back} >= bodies


def canned_error(status: int, type_: str, message: str, query: str | None) -> tuple[Any, ...]:
    headers = {"Content-Type": JSON}
    if query is not None:
        headers["x-amzn-query-error"] = query
    body = f'{{"__type": "{type_}", "message": "{message}"}}'.encode()
    return (status, headers, body)


ERRORS = {
    "throttling": canned_error(
        400,
        "com.amazonaws.sqs#RequestThrottled",
        "Rate exceeded",
        "AWS.SimpleQueueService.RequestThrottled;Sender",
    ),
    "access-denied": canned_error(
        400, "com.amazon.coral.service#AccessDeniedException", "not authorized", None
    ),
    "kms": canned_error(
        400, "com.amazonaws.sqs#KmsThrottled", "kms says slow down", "KmsThrottled;Sender"
    ),
    "internal": canned_error(500, "com.amazonaws.sqs#InternalError", "oops", None),
    "html-503": (503, {"Content-Type": "text/html"}, b"<html><body>Service Unavailable</body>"),
    "empty-500": (500, {}, b""),
    "html-403": (403, {"Content-Type": "text/html"}, b"<html><body>Forbidden by a WAF</body>"),
    "text-400": (400, {"Content-Type": "text/plain"}, b"Bad Request"),
}


@pytest.mark.parametrize("case", list(ERRORS))
async def test_error_answers_equal_botocores_in_one_request(
    proxied: tuple[FaultingProxy, ClientFactory], case: str
) -> None:
    """Each error answer, given once to the lean receive and once to botocore: the same
    SourceError (type, text, AWS code), and one request each, as botocore's config (one
    attempt) says: a lean call must not send a second request that botocore never sends."""
    proxy, factory = proxied
    client = await receive_client(factory)
    lean = lean_for(client, "ReceiveMessage")
    params = {
        "QueueUrl": "http://localhost/123456789012/q",
        "MaxNumberOfMessages": 1,
        "WaitTimeSeconds": 0,
    }
    answer = ERRORS[case]
    proxy.canned = [answer, answer]  # a second one for a lean path that sends twice
    before = proxy.requests
    with pytest.raises(SourceError) as lean_error:
        await lean.call(params)
    lean_requests = proxy.requests - before
    proxy.canned = [answer]
    before = proxy.requests
    with pytest.raises(SourceError) as full_error:
        async with source_call("ReceiveMessage"):
            await client.receive_message(**params)
    full_requests = proxy.requests - before
    assert type(lean_error.value) is type(full_error.value)
    assert str(lean_error.value) == str(full_error.value)
    assert error_code(lean_error.value.__cause__) == error_code(full_error.value.__cause__)
    assert lean_requests == full_requests == 1
    assert lean.enabled


async def test_a_session_token_is_sent_and_signed_on_every_lean_call(
    sqs_url: str, sqs: Any, new_queue: NewQueue
) -> None:
    """Temporary credentials: each lean call carries the session token, inside the signature,
    as botocore's signer puts it."""
    queue = await new_queue("review16-token")
    await send_entries(sqs, queue.url, [{"MessageBody": "t"}])
    proxy = FaultingProxy(sqs_url)
    credentials = {**CREDENTIALS, "aws_session_token": "session-token-review16"}
    async with clients_through(proxy, credentials) as factory:
        client = await receive_client(factory)
        lean = lean_for(client, "ReceiveMessage")
        page = await lean.call(
            {"QueueUrl": queue.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
        )
    assert [m["Body"] for m in page["Messages"]] == ["t"]
    assert lean.fallbacks == 0
    [sent] = proxy.headers
    assert "poller-lean" in sent.get("User-Agent", "")
    assert sent["X-Amz-Security-Token"] == "session-token-review16"
    signed = sent["Authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    assert "x-amz-security-token" in signed
