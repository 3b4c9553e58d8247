"""Tags and event source mapping ARNs end to end on moto: a running service's /metrics carries
the configured tag label on every mapping series and ``poller_mapping_info`` for joins, and
``poller status`` shows the same ARN and the tags."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from poller import status
from poller.config import parse_settings
from tests.integration.stream_errors_harness import checkpoint_of, stream_with
from tests.support.aws import stream_arn, unique
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


def scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def test_tag_labels_and_mapping_info_in_a_scrape_and_in_status(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream, db = unique("tagged"), tmp_path / "c.db"
    written = await stream_with(moto_url, stream, [(f"k{i}", b"{}") for i in range(3)])
    mapping = stream_mapping(
        "tagged",
        stream_arn(stream),
        "tests.support.recorder:record",
        tags={"team": "payments", "cost-center": "4711"},
    )
    settings = parse_settings(
        service_config(
            moto_url,
            mapping,
            checkpoints={"path": str(db)},
            observability={
                "host": "127.0.0.1",
                "port": 0,
                "metric_tag_labels": ["team", "owner"],
            },
        )
    )
    configured = settings.mappings[0]
    esm_arn = configured.event_source_mapping_arn(settings.aws.region)

    async with running(settings) as service:
        await wait_until(lambda: checkpoint_of(db, "tagged") == written[-1], 30, "all settled")
        assert service.observability_url is not None
        samples = await anyio.to_thread.run_sync(scrape, service.observability_url)

    tags = {"tag_team": "payments", "tag_owner": ""}  # owner: configured, not set on it
    [polled] = [s for s in samples if s.name == "poller_polled_events_total"]
    assert polled.labels == {"mapping": "tagged", **tags}
    assert polled.value == 3
    [info] = [s for s in samples if s.name == "poller_mapping_info"]
    assert info.value == 1
    assert info.labels == {
        "mapping": "tagged",
        "uuid": configured.mapping_uuid,
        "event_source_mapping_arn": esm_arn,
        "source": "kinesis",
        **tags,
    }
    assert esm_arn.startswith(f"arn:aws:lambda:{configured.region}:{configured.account_id}:")
    for sample in samples:
        has_tags = any(label.startswith("tag_") for label in sample.labels)
        assert has_tags == ("mapping" in sample.labels), sample

    capsys.readouterr()  # the service's log lines
    exit_status = await status.print_status(settings, as_json=True)
    [report] = json.loads(capsys.readouterr().out)["mappings"]
    assert exit_status == 0
    assert report["event_source_mapping_arn"] == esm_arn
    assert report["tags"] == {"team": "payments", "cost-center": "4711"}
