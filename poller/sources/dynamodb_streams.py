"""DynamoDB Streams: the stream adapter of the shard reader, and Lambda's event shape.

:class:`DynamoDBStreamApi` gives :class:`~poller.streams.reader.ShardReader` what differs for
DynamoDB Streams: DescribeStream paginated with ``ExclusiveStartShardId`` for discovery (shards
roll over every few hours, so this path is routine), GetRecords of up to 1,000 records, no
``MillisBehindLatest``, and Lambda's pace for DynamoDB (four polls a second per shard).

DynamoDB Streams has no AT_TIMESTAMP iterator. A LATEST mapping pins its start instant in the
checkpoints (see ``poller.streams.start``); on a restart before the first record of a shard, the
reader starts at TRIM_HORIZON and skips records created before the second of that instant
(``ApproximateCreationDateTime`` is rounded down to the second, so every change made after the
instant is kept; a change made earlier in the same second is delivered too): at least once,
never a silent skip. DynamoDB Local rounds it down to the minute, so there the comparison is by
the minute (:data:`DYNAMODB_LOCAL_CREATION_TIME_STEP`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from poller.aws.lean import LeanCall
from poller.aws.translate import source_call
from poller.config.arns import DYNAMODB_LOCAL_CREATION_TIME_STEP, is_dynamodb_local
from poller.core.lineage import ShardInfo
from poller.ports import Converter, PageConverter, RecordsPage, StartPosition
from poller.types import StreamRecord

#: The fields of a change record the converter reads: a page without them is read by botocore.
RECORD_FIELDS = frozenset({"eventID", "eventName", "dynamodb"})
#: DynamoDB Streams' maximum records per GetRecords call.
GET_RECORDS_LIMIT = 1000
#: Lambda polls a DynamoDB stream shard four times per second.
IDLE_POLL_INTERVAL = 0.25
#: DynamoDB Streams keeps a record 24 hours (fixed).
RETENTION_SECONDS = 24 * 3600.0


def make_ddb_record_factory(*, stream_arn: str, region: str) -> Converter:
    """The per-record converter into Lambda's DynamoDB Streams event record.

    ``raw`` comes from a source client: ``ApproximateCreationDateTime`` is epoch seconds and
    binary attributes are still base64 text, as Lambda delivers them. The partition key of a
    record (its lane under a parallelization factor) is its item key, so the changes of one
    item stay in order.
    """

    def convert(raw: dict[str, Any]) -> StreamRecord:
        change = dict(raw["dynamodb"])
        created = float(change.get("ApproximateCreationDateTime", 0.0))
        # AWS rounds down to the second and Lambda shows a whole number.
        change["ApproximateCreationDateTime"] = int(created) if created.is_integer() else created
        record: dict[str, Any] = {
            "eventID": raw["eventID"],
            "eventName": raw["eventName"],
            "eventVersion": raw.get("eventVersion", "1.1"),
            "eventSource": "aws:dynamodb",
            "awsRegion": raw.get("awsRegion", region),
            "dynamodb": change,
            "eventSourceARN": stream_arn,
        }
        if "userIdentity" in raw:  # only on TTL deletes
            record["userIdentity"] = raw["userIdentity"]
        key = json.dumps(change.get("Keys", {}), sort_keys=True, separators=(",", ":"))
        size = len(json.dumps(record, separators=(",", ":")))
        return StreamRecord(change["SequenceNumber"], key, created, record, size)

    return convert


class DynamoDBStreamApi:
    """The DynamoDB Streams side of the shard reader. Implements ``StreamApi``."""

    limit = GET_RECORDS_LIMIT
    idle_interval = IDLE_POLL_INTERVAL

    def __init__(self, client: Any, *, stream_arn: str, region: str) -> None:
        self._client = client
        self.stream_arn = stream_arn
        self._region = region
        # A pinned start compares at the step the stream rounds creation times to, so no
        # change made after it is skipped.
        local = is_dynamodb_local(stream_arn)
        self._creation_time_step = DYNAMODB_LOCAL_CREATION_TIME_STEP if local else 1.0
        #: GetRecords without botocore's per-call machinery (None: the client is used).
        self._lean = LeanCall.for_client(client, "GetRecords", RECORD_FIELDS)

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard of the stream, from DescribeStream pages."""
        shards: list[ShardInfo] = []
        args: dict[str, Any] = {"StreamArn": self.stream_arn, "Limit": 100}
        while True:
            async with source_call("DescribeStream"):
                response = await self._client.describe_stream(**args)
            description = response["StreamDescription"]
            shards.extend(_shard_info(s) for s in description.get("Shards", []))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            args = {"StreamArn": self.stream_arn, "Limit": 100, "ExclusiveStartShardId": last}

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        """GetShardIterator; a pinned start instant reads from TRIM_HORIZON (see ``keeps``)."""
        kind = "TRIM_HORIZON" if position.type == "AT_TIMESTAMP" else position.type
        args: dict[str, Any] = {
            "StreamArn": self.stream_arn,
            "ShardId": shard_id,
            "ShardIteratorType": kind,
        }
        if kind in ("AFTER_SEQUENCE_NUMBER", "AT_SEQUENCE_NUMBER"):
            args["SequenceNumber"] = position.sequence_number
        async with source_call("GetShardIterator"):
            response = await self._client.get_shard_iterator(**args)
        return str(response["ShardIterator"])

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        """GetRecords (through the lean path unless it is off); a closed shard's last page has
        no NextShardIterator."""
        count = self.limit if limit is None else max(1, min(limit, self.limit))
        args = {"ShardIterator": iterator, "Limit": count}
        if self._lean is not None:
            response = await self._lean.call(args)
        else:
            async with source_call("GetRecords"):
                response = await self._client.get_records(**args)
        return RecordsPage(
            records=response.get("Records", []),
            next_iterator=response.get("NextShardIterator"),
        )

    def sequence_of(self, raw: dict[str, Any]) -> str:
        """A raw record's sequence number."""
        return str(raw["dynamodb"]["SequenceNumber"])

    #: A trimmed position is refused with TrimmedDataAccessException.
    reports_trims = True

    def arrival_of(self, raw: dict[str, Any]) -> float:
        """A raw record's ``ApproximateCreationDateTime``, epoch seconds."""
        return float(raw["dynamodb"].get("ApproximateCreationDateTime", 0.0))

    async def retention_seconds(self) -> float:
        """DynamoDB Streams' fixed 24 hours."""
        return RETENTION_SECONDS

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        """Lambda's DynamoDB event records; for a pinned start instant, only the changes made
        from its second (its minute on DynamoDB Local) on."""
        convert = make_ddb_record_factory(stream_arn=self.stream_arn, region=self._region)
        if start.type != "AT_TIMESTAMP" or start.timestamp is None:
            return lambda raws: [convert(r) for r in raws]
        step = self._creation_time_step
        threshold = math.floor(start.timestamp / step) * step

        def since_start(raws: list[dict[str, Any]]) -> list[StreamRecord]:
            return [
                convert(r)
                for r in raws
                if float(r["dynamodb"].get("ApproximateCreationDateTime", 0)) >= threshold
            ]

        return since_start


def _shard_info(shard: dict[str, Any]) -> ShardInfo:
    parent = shard.get("ParentShardId")
    closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
    parents = (parent,) if parent else ()
    return ShardInfo(shard_id=shard["ShardId"], parent_ids=parents, closed=closed)
