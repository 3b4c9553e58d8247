"""``poller redrive``: re-deliver the records that failure records point at, then remove them.

Data flow::

    on-failure destination, or --source (SQS queue / S3 prefix)
        --read--> failure records, parsed (malformed ones reported and left in place),
                  in shard and sequence order
        each one: the S3 payload, or the shard read from startSequenceNumber (AT_SEQUENCE_NUMBER)
                  to endSequenceNumber (poller.operations.ranges), unless older than the
                  stream's retention (expired: reported, left in place, or removed with
                  --discard-expired)
        --deliver_shard--> the live engine's shard processor, with the mapping's batch size,
                  retry and bisect rules, the same events, to the mapping's target or
                  --target-override; an in-memory checkpoint store (the live checkpoints are
                  never opened)
        all delivered --> the failure record is removed (SQS: deleted; S3: moved under
                  ``redriven/``); any record given up again --> it stays where it was

It runs beside the service (it owns nothing the service owns). ``--dry-run`` reads and says
what it would do, and changes nothing. SQS mappings are refused: AWS's StartMessageMoveTask
moves a queue's dead-letter messages back (:data:`~poller.operations.common.SQS_REDRIVE_NOTE`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from poller.checkpoints.memory import MemoryCheckpointStore
from poller.config import Settings
from poller.errors import ConfigError, OperationError, PositionTrimmed, SourceError, StreamNotFound
from poller.observability.logging import configure_logging
from poller.operations.common import (
    StreamMapping,
    add_common_arguments,
    client_factory,
    deliver_shard,
    find_stream_mapping,
    load,
    open_stream,
    operation_policy,
    operation_target,
    override_config,
    target_name,
)
from poller.operations.failure_sources import (
    FailurePointer,
    FailureSource,
    MalformedFailureRecord,
    StoredFailure,
    open_failure_source,
    parse_failure_record,
)
from poller.operations.ranges import RangeTrimmed, read_range, sequence_key
from poller.operations.times import age_text
from poller.ports import StartPosition, StreamApi
from poller.streams.processor import BatchPolicy, ChunkSink
from poller.types import StreamRecord, Target

EXIT_OK, EXIT_LEFT_IN_PLACE, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    add_common_arguments(parser)
    parser.add_argument(
        "--source",
        metavar="ARN",
        help="read failure records from this SQS queue or S3 bucket (arn:aws:s3:::bucket[/prefix]) "
        "instead of the mapping's on-failure destination",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="redrive at most N failure records")
    parser.add_argument(
        "--discard-expired",
        action="store_true",
        help="remove failure records whose records the stream no longer holds",
    )
    parser.add_argument("--log-level", default="WARNING", help="the engine's log level")


def main(args: argparse.Namespace) -> int:
    """Run the command; 0 when every failure record read was redriven (or, in a dry run, could
    be), 1 when some stay (failed again, expired, malformed), 2 for bad input."""
    settings = load(args.config)
    configure_logging(args.log_level, settings.logging.format)
    if args.limit is not None and args.limit < 1:
        return _refuse(f"--limit {args.limit}: give a positive number")
    try:
        report = anyio.run(_redrive, settings, args)
    except OperationError as exc:
        return _refuse(str(exc))
    print(report.render())  # noqa: T201 - CLI output
    return EXIT_OK if report.problems == 0 else EXIT_LEFT_IN_PLACE


def _refuse(message: str) -> int:
    print(f"poller redrive: {message}", file=sys.stderr)  # noqa: T201 - user-facing error
    return EXIT_USAGE


@dataclass(slots=True)
class Report:
    """What the redrive did, line by line and in total."""

    source: str
    target: str
    dry_run: bool
    lines: list[str] = field(default_factory=list)
    read: int = 0
    redriven: int = 0
    malformed: int = 0
    failed_again: int = 0
    expired: int = 0
    expired_discarded: int = 0
    records_reread: int = 0
    records_from_payload: int = 0
    delivered: int = 0
    failed: int = 0
    expired_records: int = 0

    @property
    def problems(self) -> int:
        """Failure records that stay for a reason (failed again, expired, malformed); a dry
        run's untouched records are not problems."""
        return self.failed_again + self.malformed + self.expired - self.expired_discarded

    @property
    def left_in_place(self) -> int:
        """Failure records still in the source after this run."""
        return self.read - self.redriven - self.expired_discarded

    def render(self) -> str:
        """The per-record lines and the summary."""
        head = "redrive"
        if self.dry_run:
            head += " (dry run: nothing delivered, nothing removed)"
        summary = [
            f"{head}: {self.source} -> {self.target}",
            *self.lines,
            f"failure records read: {self.read}"
            f" (redriven {self.redriven}, left in place {self.left_in_place}:"
            f" failed again {self.failed_again}, expired {self.expired - self.expired_discarded},"
            f" malformed {self.malformed}; expired and discarded {self.expired_discarded})",
            f"records re-read: {self.records_reread}"
            f" (from S3 payloads: {self.records_from_payload})",
            f"delivered: {self.delivered}",
            f"failed: {self.failed}",
            f"expired: {self.expired} failure record(s), {self.expired_records} record(s)",
        ]
        return "\n".join(summary)


