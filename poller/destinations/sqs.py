"""The SQS on-failure destination: one SendMessage per failure record.

Data flow::

    ShardProcessor --failure record--> SqsDestination.send
        --GetQueueUrl (first send only)--> --SendMessage(JSON record)--> standard SQS queue

The shard processor calls ``send`` when records exhaust their retries or exceed their maximum age;
until it succeeds the records are not settled and the shard's checkpoint does not move. The
message body is the failure record as JSON, exactly what Lambda sends. The queue URL is
resolved once, from the name and account in the ARN, and cached; a failed resolution is tried
again on the next send, and a queue that disappears is resolved afresh.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from poller.aws.translate import error_code
from poller.destinations import (
    DestinationArn,
    destination_call,
    reject_fifo,
    require_region_and_account,
)
from poller.errors import DestinationError

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.types import StreamRecord

#: Error codes meaning the cached queue URL no longer names a queue.
_QUEUE_GONE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class SqsDestination:
    """Sends failure records to a standard SQS queue.

    Args:
        client: an aiobotocore SQS client in the queue's region.
        arn: the queue's ARN.
        queue_name: the queue's name, from the ARN.
        account_id: the queue owner's account, from the ARN.
    """

    def __init__(self, client: Any, *, arn: str, queue_name: str, account_id: str) -> None:
        self._client = client
        self.arn = arn
        self._queue_name = queue_name
        self._account_id = account_id
        self._queue_url: str | None = None

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        """Send ``record`` as the body of one message; raises ``DestinationError``."""
        queue_url = await self._resolve()
        body = json.dumps(record)
        try:
            async with destination_call(self.arn, "SendMessage"):
                await self._client.send_message(QueueUrl=queue_url, MessageBody=body)
        except DestinationError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and error_code(cause) in _QUEUE_GONE:
                self._queue_url = None
            raise

    async def _resolve(self) -> str:
        """The queue URL, looked up on first use and cached once the lookup succeeds."""
        if self._queue_url is None:
            async with destination_call(self.arn, "GetQueueUrl"):
                response = await self._client.get_queue_url(
                    QueueName=self._queue_name, QueueOwnerAWSAccountId=self._account_id
                )
            self._queue_url = str(response["QueueUrl"])
        return self._queue_url


async def build(arn: DestinationArn, clients: ClientFactory) -> SqsDestination:
    """An SQS destination on the control client of the queue's region."""
    require_region_and_account(arn, "queue")
    reject_fifo(arn, "queue")
    client = await clients.client("sqs", region=arn.region)
    return SqsDestination(client, arn=arn.arn, queue_name=arn.resource, account_id=arn.account)
