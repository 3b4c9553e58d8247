"""Hostile review of range reads on DynamoDB Streams (issue 15; ``poller.operations.ranges``).

DynamoDB Streams documents that GetRecords "might take multiple calls to get to a portion of
the shard that contains stream records": empty pages come before records, not only at the
tip. It reports no ``MillisBehindLatest``, so a range read counts empty pages to decide it is
caught up. A replay opens a DynamoDB Streams shard at TRIM_HORIZON (the service has no
AT_TIMESTAMP) and a redrive at the failure record's first sequence number; neither may take
a run of empty pages for the end of the range while the records it is after come next, or the
replay marks the shard done and the redrive removes a failure record it did not deliver.
"""

from __future__ import annotations

from typing import Any

import pytest

from poller.core.lineage import ShardInfo
from poller.operations.ranges import read_range
from poller.ports import PageConverter, RecordsPage, StartPosition
from poller.types import StreamRecord

pytestmark = pytest.mark.anyio


class SparseShard:
    """A DynamoDB-Streams-like StreamApi: one open shard whose first ``empty`` pages are empty
    (an old portion of the shard), then its records; no MillisBehindLatest."""

    limit = 1000
    idle_interval = 1.0
    reports_trims = True

    def __init__(self, records: list[int], empty: int) -> None:
        self.pages: list[list[int]] = [[] for _ in range(empty)] + [records]
        self.calls = 0

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo("s")]

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        return "0"

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        self.calls += 1
        index = int(iterator)
        raw = [{"seq": str(r)} for r in self.pages[index]] if index < len(self.pages) else []
        return RecordsPage(raw, str(index + 1), millis_behind_latest=None)

    def sequence_of(self, raw: dict[str, Any]) -> str:
        return str(raw["seq"])

    def arrival_of(self, raw: dict[str, Any]) -> float:
        return float(raw["seq"])

    def converter(self, shard_id: str, start: StartPosition) -> PageConverter:
        return lambda raws: [StreamRecord(r["seq"], "k", float(r["seq"]), r, 10) for r in raws]

    async def retention_seconds(self) -> float | None:
        return 86400.0


class Sink:
    def __init__(self) -> None:
        self.sequences: list[str] = []

    async def send(self, chunk: Any) -> None:
        self.sequences.extend(r.sequence_number for r in chunk)


async def test_empty_pages_before_the_records_do_not_end_a_dynamodb_range() -> None:
    """Five empty pages, then the records 10..12 that the range (10..11) is after."""
    api = SparseShard([10, 11, 12], empty=5)
    sink = Sink()

    await read_range(
        api,
        "s",
        StartPosition("TRIM_HORIZON"),
        sink,
        beyond=lambda r: int(r.sequence_number) > 11,
    )

    assert sink.sequences == ["10", "11"]


async def test_records_right_after_fewer_empty_pages_are_read() -> None:
    """Guard: two empty pages before the records are read through."""
    api = SparseShard([10, 11, 12], empty=2)
    sink = Sink()

    await read_range(
        api, "s", StartPosition("TRIM_HORIZON"), sink, beyond=lambda r: int(r.sequence_number) > 11
    )

    assert sink.sequences == ["10", "11"]
