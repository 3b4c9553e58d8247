"""The S3 on-failure destination: one object per failure record, with the records themselves.

Data flow::

    ShardProcessor --failure record + records--> S3Destination.send
        --PutObject(aws/lambda/<mapping>/<shard>/YYYY/MM/DD/...)--> S3 bucket

The shard processor calls ``send`` when records exhaust their retries or exceed their maximum age;
until it succeeds the records are not settled and the shard's checkpoint does not move. Unlike
SQS and SNS, the object holds the failed records too: the failure record plus
``payload: {"Records": [...]}`` (:func:`~poller.core.failure_record.with_payload`). Object keys
follow AWS's scheme, ``aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>``,
dated by the failure record's ``timestamp``; the random suffix keeps keys unique.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from poller.core.failure_record import with_payload
from poller.destinations import DestinationArn, destination_call
from poller.errors import ConfigError

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.types import StreamRecord


def object_key(mapping_uuid: str, shard_id: str, timestamp: datetime) -> str:
    """AWS's object key for a failure record of ``shard_id`` made at ``timestamp`` (UTC)."""
    when = timestamp.astimezone(UTC)
    return (
        f"aws/lambda/{mapping_uuid}/{shard_id}/{when:%Y/%m/%d}/"
        f"{when:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
    )


def record_time(record: dict[str, Any]) -> datetime:
    """The failure record's ``timestamp``, or the current time if it has none that parses."""
    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        try:
            parsed = datetime.fromisoformat(stamp)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


class S3Destination:
    """Writes failure records, with their records, as JSON objects in an S3 bucket.

    Args:
        client: an aiobotocore S3 client.
        arn: the bucket's ARN.
        bucket: the bucket's name, from the ARN.
    """

    def __init__(self, client: Any, *, arn: str, bucket: str) -> None:
        self._client = client
        self.arn = arn
        self._bucket = bucket

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        """Put one object holding ``record`` and ``records``; raises ``DestinationError``."""
        key = object_key(mapping_uuid, shard_id, record_time(record))
        body = json.dumps(with_payload(record, records)).encode()
        async with destination_call(self.arn, "PutObject"):
            await self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType="application/json"
            )


async def build(arn: DestinationArn, clients: ClientFactory) -> S3Destination:
    """An S3 destination on the control client of the factory's region.

    Bucket ARNs carry no region; S3 redirects a request made in the wrong one.
    """
    bucket = arn.resource
    if arn.region or arn.account or not bucket or "/" in bucket:
        raise ConfigError(
            [
                f"on-failure destination {arn.arn!r}: expected a bucket ARN such as "
                "arn:aws:s3:::my-bucket"
            ]
        )
    client = await clients.client("s3")
    return S3Destination(client, arn=arn.arn, bucket=bucket)
