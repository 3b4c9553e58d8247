"""The parts of ``poller replay`` (and of redrive's reads) that need no AWS: reading a shard
between two positions over an in-memory stream, lineage order, the replay id and progress.
tests/integration/test_replay.py runs the command against moto and kinesis-local."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.core.lineage import ShardInfo
from poller.errors import IteratorExpired, OperationError, Throttled
from poller.operations import ranges
from poller.operations.progress import ReplayProgress
from poller.operations.ranges import RangeTrimmed, read_range
from poller.operations.replay import _lineage_order, _selected, replay_id, state_lock
from poller.ports import PageConverter, RecordsPage, StartPosition
from poller.types import StreamRecord

pytestmark = pytest.mark.anyio


class MemoryStream:
    """A StreamApi over lists of raw records per shard; pages of ``page`` records."""

    limit = 10_000
    idle_interval = 1.0
    reports_trims = False

    def __init__(self, shards: dict[str, list[int]], *, page: int = 3, closed: bool = False):
        # A record is its sequence number; it arrived at that many seconds.
        self.shards = shards
        self.page = page
        self.closed = closed
        self.fail_next: list[Exception] = []
        self.opened: list[StartPosition] = []

    async def list_shards(self) -> list[ShardInfo]:
        return [ShardInfo(s) for s in self.shards]

    async def get_iterator(self, shard_id: str, position: StartPosition) -> str:
        self.opened.append(position)
        records = self.shards[shard_id]
        if position.type == "AT_SEQUENCE_NUMBER":
            at = next(i for i, r in enumerate(records) if r >= int(position.sequence_number or 0))
        elif position.type == "AFTER_SEQUENCE_NUMBER":
            at = next(
                (i for i, r in enumerate(records) if r > int(position.sequence_number or 0)),
                len(records),
            )
        elif position.type == "AT_TIMESTAMP":
            at = next(
                (i for i, r in enumerate(records) if r >= (position.timestamp or 0)), len(records)
            )
        else:
            at = 0
        return f"{shard_id}|{at}"

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        if self.fail_next:
            raise self.fail_next.pop(0)
        shard_id, at_text = iterator.split("|")
        at = int(at_text)
        records = self.shards[shard_id]
        raw = [{"seq": str(r)} for r in records[at : at + self.page]]
        end = at + len(raw)
        done = end >= len(records)
        nxt = None if done and self.closed else f"{shard_id}|{end}"
        return RecordsPage(raw, nxt, millis_behind_latest=0 if done else 1000)

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
        self.chunks: list[list[str]] = []

    async def send(self, chunk: Any) -> None:
        self.chunks.append([r.sequence_number for r in chunk])

    @property
    def sequences(self) -> list[str]:
        return [s for chunk in self.chunks for s in chunk]


async def test_a_range_stops_at_its_end() -> None:
    api = MemoryStream({"s": list(range(10, 30))})
    sink = Sink()
    seen = await read_range(
        api,
        "s",
        StartPosition("AT_SEQUENCE_NUMBER", "12"),
        sink,
        beyond=lambda r: int(r.sequence_number) > 17,
        expect_first="12",
    )
    assert sink.sequences == [str(n) for n in range(12, 18)]
    assert (seen.records, seen.first_sequence, seen.last_sequence) == (6, "12", "17")
    assert not seen.shard_ended


async def test_records_before_the_start_are_skipped() -> None:
    api = MemoryStream({"s": list(range(10, 20))})
    sink = Sink()
    await read_range(
        api,
        "s",
        StartPosition("TRIM_HORIZON"),
        sink,
        beyond=lambda r: int(r.sequence_number) > 15,
        before=lambda r: int(r.sequence_number) < 14,
        expect_first="14",
    )
    assert sink.sequences == ["14", "15"]


async def test_a_trimmed_start_is_refused_before_anything_is_sent() -> None:
    api = MemoryStream({"s": list(range(20, 30))})
    sink = Sink()
    with pytest.raises(RangeTrimmed, match="no longer holds sequence number 12"):
        await read_range(
            api,
            "s",
            StartPosition("AT_SEQUENCE_NUMBER", "12"),
            sink,
            beyond=lambda r: False,
            expect_first="12",
        )
    assert sink.chunks == []


async def test_an_open_shard_is_read_to_its_tip_and_a_closed_one_to_its_end() -> None:
    api = MemoryStream({"s": list(range(7))})
    sink = Sink()
    seen = await read_range(api, "s", StartPosition("TRIM_HORIZON"), sink, beyond=lambda r: False)
    assert sink.sequences == [str(n) for n in range(7)]
    assert not seen.shard_ended
    closed = MemoryStream({"s": list(range(7))}, closed=True)
    seen = await read_range(
        closed, "s", StartPosition("TRIM_HORIZON"), Sink(), beyond=lambda r: False
    )
    assert seen.shard_ended


async def test_a_failed_read_goes_on_after_the_last_record() -> None:
    api = MemoryStream({"s": list(range(9))})
    api.fail_next = []
    sink = Sink()
    calls = 0
    original = api.get_records

    async def flaky(iterator: str, limit: int | None = None) -> RecordsPage:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise IteratorExpired("expired")
        return await original(iterator, limit)

    api.get_records = flaky  # type: ignore[method-assign]
    await read_range(api, "s", StartPosition("TRIM_HORIZON"), sink, beyond=lambda r: False)
    assert sink.sequences == [str(n) for n in range(9)]
    assert api.opened[-1] == StartPosition("AFTER_SEQUENCE_NUMBER", "2")


async def test_a_read_that_keeps_failing_is_raised() -> None:
    api = MemoryStream({"s": [1]})
    api.fail_next = [Throttled("slow down")] * 10
    with pytest.raises(Throttled):
        await read_range(api, "s", StartPosition("TRIM_HORIZON"), Sink(), beyond=lambda r: False)


def test_lineage_order_puts_parents_first() -> None:
    shards = [
        ShardInfo("c1", ("p",)),
        ShardInfo("p", (), closed=True),
        ShardInfo("c2", ("p",)),
        ShardInfo("m", ("c1", "c2")),
    ]
    assert _lineage_order(shards) == ["p", "c1", "c2", "m"]


def test_chosen_shards_are_not_held_back_by_parents_left_out() -> None:
    listing = [ShardInfo("p", (), closed=True), ShardInfo("c", ("p",))]
    assert _selected(listing, ["c"]) == [ShardInfo("c", ())]
    assert _selected(listing, []) == listing
    with pytest.raises(
        OperationError, match=r"--shard 'x': no such shard in the stream \(shards: c, p\)"
    ):
        _selected(listing, ["x"])


def test_the_same_command_is_the_same_replay() -> None:
    from tests.unit.test_operations_redrive import settings

    mapping = settings().mappings[0]
    args = argparse.Namespace(shard=["b", "a"], target_override=None)
    same = argparse.Namespace(shard=["a", "b"], target_override=None)
    other = argparse.Namespace(shard=["a"], target_override=None)
    assert replay_id(mapping, 1.0, 2.0, args) == replay_id(mapping, 1.0, 2.0, same)
    assert replay_id(mapping, 1.0, 2.0, args) != replay_id(mapping, 1.0, 2.0, other)
    assert replay_id(mapping, 1.0, 2.0, args) != replay_id(mapping, 1.0, None, args)


def record(at: float) -> StreamRecord:
    return StreamRecord(str(int(at)), "k", at, {}, 1)


def test_progress_follows_the_least_advanced_shard() -> None:
    out = io.StringIO()
    progress = ReplayProgress("replay-x", 100.0, 200.0, tty=False, out=out)
    assert progress.fraction() == 0.0
    progress.settled("a", [record(100.0)])
    progress.settled("a", [record(150.0)])
    progress.settled("b", [record(120.0), record(140.0)])
    assert progress.records == 4
    assert progress.fraction() == pytest.approx(0.25)  # b: 20 of 80 seconds
    progress.shard("b").done = True
    assert progress.fraction() == pytest.approx(0.5)
    progress.shard("a").done = True
    assert progress.fraction() == 1.0
    progress.report()
    line = json.loads(out.getvalue())
    assert line["event"] == "replay.progress"
    assert line["shards"] == {"a": 2, "b": 2}
    assert "a:2*" in progress.line()


class NoLagStream(MemoryStream):
    """DynamoDB Streams-like: no MillisBehindLatest, and an open shard answers empty pages at
    its tip forever."""

    async def get_records(self, iterator: str, limit: int | None = None) -> RecordsPage:
        page = await super().get_records(iterator, limit)
        return RecordsPage(page.records, page.next_iterator, millis_behind_latest=None)


async def test_without_lag_reports_an_open_shard_ends_after_a_time_of_empty_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Empty pages end a DynamoDB Streams range only once they last EMPTY_SECONDS_AT_TIP
    (shortened here), never on their count."""
    monkeypatch.setattr(ranges, "EMPTY_SECONDS_AT_TIP", 0.5)
    api = NoLagStream({"s": [10, 11]})
    sink = Sink()
    with anyio.fail_after(10):
        await read_range(api, "s", StartPosition("TRIM_HORIZON"), sink, beyond=lambda r: False)
    assert sink.sequences == ["10", "11"]


async def test_a_known_last_record_ends_the_range_without_waiting() -> None:
    """A redrive knows its last sequence number: no empty page, no next record needed."""
    api = NoLagStream({"s": [10, 11]})
    sink = Sink()
    with anyio.fail_after(2):
        await read_range(
            api, "s", StartPosition("TRIM_HORIZON"), sink, beyond=lambda r: False, last="11"
        )
    assert sink.sequences == ["10", "11"]


def test_a_second_run_on_one_state_file_is_refused_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / "replay.db"
    refused = pytest.raises(OperationError, match=f"replay.db.lock' \\(pid {os.getpid()}\\)")
    with state_lock(state), refused, state_lock(state):
        pass
    with state_lock(state):  # released at the end of the first run
        pass
