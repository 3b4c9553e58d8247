"""Lease table creation: make sure the table exists, has the right key and is ACTIVE.

Run once at start-up, before any lease is read (see :meth:`DynamoDBLeaseTable.ensure_table`).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.translate import error_code
from poller.checkpoints.dynamodb.calls import TableCalls
from poller.errors import ConfigError

_NOT_FOUND = "ResourceNotFoundException"
_IN_USE = "ResourceInUseException"
#: How long ensure_table waits for a new table to become ACTIVE: 1 s polls, 2 minutes.
_TABLE_WAIT = {"Delay": 1, "MaxAttempts": 120}


async def ensure_table(calls: TableCalls, *, create: bool = True) -> None:
    """Make sure the table exists and is ACTIVE, creating it when allowed.

    A new table has hash key ``leaseKey`` (S) and on-demand billing. Replicas that start
    together may all try to create it; whoever loses the race waits for the winner's table.

    Raises:
        ConfigError: the table does not exist and ``create`` is False, or its key schema is
            not ``leaseKey`` alone.
        CheckpointError: DynamoDB could not be reached or refused a call.
    """
    table = await _describe(calls)
    if table is None:
        if not create:
            raise ConfigError(
                [f"lease table {calls.table!r} does not exist (and creating it is disabled)"]
            )
        await _create_table(calls)
    else:
        schema = [(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])]
        if schema != [("leaseKey", "HASH")]:
            raise ConfigError(
                [f"lease table {calls.table!r} has key schema {schema}, not leaseKey (HASH)"]
            )
        if table.get("TableStatus") == "ACTIVE":
            return
    await _wait_active(calls)


async def _describe(calls: TableCalls) -> dict[str, Any] | None:
    """The table's description, or None when it does not exist."""
    try:
        described = await calls.client.describe_table(TableName=calls.table)
    except ClientError as exc:
        if error_code(exc) == _NOT_FOUND:
            return None
        raise calls.error("DescribeTable", exc) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise calls.error("DescribeTable", exc) from exc
    table: dict[str, Any] = described["Table"]
    return table


async def _create_table(calls: TableCalls) -> None:
    try:
        await calls.client.create_table(
            TableName=calls.table,
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if error_code(exc) != _IN_USE:  # another replica is creating it
            raise calls.error("CreateTable", exc) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise calls.error("CreateTable", exc) from exc


async def _wait_active(calls: TableCalls) -> None:
    try:
        waiter = calls.client.get_waiter("table_exists")
        await waiter.wait(TableName=calls.table, WaiterConfig=_TABLE_WAIT)
    except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise calls.error("DescribeTable (waiting for ACTIVE)", exc) from exc
