"""Kinesis Data Streams: the stream adapter of the shard reader, and Lambda's event shape.

:class:`KinesisStreamApi` gives :class:`~poller.streams.reader.ShardReader` what differs for
Kinesis: ListShards (paginated the way AWS requires), GetShardIterator with every iterator type
including AT_TIMESTAMP, GetRecords with ``MillisBehindLatest`` and ``ChildShards``, and Lambda's
pace for Kinesis (an idle shard once per second). :func:`make_record_factory` builds the
per-record converter into Lambda's Kinesis event record.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from poller.aws.lean import LeanCall
from poller.aws.translate import source_call
from poller.core.kpl import deaggregate, is_aggregated
from poller.core.lineage import ShardInfo
from poller.errors import SourceError
from poller.ports import Converter, PageConverter, RecordsPage, StartPosition
from poller.types import StreamRecord

#: The fields of a Kinesis record the converters read: a page without them is read by botocore.
RECORD_FIELDS = frozenset({"SequenceNumber", "PartitionKey", "Data", "ApproximateArrivalTimestamp"})
#: Kinesis' maximum records per GetRecords call.
GET_RECORDS_LIMIT = 10_000
#: Lambda polls an idle Kinesis shard once per second.
IDLE_POLL_INTERVAL = 1.0
#: How long the stream's retention period (DescribeStreamSummary) is trusted before it is
#: read again: it changes rarely, and only a retried record's expiry depends on it.
RETENTION_REFRESH_SECONDS = 600.0

log = structlog.get_logger("poller.sources")


def make_record_factory(
    *, shard_id: str, stream_arn: str, region: str, identity_arn: str
) -> Callable[[dict[str, Any]], StreamRecord]:
    """Build the per-record converter for one shard.

    This is the hottest code in the service: everything that is the same for every record of
    the shard (the constant fields and their serialized size) is computed here, once. ``raw``
    comes from a source client (``ClientFactory.client(..., purpose="source")``): ``Data`` is
    still the base64 text of the wire and ``ApproximateArrivalTimestamp`` epoch seconds.
    """
    constant = {
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": identity_arn,
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }
    template = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "",
            "sequenceNumber": "",
            "data": "",
            "approximateArrivalTimestamp": 0,
        },
        "eventID": f"{shard_id}:",
        **constant,
    }
    # Size of a record with empty variable fields; the variable parts are added per record.
    fixed = len(json.dumps(template, separators=(",", ":"))) - len("0")

    def convert(raw: dict[str, Any]) -> StreamRecord:
        seq: str = raw["SequenceNumber"]
        key: str = raw["PartitionKey"]
        data: str = raw["Data"]
        arrival = round(raw["ApproximateArrivalTimestamp"], 3)
        record = {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": key,
                "sequenceNumber": seq,
                "data": data,
                "approximateArrivalTimestamp": arrival,
            },
            "eventID": f"{shard_id}:{seq}",
            **constant,
        }
        size = fixed + _json_str_len(key) + 2 * len(seq) + len(data) + len(repr(arrival))
        return StreamRecord(seq, key, arrival, record, size)

    return convert


def _json_str_len(text: str) -> int:
    """Length of ``text`` once JSON-escaped, without the quotes."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text)
    return len(json.dumps(text)) - 2


