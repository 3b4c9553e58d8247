"""The lean SQS calls against canned answers from a local HTTP server (no emulator): each
answer is read once by the lean path and once by the service's own aiobotocore client, and the
two must agree: pages, empty bodies, null and unknown members, every kind of error; and what
:class:`~poller.sources.sqs.SqsQueue` makes of them is the same with the lean path on or off.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from poller.aws.clients import ClientFactory
from poller.aws.lean import LeanCall
from poller.aws.translate import error_code, source_call
from poller.errors import SourceError
from poller.sources import sqs as sqs_source
from tests.support.aws import CREDENTIALS, REGION
from tests.support.http_server import ThreadedServer

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/x-amz-json-1.0"}
URL = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
ARN = "arn:aws:sqs:us-east-1:123456789012:q"
Answer = tuple[int, dict[str, str], bytes]

MESSAGE = {
    "MessageId": "m-1",
    "ReceiptHandle": "h-1",
    "MD5OfBody": "5d41402abc4b2a76b9719d911017c592",
    "Body": 'é😀 "null" \\ \u2028',
    "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000"},
    "MD5OfMessageAttributes": None,  # null: botocore drops the member
    "Unknown": {"dropped": True},  # not in the model: dropped too
    "MessageAttributes": {
        "b": {"DataType": "Binary", "BinaryValue": "AAEC/w=="},
        "s": {"DataType": "String", "StringValue": "x", "StringListValues": []},
    },
}


class Canned:
    """Answers each request with the next canned answer; records the User-Agents."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.user_agents: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.user_agents.append(request.headers.get("User-Agent", ""))
        status, headers, body = self.answers.pop(0)
        if headers.get("Transfer-Encoding") == "chunked":
            response = web.StreamResponse(status=status)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response
        return web.Response(status=status, body=body, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[Canned, ClientFactory]]:
    canned = Canned()
    with ThreadedServer(canned.app) as server:
        factory = ClientFactory(region=REGION, endpoint_url=server.url, credentials=CREDENTIALS)
        try:
            yield canned, factory
        finally:
            await factory.aclose()


async def client_and_lean(
    factory: ClientFactory, operation: str, purpose: str = "sqs-settle"
) -> tuple[Any, LeanCall]:
    """A client (botocore's parsers; the source clients' with purpose ``source``) and its
    lean call."""
    client = await factory.client("sqs", purpose=purpose, config=sqs_source.SETTLE_CLIENT_CONFIG)
    lean = sqs_source._lean(client, operation, hands_out=operation == "ReceiveMessage")
    assert lean is not None
    return client, lean


async def read_twice(
    canned: Canned,
    factory: ClientFactory,
    operation: str,
    answer: Answer,
    params: dict[str, Any],
    purpose: str = "sqs-settle",
) -> tuple[Any, Any, LeanCall]:
    """(lean result, full client's result, the lean call) of one answer; SourceErrors are
    returned, not raised."""
    client, lean = await client_and_lean(factory, operation, purpose)
    results: list[Any] = []
    canned.answers += [answer, answer]
    for read in (lean.call, lambda p: full_call(client, operation, p)):
        try:
            results.append(await read(params))
        except SourceError as exc:
            results.append(exc)
    return results[0], results[1], lean


async def full_call(client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    method = getattr(client, sqs_source_snake(operation))
    async with source_call(operation):
        response: dict[str, Any] = await method(**params)
    response.pop("ResponseMetadata", None)
    return response


def sqs_source_snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


RECEIVE = {"QueueUrl": URL, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
ENTRIES = {"QueueUrl": URL, "Entries": [{"Id": "0", "ReceiptHandle": "h"}]}


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Messages": [MESSAGE, {**MESSAGE, "MessageId": "m-2"}]}).encode(),
        json.dumps({"Messages": [MESSAGE]}, ensure_ascii=False).encode(),
        b"{}",
        b"",
    ],
    ids=["escaped", "utf-8", "empty-object", "empty-body"],
)
@pytest.mark.parametrize("purpose", ["sqs-settle", "source"])
async def test_receive_pages_equal_botocores(
    served: tuple[Canned, ClientFactory], body: bytes, purpose: str
) -> None:
    """With botocore's parsers (the SQS clients') and with the source clients' (blobs kept
    as base64 text): the lean parse uses the client's own."""
    canned, factory = served
    answer = (200, JSON, body)
    page, full, lean = await read_twice(canned, factory, "ReceiveMessage", answer, RECEIVE, purpose)
    assert page == full
    assert lean.fallbacks == 0
    if page.get("Messages"):
        blob = page["Messages"][0]["MessageAttributes"]["b"]["BinaryValue"]
        assert blob == (b"\x00\x01\x02\xff" if purpose == "sqs-settle" else "AAEC/w==")
        assert "MD5OfMessageAttributes" not in page["Messages"][0]