async def _redrive(settings: Settings, args: argparse.Namespace) -> Report:
    mapping = find_stream_mapping(settings, args.mapping, "redrive")
    if args.target_override is not None:
        override_config(args.target_override)  # a bad override is refused before anything
    clients = client_factory(settings)
    target: Target | None = None
    try:
        source = await open_failure_source(mapping, args.source, clients)
        await source.check()
        api = await open_stream(mapping, clients, settings)
        if not args.dry_run:
            target = await operation_target(mapping, args.target_override, clients)
        report = Report(source.arn, target_name(mapping, args.target_override), args.dry_run)
        run = _Redrive(mapping, api, source, target, report, args)
        await run.all(source.pages(args.limit))
    except ConfigError as exc:
        raise OperationError("; ".join(exc.problems)) from None
    else:
        return report
    finally:
        if target is not None:
            await target.aclose()
        await clients.aclose()


class _Redrive:
    """One redrive: every failure record read, in shard and sequence order."""

    def __init__(
        self,
        mapping: StreamMapping,
        api: StreamApi,
        source: FailureSource,
        target: Target | None,
        report: Report,
        args: argparse.Namespace,
    ) -> None:
        self._mapping, self._api, self._source = mapping, api, source
        self._target, self._report = target, report
        self._dry_run: bool = args.dry_run
        self._discard_expired: bool = args.discard_expired
        self._policy: BatchPolicy = operation_policy(mapping, args.max_retries)

    async def all(self, pages: AsyncIterator[list[StoredFailure]]) -> None:
        """Redrive every page; what is not removed is released at the end, whatever happens
        (until then it stays invisible, so that a later page does not bring it back)."""
        kept: dict[str, StoredFailure] = {}
        try:
            async for items in pages:
                kept.update((item.id, item) for item in items)
                for item, pointer in self._parsed(items):
                    if await self._one(item, pointer):
                        del kept[item.id]
        finally:
            with anyio.CancelScope(shield=True):
                await self._source.release(list(kept.values()))

    def _parsed(self, items: list[StoredFailure]) -> list[tuple[StoredFailure, FailurePointer]]:
        """The page's well-formed items, in shard and sequence order (an SQS queue keeps
        none; S3 keys are in shard and time order already)."""
        report = self._report
        report.read += len(items)
        parsed = []
        for item in items:
            try:
                pointer = self._pointer(item)
            except MalformedFailureRecord as exc:
                report.malformed += 1
                report.lines.append(f"  MALFORMED {item.id}: {exc}; left in place")
                continue
            parsed.append((item, pointer))
        parsed.sort(key=lambda p: (p[1].shard_id, sequence_key(p[1].start_sequence)))
        return parsed

    def _pointer(self, item: StoredFailure) -> FailurePointer:
        pointer = parse_failure_record(item.body)
        if pointer.stream_arn != self._mapping.stream_arn:
            raise MalformedFailureRecord(
                f"points at {pointer.stream_arn}, not the mapping's stream "
                f"{self._mapping.stream_arn}"
            )
        return pointer

    async def _one(self, item: StoredFailure, pointer: FailurePointer) -> bool:
        """Redrive one failure record; True when it is to be removed."""
        where = f"{pointer.shard_id} {pointer.start_sequence}..{pointer.end_sequence}"
        try:
            records = await self._records(pointer)
        except _Expired as expired:
            return await self._expired(item, pointer, where, str(expired))
        except (SourceError, MalformedFailureRecord) as exc:
            self._report.failed_again += 1
            self._report.lines.append(f"  UNREADABLE {where}: {exc}; left in place")
            return False
        report = self._report
        if self._dry_run:
            report.lines.append(f"  would deliver {where}: {len(records)} record(s)")
            return False
        assert self._target is not None
        outcome = await deliver_shard(
            self._mapping,
            shard_id=pointer.shard_id,
            key=f"redrive:{self._mapping.name}",
            target=self._target,
            store=MemoryCheckpointStore(),
            policy=self._policy,
            read=_sending(records, self._policy.batch_size),
        )
        report.delivered += outcome.delivered
        report.failed += outcome.gave_up.records
        if outcome.gave_up.records:
            report.failed_again += 1
            report.lines.append(
                f"  FAILED    {where}: {outcome.gave_up.records} of {len(records)} record(s) "
                "failed again; the failure record stays"
            )
            return False
        await self._source.remove(item)
        report.redriven += 1
        report.lines.append(f"  ok        {where}: {len(records)} record(s) delivered")
        return True

    async def _records(self, pointer: FailurePointer) -> list[StreamRecord]:
        """The payload's records, or the stream's, read between the pointer's positions."""
        if pointer.payload is not None:
            records = records_from_payload(pointer.kind, pointer.payload)
            self._report.records_from_payload += len(records)
            self._report.records_reread += len(records)
            return records
        await self._check_retention(pointer)
        collected = _Collect()
        end = sequence_key(pointer.end_sequence)
        start = sequence_key(pointer.start_sequence)
        opened = StartPosition("AT_SEQUENCE_NUMBER", pointer.start_sequence)
        try:
            await read_range(
                self._api,
                pointer.shard_id,
                opened,
                collected,
                beyond=lambda r: sequence_key(r.sequence_number) > end,
                before=lambda r: sequence_key(r.sequence_number) < start,
                expect_first=pointer.start_sequence,
            )
        except (RangeTrimmed, PositionTrimmed, StreamNotFound) as exc:
            raise _Expired(f"no longer in the stream ({exc})") from None
        if not collected.records:
            raise _Expired("no longer in the stream (nothing read at its position)")
        self._report.records_reread += len(collected.records)
        return collected.records

    async def _check_retention(self, pointer: FailurePointer) -> None:
        """A pointer older than the stream's retention is expired: not even worth a read."""
        if pointer.first_arrival is None:
            return
        retention = await self._api.retention_seconds()
        age = time.time() - pointer.first_arrival
        if retention is not None and age > retention:
            raise _Expired(
                f"its first record arrived {age_text(age)} ago; the stream keeps records "
                f"{age_text(retention)}"
            )

    async def _expired(
        self, item: StoredFailure, pointer: FailurePointer, where: str, why: str
    ) -> bool:
        report = self._report
        report.expired += 1
        report.expired_records += pointer.batch_size
        if self._discard_expired and not self._dry_run:
            await self._source.remove(item)
            report.expired_discarded += 1
            report.lines.append(
                f"  EXPIRED   {where} ({pointer.batch_size} record(s)): {why}; discarded"
            )
            return True
        hint = "" if self._discard_expired else " (--discard-expired removes it)"
        report.lines.append(
            f"  EXPIRED   {where} ({pointer.batch_size} record(s)): {why}; left in place{hint}"
        )
        return False


