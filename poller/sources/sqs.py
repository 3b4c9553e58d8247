"""Amazon SQS source: ReceiveMessage, event shaping, DeleteMessageBatch, visibility changes.

Where it sits::

    SqsMappingRunner (poller.queues) --receive()--> [SqsMessage, ...] --batch--> Target
                                     --delete() / change_visibility()--> the queue

:class:`SqsQueue` is the only code that talks to the queue. It resolves the queue's URL and
reads the attributes the runner needs (visibility timeout, redrive policy, FIFO) once at start,
long-polls with ``ReceiveMessage`` (at most 10 messages and 20 seconds per call, asking for
every system and message attribute), and settles messages with ``DeleteMessageBatch`` and
``ChangeMessageVisibilityBatch`` in chunks of ten, a few chunks at a time. ``send_copy`` puts
a copy of a message in another queue (SendMessage), for an oversized FIFO message that poller
moves to the dead-letter queue itself. Entry-level failures of the batch calls come back as
:class:`EntryFailure` values, and so do the entries of a batch call that failed as a whole
(code :data:`CALL_FAILED`); ``open``, ``receive`` and ``send_copy`` raise a
:class:`~poller.errors.SourceError` (``poller.aws.translate``). Nothing here retries: the runner
owns every retry and backoff.

Each received message becomes an :class:`SqsMessage` whose ``event_record`` is exactly the
record Lambda puts in ``Records[]`` (docs/aws-esm.md §3.3, checked against AWS's recordings), and
whose ``size`` is the bytes it adds to the compact UTF-8 JSON event, so the runner cuts batches
at 6 MB exactly. Bodies are passed through untouched and never logged.

Two clients are used, so that long polls can never starve settlement: ``receive_client`` (a
connection per poller) and ``settle_client`` (every other call). Neither retries
in botocore. :func:`receive_client_config` and :data:`SETTLE_CLIENT_CONFIG` are their settings.
The three per-batch calls go through the lean call path (:mod:`poller.aws.lean`): the same
request, signed with the clients' credentials, and an answer equal to botocore's parse, for a
fraction of botocore's CPU; errors and anything unexpected go through the clients themselves.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

import anyio
import structlog
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from poller.aws.clients import client_config
from poller.aws.lean import LeanCall
from poller.aws.translate import error_code, source_call
from poller.errors import SourceError

log = structlog.get_logger("poller.sources.sqs")

#: ReceiveMessage returns at most ten messages per call.
RECEIVE_LIMIT = 10
#: ReceiveMessage long-polls for at most twenty seconds.
MAX_WAIT_SECONDS = 20
#: DeleteMessageBatch and ChangeMessageVisibilityBatch take at most ten entries.
BATCH_ENTRIES = 10
#: Batch calls of one settlement or heartbeat in flight at once.
PARALLEL_CALLS = 10
#: The longest visibility timeout SQS accepts, in seconds (12 hours).
MAX_VISIBILITY_TIMEOUT = 43200
#: The code of an :class:`EntryFailure` whose whole call failed (not an SQS entry code).
CALL_FAILED = "CallFailed"
#: The code of an :class:`EntryFailure` whose queue no longer exists (not an SQS entry code).
QUEUE_GONE = "QueueDoesNotExist"
#: The codes SQS answers a call on a deleted queue with (query and JSON protocols).
_QUEUE_GONE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})

#: Deletes and visibility changes: poller retries them, so botocore does not.
SETTLE_CLIENT_CONFIG = client_config(attempts=1, read_timeout=30, pool=100)

# The order of Lambda's event attributes (the AWS documentation's FIFO example); attributes
# not listed here (AWSTraceHeader, DeadLetterQueueSourceArn) follow in the order SQS sent them.
_ATTRIBUTE_ORDER = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "SenderId",
    "MessageDeduplicationId",
    "ApproximateFirstReceiveTimestamp",
)


def receive_client_config(max_pollers: int) -> AioConfig:
    """The receive client's settings: one connection per poller, a read timeout past 20 s."""
    return client_config(attempts=1, read_timeout=MAX_WAIT_SECONDS + 20, pool=max_pollers + 2)


