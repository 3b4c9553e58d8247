"""The SQLite mapping store, the store each checkpoint backend opens, and the clean-up of a
deleted mapping's checkpoints, on local files and in-memory fakes (the full contract on every
backend is ``tests/integration/test_c2_store_contract.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from poller.checkpoints import SharedCheckpoints, SoloCheckpoints
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Members
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.rewinds import RewindTarget
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import CheckpointSettings
from poller.control.backends import open_mapping_store
from poller.control.cleanup import forget_checkpoints
from poller.control.store import MappingRecord, PairTaken, TooManyMappings, pair_key
from poller.control.store_dynamodb import DynamoDBMappingStore
from poller.control.store_memory import MemoryMappingStore
from poller.control.store_sqlite import SqliteMappingStore
from poller.errors import CheckpointError
from poller.types import Checkpoint
from tests.support.memory_lease_table import MemoryLeaseTable

pytestmark = pytest.mark.anyio

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
MAPPING = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
KEPT = "b1b2c3d4-5678-90ab-cdef-1234567890ab"


def new_record(uuid: str, source: str = SOURCE) -> MappingRecord:
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": source, "BatchSize": 100},
        tags={},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, source),
        last_modified=1.5,
    )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteCheckpointStore]:
    store = await SqliteCheckpointStore(tmp_path / "c.db").open()
    yield store
    await store.aclose()


async def test_the_tables_are_added_to_an_older_database_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database of a version without the control API
        conn.execute("CREATE TABLE checkpoints (mapping TEXT, shard_id TEXT, updated_at REAL)")
    db = await SqliteCheckpointStore(path).open()
    store = await open_mapping_store(SoloCheckpoints(db))
    assert isinstance(store, SqliteMappingStore)
    created = await store.create(new_record("u-1"), limit=5)
    await SqliteMappingStore(db).open()  # opening again changes nothing
    assert await store.records() == {"u-1": created}
    assert await store.head() == 1
    await db.aclose()
    again = await SqliteCheckpointStore(path).open()  # and survives a restart
    assert await SqliteMappingStore(again).open() is not None
    assert await SqliteMappingStore(again).get("u-1") == created
    await again.aclose()


async def test_mutations_move_the_head_and_keep_the_rules(db: SqliteCheckpointStore) -> None:
    store = await SqliteMappingStore(db, clock=lambda: 42.0).open()
    created = await store.create(new_record("u-1"), limit=2)
    with pytest.raises(PairTaken, match="u-1"):
        await store.create(new_record("u-2"), limit=2)
    await store.create(new_record("u-3", SOURCE + "-3"), limit=2)
    with pytest.raises(TooManyMappings):
        await store.create(new_record("u-4", SOURCE + "-4"), limit=2)
    assert await store.head() == 2

    assert await store.update("u-1", lambda current, revision: None) == created
    with pytest.raises(PairTaken, match="u-1"):  # an update onto a taken pair
        await store.update("u-3", lambda c, r: replace(c, pair_key=created.pair_key, revision=r))
    assert await store.update("nope", lambda current, revision: None) is None
    deleted = await store.update(
        "u-1", lambda c, r: replace(c, desired="Deleted", change="delete", revision=r)
    )
    assert deleted is not None
    assert (deleted.revision, deleted.written) == (3, 3)
    await store.set_processing_result("u-1", "OK")
    assert await store.head() == 3
    assert not await store.finalize_delete("u-1", 2)
    assert await store.finalize_delete("u-1", 3)
    assert not await store.finalize_delete("u-1", 3)
    assert await store.head() == 4
    assert set(await store.records()) == {"u-3"}

    await store.ack("r-1", 4)
    await store.forget_replica("r-2")
    assert {r: (a.applied, a.beat_at) for r, a in (await store.acks()).items()} == {
        "r-1": (4, 42.0)
    }
    await store.aclose()  # the connection is the checkpoint store's: still open
    assert await store.head() == 4


async def test_a_closed_database_is_a_checkpoint_error(tmp_path: Path) -> None:
    db = await SqliteCheckpointStore(tmp_path / "c.db").open()
    store = await SqliteMappingStore(db).open()
    await db.aclose()
    with pytest.raises(CheckpointError, match=r"c\.db.*\(mapping store head\)"):
        await store.head()


# -- open_mapping_store ----------------------------------------------------------------------


async def test_each_checkpoint_backend_opens_its_store(db: SqliteCheckpointStore) -> None:
    assert isinstance(await open_mapping_store(SoloCheckpoints(db)), SqliteMappingStore)

    memory = SoloCheckpoints(MemoryCheckpointStore())
    first = await open_mapping_store(memory)
    assert isinstance(first, MemoryMappingStore)
    assert await open_mapping_store(memory) is first  # one store per checkpoint store
    assert await open_mapping_store(SoloCheckpoints(MemoryCheckpointStore())) is not first

    settings = CheckpointSettings(backend="dynamodb", table="leases")
    table = DynamoDBLeaseTable(client=None, table="leases")  # no call is made
    shared = await open_mapping_store(SharedCheckpoints(table, "r", settings))
    assert isinstance(shared, DynamoDBMappingStore)
    assert shared.table == "leases"

    twin = MemoryLeaseTable("leases")
    replica_a = await open_mapping_store(SharedCheckpoints(twin, "a", settings))  # type: ignore[arg-type]
    replica_b = await open_mapping_store(SharedCheckpoints(twin, "b", settings))  # type: ignore[arg-type]
    assert isinstance(replica_a, MemoryMappingStore)
    assert replica_a is replica_b  # replicas sharing a table share its mappings


# -- forget_checkpoints ----------------------------------------------------------------------

CHECKPOINT = Checkpoint("4959033827149025660855969253836")


async def test_forget_checkpoints_in_sqlite(db: SqliteCheckpointStore) -> None:
    for mapping in (MAPPING, KEPT):
        await db.pin_mapping_start(mapping, 10.0)
        await db.put(mapping, "s-1", CHECKPOINT)
        await db.request_rewinds(mapping, {"s-1": RewindTarget("trim_horizon")}, "rw")
        await db.serve(mapping, "r")
    assert await db.apply_rewind(MAPPING, "s-1", "r") is not None  # a fenced run's mark
    await forget_checkpoints(SoloCheckpoints(db), MAPPING)
    await forget_checkpoints(SoloCheckpoints(db), MAPPING)
    assert await db.get_all(MAPPING) == {}
    assert await db.mapping_start(MAPPING) is None
    assert await db.pending_rewinds(MAPPING) == {}
    assert await db.server_of(MAPPING) is None
    await db.put(MAPPING, "s-1", CHECKPOINT)  # no stale fence refuses a later write
    assert await db.get_all(KEPT) == {"s-1": CHECKPOINT}
    assert await db.mapping_start(KEPT) == 10.0
    assert await db.pending_rewinds(KEPT) == {"s-1": "rw"}
    assert await db.server_of(KEPT) == "r"


async def test_forget_checkpoints_in_memory() -> None:
    store = MemoryCheckpointStore()
    for mapping in (MAPPING, KEPT):
        await store.pin_mapping_start(mapping, 10.0)
        await store.put(mapping, "s-1", CHECKPOINT)
    await forget_checkpoints(SoloCheckpoints(store), MAPPING)
    assert await store.get_all(MAPPING) == {}
    assert await store.mapping_start(MAPPING) is None
    assert await store.get_all(KEPT) == {"s-1": CHECKPOINT}
    assert await store.mapping_start(KEPT) == 10.0


async def test_forget_checkpoints_in_the_lease_table() -> None:
    table = MemoryLeaseTable("leases")
    await table.ensure_table()
    for mapping in (MAPPING, KEPT):
        await table.pin_mapping_start(mapping, 10.0)
        for shard in ("s-1", "s-2"):
            assert await table.create(mapping, shard)
        await table.heartbeat(mapping, "r", 1)
    lease = await table.get(MAPPING, "s-1")
    assert lease is not None
    assert await table.take(lease, "r") is not None
    settings = CheckpointSettings(backend="dynamodb", table="leases")
    checkpoints = SharedCheckpoints(table, "r", settings)  # type: ignore[arg-type]
    await forget_checkpoints(checkpoints, MAPPING)
    await forget_checkpoints(checkpoints, MAPPING)
    assert await table.list_leases(MAPPING) == []
    assert await table.mapping_start(MAPPING) is None
    assert await table.members(MAPPING) == Members({}, 0)
    assert [lease.shard_id for lease in await table.list_leases(KEPT)] == ["s-1", "s-2"]
    assert await table.mapping_start(KEPT) == 10.0
    assert await table.members(KEPT) == Members({"r": 1}, 0)