class _Expired(Exception):
    """The records a failure record points at are gone from the stream."""


class _Collect:
    """A ChunkSink that keeps what it is sent."""

    def __init__(self) -> None:
        self.records: list[StreamRecord] = []

    async def send(self, chunk: Any) -> None:
        if isinstance(chunk, list):
            self.records.extend(chunk)


def _sending(records: list[StreamRecord], size: int) -> Any:
    """A read that sends ``records`` to the processor in chunks of a batch."""

    async def read(sink: ChunkSink) -> None:
        for index in range(0, len(records), size):
            await sink.send(records[index : index + size])

    return read


def records_from_payload(kind: str, payload: Sequence[dict[str, Any]]) -> list[StreamRecord]:
    """The S3 payload's event records (as Lambda delivered them) as stream records. Records of
    one de-aggregated KPL aggregate share a sequence number: they get its user-record index."""
    try:
        identities = [_identity(kind, event) for event in payload]
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedFailureRecord(f"a payload record lacks {exc}") from None
    shared = Counter(sequence for sequence, _, _ in identities)
    seen: Counter[str] = Counter()
    records: list[StreamRecord] = []
    for event, (sequence, key, arrival) in zip(payload, identities, strict=True):
        sub = seen[sequence] if shared[sequence] > 1 else None
        seen[sequence] += 1
        size = len(json.dumps(event, separators=(",", ":")))
        records.append(StreamRecord(sequence, key, arrival, event, size, sub))
    return records


def _identity(kind: str, event: dict[str, Any]) -> tuple[str, str, float]:
    if kind == "kinesis":
        body = event["kinesis"]
        return (
            str(body["sequenceNumber"]),
            str(body["partitionKey"]),
            float(body["approximateArrivalTimestamp"]),
        )
    change = event["dynamodb"]
    key = json.dumps(change.get("Keys", {}), sort_keys=True, separators=(",", ":"))
    return str(change["SequenceNumber"]), key, float(change.get("ApproximateCreationDateTime", 0))