@dataclass(frozen=True, slots=True)
class SqsMessage:
    """One received message, ready to be put in an event.

    Attributes:
        message_id: the message's id, the ``itemIdentifier`` of partial batch responses.
        receipt_handle: the handle of this receipt, for delete and visibility calls.
        group_id: the FIFO message group, or None on a standard queue.
        receive_count: ``ApproximateReceiveCount`` as a number (1 on the first receipt).
        event_record: the record exactly as Lambda delivers it inside ``Records``.
        size: bytes the record adds to the compact UTF-8 JSON event, used for the 6 MB cut.
    """

    message_id: str
    receipt_handle: str
    group_id: str | None
    receive_count: int
    event_record: dict[str, Any]
    size: int


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """What the runner needs to know about its queue, read once at start.

    Attributes:
        url: the queue URL every call takes.
        visibility_timeout: the queue's VisibilityTimeout, in seconds.
        redrive_policy: the parsed RedrivePolicy, or None when the queue has no dead-letter
            queue.
        fifo: whether the queue is a FIFO queue.
    """

    url: str
    visibility_timeout: int
    redrive_policy: dict[str, Any] | None
    fifo: bool


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """One entry a batch call did not apply.

    Attributes:
        message: the message it was about.
        code: SQS's error code, e.g. ``ReceiptHandleIsInvalid``.
        text: SQS's message for it.
        sender_fault: True when the request itself was wrong; repeating it cannot succeed.
    """

    message: SqsMessage
    code: str
    text: str
    sender_fault: bool


def make_message_factory(*, queue_arn: str, region: str) -> Callable[[dict[str, Any]], SqsMessage]:
    """Build the converter from a ReceiveMessage entry to an :class:`SqsMessage`.

    ``raw`` is one entry of ``Messages``. ``BinaryValue`` attributes may arrive as the wire's
    base64 text or as bytes, depending on the client's parser; both become base64 text, which
    is what Lambda puts in ``binaryValue``.
    """
    size_of = _record_sizer(queue_arn=queue_arn, region=region)

    def convert(raw: dict[str, Any]) -> SqsMessage:
        system = raw.get("Attributes") or {}
        attributes = {name: str(system[name]) for name in _ATTRIBUTE_ORDER if name in system}
        if len(attributes) < len(system):
            attributes.update((k, str(v)) for k, v in system.items() if k not in attributes)
        record = {
            "messageId": raw["MessageId"],
            "receiptHandle": raw["ReceiptHandle"],
            "body": raw.get("Body", ""),
            "attributes": attributes,
            "messageAttributes": _message_attributes(raw.get("MessageAttributes")),
            "md5OfMessageAttributes": raw.get("MD5OfMessageAttributes"),
            "md5OfBody": raw.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": region,
        }
        return SqsMessage(
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            group_id=system.get("MessageGroupId"),
            receive_count=int(system.get("ApproximateReceiveCount", 1)),
            event_record=record,
            size=size_of(record),
        )

    return convert


def _message_attributes(raw: dict[str, Any] | None) -> dict[str, Any]:
    """SQS's MessageAttributes in Lambda's camelCase form, list fields always present."""
    if not raw:
        return {}
    shaped: dict[str, Any] = {}
    for name, value in raw.items():
        entry: dict[str, Any] = {}
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = _base64_text(value["BinaryValue"])
        entry["stringListValues"] = list(value.get("StringListValues") or [])
        entry["binaryListValues"] = [_base64_text(v) for v in value.get("BinaryListValues") or []]
        entry["dataType"] = value.get("DataType")
        shaped[name] = entry
    return shaped


def _base64_text(value: str | bytes) -> str:
    return value if isinstance(value, str) else base64.b64encode(value).decode("ascii")


