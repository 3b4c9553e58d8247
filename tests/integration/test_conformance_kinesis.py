"""The Kinesis event we deliver has the shape AWS recorded for the same scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.kinesis_harness import batches, delivered, kinesis_settings
from tests.support import recorder
from tests.support.aws import aws_client, create_stream, put_records, stream_arn, unique
from tests.support.conformance import assert_matches, recorded
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


async def test_kinesis_event_matches_aws_recording(moto_url: str, tmp_path: Path) -> None:
    """test_create_kinesis_event_source_mapping: records "hello" with keys test_0..test_N on
    shardId-000000000000 arrive as AWS's event, field for field."""
    expected = recorded(
        "esm-kinesis.json", "::test_create_kinesis_event_source_mapping", "kinesis_records"
    )
    count = len(expected["Records"])
    stream = unique("conf")
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, stream, 1)
        await put_records(kinesis, stream, ((f"test_{i}", b"hello", None) for i in range(count)))
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=tmp_path / "c.db",
        batch_size=count,
        maximum_batching_window_in_seconds=2,
        invoke_identity_arn="arn:aws:iam::123456789012:role/poller-conformance",
    )
    try:
        async with running(settings):
            await wait_until(lambda: len(delivered(stream)) >= count, 30, f"{count} records")
        (batch,) = batches(stream)
        assert_matches({"Records": batch}, expected)
        assert all(isinstance(r["kinesis"]["approximateArrivalTimestamp"], float) for r in batch)
    finally:
        recorder.clear(stream_arn(stream))
