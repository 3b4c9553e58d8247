"""DynamoDB tables with streams for the integration tests, on moto or on DynamoDB Local.

:class:`Backend` says where a test's tables and streams live (SQS and Lambda are moto's
either way); :func:`make_table` creates a table with a stream there. Shared by the DynamoDB
Streams, filtering, redrive and status tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.aws import aws_client, unique

DYNAMODB_LOCAL_REGION = "ddblocal"


@dataclass(frozen=True)
class Backend:
    """Where a test's tables and streams live; SQS and Lambda are moto's in both cases."""

    name: str
    tables_url: str  # DynamoDB and DynamoDB Streams
    moto_url: str

    @classmethod
    def moto(cls, url: str) -> Backend:
        """Tables and streams on moto's server at ``url``."""
        return cls("moto", url, url)

    @property
    def is_local(self) -> bool:
        return self.name == "dynamodb_local"

    def endpoints(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The service's per-service endpoints: DynamoDB Local's stream endpoint, if local."""
        streams = {"dynamodbstreams": self.tables_url} if self.is_local else {}
        return {**streams, **(extra or {})}


async def make_table(backend: Backend, view: str, key: str = "id") -> tuple[str, str]:
    """A table with a stream of ``view``; returns (table name, stream ARN)."""
    name = unique("tbl")
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        response = await ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )
    arn: str = response["TableDescription"]["LatestStreamArn"]
    if backend.is_local:
        assert arn.split(":")[3] == DYNAMODB_LOCAL_REGION, arn  # what poller must accept
    return name, arn