def copy_params(message: SqsMessage) -> dict[str, Any]:
    """SendMessage's parameters for a copy of ``message``: its body and message attributes
    (back from Lambda's form; SQS accepts no list values, and a received message has none),
    and on a FIFO queue its group, with its message id as the deduplication id, so that a
    copy sent twice (a lost reply, then a retry) is stored once within SQS's 5 minutes."""
    record = message.event_record
    params: dict[str, Any] = {"MessageBody": record["body"]}
    attributes = {
        name: _sqs_attribute(value) for name, value in (record["messageAttributes"] or {}).items()
    }
    if attributes:
        params["MessageAttributes"] = attributes
    if message.group_id is not None:
        params["MessageGroupId"] = message.group_id
        params["MessageDeduplicationId"] = message.message_id
    return params


def _sqs_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """One message attribute in SQS's form, from Lambda's (see :func:`_message_attributes`)."""
    shaped: dict[str, Any] = {"DataType": value["dataType"]}
    if "stringValue" in value:
        shaped["StringValue"] = value["stringValue"]
    if "binaryValue" in value:
        shaped["BinaryValue"] = base64.b64decode(value["binaryValue"])
    return shaped


#: Compact JSON with the characters as they are (``encode_event``'s form), its encoder built once.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: The record's string fields other than the two MD5s (which may be null).
_TEXT_FIELDS = ("messageId", "receiptHandle", "body")
#: Its fields that are a string or null.
_NULLABLE_FIELDS = ("md5OfBody", "md5OfMessageAttributes")
#: ``json.encoder.encode_basestring`` writes a NUL, the separator of the joined fields, as
#: ``\u0000``: 6 characters.
_ESCAPED_SEPARATOR = 6


