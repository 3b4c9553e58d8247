"""Review attacks on retention (issue 11, defects 4 and 5), over the real Kinesis protocol:
what the infinite maximum age becomes when the stream's retention cannot be read, or changes
while the service runs. Faults come from the fault-injecting proxy in front of moto."""

from __future__ import annotations

import pytest
import structlog

from poller.sources import kinesis
from poller.sources.kinesis import KinesisStreamApi
from tests.integration.stream_errors_harness import stream_with
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.anyio

DESCRIBE = "Kinesis_20131202.DescribeStreamSummary"
HOUR = 3600.0


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException"])
async def test_an_unreadable_retention_is_unknown_asked_again_later_and_never_a_crash(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """A refused DescribeStreamSummary leaves the retention unknown (nothing expires), logs
    why, and is not asked again at once (no hot loop); after the refresh period it is read."""
    name = unique("ret")
    await stream_with(moto_url, name, [("k", b"x")])
    with FaultProxy(moto_url) as proxy:
        proxy.fail(DESCRIBE, code=code, times=1)
        async with aws_client("kinesis", proxy.url) as client:
            api = KinesisStreamApi(
                client, stream_arn=stream_arn(name), region="r", identity_arn="i"
            )
            with structlog.testing.capture_logs() as logs:
                assert await api.retention_seconds() is None
                assert await api.retention_seconds() is None
            assert proxy.faulted(DESCRIBE) == 1
            assert proxy.calls(DESCRIBE) == [], "asked again before the refresh period"
            [warning] = [e for e in logs if e["event"] == "stream.retention_unknown"]
            assert code in warning["error"]
            monkeypatch.setattr(kinesis, "RETENTION_REFRESH_SECONDS", 0.0)
            assert await api.retention_seconds() == 24 * HOUR


async def test_a_retention_changed_at_runtime_is_seen_after_the_refresh_and_kept_on_errors(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("ret")
    await stream_with(moto_url, name, [("k", b"x")])
    with FaultProxy(moto_url) as proxy:
        async with aws_client("kinesis", proxy.url) as client:
            api = KinesisStreamApi(
                client, stream_arn=stream_arn(name), region="r", identity_arn="i"
            )
            assert await api.retention_seconds() == 24 * HOUR
            await client.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
            assert await api.retention_seconds() == 24 * HOUR, "cached within the period"
            monkeypatch.setattr(kinesis, "RETENTION_REFRESH_SECONDS", 0.0)
            assert await api.retention_seconds() == 48 * HOUR
            proxy.fail(DESCRIBE, code="AccessDeniedException", times=1)
            assert await api.retention_seconds() == 48 * HOUR, "the last value is kept"
