"""``poller redrive`` driven through its core with in-memory fakes (``poller replay``'s:
test_operations_fast_replay.py).

Data flow under test::

    FakeFailures (an in-memory FailureSource) --read--> _Redrive --FakeStreamApi (the shard
        read between the pointer's positions)--> deliver_shard --> RecordingTarget
        --all delivered--> FakeFailures.remove; left in place --> FakeFailures.release

The public ``main`` only adds the AWS clients around this core (the integration tier runs it
against the emulators); here everything is hermetic and fast.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio
import pytest

from poller.core.failure_record import failure_record, with_payload
from poller.operations.failure_sources import StoredFailure
from poller.operations.redrive import (
    Report,
    _dry_run_without_receiving,
    _Redrive,
    _warn_receive_count,
)
from poller.ports import StartPosition
from poller.testing import (
    STREAM_ARN,
    FakeStreamApi,
    Put,
    RecordingTarget,
    function_error,
)
from poller.types import StreamRecord
from tests.component.harness import mapping_config

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:f"
#: The longest a redrive of a handful of records may take here.
LIMIT = 10.0


# -- an in-memory failure source ----------------------------------------------------------------


class FakeFailures:
    """A FailureSource over a list: records what was removed, released and claimed."""

    def __init__(self, bodies: dict[str, bytes], *, max_receive_count: int | None = None) -> None:
        self.arn = "arn:aws:sqs:us-east-1:123456789012:failures"
        self.max_receive_count = max_receive_count
        self.items = [StoredFailure(key, body, f"handle-{key}") for key, body in bodies.items()]
        self.removed: list[str] = []
        self.released: list[str] = []
        self.claimed: list[str] = []
        #: Item id -> the reason another redrive holds it.
        self.taken: dict[str, str] = {}
        #: Item ids whose removal fails (an AWS or network error).
        self.remove_fails: set[str] = set()
        self.claim_fails: set[str] = set()
        self.release_fails = False
        self.in_flight_answer: str | OSError | None = None

    async def check(self) -> None:
        return None

    async def read(self, limit: int) -> list[StoredFailure]:
        return self.items[:limit]

    async def waiting(self) -> int:
        return len(self.items)

    async def heartbeat(self) -> None:
        await anyio.sleep_forever()

    async def claim(self, item: StoredFailure) -> str | None:
        if item.id in self.claim_fails:
            raise OSError("connection reset")
        self.claimed.append(item.id)
        return self.taken.get(item.id)

    async def remove(self, item: StoredFailure) -> None:
        if item.id in self.remove_fails:
            raise OSError("connection reset")
        self.removed.append(item.id)
        self.items.remove(item)

    async def release(self, items: list[StoredFailure]) -> None:
        if self.release_fails:
            raise OSError("connection reset")
        self.released.extend(item.id for item in items)

    async def in_flight(self) -> str | None:
        if isinstance(self.in_flight_answer, OSError):
            raise self.in_flight_answer
        return self.in_flight_answer


# -- helpers ------------------------------------------------------------------------------------


def stream_records(api: FakeStreamApi, raws: list[dict[str, Any]]) -> list[StreamRecord]:
    """The raw records as the Kinesis converter makes them (what a failure record names)."""
    return api.converter(SHARD, StartPosition("TRIM_HORIZON"))(raws)


def failure_body(
    api: FakeStreamApi, raws: list[dict[str, Any]], *, payload: bool = False, stream: str = ""
) -> bytes:
    """AWS's failure record for ``raws`` (with its S3 payload when asked)."""
    records = stream_records(api, raws)
    record = failure_record(
        kind="kinesis",
        condition="RetryAttemptsExhausted",
        approximate_invoke_count=1,
        request_id="r",
        function_arn=FUNCTION,
        last_result=None,
        shard_id=SHARD,
        stream_arn=stream or STREAM_ARN,
        records=records,
        now=time.time(),
    )
    return json.dumps(with_payload(record, records) if payload else record).encode()


def shard_of(api: FakeStreamApi, count: int, *, arrival: float | None = None) -> list[Any]:
    """A closed shard of ``count`` records in one page; their raw records."""
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [Put(f"k{i}", f"r{i}".encode(), arrival) for i in range(count)])
    api.close_shard(SHARD)
    return raws


