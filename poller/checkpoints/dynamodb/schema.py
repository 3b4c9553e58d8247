"""Lease table creation and migration: make sure the table exists, has the right key, carries
the view index and is ACTIVE.

Run once at start-up, before any lease is read (see :meth:`DynamoDBLeaseTable.ensure_table`).
A new table is created with the view index (:data:`~.items.VIEW_INDEX`, hash ``mapping``,
range ``shardId``, the lease attributes balancing reads projected, never ``windowState``). A
table made by an older version has no index: when creating is allowed, it is added in place
(UpdateTable; DynamoDB backfills it from the existing leases) and waited for. When it cannot be
added the table still works: the lease view falls back to the consistent Scan.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import anyio
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.translate import error_code
from poller.checkpoints.dynamodb.calls import TableCalls
from poller.checkpoints.dynamodb.items import VIEW_ATTRIBUTES, VIEW_INDEX
from poller.errors import CheckpointError, ConfigError

log = structlog.get_logger("poller.leases")

_NOT_FOUND = "ResourceNotFoundException"
_IN_USE = "ResourceInUseException"
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
#: How long ensure_table waits for a new table to become ACTIVE: 1 s polls, 2 minutes.
_TABLE_WAIT = {"Delay": 1, "MaxAttempts": 120}
#: How long ensure_table waits for an added index to be backfilled, by default: DynamoDB fills
#: a few thousand leases in well under a minute; beyond this the Scan serves until a restart.
INDEX_WAIT = 300.0
_INDEX_POLL = 1.0
_INDEX_LOG_EVERY = 15.0

_KEYS = [
    {"AttributeName": "mapping", "KeyType": "HASH"},
    {"AttributeName": "shardId", "KeyType": "RANGE"},
]
_INDEX_ATTRIBUTES = [
    {"AttributeName": "mapping", "AttributeType": "S"},
    {"AttributeName": "shardId", "AttributeType": "S"},
]
_PROJECTION = {"ProjectionType": "INCLUDE", "NonKeyAttributes": list(VIEW_ATTRIBUTES)}


async def ensure_table(
    calls: TableCalls, *, create: bool = True, index_wait: float = INDEX_WAIT
) -> bool:
    """Make sure the table exists and is ACTIVE, creating it (or its view index) when allowed.

    A new table has hash key ``leaseKey`` (S), on-demand billing and the view index. Replicas
    that start together may all try to create it; whoever loses the race waits for the
    winner's table (and adds the index if the winner was an older version).

    Returns:
        Whether the view index is there and ACTIVE. False (after one warning
        ``lease_table.no_view_index``) when it is missing and cannot be added: creating is
        disabled, DynamoDB refused UpdateTable, or the backfill outlasted ``index_wait``.

    Raises:
        ConfigError: the table does not exist and ``create`` is False, or its key schema is
            not ``leaseKey`` alone.
        CheckpointError: DynamoDB could not be reached or refused a call (other than adding
            the index).
    """
    table = await _describe(calls)
    if table is None:
        if not create:
            raise ConfigError(
                [f"lease table {calls.table!r} does not exist (and creating it is disabled)"]
            )
        await _create_table(calls)
        table = await _active(calls)
    _check_key(calls, table)
    if table.get("TableStatus") != "ACTIVE":
        table = await _active(calls)
    return await _ensure_index(calls, table, create=create, index_wait=index_wait)


def _check_key(calls: TableCalls, table: dict[str, Any]) -> None:
    schema = [(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])]
    if schema != [("leaseKey", "HASH")]:
        raise ConfigError(
            [f"lease table {calls.table!r} has key schema {schema}, not leaseKey (HASH)"]
        )


async def _ensure_index(
    calls: TableCalls, table: dict[str, Any], *, create: bool, index_wait: float
) -> bool:
    index = view_index(table)
    if index is None:
        if not create:
            return _no_index(calls, "the table has none and create_table is disabled")
        if not await _add_index(calls, table):
            return False
    elif problem := _unusable(index):
        return _no_index(calls, problem)
    return await _wait_index(calls, index_wait)


def view_index(table: dict[str, Any]) -> dict[str, Any] | None:
    """The view index's description in a DescribeTable answer, or None when absent."""
    for index in table.get("GlobalSecondaryIndexes", []):
        if index.get("IndexName") == VIEW_INDEX:
            found: dict[str, Any] = index
            return found
    return None


def _unusable(index: dict[str, Any]) -> str | None:
    """Why an existing index of that name cannot serve the view (someone else's), or None."""
    if index.get("KeySchema") != _KEYS:
        return f"index {VIEW_INDEX} has key schema {index.get('KeySchema')}, not mapping/shardId"
    projection = index.get("Projection", {})
    included = set(projection.get("NonKeyAttributes", ()))
    if projection.get("ProjectionType") != "ALL" and not set(VIEW_ATTRIBUTES) <= included:
        return f"index {VIEW_INDEX} does not project {', '.join(VIEW_ATTRIBUTES)}"
    return None


