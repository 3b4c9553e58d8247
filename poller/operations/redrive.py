"""``poller redrive``: re-deliver the records that failure records point at, then remove them.

Data flow::

    on-failure destination, or --source (SQS queue, possibly of SNS envelopes / S3 prefix)
        --read--> every failure record up to --limit (held meanwhile: an SQS visibility
                  heartbeat), parsed (malformed ones reported and left in place), then sorted
                  in shard and sequence order
        each one: claimed (S3: a conditional marker, so that two redrives do not both deliver)
                  the S3 payload when it holds exactly the records named, else the shard read
                  from startSequenceNumber (AT_SEQUENCE_NUMBER) to endSequenceNumber
                  (poller.operations.ranges); expired only on evidence (older than the
                  retention, trimmed, shard gone): reported, left in place, or removed with
                  --discard-expired; fewer or other records than named: failed, left in place
        --deliver_shard--> the live engine's shard processor, with the mapping's batch size,
                  retry and bisect rules, the same events, to the mapping's target or
                  --target-override; an in-memory checkpoint store (the live checkpoints are
                  never opened)
        all delivered --> the failure record is removed (SQS: deleted; S3: moved under
                  ``redriven/``); any record given up again --> it stays where it was; an
                  AWS error removing it --> "delivered, not removed", reported, the run goes on
        the end --> what is held is released; what other (running or killed) redrives hold
                  is reported (exit 1)

It runs beside the service (it owns nothing the service owns). ``--dry-run`` reads and says
what it would do, and changes nothing; on a failure queue with its own RedrivePolicy it does
not even receive (a receive counts toward maxReceiveCount) and reports the count only.
SQS mappings are refused: AWS's StartMessageMoveTask moves a queue's dead-letter messages
back (:data:`~poller.operations.common.SQS_REDRIVE_NOTE`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from poller.checkpoints.memory import MemoryCheckpointStore
from poller.config import Settings
from poller.errors import ConfigError, OperationError, PositionTrimmed, SourceError, StreamNotFound
from poller.observability.logging import configure_logging
from poller.operations import failure_sources
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
    AWS_ERRORS,
    DEFAULT_LIMIT,
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
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help="read at most N failure records, all before any is redriven, so that they go in "
        f"shard and sequence order (default {DEFAULT_LIMIT})",
    )
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
    if args.limit < 1:
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
    #: Delivered, but the failure record could not be removed (an AWS or network error).
    not_removed: int = 0
    #: Claimed by another redrive (S3), left to it.
    taken: int = 0
    #: An AWS or network error before delivery.
    errors: int = 0
    #: What other (running or killed) redrives hold, if anything.
    in_flight: str | None = None

    @property
    def problems(self) -> int:
        """Failure records that stay for a reason (failed again, expired, malformed, not
        removed, an error), plus one when others are in flight; a dry run's untouched records
        are not problems."""
        stay = self.failed_again + self.malformed + self.expired - self.expired_discarded
        return stay + self.not_removed + self.errors + (self.in_flight is not None)

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
            f" malformed {self.malformed}, delivered but not removed {self.not_removed},"
            f" taken by another redrive {self.taken}, errors {self.errors};"
            f" expired and discarded {self.expired_discarded})",
            f"records re-read: {self.records_reread}"
            f" (from S3 payloads: {self.records_from_payload})",
            f"delivered: {self.delivered}",
            f"failed: {self.failed}",
            f"expired: {self.expired} failure record(s), {self.expired_records} record(s)",
        ]
        if self.in_flight is not None:
            summary.append(self.in_flight)
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
        report = Report(source.arn, target_name(mapping, args.target_override), args.dry_run)
        _warn_receive_count(source, report)
        if args.dry_run and source.max_receive_count is not None:
            await _dry_run_without_receiving(source, report)
            return report
        if not args.dry_run:
            target = await operation_target(mapping, args.target_override, clients)
        run = _Redrive(mapping, api, source, target, report, args)
        await run.all(args.limit)
    except ConfigError as exc:
        raise OperationError("; ".join(exc.problems)) from None
    except AWS_ERRORS as exc:
        raise OperationError(f"reading failure records from {source.arn}: {exc}") from None
    else:
        return report
    finally:
        if target is not None:
            await target.aclose()
        await clients.aclose()


#: A failure queue's own maxReceiveCount at or below this is worth a warning.
SMALL_RECEIVE_COUNT = 5


def _warn_receive_count(source: FailureSource, report: Report) -> None:
    """Each redrive run receives each failure record once: a failure queue with its own
    dead-letter queue after a few receives moves them away after as many runs."""
    count = source.max_receive_count
    if count is not None and count <= SMALL_RECEIVE_COUNT:
        report.lines.append(
            f"  WARNING: {source.arn} moves a message to its own dead-letter queue after "
            f"{count} receive(s) (its RedrivePolicy); every redrive run receives each failure "
            "record once, so a record that fails again that often leaves for that queue"
        )


async def _dry_run_without_receiving(source: FailureSource, report: Report) -> None:
    """A receive would count toward the queue's maxReceiveCount: the dry run only counts."""
    waiting = await source.waiting()
    report.lines.append(
        f"  would deliver the records of the {waiting} failure record(s) waiting in "
        f"{source.arn} (not received: a receive counts toward its maxReceiveCount "
        f"{source.max_receive_count}, so a dry run does not read them)"
    )


