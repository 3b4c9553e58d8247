"""The lean path for SQS (ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch)
against moto's server, and against botocore's own parser on the very same answers.

A recording proxy sits between the clients and moto: the lean call goes through it to moto and
its answer (status, body and the headers botocore reads) is kept; the full client's call is
then answered with those same bytes. So both parsers read one answer, and the lean result
must equal botocore's (less ``ResponseMetadata``), errors included: the same ``SourceError``
text and the same AWS error code behind it. Nothing is patched.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from poller.aws.clients import ClientFactory
from poller.aws.lean import LeanCall
from poller.aws.translate import error_code, source_call
from poller.errors import SourceError
from poller.sources import sqs as sqs_source
from tests.support.aws import REGION, unique
from tests.support.http_server import ForwardingProxy, clients_through
from tests.support.sqs import NewQueue, send_entries

pytestmark = pytest.mark.anyio

#: A message body no ASCII-only path would survive: quotes, escapes, controls SQS allows,
#: characters of 2, 3 and 4 UTF-8 bytes, the text "null", and a JSON-looking payload.
HOSTILE_BODY = 'say "hi"\\n\t\r\n é € 😀 \u2028 null {"a": [1, null]} </script>'


class Recorder(ForwardingProxy):
    """Forwards every request to moto; keeps the last answer; answers the next request with
    it instead while ``replay`` is set."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.replay = False
        self.last: tuple[int, dict[str, str], bytes] | None = None
        self.user_agents: list[str] = []
        #: Canned answers for the next requests, before any forwarding.
        self.canned: list[tuple[int, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if self.canned:
            status, headers, canned = self.canned.pop(0)
            return web.Response(status=status, body=canned, headers=headers)
        if self.replay and self.last is not None:
            status, headers, data = self.last
            return web.Response(status=status, body=data, headers=headers)
        status, headers, data = self.last = await self.forward(request, body)
        return web.Response(status=status, body=data, headers=headers)


@pytest.fixture
async def through(sqs_url: str) -> AsyncIterator[tuple[Recorder, ClientFactory]]:
    """The recorder in front of the SQS tests' moto, and the service's client factory on it."""
    recorder = Recorder(sqs_url)
    async with clients_through(recorder) as factory:
        yield recorder, factory


async def settle_client(factory: ClientFactory) -> Any:
    return await factory.client("sqs", purpose="sqs-settle", config=sqs_source.SETTLE_CLIENT_CONFIG)


async def receive_client(factory: ClientFactory) -> Any:
    return await factory.client(
        "sqs", purpose="sqs-receive:t", config=sqs_source.receive_client_config(3)
    )


def lean_for(client: Any, operation: str) -> LeanCall:
    lean = sqs_source._lean(client, operation, hands_out=operation == "ReceiveMessage")
    assert lean is not None, "the service's SQS clients take the lean path"
    return lean


async def both(
    recorder: Recorder,
    lean: LeanCall,
    full: Callable[..., Awaitable[Any]],
    params: dict[str, Any],
) -> tuple[Any, Any]:
    """(lean result, full client's result) of one answer, or the two SourceErrors raised."""
    recorder.replay = False
    try:
        lean_result: Any = await lean.call(params)
    except SourceError as exc:
        lean_result = exc
    recorder.replay = True
    try:
        async with source_call(lean._operation.name):
            full_result: Any = await full(**params)
        full_result.pop("ResponseMetadata")
    except SourceError as exc:
        full_result = exc
    recorder.replay = False
    assert lean.fallbacks == 0
    return lean_result, full_result


def hostile_entries() -> list[dict[str, Any]]:
    """Messages with every kind of body and attribute a mapping may receive."""
    attributes = {
        "text": {"DataType": "String", "StringValue": 'é😀 "q" \\ null'},
        "number": {"DataType": "Number", "StringValue": "-12.5e3"},
        "bytes": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
        "custom": {"DataType": "String.custom-type", "StringValue": "x"},
        "empty-bytes-type": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG\r\n"},
    }
    return [
        {"MessageBody": HOSTILE_BODY},
        {"MessageBody": "plain"},
        {"MessageBody": "a" * 200_000},  # a big body (SQS takes up to 256 KiB)
        {"MessageBody": HOSTILE_BODY, "MessageAttributes": attributes},
        {"MessageBody": "{}", "MessageAttributes": {"one": attributes["bytes"]}},
    ]


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_received_messages_equal_botocores(
    through: tuple[Recorder, ClientFactory], sqs: Any, new_queue: NewQueue, fifo: bool
) -> None:
    recorder, factory = through
    queue = await new_queue("lean-recv.fifo" if fifo else "lean-recv")
    entries = hostile_entries()
    if fifo:
        for n, entry in enumerate(entries):
            entry.update(MessageGroupId=f"g{n % 2}", MessageDeduplicationId=f"d{n}")
    await send_entries(sqs, queue.url, entries)
    client = await receive_client(factory)
    lean = lean_for(client, "ReceiveMessage")
    params = {
        "QueueUrl": queue.url,
        "MaxNumberOfMessages": 10,
        "WaitTimeSeconds": 1,
        "MessageSystemAttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
    }
    received: list[Any] = []
    while len(received) < len(entries):
        page, full = await both(recorder, lean, client.receive_message, params)
        assert page == full
        received += page.get("Messages", [])
    bodies = sorted(m["Body"] for m in received)
    assert bodies == sorted(e["MessageBody"] for e in entries)
    binary = [
        m["MessageAttributes"]["bytes"]
        for m in received
        if "bytes" in m.get("MessageAttributes", {})
    ]
    assert binary
    assert binary[0]["BinaryValue"] == bytes(range(256))
    # And the events made of them are the same as before: one converter, both parses.
    convert = sqs_source.make_message_factory(queue_arn=queue.arn, region=REGION)
    for message in received:
        record = convert(message).event_record
        assert record["body"] == message["Body"]
        if "bytes" in record["messageAttributes"]:
            value = record["messageAttributes"]["bytes"]["binaryValue"]
            assert base64.b64decode(value) == bytes(range(256))


async def test_an_empty_receive_equals_botocores(
    through: tuple[Recorder, ClientFactory], new_queue: NewQueue
) -> None:
    recorder, factory = through
    queue = await new_queue("lean-empty")
    client = await receive_client(factory)
    params = {"QueueUrl": queue.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}
    page, full = await both(
        recorder, lean_for(client, "ReceiveMessage"), client.receive_message, params
    )
    assert page == full
    assert not page.get("Messages")


async def receipts(sqs: Any, url: str, count: int) -> list[str]:
    await send_entries(sqs, url, ({"MessageBody": f"m{n}"} for n in range(count)))
    handles: list[str] = []
    while len(handles) < count:
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        handles += [m["ReceiptHandle"] for m in response.get("Messages", [])]
    return handles


@pytest.mark.parametrize("operation", ["DeleteMessageBatch", "ChangeMessageVisibilityBatch"])
async def test_batch_results_with_refused_entries_equal_botocores(
    through: tuple[Recorder, ClientFactory], sqs: Any, new_queue: NewQueue, operation: str
) -> None:
    recorder, factory = through
    queue = await new_queue("lean-settle")
    handles = await receipts(sqs, queue.url, 3)
    entries: list[dict[str, Any]] = [
        {"Id": str(n), "ReceiptHandle": h} for n, h in enumerate([*handles, "not-a-receipt"])
    ]
    if operation == "ChangeMessageVisibilityBatch":
        for entry in entries:
            entry["VisibilityTimeout"] = 5
    client = await settle_client(factory)
    method = getattr(
        client,
        "delete_message_batch" if "Delete" in operation else "change_message_visibility_batch",
    )
    result, full = await both(
        recorder, lean_for(client, operation), method, {"QueueUrl": queue.url, "Entries": entries}
    )
    assert result == full
    assert [e["Id"] for e in result["Failed"]] == ["3"]
    assert sorted(e["Id"] for e in result["Successful"]) == ["0", "1", "2"]


@pytest.mark.parametrize(
    "operation", ["ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"]
)
async def test_errors_equal_botocores(
    through: tuple[Recorder, ClientFactory], sqs_url: str, operation: str
) -> None:
    """A deleted queue: moto answers with the JSON code and, in x-amzn-query-error, the query
    code botocore reports; both paths raise the same SourceError on the same cause code, so
    that ``_queue_gone`` (the settle path's decision) is the same too."""
    recorder, factory = through
    gone = f"{sqs_url}/123456789012/{unique('never-made')}"
    if operation == "ReceiveMessage":
        client = await receive_client(factory)
        params: dict[str, Any] = {"QueueUrl": gone, "MaxNumberOfMessages": 1, "WaitTimeSeconds": 0}
        method = client.receive_message
    else:
        client = await settle_client(factory)
        params = {"QueueUrl": gone, "Entries": [{"Id": "0", "ReceiptHandle": "h"}]}
        if operation == "ChangeMessageVisibilityBatch":
            params["Entries"][0]["VisibilityTimeout"] = 1
        method = getattr(
            client,
            "delete_message_batch" if "Delete" in operation else "change_message_visibility_batch",
        )
    lean_error, full_error = await both(recorder, lean_for(client, operation), method, params)
    assert recorder.last is not None
    assert "x-amzn-query-error" in recorder.last[1]
    assert isinstance(lean_error, SourceError)
    assert isinstance(full_error, SourceError)
    assert type(lean_error) is type(full_error)
    assert str(lean_error) == str(full_error)
    assert error_code(lean_error.__cause__) == error_code(full_error.__cause__)
    assert sqs_source._queue_gone(lean_error)
    assert sqs_source._queue_gone(full_error)


async def test_an_unreadable_receive_switches_the_lean_path_off(
    through: tuple[Recorder, ClientFactory], sqs: Any, new_queue: NewQueue
) -> None:
    """A receive answered with something the lean path cannot read may have handed messages
    out: the call is made again through the full client, and every later receive goes
    through it too, so that at most one answer's messages wait out their visibility."""
    recorder, factory = through
    queue = await new_queue("lean-off")
    await send_entries(sqs, queue.url, [{"MessageBody": "kept"}])
    client = await receive_client(factory)
    lean = lean_for(client, "ReceiveMessage")
    recorder.canned.append((200, {"Content-Type": "text/html"}, b"<html>not json</html>"))
    params = {"QueueUrl": queue.url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1}
    page = await lean.call(params)
    assert [m["Body"] for m in page["Messages"]] == ["kept"]
    assert (lean.fallbacks, lean.enabled) == (1, False)
    recorder.user_agents.clear()
    await lean.call({**params, "WaitTimeSeconds": 0})
    assert recorder.user_agents
    assert not any("poller-lean" in ua for ua in recorder.user_agents)


async def test_an_unreadable_delete_answer_falls_back_and_stays_lean(
    through: tuple[Recorder, ClientFactory], sqs: Any, new_queue: NewQueue
) -> None:
    """A delete may be sent twice: an answer the lean path cannot read is a plain fallback."""
    recorder, factory = through
    queue = await new_queue("lean-delete-odd")
    handles = await receipts(sqs, queue.url, 1)
    client = await settle_client(factory)
    lean = lean_for(client, "DeleteMessageBatch")
    recorder.canned.append((200, {"Content-Type": "application/x-amz-json-1.0"}, b"[1, 2]"))
    entries = [{"Id": "0", "ReceiptHandle": handles[0]}]
    result = await lean.call({"QueueUrl": queue.url, "Entries": entries})
    assert [e["Id"] for e in result["Successful"]] == ["0"]
    assert (lean.fallbacks, lean.enabled) == (1, True)


async def test_the_service_queue_takes_the_lean_path_unless_switched_off(
    through: tuple[Recorder, ClientFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, factory = through
    receive, settle = await receive_client(factory), await settle_client(factory)
    arn = f"arn:aws:sqs:{REGION}:123456789012:q"
    queue = sqs_source.SqsQueue(
        receive_client=receive, settle_client=settle, queue_arn=arn, region=REGION
    )
    assert None not in (queue._lean_receive, queue._lean_delete, queue._lean_change)
    monkeypatch.setenv("POLLER_LEAN_READS", "0")
    queue = sqs_source.SqsQueue(
        receive_client=receive, settle_client=settle, queue_arn=arn, region=REGION
    )
    assert (queue._lean_receive, queue._lean_delete, queue._lean_change) == (None, None, None)