def sequences(raws: list[dict[str, Any]]) -> list[str]:
    return [raw["SequenceNumber"] for raw in raws]


async def redrive(
    api: FakeStreamApi,
    source: FakeFailures,
    target: RecordingTarget | None,
    *,
    dry_run: bool = False,
    discard_expired: bool = False,
    limit: int = 100,
) -> Report:
    """One redrive as ``poller redrive`` runs it, minus the AWS clients."""
    mapping = mapping_config(batch_size=2)
    args = argparse.Namespace(dry_run=dry_run, discard_expired=discard_expired, max_retries=0)
    report = Report(source.arn, "target", dry_run)
    with anyio.fail_after(LIMIT):
        await _Redrive(mapping, api, source, target, report, args).all(limit)
    return report


# -- redrive ------------------------------------------------------------------------------------


async def test_redrive_delivers_exactly_the_failed_records_in_shard_order_then_removes() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 8)
    # Read in the wrong order (an SQS queue keeps none): redriven in sequence order.
    source = FakeFailures(
        {"late": failure_body(api, raws[5:7]), "early": failure_body(api, raws[1:4])}
    )
    report = await redrive(api, source, target)
    assert target.delivered() == sequences(raws[1:4]) + sequences(raws[5:7])
    assert source.removed == ["early", "late"]
    assert source.released == []
    assert (report.read, report.redriven, report.delivered, report.records_reread) == (2, 2, 5, 5)
    assert (report.problems, report.left_in_place, report.failed) == (0, 0, 0)
    assert "failure records read: 2 (redriven 2, left in place 0" in report.render()


async def test_a_failure_record_whose_records_fail_again_stays_in_place() -> None:
    api, target = FakeStreamApi(), RecordingTarget(default=function_error())
    raws = shard_of(api, 3)
    source = FakeFailures({"f": failure_body(api, raws)})
    report = await redrive(api, source, target)
    assert set(target.delivered()) == set(sequences(raws))
    assert source.removed == []
    assert source.released == ["f"]
    assert (report.failed_again, report.failed, report.redriven) == (1, 3, 0)
    assert report.problems == 1
    assert any("FAILED" in line and "3 of 3" in line for line in report.lines)


async def test_a_failure_record_on_a_trimmed_position_is_expired_and_left() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 5)
    api.trim(SHARD, 3)  # Kinesis then reads from its oldest record, without an error
    source = FakeFailures({"old": failure_body(api, raws[1:3])})
    report = await redrive(api, source, target)
    assert target.events == []
    assert source.removed == []
    assert source.released == ["old"]
    assert (report.expired, report.expired_records, report.expired_discarded) == (1, 2, 0)
    assert any("EXPIRED" in line and "--discard-expired" in line for line in report.lines)


async def test_discard_expired_removes_a_failure_record_older_than_the_retention() -> None:
    api, target = FakeStreamApi(retention=3600.0), RecordingTarget()
    raws = shard_of(api, 2, arrival=time.time() - 7200)
    source = FakeFailures({"old": failure_body(api, raws)})
    report = await redrive(api, source, target, discard_expired=True)
    assert target.events == []
    # The retention alone proves it: the stream is not even read.
    assert api.iterator_starts(SHARD) == []
    assert source.removed == ["old"]
    assert (report.expired, report.expired_discarded, report.problems) == (1, 1, 0)
    assert report.left_in_place == 0


async def test_malformed_failure_records_are_reported_and_left() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 2)
    other = "arn:aws:kinesis:us-east-1:123456789012:stream/other"
    source = FakeFailures({"junk": b"not json", "elsewhere": failure_body(api, raws, stream=other)})
    report = await redrive(api, source, target)
    assert target.events == []
    assert source.removed == []
    assert sorted(source.released) == ["elsewhere", "junk"]
    assert (report.malformed, report.problems) == (2, 2)
    assert any("MALFORMED elsewhere" in line and other in line for line in report.lines)


async def test_a_pointer_the_stream_does_not_cover_is_not_delivered() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 4)
    # Names records 0 and 2 only (a batch size of 2), but the stream holds 0, 1 and 2 between.
    source = FakeFailures({"gap": failure_body(api, [raws[0], raws[2]])})
    report = await redrive(api, source, target)
    assert target.events == []
    assert source.released == ["gap"]
    assert report.failed_again == 1
    assert any("UNREADABLE" in line for line in report.lines)