class _Redrive:
    """One redrive: every failure record read (up to --limit), then redriven in shard and
    sequence order."""

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

    async def all(self, limit: int) -> None:
        """Read, sort and redrive; the heartbeat keeps what is held hidden meanwhile. What is
        not removed is released at the end, whatever happens; what other redrives hold is
        reported then."""
        kept: dict[str, StoredFailure] = {}
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._source.heartbeat)
                items = await self._source.read(limit)
                kept.update((item.id, item) for item in items)
                for item, pointer in self._parsed(items):
                    if await self._guarded(item, pointer):
                        del kept[item.id]
                tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(list(kept.values()))
        try:
            self._report.in_flight = await self._source.in_flight()
        except AWS_ERRORS as exc:
            self._report.in_flight = f"could not count the failure records in flight ({exc})"

    async def _release(self, items: list[StoredFailure]) -> None:
        try:
            await self._source.release(items)
        except AWS_ERRORS as exc:
            self._report.lines.append(
                f"  could not release {len(items)} failure record(s) ({exc}); they are "
                f"visible again within {failure_sources.VISIBILITY_SECONDS} s"
            )

    def _parsed(self, items: list[StoredFailure]) -> list[tuple[StoredFailure, FailurePointer]]:
        """The well-formed items, in shard and sequence order (an SQS queue keeps none)."""
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

    async def _guarded(self, item: StoredFailure, pointer: FailurePointer) -> bool:
        """One failure record; an AWS or network error ends its turn, never the run."""
        try:
            return await self._one(item, pointer)
        except AWS_ERRORS as exc:
            self._report.errors += 1
            self._report.lines.append(f"  ERROR     {_where(pointer)}: {exc}; left in place")
            return False

    async def _one(self, item: StoredFailure, pointer: FailurePointer) -> bool:
        """Redrive one failure record; True when it is to be removed."""
        where, report = _where(pointer), self._report
        if not self._dry_run:
            taken = await self._source.claim(item)
            if taken is not None:
                report.taken += 1
                report.lines.append(f"  TAKEN     {where}: {taken}; left to it")
                return False
        try:
            records = await self._records(pointer)
        except _Expired as expired:
            return await self._expired(item, pointer, where, str(expired))
        except (SourceError, MalformedFailureRecord) as exc:
            report.failed_again += 1
            report.lines.append(f"  UNREADABLE {where}: {exc}; left in place")
            return False
        if self._dry_run:
            report.lines.append(f"  would deliver {where}: {len(records)} record(s)")
            return False
        return await self._deliver(item, pointer, records)

    async def _deliver(
        self, item: StoredFailure, pointer: FailurePointer, records: list[StreamRecord]
    ) -> bool:
        """Deliver the records; remove the failure record only when all were delivered."""
        where, report = _where(pointer), self._report
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
        try:
            await self._source.remove(item)
        except AWS_ERRORS as exc:
            report.not_removed += 1
            report.lines.append(
                f"  NOT REMOVED {where}: {len(records)} record(s) delivered, but removing the "
                f"failure record failed ({exc}); it stays, and a later redrive delivers its "
                "records again"
            )
            return False
        report.redriven += 1
        report.lines.append(f"  ok        {where}: {len(records)} record(s) delivered")
        return True

    async def _records(self, pointer: FailurePointer) -> list[StreamRecord]:
        """Every record the pointer names: the payload's, else the stream's. Fewer (or
        others) than it names is an error, so that nothing undelivered is removed."""
        if pointer.payload is not None:
            records = records_from_payload(pointer.kind, pointer.payload)
            gap = _covers(pointer, records)
            if gap is None:
                self._report.records_from_payload += len(records)
                self._report.records_reread += len(records)
                return records
            self._report.lines.append(
                f"  note      {_where(pointer)}: its payload is not the records it names "
                f"({gap}); reading them from the stream"
            )
        records = await self._stream_records(pointer)
        gap = _covers(pointer, records)
        if gap is not None:
            raise MalformedFailureRecord(f"the stream's records do not cover it: {gap}")
        self._report.records_reread += len(records)
        return records

    async def _stream_records(self, pointer: FailurePointer) -> list[StreamRecord]:
        """The stream's records between the pointer's positions."""
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
                last=pointer.end_sequence,
            )
        except (RangeTrimmed, PositionTrimmed, StreamNotFound) as exc:
            raise _Expired(f"no longer in the stream ({exc})") from None
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


def _where(pointer: FailurePointer) -> str:
    return f"{pointer.shard_id} {pointer.start_sequence}..{pointer.end_sequence}"


def _covers(pointer: FailurePointer, records: list[StreamRecord]) -> str | None:
    """None when ``records`` are those the pointer names (its count, first and last
    sequence numbers), else what differs."""
    if not records:
        return f"no record read, {pointer.batch_size} named"
    first, last = records[0].sequence_number, records[-1].sequence_number
    if len(records) != pointer.batch_size:
        return f"{len(records)} record(s) ({first}..{last}), {pointer.batch_size} named"
    if (first, last) != (pointer.start_sequence, pointer.end_sequence):
        return f"records {first}..{last}, not the ones named"
    return None


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
