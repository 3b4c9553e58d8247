"""The batch helper end to end on moto's Kinesis: an ordered stop retries from the failure.

The service runs one Kinesis mapping (``ReportBatchItemFailures``) whose function answers
with :func:`poller.batch.process_batch`. One record fails on its first attempt: the helper
stops there and reports it and every later record; the service retries from that record and
the checkpoint ends at the last one, with every record handled once past its failure.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest

from poller.batch import process_batch
from tests.integration.kinesis_harness import kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of
from tests.support import recorder
from tests.support.aws import aws_client, create_stream, put_records, stream_arn, unique
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

RECORDS = 10
#: The record that fails on its first attempt.
FAILING = b"r-4"


async def test_an_ordered_stop_is_retried_from_the_failed_record(
    moto_url: str, tmp_path: Path
) -> None:
    """r-0 … r-9 on one shard; r-4 fails once. The handler sees r-0 … r-4, then r-4 … r-9;
    the failing invocation reported r-4 … (the end of its batch), the next batch starts at
    r-4, and the checkpoint ends at r-9."""
    stream, db = unique("helper"), tmp_path / "c.db"
    arn = stream_arn(stream)
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, stream, 1)
        put = [(f"k{i}", f"r-{i}".encode(), None) for i in range(RECORDS)]
        sequences = [seq for _, seq in await put_records(kinesis, stream, put)]
    lock = threading.Lock()
    handled: list[bytes] = []
    responses: list[list[str]] = []

    def handle(record: dict[str, Any]) -> None:
        data = base64.b64decode(record["kinesis"]["data"])
        with lock:
            handled.append(data)
            first_time = handled.count(data) == 1
        if data == FAILING and first_time:
            raise RuntimeError("the first attempt fails")

    def function(records: list[dict[str, Any]]) -> Any:
        response = process_batch({"Records": records}, handle)
        with lock:
            responses.append([f["itemIdentifier"] for f in response["batchItemFailures"]])
        return response

    recorder.BEHAVIOUR[arn] = function
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=db,
        batch_size=100,
        function_response_types=["ReportBatchItemFailures"],
    )
    try:
        async with running(settings):
            await wait_until(lambda: checkpoint_of(db) == sequences[-1], 60, "the last record")
        batches = list(recorder.BATCHES[arn])
    finally:
        recorder.clear(arn)

    assert handled == [f"r-{i}".encode() for i in [0, 1, 2, 3, 4, *range(4, RECORDS)]]
    failing = next(i for i, reported in enumerate(responses) if reported)
    failing_batch = [r["kinesis"]["sequenceNumber"] for r in batches[failing]]
    assert responses[failing] == failing_batch[failing_batch.index(sequences[4]) :]
    assert batches[failing + 1][0]["kinesis"]["sequenceNumber"] == sequences[4]
    assert all(not reported for reported in responses[failing + 1 :])