async def test_an_s3_payload_is_delivered_without_reading_the_stream() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 3)
    api.trim(SHARD, 3)  # gone from the stream, but the payload holds them
    source = FakeFailures({"s3": failure_body(api, raws, payload=True)})
    report = await redrive(api, source, target)
    assert target.delivered() == sequences(raws)
    assert source.removed == ["s3"]
    assert (report.records_from_payload, report.records_reread, report.delivered) == (3, 3, 3)


async def test_a_payload_that_is_not_the_named_records_is_read_from_the_stream() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 3)
    named = json.loads(failure_body(api, raws))
    # The payload holds one record of the three named: the stream is read instead.
    body = json.dumps(with_payload(named, stream_records(api, raws[:1]))).encode()
    source = FakeFailures({"s3": body})
    report = await redrive(api, source, target)
    assert target.delivered() == sequences(raws)
    assert source.removed == ["s3"]
    assert (report.records_from_payload, report.records_reread) == (0, 3)
    assert any("its payload is not the records it names" in line for line in report.lines)


async def test_a_dry_run_reads_and_changes_nothing() -> None:
    api = FakeStreamApi()
    raws = shard_of(api, 4)
    source = FakeFailures({"a": failure_body(api, raws[:2]), "b": failure_body(api, raws[2:])})
    report = await redrive(api, source, None, dry_run=True)
    assert source.removed == []
    assert source.claimed == []
    assert sorted(source.released) == ["a", "b"]
    assert [line.split(":")[1].strip() for line in report.lines] == ["2 record(s)"] * 2
    assert all(line.startswith("  would deliver") for line in report.lines)
    assert (report.redriven, report.delivered, report.problems) == (0, 0, 0)
    assert report.render().startswith("redrive (dry run: nothing delivered, nothing removed)")


async def test_a_record_another_redrive_holds_is_left_to_it() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 2)
    source = FakeFailures({"x": failure_body(api, raws)})
    source.taken["x"] = "claimed by another redrive"
    report = await redrive(api, source, target)
    assert target.events == []
    assert (report.taken, report.redriven) == (1, 0)
    assert source.released == ["x"]


async def test_aws_errors_leave_records_in_place_and_the_run_goes_on() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 4)
    source = FakeFailures(
        {"claim": failure_body(api, raws[:2]), "remove": failure_body(api, raws[2:])}
    )
    source.claim_fails.add("claim")
    source.remove_fails.add("remove")
    source.release_fails = True
    source.in_flight_answer = OSError("timed out")
    report = await redrive(api, source, target)
    # The claim failed before delivery; the other was delivered but could not be removed.
    assert target.delivered() == sequences(raws[2:])
    assert (report.errors, report.not_removed, report.redriven) == (1, 1, 0)
    assert any("could not release 2" in line for line in report.lines)
    assert report.in_flight is not None
    assert "timed out" in report.in_flight
    assert report.problems == 3


async def test_limit_reads_only_that_many_failure_records() -> None:
    api, target = FakeStreamApi(), RecordingTarget()
    raws = shard_of(api, 4)
    source = FakeFailures({"a": failure_body(api, raws[:2]), "b": failure_body(api, raws[2:])})
    source.in_flight_answer = "1 failure record(s) held by another redrive"
    report = await redrive(api, source, target, limit=1)
    assert target.delivered() == sequences(raws[:2])
    assert source.removed == ["a"]
    assert report.read == 1
    assert report.render().endswith("1 failure record(s) held by another redrive")


async def test_a_queue_with_a_small_receive_count_warns_and_a_dry_run_only_counts() -> None:
    source = FakeFailures({"a": b"{}", "b": b"{}"}, max_receive_count=3)
    report = Report(source.arn, "target", dry_run=True)
    _warn_receive_count(source, report)
    await _dry_run_without_receiving(source, report)
    assert "after 3 receive(s)" in report.lines[0]
    assert "the 2 failure record(s) waiting" in report.lines[1]
    assert source.released == []
    assert source.claimed == []