class KinesisStreamApi:
    """The Kinesis side of the shard reader. Implements ``StreamApi``."""

    limit = GET_RECORDS_LIMIT
    idle_interval = IDLE_POLL_INTERVAL

    def __init__(
        self,
        client: Any,
        *,
        stream_arn: str,
        region: str,
        identity_arn: str,
        deaggregate: bool = False,
    ) -> None:
        self._client = client
        self.stream_arn = stream_arn
        self._region = region
        self._identity_arn = identity_arn
        self._deaggregate = deaggregate
        self._hash_ranges: dict[str, tuple[int, int]] = {}
        self._retention: float | None = None
        self._retention_read_at: float | None = None
        #: GetRecords without botocore's per-call machinery (None: the client is used).
        self._lean = LeanCall.for_client(client, "GetRecords", RECORD_FIELDS)

    async def list_shards(self) -> list[ShardInfo]:
        """Every shard of the stream within retention."""
        shards: list[ShardInfo] = []
        args: dict[str, Any] = {"StreamARN": self.stream_arn, "MaxResults": 1000}
        while True:
            async with source_call("ListShards"):
                page = await self._client.list_shards(**args)
            for shard in page.get("Shards", []):
                shards.append(_shard_info(shard))
                hashes = shard.get("HashKeyRange", {})
                if hashes:
                    self._hash_ranges[shard["ShardId"]] = (
                        int(hashes["StartingHashKey"]),
                        int(hashes["EndingHashKey"]),
                    )
            token = page.get("NextToken")
            if not token:
                return shards
            # AWS rejects StreamARN together with NextToken.
            args = {"NextToken": token, "MaxResults": 1000}

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        """GetShardIterator; AT_TIMESTAMP serves both that starting position and pinned LATEST."""
        args: dict[str, Any] = {
            "StreamARN": self.stream_arn,
            "ShardId": shard_id,
            "ShardIteratorType": position.type,
        }
        if position.type in ("AFTER_SEQUENCE_NUMBER", "AT_SEQUENCE_NUMBER"):
            args["StartingSequenceNumber"] = position.sequence_number
        elif position.type == "AT_TIMESTAMP":
            args["Timestamp"] = position.timestamp
        async with source_call("GetShardIterator"):
            response = await self._client.get_shard_iterator(**args)
        return str(response["ShardIterator"])

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        """GetRecords, passing StreamARN (valid on AWS, and needed by some emulators), through
        the lean path (:mod:`poller.aws.lean`) unless it is off or the client is not a source
        client."""
        count = self.limit if limit is None else max(1, min(limit, self.limit))
        args = {"ShardIterator": iterator, "Limit": count, "StreamARN": self.stream_arn}
        if self._lean is not None:
            response = await self._lean.call(args)
        else:
            async with source_call("GetRecords"):
                response = await self._client.get_records(**args)
        return RecordsPage(
            records=response.get("Records", []),
            next_iterator=response.get("NextShardIterator"),
            millis_behind_latest=response.get("MillisBehindLatest"),
            child_shard_ids=tuple(c["ShardId"] for c in response.get("ChildShards") or ()),
        )

    def sequence_of(self, raw: dict[str, Any]) -> str:
        """A raw record's sequence number."""
        return str(raw["SequenceNumber"])

    #: A trimmed position is read from the oldest record held, silently.
    reports_trims = False

    def arrival_of(self, raw: dict[str, Any]) -> float:
        """A raw record's ``ApproximateArrivalTimestamp``, epoch seconds."""
        return float(raw["ApproximateArrivalTimestamp"])

    async def retention_seconds(self) -> float | None:
        """The stream's retention period (DescribeStreamSummary ``RetentionPeriodHours``),
        read again every ``RETENTION_REFRESH_SECONDS``. While it cannot be read the last value
        is kept; None (never expire) until it has been read once, so that an outage can only
        delay giving up a record, never give it up early."""
        read_at = self._retention_read_at
        if read_at is not None and time.monotonic() - read_at < RETENTION_REFRESH_SECONDS:
            return self._retention
        self._retention_read_at = time.monotonic()
        try:
            async with source_call("DescribeStreamSummary"):
                response = await self._client.describe_stream_summary(StreamARN=self.stream_arn)
            hours = response["StreamDescriptionSummary"]["RetentionPeriodHours"]
            self._retention = float(hours) * 3600
        except (SourceError, KeyError, TypeError, ValueError) as exc:
            log.warning("stream.retention_unknown", error=str(exc), kept=self._retention)
        return self._retention

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        """Lambda's Kinesis event records for this shard, de-aggregated when configured."""
        convert = make_record_factory(
            shard_id=shard_id,
            stream_arn=self.stream_arn,
            region=self._region,
            identity_arn=self._identity_arn,
        )
        if not self._deaggregate:
            return lambda raws: [convert(r) for r in raws]
        settled = None
        if start.type == "AT_SEQUENCE_NUMBER" and start.sequence_number is not None:
            # settled_through 0 means user record 0 is settled; only None means none is.
            through = -1 if start.settled_through is None else start.settled_through
            settled = (start.sequence_number, through)
        expand = make_deaggregator(convert, self._hash_ranges.get(shard_id), settled)
        return lambda raws: [record for raw in raws for record in expand(raw)]


def make_deaggregator(
    convert: Converter, hash_range: tuple[int, int] | None, settled: tuple[str, int] | None
) -> Callable[[dict[str, Any]], list[StreamRecord]]:
    """Expand KPL aggregated records into their user records (beyond Lambda, as KCL does).

    Each user record keeps the aggregate's sequence number and arrival time and gets its own
    partition key, data and ``subSequenceNumber``. User records whose explicit hash key falls
    outside the shard's range are dropped (KCL's rule). A record that is not an aggregate, or
    is a corrupt one (bad MD5, truncated), is delivered as the plain record it is. ``settled``
    (sequence, sub-sequence) skips the part of an aggregate a checkpoint already covers.
    """

    def expand(raw: dict[str, Any]) -> list[StreamRecord]:
        data = base64.b64decode(raw["Data"])
        users = (
            deaggregate(data, parent_partition_key=raw["PartitionKey"], shard_hash_range=hash_range)
            if is_aggregated(data)
            else None
        )
        if users is None:
            return [convert(raw)]
        sequence = raw["SequenceNumber"]
        out = []
        for user in users:
            if (
                settled is not None
                and sequence == settled[0]
                and user.sub_sequence_number <= settled[1]
            ):
                continue
            record = convert(
                {
                    "SequenceNumber": sequence,
                    "PartitionKey": user.partition_key,
                    "Data": base64.b64encode(user.data).decode("ascii"),
                    "ApproximateArrivalTimestamp": raw["ApproximateArrivalTimestamp"],
                }
            )
            record.event_record["kinesis"]["subSequenceNumber"] = user.sub_sequence_number
            extra = len(',"subSequenceNumber":') + len(str(user.sub_sequence_number))
            out.append(
                dataclasses.replace(
                    record, size=record.size + extra, sub_sequence_number=user.sub_sequence_number
                )
            )
        return out

    return expand


def _shard_info(shard: dict[str, Any]) -> ShardInfo:
    parents = tuple(
        p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
    )
    closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
    return ShardInfo(shard_id=shard["ShardId"], parent_ids=parents, closed=closed)
