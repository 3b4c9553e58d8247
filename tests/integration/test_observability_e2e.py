"""Observability of a running service: exact metric counts scraped over HTTP, readiness, and
logs that never contain record data."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.app import Service
from tests.integration.kinesis_harness import kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of, make_queue, stream_with
from tests.support import recorder
from tests.support.aws import stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.process import Launch, ServiceProcess, write_config
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.anyio


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by (name, labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def status(url: str, path: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def test_metric_counts_match_a_known_mix(moto_url: str, tmp_path: Path) -> None:
    """Ten records, one of them poison (bisect off, no retries, SQS destination): the scraped
    counters show exactly what Lambda's definitions give, and the iterator age is sane."""
    stream, db = unique("metrics"), tmp_path / "c.db"
    arn = stream_arn(stream)
    written = await stream_with(
        moto_url, stream, [("poison" if i == 4 else f"k{i}", b"{}") for i in range(10)]
    )
    _, queue_arn = await make_queue(moto_url, unique("dlq"))

    def hook(records: list[dict[str, Any]]) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in records):
            raise RuntimeError("poison")

    recorder.BEHAVIOUR[arn] = hook
    try:
        settings = kinesis_settings(
            endpoint_url=moto_url,
            stream=stream,
            db=db,
            name="mix",
            batch_size=1,
            maximum_retry_attempts=0,
            destination_config={"on_failure": {"destination_arn": queue_arn}},
        )
        async with running(settings) as service:
            await wait_until(lambda: checkpoint_of(db, "mix") == written[-1], 30, "all ten settled")
            assert service.observability_url is not None
            samples = scrape(service.observability_url)
    finally:
        recorder.clear(arn)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset({"mapping": "mix", **labels}.items())), 0.0)

    assert value("poller_polled_events_total") == 10
    assert value("poller_invoked_events_total") == 10  # nine successes and the failed poison try
    assert value("poller_failed_invoke_events_total") == 1
    assert value("poller_on_failure_destination_delivered_events_total") == 1
    assert value("poller_dropped_events_total") == 0
    assert value("poller_invocations_total", outcome="success") == 9
    assert value("poller_invocations_total", outcome="function_error") == 1
    assert value("poller_invocation_duration_seconds_count") == 10
    assert value("poller_batch_size_sum") == 10
    assert value("poller_checkpoint_writes_total", shard="shardId-000000000000") >= 1
    age = value("poller_iterator_age_milliseconds", shard="shardId-000000000000")
    assert 0 <= age < 60_000


async def test_readiness_waits_for_every_mapping(moto_url: str, tmp_path: Path) -> None:
    """/readyz is 503 while a mapping cannot start (its shard listing fails; within the 10 s
    start-up grace) and 200 once it has; /healthz answers 200 throughout."""
    stream = unique("ready")
    await stream_with(moto_url, stream, [("k", b"{}")])
    with FaultProxy(moto_url) as proxy:
        proxy.fail("Kinesis_20131202.ListShards", code="InternalFailure", status=500, times=10**6)
        settings = kinesis_settings(endpoint_url=proxy.url, stream=stream, db=tmp_path / "c.db")
        service = Service(settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            await wait_until(lambda: service.observability_url, 10, "the endpoint listening")
            url = service.observability_url
            assert url is not None
            await wait_until(
                lambda: proxy.faulted("Kinesis_20131202.ListShards") >= 2, 20, "failed listings"
            )
            assert await anyio.to_thread.run_sync(status, url, "/readyz") == 503
            assert await anyio.to_thread.run_sync(status, url, "/healthz") == 200
            proxy.heal("Kinesis_20131202.ListShards")
            with anyio.fail_after(30):
                await service.ready.wait()
            assert await anyio.to_thread.run_sync(status, url, "/readyz") == 200
            service.request_stop()


def launch_json_logging(
    tmp_path: Path,
    moto_url: str,
    launch: Launch,
    mapping: dict[str, Any],
    level: str,
    env: dict[str, str] | None = None,
) -> tuple[ServiceProcess, Path]:
    """``poller run`` of one mapping with JSON logs at ``level``; the process and its
    checkpoint database."""
    db = tmp_path / "c.db"
    config = write_config(
        tmp_path / "poller.yaml",
        service_config(
            moto_url,
            mapping,
            checkpoints={"path": str(db)},
            logging={"format": "json", "level": level},
        ),
    )
    return launch(config, "run.log", env), db


def test_logs_never_contain_record_data(tmp_path: Path, moto_url: str, launch: Launch) -> None:
    """A run with successes, failures (whose exception messages quote record data), retries and
    a failure destination: not one log line contains the marker string every record carries."""
    marker = "MARKER-7f3a9c-never-log-me"
    stream = unique("leak")
    written = anyio.run(
        stream_with,
        moto_url,
        stream,
        [(f"k{i}", f'{{"secret": "{marker}-{i}"}}'.encode()) for i in range(30)],
    )
    _, queue_arn = anyio.run(make_queue, moto_url, unique("dlq"))
    flag = tmp_path / "failing"
    flag.write_text("fail")
    sink = tmp_path / "sink.jsonl"
    mapping = stream_mapping(
        "leak",
        stream_arn(stream),
        "tests.support.leaky_handler:handler",
        batch_size=5,
        maximum_retry_attempts=1,
        bisect_batch_on_function_error=True,
        destination_config={"on_failure": {"destination_arn": queue_arn}},
    )
    env = {"POLLER_TEST_SINK": str(sink), "POLLER_TEST_MARKER": marker}
    proc, db = launch_json_logging(tmp_path, moto_url, launch, mapping, "DEBUG", env)
    wait_for(lambda: checkpoint_of(db, "leak") == written[-1], 60, "every record settled")
    assert proc.events("batch.failed"), "the run must include failures"
    assert proc.events("records.sent_to_destination")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    text = proc.log_path.read_text()
    assert marker not in text
    assert len(text.splitlines()) > 20
    assert json.loads(text.splitlines()[-1])["event"] == "service.stopped"


def test_service_process_exports_no_created_series(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """`poller run` turns prometheus-client's `_created` series off: /metrics of the process
    carries the event counters and not one `_created` sample beside them."""
    stream = unique("created")
    written = anyio.run(stream_with, moto_url, stream, [(f"k{i}", b"{}") for i in range(3)])
    mapping = stream_mapping("created", stream_arn(stream), "tests.support.recorder:record")
    proc, db = launch_json_logging(tmp_path, moto_url, launch, mapping, "INFO")
    wait_for(lambda: checkpoint_of(db, "created") == written[-1], 30, "every record settled")
    [listening] = proc.events("observability.listening")
    samples = scrape(listening["url"])
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    names = {name for name, _ in samples}
    assert samples[("poller_polled_events_total", frozenset({("mapping", "created")}))] == 3
    assert "poller_invocation_duration_seconds_count" in names
    assert [n for n in names if n.endswith("_created")] == []