def _record_sizer(*, queue_arn: str, region: str) -> Callable[[dict[str, Any]], int]:
    """:func:`_json_size` of a record made by :func:`make_message_factory`, computed from its
    parts: the fixed text (keys, punctuation, source, ARN, region) is measured once, and the
    strings that vary are escaped by JSON's own C escaper in one call, joined by NULs. This
    costs a third of dumping every record. Anything it does not expect (a value that is not a
    string, a lone surrogate, an ARN that is not plain text) is measured by dumping, as before.
    """
    template = {
        "messageId": "",
        "receiptHandle": "",
        "body": "",
        "attributes": {},
        "messageAttributes": {},
        "md5OfMessageAttributes": "",
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    try:
        fixed = len(_ENCODE(template).encode("utf-8"))
    except UnicodeEncodeError:
        return _json_size

    def size_of(record: dict[str, Any]) -> int:
        try:
            return fixed + _variable_size(record)
        except (TypeError, AttributeError, UnicodeEncodeError):
            return _json_size(record)

    return size_of


def _variable_size(record: dict[str, Any]) -> int:
    """The bytes ``record`` adds to its template (every string empty, both maps empty)."""
    strings = [record[name] for name in _TEXT_FIELDS]
    extra = 0
    for name in _NULLABLE_FIELDS:
        value = record[name]
        if value is None:
            extra += 2  # null in place of ""
        else:
            strings.append(value)
    attributes = record["attributes"]
    if attributes:
        for pair in attributes.items():
            strings += pair
        # Per entry two pairs of quotes and a colon ("k":"v"), and commas between entries.
        extra += 6 * len(attributes) - 1
    text = encode_basestring("\x00".join(strings))
    escaped = len(text) if text.isascii() else len(text.encode("utf-8"))
    # The joined text has one pair of quotes and a separator between strings; the template
    # already holds the quotes of the record's own string fields.
    escaped -= 2 + _ESCAPED_SEPARATOR * (len(strings) - 1)
    if record["messageAttributes"]:
        extra += len(_ENCODE(record["messageAttributes"]).encode("utf-8")) - 2
    return escaped + extra


def _json_size(record: dict[str, Any]) -> int:
    """Bytes of ``record`` in the compact UTF-8 JSON the targets send (see encode_event)."""
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: the target falls back to the escaped form
        return len(json.dumps(record, separators=(",", ":")))


class SqsQueue:
    """The calls of one queue, on a receive client and a settle client.

    Args:
        receive_client: aiobotocore SQS client for ReceiveMessage (long polls hold its
            connections).
        settle_client: aiobotocore SQS client for everything else.
        queue_arn: the queue's ARN; its name and account locate the queue.
        region: the queue's region, for events.
    """

    def __init__(
        self, *, receive_client: Any, settle_client: Any, queue_arn: str, region: str
    ) -> None:
        self._receive = receive_client
        self._settle = settle_client
        self.arn = queue_arn
        parts = queue_arn.split(":")
        self.name = parts[5]
        self._account = parts[4]
        self._convert = make_message_factory(queue_arn=queue_arn, region=region)
        self._url: str | None = None
        #: The URLs of the queues :meth:`send_copy` sent to, by ARN.
        self._urls: dict[str, str] = {}
        # None where the lean path cannot stand in for the client (see LeanCall.for_client).
        self._lean_receive = _lean(receive_client, "ReceiveMessage", hands_out=True)
        self._lean_delete = _lean(settle_client, "DeleteMessageBatch")
        self._lean_change = _lean(settle_client, "ChangeMessageVisibilityBatch")

    @property
    def url(self) -> str:
        """The queue URL; available after :meth:`open`."""
        if self._url is None:
            raise RuntimeError("SqsQueue.open() has not run")
        return self._url

    async def open(self) -> QueueInfo:
        """Resolve the queue's URL and read its attributes."""
        async with source_call("GetQueueUrl"):
            found = await self._settle.get_queue_url(
                QueueName=self.name, QueueOwnerAWSAccountId=self._account
            )
        self._url = str(found["QueueUrl"])
        async with source_call("GetQueueAttributes"):
            response = await self._settle.get_queue_attributes(
                QueueUrl=self._url,
                AttributeNames=["VisibilityTimeout", "RedrivePolicy", "FifoQueue"],
            )
        attributes = response.get("Attributes", {})
        policy = attributes.get("RedrivePolicy")
        return QueueInfo(
            url=self._url,
            visibility_timeout=int(attributes.get("VisibilityTimeout", 30)),
            redrive_policy=json.loads(policy) if policy else None,
            fifo=str(attributes.get("FifoQueue", "false")).lower() == "true",
        )

    async def send_copy(self, message: SqsMessage, queue_arn: str) -> None:
        """Send a copy of ``message`` to the queue ``queue_arn`` (its URL is looked up once):
        SendMessage with :func:`copy_params`. Raises :class:`SourceError` when the URL cannot
        be found or the send fails."""
        url = self._urls.get(queue_arn)
        if url is None:
            parts = queue_arn.split(":")
            if len(parts) != 6:
                raise SourceError(f"not an SQS queue ARN: {queue_arn!r}")
            async with source_call("GetQueueUrl"):
                found = await self._settle.get_queue_url(
                    QueueName=parts[5], QueueOwnerAWSAccountId=parts[4]
                )
            url = self._urls[queue_arn] = str(found["QueueUrl"])
        async with source_call("SendMessage"):
            await self._settle.send_message(QueueUrl=url, **copy_params(message))

    async def backlog(self) -> int | None:
        """The queue's visible messages (``ApproximateNumberOfMessages``, approximate as SQS
        says), or None when GetQueueAttributes fails or answers no number: the caller (the
        provisioned scaler's backlog signal) keeps its last value then."""
        try:
            async with source_call("GetQueueAttributes"):
                response = await self._settle.get_queue_attributes(
                    QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
                )
            return int(response["Attributes"]["ApproximateNumberOfMessages"])
        except (SourceError, KeyError, TypeError, ValueError):
            return None

    async def receive(self, max_messages: int, wait_seconds: int) -> list[SqsMessage]:
        """One ReceiveMessage call: up to ``max_messages`` (≤ 10), waiting up to 20 seconds."""
        params = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max(1, min(RECEIVE_LIMIT, max_messages)),
            "WaitTimeSeconds": max(0, min(MAX_WAIT_SECONDS, wait_seconds)),
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        response = await _call(
            self._lean_receive, "ReceiveMessage", self._receive.receive_message, params
        )
        convert = self._convert
        return [convert(raw) for raw in response.get("Messages") or ()]

    async def delete(self, messages: Sequence[SqsMessage]) -> list[EntryFailure]:
        """Delete messages with DeleteMessageBatch; return the entries that were not deleted."""

        async def call(chunk: Sequence[SqsMessage]) -> dict[str, Any]:
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
            ]
            params = {"QueueUrl": self.url, "Entries": entries}
            method = self._settle.delete_message_batch
            return await _call(self._lean_delete, "DeleteMessageBatch", method, params)

        return await _in_chunks(messages, call)

    async def change_visibility(
        self, changes: Sequence[tuple[SqsMessage, int]]
    ) -> list[EntryFailure]:
        """Set each message's visibility timeout (seconds from now); return what failed."""
        timeouts = {id(m): seconds for m, seconds in changes}

        async def call(chunk: Sequence[SqsMessage]) -> dict[str, Any]:
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": m.receipt_handle,
                    "VisibilityTimeout": max(0, min(MAX_VISIBILITY_TIMEOUT, timeouts[id(m)])),
                }
                for i, m in enumerate(chunk)
            ]
            params = {"QueueUrl": self.url, "Entries": entries}
            method = self._settle.change_message_visibility_batch
            return await _call(self._lean_change, "ChangeMessageVisibilityBatch", method, params)

        return await _in_chunks([m for m, _ in changes], call)


