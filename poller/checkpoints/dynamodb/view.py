"""The compact lease view: what balancing reads instead of every checkpoint.

The view index (:data:`~.items.VIEW_INDEX`: hash ``mapping``, range ``shardId``) carries every
lease attribute balancing needs but not ``windowState``, so one Query page holds thousands of
leases. It is eventually consistent: a lease may show an older owner or counter for a moment.
The coordinator's rules keep that safe (every take is conditional on the observed counter, and
a lease is judged gone only from a consistent read). A table without the index (made by an
older version that could not be migrated) is read with the consistent Scan instead, after one
warning. Mixed into :class:`~.table.DynamoDBLeaseTable`.
"""

from __future__ import annotations

from typing import Any

import structlog
from botocore.exceptions import ClientError

from poller.aws.translate import error_code
from poller.checkpoints.dynamodb.calls import TableCalls
from poller.checkpoints.dynamodb.items import VIEW_INDEX, Lease, _s, lease_from_item
from poller.errors import CheckpointError

log = structlog.get_logger("poller.leases")
#: How DynamoDB (ValidationException) and moto (ResourceNotFoundException) refuse a Query of
#: an index the table does not have, or one still being backfilled.
_NO_INDEX_CODES = ("ValidationException", "ResourceNotFoundException")


class LeaseView:
    """:meth:`lease_view` (a base of DynamoDBLeaseTable)."""

    _calls: TableCalls
    table: str
    #: Whether :meth:`lease_view` reads the index: None until known.
    has_view_index: bool | None

    async def list_leases(self, mapping: str) -> list[Lease]:
        raise NotImplementedError  # the table's consistent Scan

    async def lease_view(self, mapping: str) -> list[Lease]:
        """Every lease of ``mapping`` without window state, sorted by shard id: a paginated,
        eventually consistent Query of the view index (possibly stale: see the package
        docstring), or :meth:`list_leases` when the table has no usable index."""
        if self.has_view_index is not False:
            try:
                leases = await self._query_view(mapping)
            except CheckpointError as exc:
                if not _missing_index(exc):
                    raise
                self.has_view_index = False
                log.warning("lease_table.no_view_index", table=self.table, reason=str(exc))
            else:
                self.has_view_index = True
                return leases
        return await self.list_leases(mapping)

    async def _query_view(self, mapping: str) -> list[Lease]:
        params: dict[str, Any] = {
            "IndexName": VIEW_INDEX,
            "KeyConditionExpression": "#mapping = :mapping",
            "ExpressionAttributeNames": {"#mapping": "mapping"},
            "ExpressionAttributeValues": {":mapping": _s(mapping)},
        }
        leases: list[Lease] = []
        while True:
            page = await self._calls.call("Query (lease view)", "query", **params)
            leases.extend(lease_from_item(item) for item in page.get("Items", []))
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            params["ExclusiveStartKey"] = last
        leases.sort(key=lambda lease: lease.shard_id)
        return leases


def _missing_index(exc: CheckpointError) -> bool:
    """Whether a failed view Query says the table has no (readable) view index."""
    cause = exc.__cause__
    if not isinstance(cause, ClientError) or error_code(cause) not in _NO_INDEX_CODES:
        return False
    return "index" in cause.response.get("Error", {}).get("Message", "").lower()
