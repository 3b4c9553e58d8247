"""The control API end to end: mappings created, changed and deleted with AWS's Lambda client
against a live ``poller run`` deliver, change and stop, with no record lost or duplicated.

Each test runs the service as an OS process with ``control_api`` on; the mappings come through
the API (the last test also has one in its file, read-only through the API, reloaded on SIGHUP).
Sources are on moto's server; deliveries land in a JSON-lines sink written by the handler that
``control_api.functions`` names (or the file mapping's target).
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from botocore.exceptions import ClientError

from tests.support import file_sink
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.control_api import (
    SIGV4_KEY,
    SQS_FUNCTION,
    STREAM_FUNCTION,
    control_config,
    control_section,
    error_code,
    lambda_client,
    put_per_shard,
    restart,
    sigv4_env,
    start_control_service,
    stays_quiet,
    wait_gone,
    wait_state,
)
from tests.support.process import Launch, write_config
from tests.support.replicas import make_stream
from tests.support.service_config import stream_mapping
from tests.support.sqs import Queue, create_queue, queue_depth, read_sink, send_bodies
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

T = TypeVar("T")


def _status(answer: dict[str, Any]) -> int:
    return int(answer["ResponseMetadata"]["HTTPStatusCode"])


def _batches_holding(batches: list[dict[str, Any]], records: set[tuple[str, str]]) -> list[int]:
    """The sizes of the batches that hold any of ``records``."""
    return [
        len(batch["records"])
        for batch in batches
        if {(shard, seq) for shard, seq, _ in batch["records"]} & records
    ]


def test_c5_kinesis_mapping_through_the_api_delivers_updates_survives_restart_and_stops(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """Create (BatchSize 100) delivers everything; BatchSize 100 -> 3 applies once ``State`` is
    Enabled again; a graceful restart keeps the API mapping (SQLite); delete stops delivery.
    Across the run every record is delivered exactly once, by sequence number."""
    stream = unique("c5-e2e")
    shards = anyio.run(make_stream, moto_url, stream, 2)
    sink = tmp_path / "sink.jsonl"
    checkpoints = {"path": str(tmp_path / "checkpoints.db")}
    service = start_control_service(
        launch,
        tmp_path / "poller.yaml",
        lambda port: control_config(moto_url, control_section(port), checkpoints=checkpoints),
        "run-1.log",
        file_sink.env(sink),
    )
    client = service.client()
    before = put_per_shard(moto_url, stream, shards, 20, "before")

    created = client.create_event_source_mapping(
        FunctionName=STREAM_FUNCTION,
        EventSourceArn=stream_arn(stream),
        StartingPosition="TRIM_HORIZON",
        BatchSize=100,
    )
    assert (_status(created), created["State"]) == (202, "Creating")
    uuid = created["UUID"]
    wait_state(client, uuid, "Enabled")
    wait_for(lambda: set(file_sink.delivered(sink)) >= set(before), 60, "the first records")
    # The backlog was read in batches larger than the size the update sets: the update is seen.
    assert max(_batches_holding(file_sink.read(str(sink)), set(before))) > 3

    updated = client.update_event_source_mapping(UUID=uuid, BatchSize=3)
    assert (_status(updated), updated["State"], updated["BatchSize"]) == (202, "Updating", 3)
    wait_state(client, uuid, "Enabled")
    after = put_per_shard(moto_url, stream, shards, 15, "after")
    wait_for(lambda: set(file_sink.delivered(sink)) >= set(after), 60, "the updated records")
    sizes = _batches_holding(file_sink.read(str(sink)), set(after))
    assert sizes
    assert max(sizes) <= 3, sizes

    service.proc.signal(signal.SIGTERM)
    assert service.proc.wait(60) == 0
    service = restart(launch, service, "run-2.log")
    kept = wait_state(client, uuid, "Enabled")
    assert (kept["BatchSize"], kept["EventSourceArn"]) == (3, stream_arn(stream))
    restarted = put_per_shard(moto_url, stream, shards, 5, "restarted")
    wait_for(lambda: set(file_sink.delivered(sink)) >= set(restarted), 60, "after the restart")

    deleted = client.delete_event_source_mapping(UUID=uuid)
    assert (_status(deleted), deleted["State"]) == (202, "Deleting")
    wait_gone(client, uuid)
    late = set(put_per_shard(moto_url, stream, shards, 5, "late"))
    stays_quiet(
        lambda: late & set(file_sink.delivered(sink)), 10, "records delivered after the delete"
    )

    delivered = file_sink.delivered(sink)
    written = before + after + restarted
    assert Counter(delivered) == Counter(written), "a record lost or delivered twice"


def _sqs(sqs_url: str, call: Callable[[Any], Awaitable[T]]) -> T:
    """``call`` with an SQS client on ``sqs_url``, from synchronous test code."""

    async def run() -> T:
        async with aws_client("sqs", sqs_url) as sqs:
            return await call(sqs)

    return anyio.run(run)


def test_c5_sqs_mapping_through_the_api_delivers_updates_and_stops(
    tmp_path: Path, sqs_url: str, launch: Launch
) -> None:
    """The same for SQS: delivery, BatchSize 10 -> 2 seen in the batches of messages sent
    after the update settled, no message lost or delivered twice, and after the delete the
    messages stay in the queue."""
    name = unique("c5-e2e-q")
    queue = Queue(name, _sqs(sqs_url, lambda sqs: create_queue(sqs, name)))

    def send(prefix: str, count: int) -> list[str]:
        bodies = [f"{prefix}{n}" for n in range(count)]
        return _sqs(sqs_url, lambda sqs: send_bodies(sqs, queue.url, bodies))

    sink = tmp_path / "sink.jsonl"
    service = start_control_service(
        launch,
        tmp_path / "poller.yaml",
        lambda port: control_config(
            sqs_url, control_section(port), checkpoints={"path": str(tmp_path / "c.db")}
        ),
        "run.log",
        file_sink.env(sink),
    )
    client = service.client()
    first = send("m", 30)
    created = client.create_event_source_mapping(
        FunctionName=SQS_FUNCTION, EventSourceArn=queue.arn, BatchSize=10
    )
    assert (_status(created), created["State"]) == (202, "Creating")
    uuid = created["UUID"]
    wait_state(client, uuid, "Enabled")

    def delivered() -> list[str]:
        return [message for batch in read_sink(sink) for message in batch]

    wait_for(lambda: set(delivered()) >= set(first), 60, "the first messages")

    updated = client.update_event_source_mapping(UUID=uuid, BatchSize=2)
    assert (updated["State"], updated["BatchSize"]) == ("Updating", 2)
    wait_state(client, uuid, "Enabled", limit=120)  # a drain waits for a 20 s long poll
    second = send("n", 20)
    wait_for(lambda: set(delivered()) >= set(second), 60, "the messages sent after the update")
    sizes = [len(batch) for batch in read_sink(sink) if set(batch) & set(second)]
    assert sizes
    assert max(sizes) <= 2, sizes

    client.delete_event_source_mapping(UUID=uuid)
    wait_gone(client, uuid, limit=120)
    late = set(send("late", 5))
    stays_quiet(lambda: late & set(delivered()), 10, "messages delivered after the delete")
    visible, in_flight = _sqs(sqs_url, lambda sqs: queue_depth(sqs, queue.url))
    assert (visible, in_flight) == (5, 0)
    assert Counter(delivered()) == Counter(first + second), "a message lost or delivered twice"


def test_c5_signatures_are_checked_and_mutations_audited(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """Under ``auth: sigv4`` a wrong secret and an unknown key are refused (403) and the
    service keeps answering; every mutating call is logged with the caller's access key id,
    and the secret appears nowhere in the log."""
    service = start_control_service(
        launch,
        tmp_path / "poller.yaml",
        lambda port: control_config(
            moto_url,
            control_section(port, sigv4=True),
            checkpoints={"path": str(tmp_path / "c.db")},
        ),
        "run.log",
        sigv4_env(),
    )
    for key, code in (
        ((SIGV4_KEY[0], "a-wrong-secret"), "InvalidSignatureException"),
        (("AKIDUNKNOWN0000000", SIGV4_KEY[1]), "UnrecognizedClientException"),
    ):
        with pytest.raises(ClientError) as refused:
            lambda_client(service.url, key).list_event_source_mappings()
        assert error_code(refused.value) == code
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    client = service.client()
    assert client.list_event_source_mappings()["EventSourceMappings"] == []
    stream = unique("c5-audit")
    anyio.run(make_stream, moto_url, stream, 1)
    uuid = client.create_event_source_mapping(
        FunctionName=STREAM_FUNCTION, EventSourceArn=stream_arn(stream), StartingPosition="LATEST"
    )["UUID"]
    client.delete_event_source_mapping(UUID=uuid)
    wait_gone(client, uuid)

    def mutations() -> list[dict[str, Any]]:
        return [line for line in service.audit() if line.get("op") in {"create", "delete"}]

    audit = wait_for(lambda: len(mutations()) >= 2 and mutations(), 10, "audit lines")
    assert {line.get("access_key_id") for line in audit} == {SIGV4_KEY[0]}
    assert {line.get("uuid") for line in audit} == {uuid}
    assert SIGV4_KEY[1] not in service.proc.log_path.read_text()


def test_c5_file_mappings_are_read_only_through_the_api_and_reload_on_sighup(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """A mapping of the configuration file is listed by the API but refuses Update and Delete
    (409, the service keeps running); after the file changes, SIGHUP applies the new batch
    size at a batch boundary, and no record is lost or delivered twice."""
    stream = unique("c5-file")
    shards = anyio.run(make_stream, moto_url, stream, 2)
    sink = tmp_path / "sink.jsonl"

    def config(port: int, batch_size: int) -> dict[str, Any]:
        mapping = stream_mapping(
            "orders-file",
            stream_arn(stream),
            "tests.support.file_sink:handler",
            batch_size=batch_size,
        )
        return control_config(
            moto_url,
            control_section(port),
            checkpoints={"path": str(tmp_path / "c.db")},
            mappings=[mapping],
        )

    service = start_control_service(
        launch, tmp_path / "poller.yaml", lambda port: config(port, 100), "run.log",
        file_sink.env(sink),
    )  # fmt: skip
    client = service.client()
    (listed,) = client.list_event_source_mappings()["EventSourceMappings"]
    uuid = listed["UUID"]
    assert (listed["State"], listed["BatchSize"]) == ("Enabled", 100)
    refusals: list[Callable[[], Any]] = [
        lambda: client.update_event_source_mapping(UUID=uuid, BatchSize=3),
        lambda: client.delete_event_source_mapping(UUID=uuid),
    ]
    for refused in refusals:
        with pytest.raises(ClientError) as conflict:
            refused()
        assert error_code(conflict.value) == "ResourceConflictException"
        assert "SIGHUP" in conflict.value.response["Error"]["Message"]
    before = put_per_shard(moto_url, stream, shards, 20, "before")
    wait_for(lambda: set(file_sink.delivered(sink)) >= set(before), 60, "the first records")
    assert max(_batches_holding(file_sink.read(str(sink)), set(before))) > 3

    port = int(service.url.rsplit(":", 1)[1])
    write_config(service.config, config(port, 3))
    service.proc.signal(signal.SIGHUP)

    def restarted() -> bool:
        return len(service.proc.events("mapping.applied")) >= 2

    wait_for(restarted, 60, "the file mapping restarted with the reloaded settings")
    assert client.get_event_source_mapping(UUID=uuid)["BatchSize"] == 3
    after = put_per_shard(moto_url, stream, shards, 15, "after")
    wait_for(lambda: set(file_sink.delivered(sink)) >= set(after), 60, "the later records")
    sizes = _batches_holding(file_sink.read(str(sink)), set(after))
    assert sizes
    assert max(sizes) <= 3, sizes
    assert Counter(file_sink.delivered(sink)) == Counter(before + after)
