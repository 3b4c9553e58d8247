"""KPL de-aggregation end to end: aggregates built by aws-kinesis-agg (not by our code) are
delivered as user records, and checkpoints and partial failures can point inside an aggregate."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from poller.config import Settings
from tests.integration.kinesis_harness import kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of
from tests.support import recorder
from tests.support.aws import aws_client, create_stream, stream_arn, unique
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def put_aggregates(
    moto_url: str, stream: str, aggregates: int, per: int
) -> list[tuple[str, bytes]]:
    """Put ``aggregates`` KPL aggregates of ``per`` user records; return (key, data) in order."""
    sent: list[tuple[str, bytes]] = []
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, stream, 1)
        for a in range(aggregates):
            aggregator = RecordAggregator()
            for u in range(per):
                key, data = f"user-{(a * per + u) % 37}", f"record-{a * per + u}".encode()
                assert aggregator.add_user_record(key, data) is None
                sent.append((key, data))
            partition_key, _, blob = aggregator.clear_and_get().get_contents()
            await kinesis.put_record(StreamName=stream, PartitionKey=partition_key, Data=blob)
    return sent


def user_records(arn: str) -> list[dict[str, Any]]:
    return [r for batch in recorder.BATCHES[arn] for r in batch]


def decoded(records: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    return [(r["kinesis"]["partitionKey"], base64.b64decode(r["kinesis"]["data"])) for r in records]


def partial_failure_settings(moto_url: str, stream: str, db: Path) -> Settings:
    """One de-aggregating mapping on ``stream`` whose handler may report batch item failures;
    a batch of 30 takes three aggregates of ten at once."""
    return kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=db,
        batch_size=30,
        deaggregate_records=True,
        function_response_types=["ReportBatchItemFailures"],
    )


async def run_until_retried(
    settings: Settings, arn: str, db: Path, what: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """Run the service until a partly failed batch has been retried (three batches seen);
    return the first batch, its retry and the stored (sequence, sub-sequence) checkpoint."""
    async with running(settings):
        await wait_until(lambda: len(recorder.BATCHES[arn]) >= 3, 30, what)
    first, retried = recorder.BATCHES[arn][0], recorder.BATCHES[arn][1]
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT sequence_number, sub_sequence_number FROM checkpoints"
        ).fetchone()
    return first, retried, stored


async def test_1000_user_records_in_50_aggregates(moto_url: str, tmp_path: Path) -> None:
    """Every user record is delivered once, in order, with its own key and data, the parent's
    sequence number and its sub-sequence number; the checkpoint ends past the last aggregate."""
    stream, db = unique("kpl"), tmp_path / "c.db"
    arn = stream_arn(stream)
    sent = await put_aggregates(moto_url, stream, 50, 20)
    settings = kinesis_settings(
        endpoint_url=moto_url, stream=stream, db=db, batch_size=100, deaggregate_records=True
    )
    try:
        async with running(settings):
            await wait_until(lambda: len(user_records(arn)) >= 1000, 60, "1,000 user records")
            await wait_until(lambda: checkpoint_of(db) is not None, 30, "a checkpoint")
        got = user_records(arn)
    finally:
        recorder.clear(arn)
    assert decoded(got) == sent
    subs = [r["kinesis"]["subSequenceNumber"] for r in got]
    assert subs == [i % 20 for i in range(1000)]
    parents = [r["kinesis"]["sequenceNumber"] for r in got]
    assert len(set(parents)) == 50
    assert parents == sorted(parents, key=int)


async def test_partial_failure_inside_an_aggregate_resumes_at_that_user_record(
    moto_url: str, tmp_path: Path
) -> None:
    """User record 7 of the second aggregate keeps failing (reported as ``seq:7``): the records
    before it are settled and the checkpoint points inside the aggregate (sub-sequence 6).
    After a restart, with the function fixed, delivery resumes exactly at that user record:
    nothing settled is delivered again."""
    stream, db = unique("kplp"), tmp_path / "c.db"
    arn = stream_arn(stream)
    sent = await put_aggregates(moto_url, stream, 3, 10)
    failing = {"on": True}

    def hook(records: list[dict[str, Any]]) -> dict[str, Any]:
        for r in records:
            kinesis = r["kinesis"]
            if failing["on"] and base64.b64decode(kinesis["data"]) == b"record-17":
                position = f"{kinesis['sequenceNumber']}:{kinesis['subSequenceNumber']}"
                return {"batchItemFailures": [{"itemIdentifier": position}]}
        return {"batchItemFailures": []}

    recorder.BEHAVIOUR[arn] = hook
    settings = partial_failure_settings(moto_url, stream, db)
    try:
        first, retried, stored = await run_until_retried(
            settings, arn, db, "the failing record retried"
        )
        second_aggregate = first[10]["kinesis"]["sequenceNumber"]
        failing["on"] = False
        recorder.BATCHES.pop(arn)
        async with running(settings):
            await wait_until(
                lambda: checkpoint_of(db) == first[-1]["kinesis"]["sequenceNumber"], 30, "the rest"
            )
        after_restart = user_records(arn)
    finally:
        recorder.clear(arn)
    assert decoded(first) == sent  # one batch of all 30 user records
    assert decoded(retried) == sent[17:]  # the retry starts exactly at the failed user record
    assert stored == (second_aggregate, 6)
    assert decoded(after_restart) == sent[17:]