def _no_index(calls: TableCalls, reason: str) -> bool:
    log.warning(
        "lease_table.no_view_index",
        table=calls.table,
        index=VIEW_INDEX,
        reason=reason,
        hint="balancing reads the lease table with a consistent Scan instead (works, costs more)",
    )
    return False


async def _describe(calls: TableCalls) -> dict[str, Any] | None:
    """The table's description, or None when it does not exist."""
    try:
        described = await calls.client.describe_table(TableName=calls.table)
    except ClientError as exc:
        if error_code(exc) == _NOT_FOUND:
            return None
        raise calls.error("DescribeTable", exc) from exc
    except _TRANSPORT_ERRORS as exc:
        raise calls.error("DescribeTable", exc) from exc
    table: dict[str, Any] = described["Table"]
    return table


async def _create_table(calls: TableCalls) -> None:
    try:
        await calls.client.create_table(
            TableName=calls.table,
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "leaseKey", "AttributeType": "S"},
                *_INDEX_ATTRIBUTES,
            ],
            GlobalSecondaryIndexes=[
                {"IndexName": VIEW_INDEX, "KeySchema": _KEYS, "Projection": _PROJECTION}
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if error_code(exc) != _IN_USE:  # another replica is creating it
            raise calls.error("CreateTable", exc) from exc
    except _TRANSPORT_ERRORS as exc:
        raise calls.error("CreateTable", exc) from exc


async def _add_index(calls: TableCalls, table: dict[str, Any]) -> bool:
    """Add the view index to an existing table (the in-place migration). Whether it is being
    added now, by this call or by a peer's at the same moment."""
    create: dict[str, Any] = {
        "IndexName": VIEW_INDEX,
        "KeySchema": _KEYS,
        "Projection": _PROJECTION,
    }
    billing = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    if billing != "PAY_PER_REQUEST":  # a provisioned table's index needs its own capacity
        throughput = table.get("ProvisionedThroughput", {})
        create["ProvisionedThroughput"] = {
            "ReadCapacityUnits": max(1, int(throughput.get("ReadCapacityUnits", 1))),
            "WriteCapacityUnits": max(1, int(throughput.get("WriteCapacityUnits", 1))),
        }
    log.info("lease_table.adding_view_index", table=calls.table, index=VIEW_INDEX)
    try:
        await calls.client.update_table(
            TableName=calls.table,
            AttributeDefinitions=_INDEX_ATTRIBUTES,
            GlobalSecondaryIndexUpdates=[{"Create": create}],
        )
    except ClientError as exc:
        # A peer adding it at the same moment makes this call fail; its index serves us too.
        again = await _describe(calls)
        if again is not None and view_index(again) is not None:
            return True
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        return _no_index(calls, f"UpdateTable failed with {code}: {message}".rstrip(": "))
    except _TRANSPORT_ERRORS as exc:
        raise calls.error("UpdateTable (adding the view index)", exc) from exc
    return True


async def _wait_index(calls: TableCalls, limit: float) -> bool:
    """Wait, polling DescribeTable, until the view index is ACTIVE and backfilled; False
    (with a warning) when it is not within ``limit`` seconds."""
    started = time.monotonic()
    logged = started - _INDEX_LOG_EVERY  # say at once that start-up waits, then every 15 s
    while True:
        table = await _describe(calls)
        index = None if table is None else view_index(table)
        if index is None:
            return _no_index(calls, "the index vanished while it was being added")
        status = index.get("IndexStatus", "ACTIVE")  # not every emulator reports it
        if status == "ACTIVE" and not index.get("Backfilling", False):
            return True
        waited = time.monotonic() - started
        if waited > limit:
            return _no_index(calls, f"the index is still {status} after {limit:.0f} s")
        if time.monotonic() - logged >= _INDEX_LOG_EVERY:
            logged = time.monotonic()
            log.info(
                "lease_table.view_index_building",
                table=calls.table,
                status=status,
                waited_s=round(waited, 1),
            )
        await anyio.sleep(_INDEX_POLL)


async def _active(calls: TableCalls) -> dict[str, Any]:
    """Wait until the table is ACTIVE; its description then."""
    try:
        waiter = calls.client.get_waiter("table_exists")
        await waiter.wait(TableName=calls.table, WaiterConfig=_TABLE_WAIT)
    except (ClientError, *_TRANSPORT_ERRORS) as exc:
        raise calls.error("DescribeTable (waiting for ACTIVE)", exc) from exc
    table = await _describe(calls)
    if table is None:  # deleted between the waiter's answer and ours: never done by poller
        raise CheckpointError(f"lease table {calls.table}: DescribeTable: the table vanished")
    return table
