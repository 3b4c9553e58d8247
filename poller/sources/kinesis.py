"""Kinesis Data Streams: the stream adapter of the shard reader, and Lambda's event shape.

:class:`KinesisStreamApi` gives :class:`~poller.streams.reader.ShardReader` what differs for
Kinesis: ListShards (paginated the way AWS requires), GetShardIterator with every iterator type
including AT_TIMESTAMP, GetRecords with ``MillisBehindLatest`` and ``ChildShards``, and Lambda's
pace for Kinesis (an idle shard once per second). :func:`make_page_converter` builds the
converter of a page of raw records into Lambda's Kinesis event records (the service's hottest
code); :func:`make_record_factory` is the same, one record at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import operator
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from poller.aws.lean import LeanCall
from poller.aws.translate import source_call
from poller.core.kpl import MAGIC, deaggregate, is_aggregated
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

#: How the base64 text of every KPL aggregate begins: 5 characters carry the first 30 bits,
#: all of them from the magic bytes (the wire's base64 is canonical: no line breaks).
_AGGREGATE_PREFIX = base64.b64encode(MAGIC).decode("ascii")[:5]

log = structlog.get_logger("poller.sources")


def make_record_factory(
    *, shard_id: str, stream_arn: str, region: str, identity_arn: str
) -> Converter:
    """Build the per-record converter for one shard (:func:`make_page_converter`, one record
    at a time: for KPL user records and tests)."""
    convert_page = make_page_converter(
        shard_id=shard_id, stream_arn=stream_arn, region=region, identity_arn=identity_arn
    )

    def convert(raw: dict[str, Any]) -> StreamRecord:
        return convert_page((raw,))[0]

    return convert


def make_page_converter(
    *, shard_id: str, stream_arn: str, region: str, identity_arn: str
) -> Callable[[Iterable[dict[str, Any]]], list[StreamRecord]]:
    """Build the converter of one shard's pages into Lambda's Kinesis event records.

    This is the hottest code in the service, so it works per page: everything that is the same
    for every record of the shard (the constant fields and their serialized size) is computed
    here, once; the arrival time is rounded and measured once per run of records that share
    it (a producer's batch arrives together). ``raw`` comes from a source client
    (``ClientFactory.client(..., purpose="source")``): ``Data`` is still the base64 text of
    the wire, which is exactly the event's ``kinesis.data``, and
    ``ApproximateArrivalTimestamp`` epoch seconds.
    """
    event_id_prefix = f"{shard_id}:"
    template = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "",
            "sequenceNumber": "",
            "data": "",
            "approximateArrivalTimestamp": 0,
        },
        "eventID": event_id_prefix,
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": identity_arn,
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }
    # Size of a record with empty variable fields; the variable parts are added per record.
    fixed = len(json.dumps(template, separators=(",", ":"))) - len("0")

    def convert_page(raws: Iterable[dict[str, Any]]) -> list[StreamRecord]:
        if type(raws) is not list:
            raws = list(raws)
        out: list[StreamRecord] = []
        append = out.append
        # When every partition key is one JSON leaves as it is (nearly always), a key's size
        # is its length: checked once for the page, in C, rather than key by key.
        plain_keys = _json_plain("".join(map(_PARTITION_KEY, raws)))
        last_wire: float | None = None
        arrival, arrival_size = 0.0, 0
        for raw in raws:
            seq: str = raw["SequenceNumber"]
            key: str = raw["PartitionKey"]
            data: str = raw["Data"]
            wire: float = raw["ApproximateArrivalTimestamp"]
            # Only a nonzero float's rounding is reused: an int rounds to an int, and -0.0 to
            # -0.0, although both are equal to a float or 0.0 that came before.
            if wire != last_wire or type(wire) is not float:
                last_wire = wire if type(wire) is float and wire else None
                arrival, arrival_size = rounded_arrival(wire)
            record = {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": key,
                    "sequenceNumber": seq,
                    "data": data,
                    "approximateArrivalTimestamp": arrival,
                },
                "eventID": event_id_prefix + seq,
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": identity_arn,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            key_size = len(key) if plain_keys else _json_str_len(key)
            size = fixed + key_size + 2 * len(seq) + len(data) + arrival_size
            append(StreamRecord(seq, key, arrival, record, size))
        return out

    return convert_page


#: Characters of the fraction in ``repr(n / 1000)``, by ``n % 1000``: "0", "5", "25", "125".
_FRACTION_SIZES = tuple(len(repr(n / 1000)) - len("0.") for n in range(1000))
#: Below this many epoch seconds (the year 2223) the product of a timestamp and 1000 is exact
#: to 0.001, which the fast path of ``rounded_arrival`` relies on.
_FAST_ARRIVAL_LIMIT = 2.0**33


def rounded_arrival(wire: float) -> tuple[float, int]:
    """``round(wire, 3)`` and the length of its JSON text (``repr``), as Lambda's event carries
    the arrival time in milliseconds.

    Both builtins cost a correctly rounded decimal conversion each (most of a record's
    conversion). For a timestamp whose thousandfold is not near a half (always, for the
    whole milliseconds AWS sends), the nearest integer ``n`` of ``wire * 1000`` is the exact
    decimal rounding, ``n / 1000`` is correctly rounded as ``round`` is, and its ``repr`` is
    the decimal ``n / 1000`` without trailing zeros; anything else takes the builtins.
    """
    if type(wire) is float and 0.0 <= wire < _FAST_ARRIVAL_LIMIT:  # round(int) is an int
        thousandfold = wire * 1000.0
        n = int(thousandfold + 0.5)
        if n >= 1000 and -0.49 < thousandfold - n < 0.49:
            # The digits of the whole seconds (all of n's but the last 3), ".", the fraction.
            return n / 1000, len(str(n)) - 2 + _FRACTION_SIZES[n % 1000]
    arrival = round(wire, 3)
    return arrival, len(repr(arrival))


def _json_str_len(text: str) -> int:
    """Length of ``text`` once JSON-escaped, without the quotes."""
    if _json_plain(text):
        return len(text)
    return len(json.dumps(text)) - 2


def _json_plain(text: str) -> bool:
    """Whether JSON writes ``text`` as it is: printable ASCII without a quote or backslash."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


#: A raw record's partition key.
_PARTITION_KEY = operator.itemgetter("PartitionKey")


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
        names = {"stream_arn": self.stream_arn, "region": self._region}
        if not self._deaggregate:
            return make_page_converter(shard_id=shard_id, identity_arn=self._identity_arn, **names)
        convert = make_record_factory(shard_id=shard_id, identity_arn=self._identity_arn, **names)
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
        text: str = raw["Data"]
        if not text.startswith(_AGGREGATE_PREFIX):
            return [convert(raw)]  # not an aggregate: its data is not decoded
        data = base64.b64decode(text)
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
