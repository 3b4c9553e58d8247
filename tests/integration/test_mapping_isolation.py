"""One mapping's trouble never holds up another: mappings start independently, a mapping whose
source is missing is reported down (log, ``poller_mapping_up``, ``/readyz``) and keeps
retrying, and it comes up by itself once its source exists. Real protocols against moto."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from poller.app import Service
from poller.aws.clients import ClientFactory
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.config import parse_settings
from poller.status import print_status, source_status
from tests.integration.stream_errors_harness import stream_with
from tests.support import recorder
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import NewQueue, delivered_ids, send_bodies, sqs_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), json.loads(exc.read())


def mapping_up(url: str) -> dict[str, float]:
    """``poller_mapping_up`` by mapping, scraped from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["mapping"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "poller_mapping_up"
    }


async def test_a_mapping_whose_stream_is_missing_does_not_hold_up_the_others(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Two mappings, the first on a stream that does not exist yet: the second delivers at
    once; after the start-up grace the service is ready with ``absent`` listed as down and
    its gauge at 0; once the stream is created, ``absent`` comes up and delivers without a
    restart."""
    present, absent = unique("present"), unique("absent")
    recorded_streams += [stream_arn(present), stream_arn(absent)]
    written = await stream_with(moto_url, present, [(f"k{i}", b"{}") for i in range(5)])
    config = service_config(
        moto_url,
        stream_mapping("absent", stream_arn(absent), "tests.support.recorder:record"),
        checkpoints={"path": str(tmp_path / "c.db")},
        shutdown={"drain_timeout_seconds": 10},
    )
    config["mappings"].append(
        stream_mapping("present", stream_arn(present), "tests.support.recorder:record")
    )
    service = Service(parse_settings(config))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.run(handle_signals=False))
        await wait_until(
            lambda: len(recorder.sequence_numbers(stream_arn(present))) >= len(written),
            20,
            "the present stream delivered while the absent one retries",
        )
        with anyio.fail_after(20):
            await service.ready.wait()
        url = service.observability_url
        assert url is not None
        status, body = await anyio.to_thread.run_sync(readyz, url)
        assert status == 200, body
        assert body["mappings"] == {"absent": "down", "present": "up"}
        assert await anyio.to_thread.run_sync(mapping_up, url) == {"absent": 0.0, "present": 1.0}

        late = await stream_with(moto_url, absent, [("late", b"{}")])
        await wait_until(
            lambda: len(recorder.sequence_numbers(stream_arn(absent))) >= len(late),
            40,
            "the created stream delivered without a restart",
        )

        async def both_up() -> bool:
            return await anyio.to_thread.run_sync(mapping_up, url) == {"absent": 1, "present": 1}

        await wait_until(both_up, 5, "the gauge of absent at 1")
        status, body = await anyio.to_thread.run_sync(readyz, url)
        assert (status, body["mappings"]) == (200, {"absent": "up", "present": "up"})
        service.request_stop()
    assert [seq for _, seq in recorder.sequence_numbers(stream_arn(present))] == written


async def test_a_crashing_mapping_is_restarted_alone(
    moto_url: str,
    sqs_url: str,
    sqs: Any,
    new_queue: NewQueue,
    tmp_path: Path,
    recorded_streams: list[str],
) -> None:
    """An SQS mapping whose runner raises at start (GetQueueAttributes answers a visibility
    timeout that is not a number) is logged as crashed and restarted with backoff, its gauge
    at 0, while a Kinesis mapping delivers; once the answers are sane it comes up and
    delivers, in the same process."""
    stream = unique("beside")
    recorded_streams.append(stream_arn(stream))
    written = await stream_with(moto_url, stream, [(f"k{i}", b"{}") for i in range(3)])
    queue = await new_queue("crash")
    with FaultProxy(sqs_url) as proxy:
        proxy.rewrite(
            "AmazonSQS.GetQueueAttributes",
            lambda answer: {
                "Attributes": {**answer.get("Attributes", {}), "VisibilityTimeout": "x"}
            },
        )
        config = service_config(
            moto_url,
            sqs_mapping("jobs", queue.arn),
            checkpoints={"path": str(tmp_path / "c.db")},
            endpoints={"sqs": proxy.url},
            shutdown={"drain_timeout_seconds": 10},
        )
        config["mappings"].append(
            stream_mapping("beside", stream_arn(stream), "tests.support.recorder:record")
        )
        service = Service(parse_settings(config))
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: service.run(handle_signals=False))
                await wait_until(
                    lambda: len(recorder.sequence_numbers(stream_arn(stream))) >= len(written),
                    20,
                    "the Kinesis mapping delivered beside the crashing one",
                )
                await wait_until(
                    lambda: len([e for e in logs if e["event"] == "mapping.crashed"]) >= 2,
                    20,
                    "the SQS mapping crashed and was restarted",
                )
                url = service.observability_url
                assert url is not None
                assert (await anyio.to_thread.run_sync(mapping_up, url))["jobs"] == 0

                proxy.rewrite("AmazonSQS.GetQueueAttributes", None)
                ids = await send_bodies(sqs, queue.url, ["after the fix"])
                await wait_until(lambda: delivered_ids(queue.arn) == ids, 30, "the SQS delivery")
                service.request_stop()
    crashed = [e for e in logs if e["event"] == "mapping.crashed"]
    assert {e.get("mapping") for e in crashed} == {"jobs"}
    assert "ValueError" in crashed[0]["error"]


async def test_poller_status_shows_which_mapping_cannot_reach_its_source(
    moto_url: str, sqs_url: str, new_queue: NewQueue, capsys: pytest.CaptureFixture[str]
) -> None:
    """``poller status`` starts with one line per mapping: ``up`` for a stream and a queue
    that exist, ``down`` with the error for a stream that does not."""
    present, table = unique("present"), unique("leases")
    await stream_with(moto_url, present, [("k", b"{}")])
    queue = await new_queue("status")
    async with aws_client("dynamodb", moto_url) as dynamodb:
        await DynamoDBLeaseTable(dynamodb, table).ensure_table()
    config = service_config(
        moto_url,
        stream_mapping("absent", stream_arn(unique("absent")), "tests.support.recorder:record"),
        checkpoints={"backend": "dynamodb", "table": table},
        endpoints={"sqs": sqs_url},
    )
    config["mappings"] += [
        stream_mapping("present", stream_arn(present), "tests.support.recorder:record"),
        {
            "name": "jobs",
            "event_source_arn": queue.arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
        },
    ]
    await print_status(parse_settings(config))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MAPPING", "SOURCE", "STATE", "ERROR"]
    # Each mapping's row is followed by an indented line with its ARN and tags.
    rows = [line for line in lines[1:] if line and not line.startswith(" ")][:3]
    states = {row.split()[0]: row.split()[2] for row in rows}
    assert states == {"absent": "down", "present": "up", "jobs": "up"}
    assert "ResourceNotFoundException" in rows[0]


async def test_poller_status_does_not_wait_on_a_source_that_does_not_answer(
    moto_url: str,
) -> None:
    """A stream whose endpoint accepts the call but never answers (a black-holed network
    path): ``poller status`` shows it ``down`` after a few seconds instead of waiting out
    botocore's timeouts and retries (minutes) on every such mapping, one after another."""
    present = unique("present")
    await stream_with(moto_url, present, [("k", b"{}")])
    with FaultProxy(moto_url) as proxy:
        proxy.latency(16, ["DescribeStreamSummary"])
        config = service_config(
            moto_url,
            stream_mapping("present", stream_arn(present), "tests.support.recorder:record"),
            checkpoints={"path": "unused.db"},
            endpoints={"kinesis": proxy.url},
        )
        config["mappings"].append(
            stream_mapping("also", stream_arn(present), "tests.support.recorder:record")
        )
        settings = parse_settings(config)
        factory = ClientFactory(
            region=settings.aws.region,
            endpoint_url=settings.aws.endpoint_url,
            endpoints=settings.aws.endpoints,
        )
        try:
            with anyio.fail_after(15):
                rows = await source_status(settings, factory)
        finally:
            await factory.aclose()
    assert [(r["mapping"], r["state"]) for r in rows] == [("present", "down"), ("also", "down")]
    assert "no answer" in rows[0]["error"]
