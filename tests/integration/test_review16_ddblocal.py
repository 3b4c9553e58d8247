"""Hostile review of issue 16 item 8, end to end: a DynamoDB Streams mapping with the shortest
maximum record age (60 s), its function failing for its first 20 s, on moto and on DynamoDB
Local (AWS's own emulator, in a private network namespace; skipped with the reason where it
cannot run).

Data flow: put_item (45-50 s into a minute) --> the stream (DynamoDB Local reports the change
as made at the start of that minute) --> poller (maximum_record_age_in_seconds: 60, retries
without limit) --> the Invoke API (tests.support.invoke_api), which fails until the change
is 20 s old and then succeeds.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.config import Settings, parse_settings
from poller.status import print_status
from tests.support import recorder
from tests.support.aws import aws_client
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.dynamodb_tables import Backend, make_table
from tests.support.invoke_api import InvokeApiServer
from tests.support.process import run_cli, write_config
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: How long the function fails after the change is made; well under the maximum age.
FAILING_SECONDS = 20.0


@pytest.fixture(params=["moto", "dynamodb_local"])
def backend(request: pytest.FixtureRequest, moto_url: str) -> Backend:
    if request.param == "dynamodb_local":
        return Backend(request.param, require_dynamodb_local(), moto_url)
    return Backend.moto(moto_url)


def settings_for(backend: Backend, stream_arn: str, db: Path, lambda_url: str) -> Settings:
    mapping = stream_mapping(
        "m",
        stream_arn,
        {"type": "lambda", "function_name": "fn"},
        batch_size=1,
        maximum_batching_window_in_seconds=1,
        maximum_record_age_in_seconds=60,
    )
    return parse_settings(
        service_config(
            backend.moto_url,
            mapping,
            checkpoints={"path": str(db)},
            endpoints=backend.endpoints({"lambda": lambda_url}),
            observability={"enabled": False},
        )
    )


def late_in_a_minute() -> float:
    """The next instant 45 s into a minute, so that the retries cross the minute."""
    now = time.time()
    start = math.floor(now / 60) * 60 + 45
    return start if now <= start else start + 60


def delivered(server: InvokeApiServer) -> bool:
    return any(
        call.outcome == "success"
        and any(r["dynamodb"]["Keys"]["id"]["S"] == "late" for r in call.event["Records"])
        for call in server.invocations("fn")
    )


async def test_a_change_younger_than_the_maximum_age_is_delivered_after_retries(
    backend: Backend, tmp_path: Path
) -> None:
    """On AWS (and moto) the change is delivered once the function recovers, 20 s after it was
    made. On DynamoDB Local its creation time reads up to 59 s early, so poller gives it up
    as RecordAgeExceeded (dropped: no destination) as soon as the retries cross the minute."""
    table, arn = await make_table(backend, "KEYS_ONLY")
    made: list[float] = []

    def recovering(event: dict[str, Any], context: Any) -> None:
        if not made or time.time() < made[0] + FAILING_SECONDS:
            raise RuntimeError("not yet")

    with InvokeApiServer() as server:
        server.register("fn", recovering, timeout=5)
        settings = settings_for(backend, arn, tmp_path / "c.db", server.url)
        async with running(settings):
            target = late_in_a_minute()
            await wait_until(lambda: time.time() >= target, 75, "45 s into a minute")
            async with aws_client("dynamodb", backend.tables_url) as ddb:
                made.append(time.time())
                await ddb.put_item(TableName=table, Item={"id": {"S": "late"}})
            await wait_until(lambda: delivered(server), 90, "the change delivered")
    assert time.time() - made[0] < 120, "delivered well within the test's bounds"


def local_config(backend: Backend, stream_arn: str, db: Path) -> dict[str, Any]:
    return service_config(
        backend.moto_url,
        stream_mapping("m", stream_arn, "tests.support.recorder:record", tags={"team": "a=b"}),
        checkpoints={"path": str(db)},
        endpoints=backend.endpoints(),
        observability={"enabled": False},
    )


async def test_status_and_replay_work_on_a_dynamodb_local_mapping(
    tmp_path: Path,
    moto_url: str,
    capsys: pytest.CaptureFixture[str],
    recorded_streams: list[str],
) -> None:
    """``poller status --json`` answers for a DynamoDB Local stream (clients in aws.region, the
    ARN verbatim), shows the mapping's ARN in aws.region and its tags, and ``poller replay``
    re-delivers its records."""
    backend = Backend("dynamodb_local", require_dynamodb_local(), moto_url)
    table, arn = await make_table(backend, "KEYS_ONLY")
    recorded_streams.append(arn)
    began = time.time() - 120
    async with aws_client("dynamodb", backend.tables_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "one"}})
    config = local_config(backend, arn, tmp_path / "c.db")
    settings = parse_settings(config)
    async with running(settings):
        await wait_until(lambda: len(recorder.BATCHES[arn]) >= 1, 30, "the change")
    capsys.readouterr()
    code = await print_status(settings, as_json=True)
    document = json.loads(capsys.readouterr().out)
    (report,) = document["mappings"]
    assert code == 0, report
    assert report["event_source_mapping_arn"].startswith(
        f"arn:aws:lambda:{settings.aws.region}:000000000000:event-source-mapping:"
    )
    assert report["tags"] == {"team": "a=b"}
    path = write_config(tmp_path / "poller.yaml", config)
    result = await anyio.to_thread.run_sync(
        lambda: run_cli(
            "replay", "--config", str(path), "--mapping", "m", "--from", str(began), timeout=120
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
