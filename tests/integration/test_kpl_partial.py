"""KPL aggregates with ReportBatchItemFailures, reported the way Lambda Powertools reports them
(issue 11, defect 12): a handler that names a failed user record by its plain
``kinesis.sequenceNumber`` (the aggregate's number) fails from the first user record of that
aggregate, not the whole batch.

Aggregates are built by aws-kinesis-agg (not by our code), as in test_kpl_deaggregation.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_kpl_deaggregation import (
    decoded,
    partial_failure_settings,
    put_aggregates,
    run_until_retried,
)
from tests.support import recorder
from tests.support.aws import stream_arn, unique

pytestmark = pytest.mark.anyio


async def test_plain_sequence_number_fails_from_the_aggregates_first_user_record(
    moto_url: str, tmp_path: Path
) -> None:
    """Three aggregates of ten user records; user record 17 (in the second aggregate) fails and
    is reported by its plain sequence number. The first aggregate is settled (the checkpoint
    points at its last user record) and the retry starts at the second aggregate's first user
    record. Before, the plain number was "not in the batch" and the whole batch was retried."""
    stream, db = unique("kplpt"), tmp_path / "c.db"
    arn = stream_arn(stream)
    sent = await put_aggregates(moto_url, stream, 3, 10)

    def powertools_style(records: list[dict[str, Any]]) -> dict[str, Any]:
        for r in records:
            if base64.b64decode(r["kinesis"]["data"]) == b"record-17":
                return {"batchItemFailures": [{"itemIdentifier": r["kinesis"]["sequenceNumber"]}]}
        return {"batchItemFailures": []}

    recorder.BEHAVIOUR[arn] = powertools_style
    settings = partial_failure_settings(moto_url, stream, db)
    try:
        first, retried, stored = await run_until_retried(
            settings, arn, db, "the failing aggregate retried"
        )
    finally:
        recorder.clear(arn)
    assert decoded(first) == sent
    assert decoded(retried) == sent[10:]  # from the second aggregate's first user record
    first_aggregate = first[0]["kinesis"]["sequenceNumber"]
    assert stored == (first_aggregate, 9)
