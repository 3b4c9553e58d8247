"""A LATEST mapping's first start: pinned once for the mapping, whoever creates the shards'
leases or checkpoints and whenever (defects 7 and 11 of issue 11).

Records written before a LATEST mapping first started must never be delivered: not when
replicas start together and one lists the leases while another is still creating them, not
after a crash part-way through initialisation (lease table or SQLite), and not after a restart
that finds every shard checkpoint retired. Services run in the test's event loop against moto
(and kinesis-local for resharding), talking HTTP; faults come through the fault proxy.
"""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from poller.app import Service
from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import KinesisMapping, Settings, parse_settings
from poller.core.lineage import ShardInfo
from poller.errors import CheckpointError
from poller.ports import StreamApi
from poller.sources.kinesis import KinesisStreamApi
from poller.streams import StreamMappingRunner
from poller.streams.ownership import SoloOwnership
from poller.types import SHARD_END, Checkpoint, Target
from tests.support import recorder
from tests.support.aws import (
    REGION,
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.fault_proxy import FaultProxy
from tests.support.kinesis_local import kinesis_local
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARDS = 6
MAPPING = "first"


def settings_for(
    endpoint_url: str,
    stream: str,
    checkpoints: dict[str, Any],
    endpoints: dict[str, str] | None = None,
) -> Settings:
    """A LATEST mapping on ``stream`` delivering to the recorder, shards listed every second."""
    mapping = {
        "name": MAPPING,
        "event_source_arn": stream_arn(stream),
        "starting_position": "LATEST",
        "target": {"type": "python", "handler": "tests.support.recorder:record"},
        "batch_size": 100,
        "shard_discovery_interval_seconds": 1,
    }
    return parse_settings(
        {
            "aws": {"region": REGION, "endpoint_url": endpoint_url, "endpoints": endpoints or {}},
            "checkpoints": checkpoints,
            "observability": {"host": "127.0.0.1", "port": 0},
            "shutdown": {"drain_timeout_seconds": 5},
            "mappings": [mapping],
        }
    )


def leases_config(table: str, replica: str) -> dict[str, Any]:
    return {
        "backend": "dynamodb",
        "table": table,
        "replica_id": replica,
        "lease_duration_seconds": 3,
        "balance_interval_seconds": 1,
    }


class Stream:
    """A stream whose every shard got ``old`` records before the mapping existed."""

    def __init__(self, endpoint_url: str, name: str, shards: list[dict[str, Any]]) -> None:
        self.endpoint_url, self.name, self.shards = endpoint_url, name, shards
        self.arn = stream_arn(name)
        self.written: dict[str, int] = {}

    async def put(self, tag: str, per_shard: int = 5) -> None:
        async with aws_client("kinesis", self.endpoint_url) as kinesis:
            for shard in self.shards:
                records = [(f"{tag}-{i}", tag.encode(), hash_key_for(shard)) for i in range(5)]
                await put_records(kinesis, self.name, records[:per_shard])
        self.written[tag] = self.written.get(tag, 0) + per_shard * len(self.shards)

    def delivered(self, tag: str) -> int:
        return sum(
            1
            for batch in recorder.BATCHES[self.arn]
            for r in batch
            if base64.b64decode(r["kinesis"]["data"]) == tag.encode()
        )


async def old_stream(endpoint_url: str, recorded_streams: list[str]) -> Stream:
    name = unique("latest")
    async with aws_client("kinesis", endpoint_url) as kinesis:
        shards = await create_stream(kinesis, name, SHARDS)
    stream = Stream(endpoint_url, name, shards)
    recorded_streams.append(stream.arn)
    await stream.put("old")
    return stream


async def assert_only_new_records(stream: Stream, what: str) -> None:
    """Write ``new`` records; all arrive, and not one record written before the first start."""
    await stream.put("new")
    await wait_until(lambda: stream.delivered("new") >= stream.written["new"], 60, what)
    assert stream.delivered("old") == 0, "records older than the mapping's first start"


@contextlib.asynccontextmanager
async def background(settings: Settings) -> AsyncIterator[Service]:
    """The service running without waiting for it to be ready; killed (cancelled, nothing
    drained) when the block ends. Its errors are the test's business, not the block's."""
    service = Service(settings)

    async def run() -> None:
        with contextlib.suppress(Exception):
            await service.run(handle_signals=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield service
        tg.cancel_scope.cancel()


async def lease_count(moto_url: str, table: str) -> int:
    async with aws_client("dynamodb", moto_url) as ddb:
        with contextlib.suppress(CheckpointError):
            return len(await DynamoDBLeaseTable(ddb, table).list_leases(MAPPING))
    return 0


@pytest.fixture
def slow_lease_table(moto_url: str) -> Iterator[FaultProxy]:
    """moto's DynamoDB behind the fault proxy: every PutItem held 0.5 s, so a replica creates
    its leases slowly enough for others to look at the table half-way."""
    with FaultProxy(moto_url, record=False) as proxy:
        proxy.latency(0.5, "PutItem")
        yield proxy


# -- defect 7, case 1: replicas starting together -------------------------------------------


async def test_replicas_joining_while_leases_are_created_deliver_nothing_older(
    moto_url: str, slow_lease_table: FaultProxy, recorded_streams: list[str]
) -> None:
    """Replica a creates the leases slowly; b and c start as soon as the first lease exists.
    Every shard starts at the mapping's one start instant: no record older than it arrives."""
    stream = await old_stream(moto_url, recorded_streams)
    table = unique("leases")
    slow = {"dynamodb": slow_lease_table.url}
    async with background(settings_for(moto_url, stream.name, leases_config(table, "a"), slow)):
        await wait_until(lambda: lease_count(moto_url, table), 30, "the first lease")
        async with (
            running(settings_for(moto_url, stream.name, leases_config(table, "b"))),
            running(settings_for(moto_url, stream.name, leases_config(table, "c"))),
        ):
            await assert_only_new_records(stream, "every new record, on three replicas")


# -- defect 7, case 2: a crash part-way through initialisation ------------------------------


async def test_lease_path_crash_part_way_through_initialisation_then_restart(
    moto_url: str, slow_lease_table: FaultProxy, recorded_streams: list[str]
) -> None:
    """The lease table fails every PutItem once the first lease exists (the replica dies
    there); a restart completes the first start at the same instant."""
    stream = await old_stream(moto_url, recorded_streams)
    table = unique("leases")
    slow = {"dynamodb": slow_lease_table.url}
    async with background(settings_for(moto_url, stream.name, leases_config(table, "a"), slow)):
        await wait_until(lambda: lease_count(moto_url, table), 30, "the first lease")
        slow_lease_table.outage(3600, "PutItem")
        created = await lease_count(moto_url, table)
    assert created < SHARDS, "the crash must come part-way through"
    async with running(settings_for(moto_url, stream.name, leases_config(table, "b"))):
        await assert_only_new_records(stream, "every new record after the restart")


class FailingAfter(SqliteCheckpointStore):
    """The SQLite store, failing every ``put`` after the first ``puts`` (a crash there)."""

    def __init__(self, path: Path, puts: int) -> None:
        super().__init__(path)
        self.left = puts

    async def put(self, mapping: str, shard_id: str, checkpoint: Checkpoint) -> None:
        if self.left <= 0:
            raise CheckpointError("injected: the process died here")
        self.left -= 1
        await super().put(mapping, shard_id, checkpoint)


async def test_sqlite_crash_part_way_through_initialisation_then_restart(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Initialisation writes two of six shards' start checkpoints, then dies; the restarted
    service starts the other four at the same instant, not at TRIM_HORIZON."""
    stream = await old_stream(moto_url, recorded_streams)
    db = tmp_path / "c.db"
    settings = settings_for(moto_url, stream.name, {"path": str(db)})
    mapping = settings.mappings[0]
    assert isinstance(mapping, KinesisMapping)
    store = await FailingAfter(db, puts=2).open()
    async with aws_client("kinesis", moto_url) as kinesis:
        runner = StreamMappingRunner(
            mapping,
            api=KinesisStreamApi(
                kinesis,
                stream_arn=stream.arn,
                region=REGION,
                identity_arn=mapping.identity_arn,
            ),
            kind="kinesis",
            target=_no_target(),
            ownership=SoloOwnership(store, MAPPING),
            stopping=anyio.Event(),
        )
        with pytest.raises(CheckpointError, match="injected"):
            await runner._maybe_initialize()
    written = await store.get_all(MAPPING)
    await store.aclose()
    assert len(written) == 2, "the crash must come part-way through"
    async with running(settings):
        await assert_only_new_records(stream, "every new record after the restart")


def _no_target() -> Target:
    """Initialisation invokes nothing: a target that must never be called."""

    class Never:
        function_arn = "never"

        async def invoke(self, event: dict[str, Any]) -> Any:
            raise AssertionError("no invocation during initialisation")

        async def aclose(self) -> None:
            pass

    return Never()


# -- defect 11: restart after every checkpoint was retired ----------------------------------


@pytest.fixture(scope="module")
def kl_url() -> Iterator[str]:
    with kinesis_local() as url:
        yield url


@pytest.mark.slow
async def test_restart_after_a_reshard_and_retirement_never_repins(
    kl_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """SQLite path on kinesis-local: a LATEST mapping starts, its shard is split, the parent is
    read to its end, and the children receive nothing. With the service down, the parent's
    checkpoint is retired (it aged out of the listing) and records are written to the
    children; the restart must deliver them, not re-pin the start at "now"."""
    name = unique("repin")
    arn = stream_arn(name)
    recorded_streams.append(arn)
    async with aws_client("kinesis", kl_url) as kinesis:
        [parent] = await create_stream(kinesis, name, 1)
    stream = Stream(kl_url, name, [parent])
    db = tmp_path / "c.db"
    settings = settings_for(kl_url, name, {"path": str(db)})
    async with running(settings):
        await stream.put("first", per_shard=3)
        await wait_until(lambda: stream.delivered("first") >= 3, 30, "records of the first run")
        async with aws_client("kinesis", kl_url) as kinesis:
            low, high = (
                int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey")
            )
            await kinesis.split_shard(
                StreamName=name,
                ShardToSplit=parent["ShardId"],
                NewStartingHashKey=str((low + high) // 2),
            )
        store = await SqliteCheckpointStore(db).open()
        try:

            async def parent_ended() -> bool:
                checkpoint = await store.get(MAPPING, parent["ShardId"])
                return checkpoint is not None and checkpoint.is_shard_end

            await wait_until(parent_ended, 30, "the parent read to its end")
        finally:
            await store.aclose()
    # Down: the parent ages out of the stream, so its SHARD_END is retired (done here by hand,
    # as the service does for a shard no longer listed); the children hold no checkpoint.
    store = await SqliteCheckpointStore(db).open()
    try:
        await store.delete(MAPPING, parent["ShardId"])
        assert await store.get_all(MAPPING) == {}
    finally:
        await store.aclose()
    async with aws_client("kinesis", kl_url) as kinesis:
        listing = (await kinesis.list_shards(StreamName=name))["Shards"]
    stream.shards = [s for s in listing if s.get("ParentShardId") == parent["ShardId"]]
    assert len(stream.shards) == 2
    await stream.put("down")
    async with running(settings):
        await stream.put("new")
        await wait_until(
            lambda: stream.delivered("new") >= stream.written["new"], 60, "the new records"
        )
        await wait_until(
            lambda: stream.delivered("down") >= stream.written["down"],
            10,
            "the records written to the children while the service was down",
        )


# -- the start record in SQLite, and the migration rule -------------------------------------


async def test_sqlite_start_record_survives_reopen_and_old_databases_gain_it(
    tmp_path: Path,
) -> None:
    """A database made before the start record existed opens, keeps its checkpoints, and
    records a start once: the first pin wins across reopening."""
    db = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TABLE checkpoints (mapping TEXT NOT NULL, shard_id TEXT NOT NULL,"
            " sequence_number TEXT, start_timestamp REAL, updated_at REAL NOT NULL,"
            " PRIMARY KEY (mapping, shard_id))"
        )
        conn.execute("INSERT INTO checkpoints VALUES ('m', 's', '7', NULL, 0)")
        conn.commit()
    store = await SqliteCheckpointStore(db).open()
    try:
        assert await store.get_all("m") == {"s": Checkpoint("7")}
        assert await store.mapping_start("m") is None
        assert await store.pin_mapping_start("m", 1000.5) == 1000.5
    finally:
        await store.aclose()
    store = await SqliteCheckpointStore(db).open()
    try:
        assert await store.pin_mapping_start("m", 2000.0) == 1000.5
        assert await store.mapping_start("m") == 1000.5
        assert await store.mapping_start("other") is None
    finally:
        await store.aclose()


class Listing:
    """Just enough of a stream API for initialisation: a fixed listing."""

    def __init__(self, *shards: ShardInfo) -> None:
        self.shards = list(shards)

    async def list_shards(self) -> list[ShardInfo]:
        return self.shards


def memory_runner(store: MemoryCheckpointStore, listing: Listing) -> StreamMappingRunner:
    settings = settings_for("http://127.0.0.1:1", "s", {"path": "unused.db"})
    return StreamMappingRunner(
        settings.mappings[0],  # type: ignore[arg-type]
        api=cast(StreamApi, listing),
        kind="kinesis",
        target=_no_target(),
        ownership=SoloOwnership(store, MAPPING),
        stopping=anyio.Event(),
    )


@pytest.mark.parametrize(
    ("legacy", "expected_pin", "expected_new"),
    [
        # Started by an older version, its pins still stored: that instant, for every shard.
        (
            {"a": Checkpoint(start_timestamp=1000.0), "p": Checkpoint(SHARD_END)},
            1000.0,
            Checkpoint(start_timestamp=1000.0),
        ),
        # Only sequence numbers left: 0, i.e. TRIM_HORIZON for shards without a checkpoint, as
        # that version did (children born since it started hold only newer records).
        ({"a": Checkpoint("42")}, 0.0, None),
    ],
)
async def test_a_mapping_started_by_an_older_version_is_never_pinned_at_now(
    legacy: dict[str, Checkpoint], expected_pin: float, expected_new: Checkpoint | None
) -> None:
    """The migration rule: checkpoints but no start record mean the mapping has started."""
    store = MemoryCheckpointStore()
    for shard_id, checkpoint in legacy.items():
        await store.put(MAPPING, shard_id, checkpoint)
    listing = Listing(ShardInfo("a"), ShardInfo("b"))
    await memory_runner(store, listing)._maybe_initialize()
    assert store.starts == {MAPPING: expected_pin}
    assert await store.get(MAPPING, "b") == expected_new
    assert await store.get(MAPPING, "a") == legacy["a"]
