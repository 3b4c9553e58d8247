"""Lambda's ESM event counts of a running service, scraped over HTTP, on moto: a partial batch
response fails its whole batch and its listed item is counted apart; an idle mapping's polled
series exists at 0; a disabled mapping exports no series at all (AWS: "If your event source
mapping is disabled, you won't receive event source mapping metrics"). The rules one by one
are in tests/unit/test_event_metrics_rules.py and tests/component/test_event_metrics_engines.py.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.config import parse_settings
from tests.integration.kinesis_harness import kinesis_settings
from tests.integration.stream_errors_harness import checkpoint_of, stream_with
from tests.support import recorder
from tests.support.aws import stream_arn, unique
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics, by (name, labels)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scraped(url: str | None) -> Samples:
    assert url is not None
    return await anyio.to_thread.run_sync(scrape, url)


def of(samples: Samples, mapping: str, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset({"mapping": mapping, **labels}.items())))


async def test_a_partial_response_fails_its_whole_batch_and_counts_the_listed_item(
    moto_url: str, tmp_path: Path
) -> None:
    stream, db = unique("partial"), tmp_path / "c.db"
    arn = stream_arn(stream)
    written = await stream_with(moto_url, stream, [(f"k{i}", b"{}") for i in range(10)])
    answered: list[int] = []

    def hook(records: list[dict[str, Any]]) -> Any:
        answered.append(len(records))
        if len(answered) == 1:  # the first invocation lists the fifth record as failed
            return {"batchItemFailures": [{"itemIdentifier": written[4]}]}
        return None

    recorder.BEHAVIOUR[arn] = hook
    try:
        settings = kinesis_settings(
            endpoint_url=moto_url,
            stream=stream,
            db=db,
            name="part",
            batch_size=10,
            function_response_types=["ReportBatchItemFailures"],
        )
        async with running(settings) as service:
            await wait_until(lambda: checkpoint_of(db, "part") == written[-1], 30, "all settled")
            samples = await scraped(service.observability_url)
    finally:
        recorder.clear(arn)
    assert answered == [10, 6]
    assert of(samples, "part", "poller_polled_events_total") == 10
    assert of(samples, "part", "poller_invoked_events_total") == 16
    assert of(samples, "part", "poller_failed_invoke_events_total") == 10
    assert of(samples, "part", "poller_batch_item_failures_total") == 1
    assert of(samples, "part", "poller_invocations_total", outcome="partial_failure") == 1
    assert of(samples, "part", "poller_invocations_total", outcome="success") == 1


async def test_an_idle_mapping_polls_zero_and_a_disabled_one_exports_nothing(
    moto_url: str, tmp_path: Path
) -> None:
    idle, disabled = unique("idle"), unique("disabled")
    await stream_with(moto_url, idle, [])
    await stream_with(moto_url, disabled, [("k", b"{}")])
    target = "tests.support.recorder:record"
    config = service_config(
        moto_url,
        stream_mapping("idle", stream_arn(idle), target),
        checkpoints={"path": str(tmp_path / "c.db")},
        shutdown={"drain_timeout_seconds": 10},
    )
    config["mappings"].append(stream_mapping("off", stream_arn(disabled), target, enabled=False))
    settings = parse_settings(config)
    async with running(settings) as service:

        async def idle_polled() -> bool:
            samples = await scraped(service.observability_url)
            return of(samples, "idle", "poller_polled_events_total") == 0

        await wait_until(idle_polled, 30, "the idle mapping's polled series at 0")
        samples = await scraped(service.observability_url)
    assert of(samples, "idle", "poller_mapping_up") == 1
    assert [key for key in samples if ("mapping", "off") in key[1]] == []
    assert recorder.sequence_numbers(stream_arn(disabled)) == []
