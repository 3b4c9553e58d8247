"""DynamoDB calls on one lease table: conditional writes and the translation of failures.

:class:`~poller.checkpoints.dynamodb.table.DynamoDBLeaseTable` sends every request through a
:class:`TableCalls`: a refused condition comes back as a :class:`_Write` that is not ``ok`` (with
the item as DynamoDB held it), and anything else that goes wrong becomes a retriable
:class:`~poller.errors.CheckpointError` naming the table and the call. Beyond the client's own
few quick retries nothing here retries: the caller's loop (renewals, balance cycles, the
checkpointer) tries again on its own schedule.

The control API's mapping store (:mod:`poller.control.store_dynamodb`) shares the table and
these calls, plus two of its own: :meth:`TableCalls.transact_write` (a refused transaction is a
:class:`Transaction` that is not ``ok``) and :meth:`TableCalls.batch_read`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from poller.aws.translate import error_code
from poller.checkpoints.dynamodb.items import Lease, _n, _names, _s, lease_from_item
from poller.errors import CheckpointError, LeaseLost

_CONDITION_FAILED = "ConditionalCheckFailedException"
_TRANSACTION_CANCELED = "TransactionCanceledException"
#: Cancellation reasons that are an answer, not a failure: a condition was false, or another
#: transaction was writing one of the items (contention: the caller re-reads and tries again).
#: ``None`` is the reason given for the items that were fine.
REFUSALS = frozenset({"ConditionalCheckFailed", "TransactionConflict"})


class _Write(NamedTuple):
    """The result of one conditional write: the item after it, or before the refusal."""

    ok: bool
    item: dict[str, Any] | None


class Transaction(NamedTuple):
    """The result of one TransactWriteItems: applied, or refused with one reason per item
    (``None`` for the items whose condition held)."""

    ok: bool
    reasons: tuple[str, ...] = ()


class TableCalls:
    """One table's requests: plain calls, conditional puts and updates, fenced updates.

    Args:
        client: an aiobotocore DynamoDB client, owned by the caller.
        table: the table name.
    """

    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def error(self, call: str, exc: Exception) -> CheckpointError:
        """``exc`` from ``call`` as a CheckpointError naming the table and the call."""
        if isinstance(exc, ClientError):
            code = error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            text = f"lease table {self.table}: {call} failed with {code}: {message}"
            return CheckpointError(text.rstrip(": "))
        return CheckpointError(f"lease table {self.table}: {call} could not reach DynamoDB: {exc}")

    async def call(self, call: str, method: str, **params: Any) -> dict[str, Any]:
        """One DynamoDB call on this table; errors become CheckpointError."""
        try:
            response: dict[str, Any] = await getattr(self.client, method)(
                TableName=self.table, **params
            )
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.error(call, exc) from exc
        return response

    async def read(self, call: str, key: str) -> dict[str, Any] | None:
        """The item at lease key ``key``, or None when there is none. The read is consistent:
        ownership and the pinned start are decided on it, and a stale copy could undo them."""
        response = await self.call(call, "get_item", Key={"leaseKey": _s(key)}, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item

    async def put_new(self, item: dict[str, Any], what: str) -> bool:
        """Put ``item`` unless an item with its lease key exists; False when one does.

        The condition makes creation race-free: of replicas creating the same item at once,
        exactly one wins and the others learn it without overwriting anything.
        """
        try:
            await self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(#leaseKey)",
                ExpressionAttributeNames={"#leaseKey": "leaseKey"},
            )
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise self.error(what, exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.error(what, exc) from exc
        return True

    async def update(
        self,
        call: str,
        key: str,
        *,
        update: str,
        condition: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
        return_new: bool = True,
    ) -> _Write:
        """A conditional UpdateItem. A refused condition returns the item as it was.

        ``#name`` placeholders stand for the attribute ``name`` unless ``names`` maps them
        (a replica id, which may hold any character, is always passed so).
        """
        params: dict[str, Any] = {
            "Key": {"leaseKey": _s(key)},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {**_names(update, condition), **(names or {})},
            "ReturnValues": "ALL_NEW" if return_new else "NONE",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if values:  # DynamoDB refuses an empty map
            params["ExpressionAttributeValues"] = values
        try:
            response = await self.client.update_item(TableName=self.table, **params)
        except ClientError as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return _Write(False, exc.response.get("Item"))
            raise self.error(call, exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.error(call, exc) from exc
        return _Write(True, response.get("Attributes"))

    async def transact_write(
        self, call: str, actions: Sequence[dict[str, Any]], *, token: str | None = None
    ) -> Transaction:
        """One TransactWriteItems of ``actions`` (``{"Put": {...}}``, ``{"Update": {...}}``,
        ``{"Delete": {...}}``, ``{"ConditionCheck": {...}}``, each without ``TableName``) on
        this table: all of them or none.

        A transaction cancelled only because a condition was false or another transaction
        held an item comes back as a refusal (``ok`` False, with the reasons); any other
        failure raises CheckpointError. ``token`` is the ``ClientRequestToken``: DynamoDB
        answers a retry of the same request (the SDK's, after a lost answer) with success
        instead of applying it twice, for 10 minutes.
        """
        items = [
            {kind: {**body, "TableName": self.table} for kind, body in action.items()}
            for action in actions
        ]
        params: dict[str, Any] = {"TransactItems": items}
        if token is not None:
            params["ClientRequestToken"] = token
        try:
            await self.client.transact_write_items(**params)
        except ClientError as exc:
            reasons = _cancellation_reasons(exc)
            if reasons is not None and is_refusal(reasons):
                return Transaction(False, reasons)
            raise self.error(call, exc) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.error(call, exc) from exc
        return Transaction(True)

    async def batch_read(
        self, call: str, keys: Sequence[str]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """One consistent BatchGetItem of up to 100 lease keys: (the items found, in no
        particular order; the keys DynamoDB left unprocessed, to ask again)."""
        request = {
            self.table: {"Keys": [{"leaseKey": _s(k)} for k in keys], "ConsistentRead": True}
        }
        try:
            response = await self.client.batch_get_item(RequestItems=request)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self.error(call, exc) from exc
        items: list[dict[str, Any]] = response.get("Responses", {}).get(self.table, [])
        unprocessed = response.get("UnprocessedKeys", {}).get(self.table, {}).get("Keys", [])
        return items, [str(key["leaseKey"]["S"]) for key in unprocessed]

    async def fenced_update(
        self,
        call: str,
        lease: Lease,
        owner: str,
        *,
        update: str,
        values: dict[str, Any] | None = None,
        return_new: bool = True,
    ) -> _Write:
        """An UpdateItem that only ``owner`` at ``lease.counter`` may make: the fence.

        ``update`` may use ``:next`` (the counter after this write) besides its own ``values``.
        """
        fence = {
            ":owner": _s(owner),
            ":counter": _n(lease.counter),
            ":next": _n(lease.counter + 1),
        }
        return await self.update(
            call,
            lease.key,
            update=update,
            condition="#leaseOwner = :owner AND #leaseCounter = :counter",
            values={**(values or {}), **fence},
            return_new=return_new,
        )

    def lost(self, call: str, lease: Lease, owner: str, write: _Write) -> LeaseLost:
        """The LeaseLost of a refused fenced ``call`` (see :func:`lease_lost`)."""
        return lease_lost(self.table, call, lease, owner, write.item)


def _cancellation_reasons(exc: ClientError) -> tuple[str, ...] | None:
    """The per-item reason codes of a cancelled transaction, or None for any other error."""
    if error_code(exc) != _TRANSACTION_CANCELED:
        return None
    reasons = exc.response.get("CancellationReasons") or []
    return tuple(str(reason.get("Code") or "None") for reason in reasons)


def is_refusal(reasons: Sequence[str]) -> bool:
    """Whether a transaction cancelled for ``reasons`` was refused (a false condition or
    contention on some item, and nothing else wrong), rather than failed."""
    return bool(REFUSALS.intersection(reasons)) and set(reasons) <= REFUSALS | {"None"}


def lease_lost(
    table: str, call: str, lease: Lease, owner: str, item: dict[str, Any] | None
) -> LeaseLost:
    """The LeaseLost of ``owner``'s fenced ``call`` on ``lease``, refused by ``item`` (the
    item as DynamoDB held it, None when gone). Shared with the in-memory twin of the table."""
    observed = None if item is None else lease_from_item(item)
    if observed is None:
        now = "the lease no longer exists"
    else:
        now = f"it is now owned by {observed.owner or 'nobody'} at counter {observed.counter}"
    return LeaseLost(
        f"lease table {table}: {call} of {lease.key} by {owner} at counter"
        f" {lease.counter} was refused: {now}",
        observed=observed,
    )
