"""Two replicas sharing the DynamoDB lease table run a mapping created through the control API
of one of them: both see it, split its shards, apply an update made through the other, and
both stop on a delete; no shard is ever processed by both at once, and no record twice.

The replicas are OS processes (``poller run``) with the API on ports of their own; the lease
table (which also holds the API's mappings) is on DynamoDB Local, the stream on moto's server
in a process of its own, as in ``test_replicas.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import moto_server_process, stream_arn, unique
from tests.support.control_api import (
    STREAM_FUNCTION,
    ControlService,
    control_config,
    control_section,
    start_control_service,
    stays_quiet,
    wait_gone,
    wait_state,
)
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.process import Launch
from tests.support.replicas import (
    LEASE_STORES,
    Writer,
    duplicates,
    leases,
    make_stream,
    overlaps,
    wait,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """The stream on a moto server of its own: two replica processes read it."""
    with moto_server_process() as url:
        yield url


def _replica(
    launch: Launch, tmp_path: Path, moto_url: str, lease_store: str, table: str, name: str
) -> ControlService:
    sink = tmp_path / "sink.jsonl"
    env = {**file_sink.env(sink, sleep=0.02), "POLLER_CHECKPOINTS__REPLICA_ID": name}
    return start_control_service(
        launch,
        tmp_path / f"{name}.yaml",
        lambda port: control_config(
            moto_url,
            control_section(port),
            checkpoints={"backend": "dynamodb", "table": table},
            endpoints={"dynamodb": lease_store},
        ),
        f"{name}.log",
        env,
    )


def _replicas_delivering(batches: list[dict[str, Any]]) -> set[str]:
    return {batch["replica"] for batch in batches}


def test_c5_api_mapping_runs_on_both_replicas_updates_and_stops_everywhere(
    tmp_path: Path, moto_url: str, launch: Launch
) -> None:
    """Created through A: both replicas run it, its eight shards split between them. Updated
    through B (BatchSize 20 -> 5): once Enabled, every batch of records put later holds at most
    5. Deleted through B: gone on both, and records put later are not delivered. No shard was
    processed by both at once, and no record was delivered twice."""
    lease_store = require_dynamodb_local()
    stream, table = unique("c5-fleet"), unique("leases")
    LEASE_STORES[table] = lease_store
    shards = anyio.run(make_stream, moto_url, stream, 8)
    a = _replica(launch, tmp_path, moto_url, lease_store, table, "a")
    b = _replica(launch, tmp_path, moto_url, lease_store, table, "b")
    client_a, client_b = a.client(), b.client()
    sink = tmp_path / "sink.jsonl"

    with Writer(moto_url, stream, shards) as writer:
        uuid = client_a.create_event_source_mapping(
            FunctionName=STREAM_FUNCTION,
            EventSourceArn=stream_arn(stream),
            StartingPosition="TRIM_HORIZON",
            BatchSize=20,
        )["UUID"]
        # B knows the mapping A created, and both say it settled.
        assert client_b.get_event_source_mapping(UUID=uuid)["UUID"] == uuid
        wait_state(client_a, uuid, "Enabled")
        wait_state(client_b, uuid, "Enabled")

        def split() -> bool:
            owners = [lease.owner for lease in leases(moto_url, table, mapping=uuid)]
            return len(owners) == len(shards) and set(owners) == {"a", "b"}

        wait(split, 90, "the mapping's shards split between a and b")
        wait(
            lambda: _replicas_delivering(file_sink.read(str(sink))) == {"a", "b"},
            60,
            "both replicas delivering",
        )

        updated = client_b.update_event_source_mapping(UUID=uuid, BatchSize=5)
        assert updated["State"] == "Updating"
        wait_state(client_b, uuid, "Enabled", limit=120)
        assert client_a.get_event_source_mapping(UUID=uuid)["BatchSize"] == 5
        # A put that was under way when the update settled may have been read before it;
        # the puts started after it are read by the updated runners only.
        settled_at = len(writer.written) + writer.per_round
        wait(lambda: len(writer.written) >= settled_at + 200, 60, "records after the update")
        after = set(writer.written[settled_at:])
        wait(lambda: set(file_sink.delivered(sink)) >= after, 90, "the records after the update")
        sizes = [
            len(batch["records"])
            for batch in file_sink.read(str(sink))
            if {(shard, seq) for shard, seq, _ in batch["records"]} & after
        ]
        assert max(sizes) <= 5, sizes
        assert _replicas_delivering(file_sink.read(str(sink))) == {"a", "b"}

        # Nothing lost while the mapping ran, through the create, the split and the update.
        so_far = set(writer.written)
        wait(lambda: set(file_sink.delivered(sink)) >= so_far, 90, "every record so far")

        client_b.delete_event_source_mapping(UUID=uuid)
        wait_gone(client_b, uuid, limit=120)
        wait_gone(client_a, uuid, limit=30)
        stopped_at = len(writer.written) + writer.per_round
        wait(lambda: len(writer.written) >= stopped_at + 40, 30, "records after the delete")
        # Watched while the writer goes on: nothing it puts is delivered.
        stays_quiet(
            lambda: set(writer.written[stopped_at:]) & set(file_sink.delivered(sink)),
            10,
            "delivered after the delete",
        )

    delivered = file_sink.delivered(sink)
    assert overlaps(file_sink.read(str(sink))) == [], "a shard processed by both at once"
    assert duplicates(delivered) == 0
    for replica in (a, b):
        assert replica.proc.proc is not None
        assert replica.proc.proc.poll() is None, "a replica exited"