def _lean(client: Any, operation: str, *, hands_out: bool = False) -> LeanCall | None:
    """The lean call of ``operation`` on an SQS client (botocore's default parsers), or None.
    Every JSON error is answered as botocore reads it, so that an error costs one request."""
    return LeanCall.for_client(
        client,
        operation,
        frozenset(),
        items=None,
        plain_parsers=True,
        hands_out=hands_out,
        any_error_code=True,
    )


async def _call(
    lean: LeanCall | None,
    operation: str,
    method: Callable[..., Awaitable[Any]],
    params: dict[str, Any],
) -> dict[str, Any]:
    """One call, lean where it can be; only a ``SourceError`` escapes (as from source_call)."""
    if lean is not None:
        return await lean.call(params)
    async with source_call(operation):
        result: dict[str, Any] = await method(**params)
    return result


def _queue_gone(exc: SourceError) -> bool:
    """Whether a call failed because its queue was deleted: its messages went with it, so
    repeating the call can never succeed."""
    cause = exc.__cause__
    return isinstance(cause, ClientError) and error_code(cause) in _QUEUE_GONE_CODES


async def _in_chunks(
    messages: Sequence[SqsMessage],
    call: Callable[[Sequence[SqsMessage]], Awaitable[dict[str, Any]]],
) -> list[EntryFailure]:
    """Run ``call`` on chunks of ten, a few at once; collect the entries that were not applied.

    A call that fails as a whole (a :class:`SourceError`: unreachable, throttled, a service
    error) makes every entry of its chunk a failure with ``sender_fault`` False and the error's
    text, so that the caller retries exactly those; the other chunks still count. A call on a
    queue that was deleted makes them failures with ``sender_fault`` True (code
    :data:`QUEUE_GONE`): the messages are gone, there is nothing left to retry.
    """
    chunks = [messages[i : i + BATCH_ENTRIES] for i in range(0, len(messages), BATCH_ENTRIES)]
    failures: list[EntryFailure] = []
    limiter = anyio.CapacityLimiter(PARALLEL_CALLS)

    async def run(chunk: Sequence[SqsMessage]) -> None:
        async with limiter:
            try:
                result = await call(chunk)
            except SourceError as exc:
                code, final = (QUEUE_GONE, True) if _queue_gone(exc) else (CALL_FAILED, False)
                failures.extend(EntryFailure(m, code, str(exc), final) for m in chunk)
                return
        failures.extend(
            EntryFailure(
                message=chunk[int(entry["Id"])],
                code=str(entry.get("Code", "Unknown")),
                text=str(entry.get("Message", "")),
                sender_fault=bool(entry.get("SenderFault", False)),
            )
            for entry in result.get("Failed") or ()
        )

    if len(chunks) == 1:
        await run(chunks[0])
    elif chunks:
        async with anyio.create_task_group() as tg:
            for chunk in chunks:
                tg.start_soon(run, chunk)
    return failures
