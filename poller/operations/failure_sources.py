"""Where ``poller redrive`` finds failure records, and what it makes of each one.

Data flow::

    on-failure destination (or --source) --open_failure_source--> SqsFailureSource | S3FailureSource
        .read(limit) --> StoredFailure (the raw body, and how to remove or release it); all of
            them (up to --limit) before any is redriven, so that they can be put in order
        parse_failure_record(body) --> FailurePointer (shard, first and last sequence number,
            batch size, stream, arrival of the first record, and the S3 payload if any)
        .claim(item) (S3: a conditional marker; SQS: the receive already hid it)
        redrive done --> .remove(item) (SQS DeleteMessage; S3: moved under ``redriven/``)
        left in place --> .release(items) (SQS: visible again at once; S3: the claim goes)
        .in_flight() --> what other (running or killed) redrives hold, for the summary

The failure record is AWS's (``poller.core.failure_record``): ``KinesisBatchInfo`` or
``DDBStreamBatchInfo``. SQS holds it as the message body (inside an SNS envelope when the
queue is subscribed to an SNS destination); S3 as an object under
``aws/lambda/<mapping UUID>/<shard>/YYYY/MM/DD/...`` with the records as ``payload``.

SQS: messages are received with a short visibility timeout (:data:`VISIBILITY_SECONDS`) that a
heartbeat extends while the redrive holds them; they are deleted only after their records were
delivered, those left in place are made visible again at the end, and a redrive that dies
midway leaves them to reappear within the timeout. Nothing is lost.
S3: an object is claimed (``in-progress/<key>``, written only if absent) before its records
are delivered, so that two redrives of one prefix do not both deliver it. Once delivered it is
copied under ``redriven/`` (same key after the prefix) and then deleted; the listing no longer
sees it, and the copy stays for audit (a lifecycle rule can expire it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import anyio
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.clients import ClientFactory
from poller.aws.translate import error_code
from poller.core.failure_record import BATCH_INFO_KEYS
from poller.destinations import parse_arn
from poller.errors import ConfigError, OperationError
from poller.operations.common import StreamMapping

#: How long received failure records stay invisible: the heartbeat extends it while the
#: redrive holds them; a killed redrive's reappear within this.
VISIBILITY_SECONDS = 120
#: Failure records read at most by one redrive (``--limit``'s default): all are read first,
#: then sorted by shard and sequence number (an SQS queue keeps no order), then redriven.
DEFAULT_LIMIT = 10_000
#: Keys asked for per S3 listing call.
PAGE_SIZE = 100
#: Where delivered S3 failure records are moved.
REDRIVEN_PREFIX = "redriven/"
#: Where an S3 failure record's claim marker is written while a redrive works on it.
CLAIM_PREFIX = "in-progress/"

logger = structlog.get_logger(__name__)

Kind = Literal["kinesis", "dynamodb"]


class MalformedFailureRecord(ValueError):
    """A failure record that cannot be redriven; the message says why."""


@dataclass(frozen=True, slots=True)
class FailurePointer:
    """What a failure record points at."""

    kind: Kind
    shard_id: str
    start_sequence: str
    end_sequence: str
    batch_size: int
    stream_arn: str
    #: When the first record reached the stream (epoch seconds), if the record says.
    first_arrival: float | None
    #: The records as Lambda delivered them (S3 failure records carry them), or None.
    payload: list[dict[str, Any]] | None


def parse_failure_record(body: str | bytes) -> FailurePointer:
    """The pointer in a failure record; MalformedFailureRecord says what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedFailureRecord(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise MalformedFailureRecord("not a JSON object")
    found = [(kind, key) for kind, key in BATCH_INFO_KEYS.items() if key in document]
    if len(found) != 1:
        keys = " or ".join(BATCH_INFO_KEYS.values())
        raise MalformedFailureRecord(f"holds no {keys} (an SQS message, not a failure record?)")
    kind, key = found[0]
    info = document[key]
    if not isinstance(info, dict):
        raise MalformedFailureRecord(f"{key} is not an object")
    pointer = FailurePointer(
        kind="kinesis" if kind == "kinesis" else "dynamodb",
        shard_id=_text(info, key, "shardId"),
        start_sequence=_sequence(info, key, "startSequenceNumber"),
        end_sequence=_sequence(info, key, "endSequenceNumber"),
        batch_size=_count(info, key),
        stream_arn=_text(info, key, "streamArn"),
        first_arrival=_instant(info.get("approximateArrivalOfFirstRecord")),
        payload=_payload(document),
    )
    if int(pointer.end_sequence) < int(pointer.start_sequence):
        # A swapped or corrupt range points at nothing; it is never "expired".
        raise MalformedFailureRecord(
            f"{key}.endSequenceNumber {pointer.end_sequence} is before its "
            f"startSequenceNumber {pointer.start_sequence}"
        )
    return pointer


def unwrap_sns(body: str) -> str:
    """The failure record inside an SNS envelope (an SQS queue subscribed to an SNS
    destination without raw message delivery), else ``body`` as it is."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("Message"), str)
    ):
        return str(document["Message"])
    return body


def _text(info: dict[str, Any], key: str, name: str) -> str:
    value = info.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedFailureRecord(f"{key}.{name} is missing or not a string")
    return value


def _sequence(info: dict[str, Any], key: str, name: str) -> str:
    value = _text(info, key, name)
    # isdigit() also accepts superscripts and other digits that int() refuses.
    if not (value.isascii() and value.isdecimal()):
        raise MalformedFailureRecord(f"{key}.{name} {value[:60]!r} is not a sequence number")
    return value


def _count(info: dict[str, Any], key: str) -> int:
    value = info.get("batchSize")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MalformedFailureRecord(f"{key}.batchSize is missing or not a positive integer")
    return value


def _instant(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _payload(document: dict[str, Any]) -> list[dict[str, Any]] | None:
    payload = document.get("payload")
    if payload is None:
        return None
    records = payload.get("Records") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MalformedFailureRecord("payload is not {'Records': [...]}")
    return records


@dataclass(slots=True)
class StoredFailure:
    """One failure record as stored: its id (message id or object key) and raw body."""

    id: str
    body: bytes
    #: The SQS receipt handle, or the S3 key.
    handle: str


class FailureSource(Protocol):
    """A place failure records are read from."""

    #: The queue's or bucket's ARN, as the operator knows it.
    arn: str
    #: The SQS failure queue's own maxReceiveCount (its RedrivePolicy), else None.
    max_receive_count: int | None

    async def check(self) -> None:
        """Raise OperationError naming the ARN if it does not exist or cannot be read."""
        ...

    async def read(self, limit: int) -> list[StoredFailure]:
        """Up to ``limit`` failure records, each once, held until removed or released."""
        ...

    async def waiting(self) -> int:
        """How many failure records wait to be read (without reading them)."""
        ...

    async def heartbeat(self) -> None:
        """Keep what is held hidden from other readers until cancelled."""
        ...

    async def claim(self, item: StoredFailure) -> str | None:
        """Make ``item`` this redrive's; the reason when another redrive has it."""
        ...

    async def remove(self, item: StoredFailure) -> None:
        """The item's records were delivered: take it out of the source."""
        ...

    async def release(self, items: list[StoredFailure]) -> None:
        """These stay: make them available again."""
        ...

    async def in_flight(self) -> str | None:
        """What other (running or killed) redrives still hold, as a report line."""
        ...


async def open_failure_source(
    mapping: StreamMapping, source: str | None, clients: ClientFactory
) -> FailureSource:
    """The failure records' source: ``source`` (an ARN), else the mapping's destination."""
    arn = source or mapping.on_failure_arn
    if arn is None:
        raise OperationError(
            f"mapping {mapping.name!r} has no on-failure destination; name the queue or bucket "
            "holding its failure records with --source ARN"
        )
    try:
        parsed = parse_arn(arn)
    except ConfigError:
        raise OperationError(
            f"--source {arn!r}: not an ARN (arn:aws:sqs:... or arn:aws:s3:::...)"
        ) from None
    if parsed.service == "sqs" and parsed.region and parsed.account:
        client = await clients.client("sqs", region=parsed.region)
        return SqsFailureSource(client, arn=arn, name=parsed.resource, account=parsed.account)
    if parsed.service == "s3":
        bucket, _, prefix = parsed.resource.partition("/")
        client = await clients.client("s3")
        prefix = prefix or f"aws/lambda/{mapping.mapping_uuid}/"
        return S3FailureSource(client, arn=arn, bucket=bucket, prefix=prefix)
    if parsed.service == "sns":
        raise OperationError(
            f"on-failure destination {arn!r} is an SNS topic, which cannot be read back; "
            "subscribe an SQS queue to it and pass that queue with --source"
        )
    raise OperationError(f"{arn!r}: failure records are read from an SQS queue or an S3 bucket")


def _missing(arn: str, exc: Exception) -> OperationError:
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return OperationError(f"cannot read failure records from {arn!r}: {code}")


#: What an AWS call can raise that one failure record's handling survives.
AWS_ERRORS = (ClientError, BotoCoreError, OSError)


class SqsFailureSource:
    """Failure records in a standard SQS queue (the message body is the record, or an SNS
    envelope around it when the queue is subscribed to an SNS destination)."""

    def __init__(self, client: Any, *, arn: str, name: str, account: str) -> None:
        self._client = client
        self.arn = arn
        self._name, self._account = name, account
        self._url = ""
        self.max_receive_count: int | None = None
        #: Receipt handles held (received, neither removed nor released), by message id.
        self._held: dict[str, str] = {}

    async def check(self) -> None:
        try:
            response = await self._client.get_queue_url(
                QueueName=self._name, QueueOwnerAWSAccountId=self._account
            )
            self._url = str(response["QueueUrl"])
            attributes = await self._attributes("RedrivePolicy")
        except AWS_ERRORS as exc:
            raise _missing(self.arn, exc) from None
        self.max_receive_count = _max_receive_count(attributes.get("RedrivePolicy"))

    async def _attributes(self, *names: str) -> dict[str, str]:
        response = await self._client.get_queue_attributes(
            QueueUrl=self._url, AttributeNames=list(names)
        )
        return dict(response.get("Attributes", {}))

    async def waiting(self) -> int:
        attributes = await self._attributes("ApproximateNumberOfMessages")
        return int(attributes.get("ApproximateNumberOfMessages", 0))

    async def read(self, limit: int) -> list[StoredFailure]:
        """Receive until the queue has nothing more to give (long polls of one second, which
        ask every SQS server: a short poll may answer empty while messages wait). What is
        received stays invisible (the heartbeat extends it) until removed or released, so it
        is not received twice; one seen again all the same is skipped."""
        found: dict[str, StoredFailure] = {}
        while len(found) < limit:
            messages = await self._receive(min(10, limit - len(found)))
            if not messages:
                break
            for message in messages:
                ident, handle = str(message["MessageId"]), str(message["ReceiptHandle"])
                self._held[ident] = handle
                if ident in found:  # received again: only the newest receipt handle works
                    found[ident].handle = handle
                else:
                    body = unwrap_sns(str(message["Body"]))
                    found[ident] = StoredFailure(ident, body.encode(), handle)
        return list(found.values())

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        response = await self._client.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=count,
            VisibilityTimeout=VISIBILITY_SECONDS,
            WaitTimeSeconds=1,
        )
        return list(response.get("Messages", []))

    async def heartbeat(self) -> None:
        """Every quarter of the visibility timeout, extend the held messages' (a slow
        target may take longer than one timeout; a killed redrive's reappear soon)."""
        while True:
            await anyio.sleep(VISIBILITY_SECONDS / 4)
            await self._extend(list(self._held.items()), VISIBILITY_SECONDS)

    async def _extend(self, held: list[tuple[str, str]], seconds: int) -> None:
        for start in range(0, len(held), 10):
            entries = [
                {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                for n, (_, handle) in enumerate(held[start : start + 10])
            ]
            try:
                response = await self._client.change_message_visibility_batch(
                    QueueUrl=self._url, Entries=entries
                )
            except AWS_ERRORS as exc:  # the next beat tries again; the timeout is the bound
                logger.warning("redrive.visibility_failed", queue=self.arn, error=repr(exc))
                continue
            for failed in response.get("Failed", []):
                logger.warning("redrive.visibility_failed", queue=self.arn, entry=failed)

    async def claim(self, item: StoredFailure) -> str | None:
        return None  # received, hence invisible to others: already ours

    async def remove(self, item: StoredFailure) -> None:
        await self._client.delete_message(QueueUrl=self._url, ReceiptHandle=item.handle)
        self._held.pop(item.id, None)

    async def release(self, items: list[StoredFailure]) -> None:
        held = [(item.id, item.handle) for item in items]
        for ident, _ in held:
            self._held.pop(ident, None)
        await self._extend(held, 0)

    async def in_flight(self) -> str | None:
        attributes = await self._attributes("ApproximateNumberOfMessagesNotVisible")
        count = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
        if count - len(self._held) <= 0:
            return None
        return (
            f"{count - len(self._held)} failure record(s) are in flight in {self.arn} (held by "
            "another redrive, or a killed one: visible again within "
            f"{VISIBILITY_SECONDS} s; run the redrive again then)"
        )


def _max_receive_count(policy: str | None) -> int | None:
    if not policy:
        return None
    try:
        return int(json.loads(policy)["maxReceiveCount"])
    except (ValueError, KeyError, TypeError):
        return None


class S3FailureSource:
    """Failure records as S3 objects under a prefix (AWS's ``aws/lambda/<mapping UUID>/``).

    S3 hides nothing from a second reader, so each object is claimed before its records are
    delivered: a marker at ``in-progress/<key>`` written only if absent (``If-None-Match:
    *``). The claim is deleted after the object moved under ``redriven/`` (or when it is left
    in place), so a second redrive claiming it later finds the object gone."""

    max_receive_count: int | None = None

    def __init__(self, client: Any, *, arn: str, bucket: str, prefix: str) -> None:
        self._client = client
        self.arn = arn
        self._bucket, self._prefix = bucket, prefix
        self._claims: set[str] = set()

    async def check(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self._bucket)
        except AWS_ERRORS as exc:
            raise _missing(self.arn, exc) from None

    async def _keys(self, prefix: str, limit: int) -> list[str]:
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
        keys: list[str] = []
        while len(keys) < limit:
            page = await self._client.list_objects_v2(
                **args, MaxKeys=min(PAGE_SIZE, limit - len(keys))
            )
            keys += [
                str(entry["Key"])
                for entry in page.get("Contents", [])
                if not str(entry["Key"]).startswith((REDRIVEN_PREFIX, CLAIM_PREFIX))
                or prefix.startswith(CLAIM_PREFIX)
            ]
            token = page.get("NextContinuationToken")
            if not token:
                break
            args["ContinuationToken"] = token
        return keys[:limit]

    async def waiting(self) -> int:
        return len(await self._keys(self._prefix, 1_000_000))

    async def read(self, limit: int) -> list[StoredFailure]:
        """The objects under the prefix, in key order (by shard, then time); one that another
        redrive moved away meanwhile is skipped."""
        found = []
        for key in await self._keys(self._prefix, limit):
            try:
                found.append(await self._get(key))
            except ClientError as exc:
                if error_code(exc) not in ("NoSuchKey", "404"):
                    raise
        return found

    async def _get(self, key: str) -> StoredFailure:
        response = await self._client.get_object(Bucket=self._bucket, Key=key)
        async with response["Body"] as body:
            return StoredFailure(key, await body.read(), key)

    async def heartbeat(self) -> None:
        """Claims do not expire: nothing to extend."""

    async def claim(self, item: StoredFailure) -> str | None:
        marker = CLAIM_PREFIX + item.handle
        try:
            await self._client.put_object(
                Bucket=self._bucket, Key=marker, Body=f"pid {os.getpid()}".encode(), IfNoneMatch="*"
            )
        except ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return f"claimed by another redrive ({marker} exists)"
            raise
        self._claims.add(item.handle)
        try:
            await self._client.head_object(Bucket=self._bucket, Key=item.handle)
        except ClientError as exc:
            if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                raise
            await self._unclaim(item.handle)
            return "taken by another redrive (no longer under the prefix)"
        return None

    async def _unclaim(self, key: str) -> None:
        await self._client.delete_object(Bucket=self._bucket, Key=CLAIM_PREFIX + key)
        self._claims.discard(key)

    async def remove(self, item: StoredFailure) -> None:
        """Copied under ``redriven/``, then deleted (the copy first: nothing is lost), then
        unclaimed."""
        await self._client.copy_object(
            Bucket=self._bucket,
            Key=REDRIVEN_PREFIX + item.handle,
            CopySource={"Bucket": self._bucket, "Key": item.handle},
        )
        await self._client.delete_object(Bucket=self._bucket, Key=item.handle)
        await self._unclaim(item.handle)

    async def release(self, items: list[StoredFailure]) -> None:
        """Objects stay where they are; this redrive's claims on them go."""
        for item in items:
            if item.handle in self._claims:
                await self._unclaim(item.handle)

    async def in_flight(self) -> str | None:
        claims = await self._keys(CLAIM_PREFIX + self._prefix, 1_000_000)
        others = [key for key in claims if key[len(CLAIM_PREFIX) :] not in self._claims]
        if not others:
            return None
        return (
            f"{len(others)} failure record(s) are claimed by another redrive (markers under "
            f"{CLAIM_PREFIX}{self._prefix}); if none runs, a killed one left them: delete the "
            "markers and run the redrive again"
        )
