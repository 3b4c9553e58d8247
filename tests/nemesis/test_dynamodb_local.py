"""DynamoDB Local, the lease store of the lease, replica and nemesis tests: it listens on no
address of the machine (only through the loopback bridge), and its conditional writes are
atomic (the reason it replaced moto for leases)."""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import urlparse

import anyio
import pytest

from tests.support.aws import aws_client, unique

pytestmark = pytest.mark.anyio


def listening() -> list[str]:
    """``ss -ltnp`` lines of every TCP socket listening in the machine's network namespace."""
    answer = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True)
    return answer.stdout.splitlines()


def test_only_the_loopback_bridge_listens_in_the_machines_namespace(lease_store: str) -> None:
    port = urlparse(lease_store).port
    lines = listening()
    java = [line for line in lines if '"java"' in line]
    assert java == [], f"DynamoDB Local listens in the machine's namespace: {java}"
    (bridge,) = [line for line in lines if f":{port} " in line]
    assert f"127.0.0.1:{port}" in bridge


async def test_concurrent_conditional_writes_to_one_item_let_exactly_one_win(
    lease_store: str,
) -> None:
    table = unique("atomic")
    async with aws_client("dynamodb", lease_store) as ddb:
        await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for round_ in range(30):
            wins = await race(ddb, table, f"item-{round_}", writers=5)
            assert wins == 1, f"round {round_}: {wins} conditional writes won"


async def race(ddb: Any, table: str, key: str, writers: int) -> int:
    """``writers`` concurrent PutItems of one new item, each only if it does not exist."""
    won = []

    async def put(owner: int) -> None:
        try:
            await ddb.put_item(
                TableName=table,
                Item={"k": {"S": key}, "owner": {"N": str(owner)}},
                ConditionExpression="attribute_not_exists(k)",
            )
            won.append(owner)
        except ddb.exceptions.ConditionalCheckFailedException:
            pass

    async with anyio.create_task_group() as group:
        for owner in range(writers):
            group.start_soon(put, owner)
    return len(won)