@pytest.mark.parametrize("operation", ["DeleteMessageBatch", "ChangeMessageVisibilityBatch"])
async def test_batch_results_equal_botocores(
    served: tuple[Canned, ClientFactory], operation: str
) -> None:
    canned, factory = served
    failed = {"Id": "0", "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "no"}
    body = json.dumps({"Successful": [], "Failed": [failed]}).encode()
    params = ENTRIES
    if operation == "ChangeMessageVisibilityBatch":
        params = {
            "QueueUrl": URL,
            "Entries": [{"Id": "0", "ReceiptHandle": "h", "VisibilityTimeout": 1}],
        }
    result, full, lean = await read_twice(canned, factory, operation, (200, JSON, body), params)
    assert result == full
    assert result["Failed"] == [failed]
    assert lean.fallbacks == 0


QUERY_ERROR = {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"}
GONE = b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "The queue does not exist."}'


@pytest.mark.parametrize(
    "answer",
    [
        (400, {**JSON, **QUERY_ERROR}, GONE),
        (400, JSON, GONE),
        (400, {**JSON, "x-amzn-query-error": "no-fault-part"}, GONE),
        (500, JSON, b'{"__type": "InternalError", "Message": "injected"}'),
        (400, JSON, b'{"__type": "SomethingNew:http://internal/", "message": "m"}'),
    ],
    ids=["query-code", "json-code", "odd-query-header", "internal-error", "unknown-code"],
)
async def test_errors_equal_botocores_with_one_request(
    served: tuple[Canned, ClientFactory], answer: Answer
) -> None:
    """Every JSON error is the full path's SourceError, on the same code, from one request."""
    canned, factory = served
    for operation, params in (("ReceiveMessage", RECEIVE), ("DeleteMessageBatch", ENTRIES)):
        lean_error, full_error, lean = await read_twice(canned, factory, operation, answer, params)
        assert isinstance(lean_error, SourceError)
        assert isinstance(full_error, SourceError)
        assert type(lean_error) is type(full_error)
        assert str(lean_error) == str(full_error)
        assert error_code(lean_error.__cause__) == error_code(full_error.__cause__)
        assert sqs_source._queue_gone(lean_error) == sqs_source._queue_gone(full_error)
        assert lean.fallbacks == 0
    assert canned.answers == []


async def test_an_unreadable_receive_is_read_again_and_switches_the_lean_path_off(
    served: tuple[Canned, ClientFactory],
) -> None:
    canned, factory = served
    _, lean = await client_and_lean(factory, "ReceiveMessage")
    page = json.dumps({"Messages": [MESSAGE]}).encode()
    canned.answers += [(200, {"Transfer-Encoding": "chunked"}, page), (200, JSON, page)]
    assert (await lean.call(RECEIVE))["Messages"][0]["MessageId"] == "m-1"
    assert (lean.fallbacks, lean.enabled) == (1, False)
    canned.answers.append((200, JSON, b"{}"))
    canned.user_agents.clear()
    assert await lean.call(RECEIVE) == {}
    assert not any("poller-lean" in agent for agent in canned.user_agents)


async def test_the_queue_reads_the_same_with_the_lean_path_on_or_off(
    served: tuple[Canned, ClientFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SqsQueue's messages and entry failures, lean and through the clients themselves."""
    canned, factory = served
    client = await factory.client(
        "sqs", purpose="sqs-settle", config=sqs_source.SETTLE_CLIENT_CONFIG
    )
    page = (200, JSON, json.dumps({"Messages": [MESSAGE]}).encode())
    failed = {"Id": "0", "SenderFault": False, "Code": "InternalError", "Message": "retry"}
    settled = (200, JSON, json.dumps({"Successful": [], "Failed": [failed]}).encode())
    outcomes = []
    for switch in ("1", "0"):
        monkeypatch.setenv("POLLER_LEAN_READS", switch)
        queue = sqs_source.SqsQueue(
            receive_client=client, settle_client=client, queue_arn=ARN, region=REGION
        )
        assert (queue._lean_receive is None) == (switch == "0")
        queue._url = URL
        canned.answers += [page, settled, settled]
        messages = await queue.receive(10, 0)
        deleted = await queue.delete(messages)
        changed = await queue.change_visibility([(messages[0], 5)])
        outcomes.append((messages, deleted, changed))
    assert outcomes[0] == outcomes[1]
    messages, deleted, _ = outcomes[0]
    assert messages[0].event_record["messageAttributes"]["b"]["binaryValue"] == "AAEC/w=="
    assert [(f.code, f.sender_fault) for f in deleted] == [("InternalError", False)]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((200, JSON, b'{"Attributes": {"ApproximateNumberOfMessages": "1234"}}'), 1234),
        ((200, JSON, b'{"Attributes": {}}'), None),
        ((200, JSON, b'{"Attributes": {"ApproximateNumberOfMessages": "many"}}'), None),
        ((500, JSON, b'{"__type": "InternalError", "message": "down"}'), None),
    ],
    ids=["number", "missing", "not-a-number", "error"],
)
async def test_backlog_reads_the_visible_messages_or_none(
    served: tuple[Canned, ClientFactory], answer: Answer, expected: int | None
) -> None:
    canned, factory = served
    client = await factory.client(
        "sqs", purpose="sqs-settle", config=sqs_source.SETTLE_CLIENT_CONFIG
    )
    queue = sqs_source.SqsQueue(
        receive_client=client, settle_client=client, queue_arn=ARN, region=REGION
    )
    queue._url = URL
    canned.answers.append(answer)
    assert await queue.backlog() == expected
    assert canned.answers == []
