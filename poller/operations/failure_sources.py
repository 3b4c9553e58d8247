"""Where ``poller redrive`` finds failure records, and what it makes of each one.

Data flow::

    on-failure destination (or --source) --open_failure_source--> SqsFailureSource | S3FailureSource
        .read(limit) --> StoredFailure (the raw body, and how to remove or release it)
        parse_failure_record(body) --> FailurePointer (shard, first and last sequence number,
            batch size, stream, arrival of the first record, and the S3 payload if any)
        redrive done --> .remove(item) (SQS DeleteMessage; S3: moved under ``redriven/``)
        left in place --> .release(items) (SQS: visible again at once; S3: nothing to do)

The failure record is AWS's (``poller.core.failure_record``): ``KinesisBatchInfo`` or
``DDBStreamBatchInfo``. SQS holds it as the message body; S3 as an object under
``aws/lambda/<mapping UUID>/<shard>/YYYY/MM/DD/...`` with the records as ``payload``.

SQS: messages are received with a visibility timeout (:data:`VISIBILITY_SECONDS`) and deleted
only after their records were delivered; those left in place are made visible again at the end,
and a redrive that dies midway leaves them to reappear when the timeout ends. Nothing is lost.
S3: an object whose records were delivered is copied under ``redriven/`` (same key after the
prefix) and then deleted; the listing of ``aws/lambda/`` no longer sees it, and the copy stays
for audit (a lifecycle rule can expire it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.clients import ClientFactory
from poller.aws.translate import error_code
from poller.core.failure_record import BATCH_INFO_KEYS
from poller.destinations import parse_arn
from poller.errors import ConfigError, OperationError
from poller.operations.common import StreamMapping

#: How long received failure records stay invisible while a redrive works on them.
VISIBILITY_SECONDS = 900
#: Failure records read, ordered and redriven at a time (an SQS queue keeps no order; a page
#: bounds what a redrive holds and how long its messages stay invisible before their turn).
PAGE_SIZE = 100
#: Where delivered S3 failure records are moved.
REDRIVEN_PREFIX = "redriven/"

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
    return FailurePointer(
        kind="kinesis" if kind == "kinesis" else "dynamodb",
        shard_id=_text(info, key, "shardId"),
        start_sequence=_sequence(info, key, "startSequenceNumber"),
        end_sequence=_sequence(info, key, "endSequenceNumber"),
        batch_size=_count(info, key),
        stream_arn=_text(info, key, "streamArn"),
        first_arrival=_instant(info.get("approximateArrivalOfFirstRecord")),
        payload=_payload(document),
    )


def _text(info: dict[str, Any], key: str, name: str) -> str:
    value = info.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedFailureRecord(f"{key}.{name} is missing or not a string")
    return value


def _sequence(info: dict[str, Any], key: str, name: str) -> str:
    value = _text(info, key, name)
    if not value.isdigit():
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

    async def check(self) -> None:
        """Raise OperationError naming the ARN if it does not exist or cannot be read."""
        ...

    def pages(self, limit: int | None) -> AsyncIterator[list[StoredFailure]]:
        """Up to ``limit`` failure records (all when None), a page at a time
        (:data:`PAGE_SIZE`), each record once."""
        ...

    async def remove(self, item: StoredFailure) -> None:
        """The item's records were delivered: take it out of the source."""
        ...

    async def release(self, items: list[StoredFailure]) -> None:
        """These stay: make them available again."""
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


class SqsFailureSource:
    """Failure records in a standard SQS queue (the message body is the record)."""

    def __init__(self, client: Any, *, arn: str, name: str, account: str) -> None:
        self._client = client
        self.arn = arn
        self._name, self._account = name, account
        self._url = ""

    async def check(self) -> None:
        try:
            response = await self._client.get_queue_url(
                QueueName=self._name, QueueOwnerAWSAccountId=self._account
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _missing(self.arn, exc) from None
        self._url = str(response["QueueUrl"])

    async def pages(self, limit: int | None) -> AsyncIterator[list[StoredFailure]]:
        """Receive until the queue has nothing more to give (long polls of one second, which
        ask every SQS server: a short poll may answer empty while messages wait). Messages
        left in place stay invisible until :meth:`release`, so they are not received twice;
        one seen again (its visibility ran out) is skipped."""
        seen: set[str] = set()
        while limit is None or len(seen) < limit:
            page: list[StoredFailure] = []
            while len(page) < PAGE_SIZE and (limit is None or len(seen) < limit):
                wanted = min(10, PAGE_SIZE - len(page))
                if limit is not None:
                    wanted = min(wanted, limit - len(seen))
                messages = await self._receive(wanted)
                if not messages:
                    break
                for message in messages:
                    if message["MessageId"] not in seen:
                        seen.add(message["MessageId"])
                        page.append(
                            StoredFailure(
                                message["MessageId"],
                                message["Body"].encode(),
                                message["ReceiptHandle"],
                            )
                        )
            if not page:
                return
            yield page

    async def _receive(self, count: int) -> list[dict[str, Any]]:
        response = await self._client.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=count,
            VisibilityTimeout=VISIBILITY_SECONDS,
            WaitTimeSeconds=1,
        )
        return list(response.get("Messages", []))

    async def remove(self, item: StoredFailure) -> None:
        await self._client.delete_message(QueueUrl=self._url, ReceiptHandle=item.handle)

    async def release(self, items: list[StoredFailure]) -> None:
        for item in items:
            await self._client.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=item.handle, VisibilityTimeout=0
            )


class S3FailureSource:
    """Failure records as S3 objects under a prefix (AWS's ``aws/lambda/<mapping UUID>/``)."""

    def __init__(self, client: Any, *, arn: str, bucket: str, prefix: str) -> None:
        self._client = client
        self.arn = arn
        self._bucket, self._prefix = bucket, prefix

    async def check(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise _missing(self.arn, exc) from None

    async def pages(self, limit: int | None) -> AsyncIterator[list[StoredFailure]]:
        """The objects under the prefix, in key order (by shard, then time), a listing page
        of at most :data:`PAGE_SIZE` keys at a time."""
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._prefix}
        count = 0
        while limit is None or count < limit:
            wanted = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - count)
            page = await self._client.list_objects_v2(**args, MaxKeys=wanted)
            found = [await self._get(entry["Key"]) for entry in page.get("Contents", [])]
            count += len(found)
            if found:
                yield found
            token = page.get("NextContinuationToken")
            if not token or not found:
                return
            args["ContinuationToken"] = token

    async def _get(self, key: str) -> StoredFailure:
        response = await self._client.get_object(Bucket=self._bucket, Key=key)
        async with response["Body"] as body:
            return StoredFailure(key, await body.read(), key)

    async def remove(self, item: StoredFailure) -> None:
        """Copied under ``redriven/``, then deleted (the copy first: nothing is lost)."""
        await self._client.copy_object(
            Bucket=self._bucket,
            Key=REDRIVEN_PREFIX + item.handle,
            CopySource={"Bucket": self._bucket, "Key": item.handle},
        )
        await self._client.delete_object(Bucket=self._bucket, Key=item.handle)

    async def release(self, items: list[StoredFailure]) -> None:
        """Objects stay where they are."""
