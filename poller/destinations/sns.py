"""The SNS on-failure destination: one Publish per failure record.

Data flow::

    ShardProcessor --failure record--> SnsDestination.send --Publish(JSON record)--> standard topic

The shard processor calls ``send`` when records exhaust their retries or exceed their maximum age;
until it succeeds the records are not settled and the shard's checkpoint does not move. The
notification's ``Message`` is the failure record as JSON, exactly what Lambda publishes;
subscribers receive it inside SNS's usual envelope.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from poller.destinations import (
    DestinationArn,
    destination_call,
    reject_fifo,
    require_region_and_account,
)

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.types import StreamRecord


class SnsDestination:
    """Publishes failure records to a standard SNS topic.

    Args:
        client: an aiobotocore SNS client in the topic's region.
        arn: the topic's ARN.
    """

    def __init__(self, client: Any, *, arn: str) -> None:
        self._client = client
        self.arn = arn

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        """Publish ``record`` as the notification message; raises ``DestinationError``."""
        message = json.dumps(record)
        async with destination_call(self.arn, "Publish"):
            await self._client.publish(TopicArn=self.arn, Message=message)


async def build(arn: DestinationArn, clients: ClientFactory) -> SnsDestination:
    """An SNS destination on the control client of the topic's region."""
    require_region_and_account(arn, "topic")
    reject_fifo(arn, "topic")
    client = await clients.client("sns", region=arn.region)
    return SnsDestination(client, arn=arn.arn)
