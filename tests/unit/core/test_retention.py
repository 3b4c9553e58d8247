"""The shard reader at the stream's retention edge (issue 11, defect 4), over an in-memory
fake of our own ``StreamApi``: a trimmed position moves the reader to TRIM_HORIZON, loudly and
counted; a silent trim (Kinesis) is warned about when the first record is as old as the
retention."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import structlog

from poller.core.lineage import ShardInfo
from poller.errors import PositionTrimmed
from poller.observability.metrics import RecordingMetrics
from poller.ports import PageConverter, RecordsPage, StartPosition
from poller.streams.reader import ShardReader
from poller.types import Chunk, ShardEnd, StreamRecord

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
DAY = 86_400.0


class FakeStream:
    """One closed shard holding ``records`` (sequence, arrival); ``trimmed`` positions (and
    TRIM_HORIZON ``horizon_failures`` times) are refused as DynamoDB Streams refuses them."""

    limit = 1000
    idle_interval = 0.0
    reports_trims = False

    def __init__(
        self,
        records: list[tuple[str, float]],
        *,
        trimmed: frozenset[str] = frozenset(),
        horizon_failures: int = 0,
        retention: float | None = DAY,
    ) -> None:
        self.records = records
        self.trimmed = trimmed
        self.horizon_failures = horizon_failures
        self.retention = retention
        self.asked: list[StartPosition] = []

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo(SHARD, (), closed=True)]

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        self.asked.append(position)
        if position.sequence_number in self.trimmed:
            raise PositionTrimmed("GetShardIterator failed with TrimmedDataAccessException")
        if position.type == "TRIM_HORIZON" and self.horizon_failures:
            self.horizon_failures -= 1
            raise PositionTrimmed("GetShardIterator failed with TrimmedDataAccessException")
        if position.type == "AFTER_SEQUENCE_NUMBER":
            seqs = [s for s, _ in self.records]
            return str(seqs.index(position.sequence_number or "") + 1)
        return "0"

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        start = int(iterator)
        raws = [
            {"SequenceNumber": s, "ApproximateArrivalTimestamp": t} for s, t in self.records[start:]
        ]
        return RecordsPage(records=raws, next_iterator=None)

    def sequence_of(self, raw: dict[str, Any]) -> str:
        return str(raw["SequenceNumber"])

    def arrival_of(self, raw: dict[str, Any]) -> float:
        return float(raw["ApproximateArrivalTimestamp"])

    async def retention_seconds(self) -> float | None:
        return self.retention

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        def convert(raws: list[dict[str, Any]]) -> list[StreamRecord]:
            return [
                StreamRecord(r["SequenceNumber"], "k", r["ApproximateArrivalTimestamp"], {}, 1)
                for r in raws
            ]

        return convert


async def read_all(api: FakeStream, start: StartPosition, metrics: RecordingMetrics) -> list[str]:
    reader = ShardReader(api, shard_id=SHARD, start=start, metrics=metrics, mapping="m")
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    got: list[str] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.run, send)
            async with receive:
                async for chunk in receive:
                    if isinstance(chunk, ShardEnd):
                        break
                    got.extend(r.sequence_number for r in chunk)
    return got


async def test_a_trimmed_checkpoint_continues_from_trim_horizon_once() -> None:
    now = time.time()
    api = FakeStream([("5", now - 10), ("6", now - 5)], trimmed=frozenset({"2"}))
    metrics = RecordingMetrics()
    with structlog.testing.capture_logs() as logs:
        got = await read_all(api, StartPosition("AFTER_SEQUENCE_NUMBER", "2"), metrics)
    assert got == ["5", "6"]
    assert [p.type for p in api.asked] == ["AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON"]
    assert metrics.calls_to("retention_gap") == [{"mapping": "m", "shard": SHARD}]
    [gap] = [e for e in logs if e["event"] == "shard.retention_gap"]
    assert (gap["after_sequence"], gap["resume"]) == ("2", "TRIM_HORIZON")
    [end] = [e for e in logs if e["event"] == "shard.retention_gap_end"]
    assert (end["after_sequence"], end["first_sequence"]) == ("2", "5")


async def test_a_trim_error_at_trim_horizon_is_retried_not_skipped() -> None:
    """At TRIM_HORIZON there is nothing older to skip to: the error passes (a record trimmed
    between the calls) and the call is made again."""
    now = time.time()
    api = FakeStream([("5", now)], trimmed=frozenset({"2"}), horizon_failures=1)
    metrics = RecordingMetrics()
    got = await read_all(api, StartPosition("AFTER_SEQUENCE_NUMBER", "2"), metrics)
    assert got == ["5"]
    assert [p.type for p in api.asked] == ["AFTER_SEQUENCE_NUMBER", "TRIM_HORIZON", "TRIM_HORIZON"]
    assert len(metrics.calls_to("retention_gap")) == 1


@pytest.mark.parametrize(("age", "warned"), [(DAY - 60, True), (DAY - 3600, False)])
async def test_a_silent_trim_is_warned_about_when_the_first_record_is_at_the_edge(
    age: float, warned: bool
) -> None:
    """Kinesis starts a trimmed AFTER_SEQUENCE_NUMBER at the oldest record held, without an
    error: a first record about as old as the retention is reported as a possible gap."""
    now = time.time()
    api = FakeStream([("1", now - age - 1), ("5", now - age), ("6", now)])
    with structlog.testing.capture_logs() as logs:
        got = await read_all(api, StartPosition("AFTER_SEQUENCE_NUMBER", "1"), RecordingMetrics())
    assert got == ["5", "6"]
    possible = [e for e in logs if e["event"] == "shard.possible_retention_gap"]
    assert bool(possible) is warned
    if warned:
        assert (possible[0]["after_sequence"], possible[0]["first_sequence"]) == ("1", "5")


async def test_no_edge_warning_from_a_starting_position() -> None:
    now = time.time()
    api = FakeStream([("5", now - DAY)])
    with structlog.testing.capture_logs() as logs:
        await read_all(api, StartPosition("TRIM_HORIZON"), RecordingMetrics())
    assert not [e for e in logs if e["event"] == "shard.possible_retention_gap"]


# -- review attacks (issue 11 follow-up) -----------------------------------------------------


class RefusingReads(FakeStream):
    """GetShardIterator always works, but the first ``read_failures`` GetRecords calls answer
    TrimmedDataAccessException (a service that keeps refusing the trim horizon itself)."""

    def __init__(self, records: list[tuple[str, float]], read_failures: int) -> None:
        super().__init__(records)
        self.read_failures = read_failures
        self.reads: list[float] = []

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        self.reads.append(time.monotonic())
        if self.read_failures:
            self.read_failures -= 1
            raise PositionTrimmed("GetRecords failed with TrimmedDataAccessException")
        return await super().get_records(iterator, limit)


async def test_reads_refused_again_and_again_back_off_and_are_logged() -> None:
    """Before: a fresh iterator whose read is refused at once was recreated at the call rate
    (five a second), forever and silently. A second refusal in a row is backed off and
    logged like any other read error."""
    api = RefusingReads([("5", time.time())], read_failures=3)
    with structlog.testing.capture_logs() as logs:
        got = await read_all(api, StartPosition("TRIM_HORIZON"), RecordingMetrics())
    assert got == ["5"]
    failed = [e for e in logs if e["event"] == "shard.read_failed"]
    assert [e["attempt"] for e in failed] == [2, 3]
    gaps = [b - a for a, b in zip(api.reads, api.reads[1:], strict=False)]
    assert gaps[1] >= 0.35, gaps  # READ_BACKOFF's first step (0.5 s, less jitter)
    assert gaps[2] >= gaps[1] * 1.2, gaps


class ReportsTrims(FakeStream):
    """DynamoDB Streams: a trimmed position is refused with an error, never read silently."""

    reports_trims = True


async def test_no_possible_gap_warning_where_the_service_reports_trims() -> None:
    """DynamoDB Streams answers a trimmed checkpoint with an error; a checkpoint it accepts
    was not trimmed, so a first record near the 24 h edge is no sign of a gap."""
    now = time.time()
    api = ReportsTrims([("1", now - DAY + 30), ("5", now - DAY + 60)])
    with structlog.testing.capture_logs() as logs:
        got = await read_all(api, StartPosition("AFTER_SEQUENCE_NUMBER", "1"), RecordingMetrics())
    assert got == ["5"]
    assert not [e for e in logs if e["event"] == "shard.possible_retention_gap"]


async def test_a_parent_trimmed_to_nothing_still_reaches_its_end() -> None:
    """A closed parent whose checkpoint and every record were trimmed ends (ShardEnd), so
    its children are not blocked: the gap is reported once, nothing is read, no loop."""
    api = FakeStream([], trimmed=frozenset({"2"}))
    metrics = RecordingMetrics()
    reader = ShardReader(
        api, shard_id=SHARD, start=StartPosition("AFTER_SEQUENCE_NUMBER", "2"), metrics=metrics
    )
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.run, send)
            async with receive:
                chunks = [chunk async for chunk in receive]
    assert chunks == [ShardEnd(())]
    assert len(metrics.calls_to("retention_gap")) == 1
