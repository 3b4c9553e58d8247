"""One contract, four mapping stores: memory, SQLite, the lease table on moto and on DynamoDB
Local.

Every test runs against each :class:`~poller.control.store.MappingStore` backend, opened the way
the service opens it (:func:`~poller.control.backends.open_mapping_store` on the checkpoints),
over real HTTP to the emulators (nothing patched). ``MemoryMappingStore`` is the reference: the
durable stores must answer the same. The clean-up of a deleted mapping's checkpoints
(:func:`~poller.control.cleanup.forget_checkpoints`) is checked on the same backends, and the
lease table's answers to a lost reply and to an outage through the fault proxy.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.session import get_session as sync_session

from poller.aws.clients import CONTROL_CLIENT_CONFIG
from poller.checkpoints import Checkpoints, SharedCheckpoints, SoloCheckpoints
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Members
from poller.checkpoints.memory import MemoryCheckpointStore
from poller.checkpoints.rewinds import RewindTarget
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import CheckpointSettings
from poller.control.backends import open_mapping_store
from poller.control.cleanup import forget_checkpoints
from poller.control.store import MappingRecord, MappingStore, PairTaken, TooManyMappings, pair_key
from poller.control.store_dynamodb import DynamoDBMappingStore, record_key
from poller.control.store_memory import MemoryMappingStore
from poller.control.store_sqlite import SqliteMappingStore
from poller.errors import CheckpointError
from poller.types import Checkpoint
from tests.support.aws import CREDENTIALS, REGION, aws_client, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.anyio

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
OTHER_SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/refunds"
REPLICA_A = "ip-10-0-0-1.ec2.internal:1234/a.b"  # dots, colons, slashes: one map key still
REPLICA_B = "replica-b"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one client per emulator (bound to its event loop) serves all."""
    return "asyncio"


@pytest.fixture(scope="module")
async def moto_ddb(moto_url: str) -> AsyncIterator[Any]:
    async with aws_client("dynamodb", moto_url) as client:
        yield client


@pytest.fixture(scope="module")
async def local_ddb() -> AsyncIterator[Any]:
    async with aws_client("dynamodb", require_dynamodb_local()) as client:
        yield client


@dataclass
class Subject:
    """A backend under test: its checkpoints and the mapping store opened on them."""

    kind: str
    checkpoints: Checkpoints
    store: MappingStore
    #: A synchronous write of ``lastProcessingResult`` behind the store's back (DynamoDB only:
    #: the one backend where another writer can land between an update's read and write).
    sync_result: Callable[[str, str], None] | None = None


async def _table_subject(kind: str, client: Any, url: str) -> Subject:
    table = DynamoDBLeaseTable(client, unique("leases"))
    await table.ensure_table()
    settings = CheckpointSettings(backend="dynamodb", table=table.table)
    checkpoints = SharedCheckpoints(table, REPLICA_A, settings)
    raw = sync_session().create_client(
        "dynamodb", region_name=REGION, endpoint_url=url, **CREDENTIALS
    )

    def sync_result(uuid: str, result: str) -> None:
        raw.update_item(
            TableName=table.table,
            Key={"leaseKey": {"S": record_key(uuid)}},
            UpdateExpression="SET lastProcessingResult = :r",
            ExpressionAttributeValues={":r": {"S": result}},
        )

    return Subject(kind, checkpoints, await open_mapping_store(checkpoints), sync_result)


@pytest.fixture(params=["memory", "sqlite", "moto", "dynamodb_local"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Any, str]:
    """(kind, the emulator's client or None, its URL). Synchronous, so that it may pick the
    emulator's (async, module-wide) client fixture by name."""
    kind: str = request.param
    if kind == "moto":
        return kind, request.getfixturevalue("moto_ddb"), request.getfixturevalue("moto_url")
    if kind == "dynamodb_local":
        return kind, request.getfixturevalue("local_ddb"), require_dynamodb_local()
    return kind, None, ""


@pytest.fixture
async def subject(backend: tuple[str, Any, str], tmp_path: Path) -> AsyncIterator[Subject]:
    """A new, empty store of each kind."""
    kind, client, url = backend
    if client is not None:
        yield await _table_subject(kind, client, url)
        return
    store = (
        MemoryCheckpointStore()
        if kind == "memory"
        else await SqliteCheckpointStore(tmp_path / "checkpoints.db").open()
    )
    checkpoints = SoloCheckpoints(store)
    subject = Subject(kind, checkpoints, await open_mapping_store(checkpoints))
    yield subject
    await subject.store.aclose()
    await checkpoints.aclose()


def new_record(uuid: str, source: str = SOURCE, **request: Any) -> MappingRecord:
    """A record as the API hands it to ``create`` (the store sets the revisions)."""
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": source, "FunctionName": "orders", "BatchSize": 100, **request},
        tags={"team": "payments"},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, source),
        last_modified=1_700_000_000.5,
    )


def set_request(**fields: Any) -> Callable[[MappingRecord, int], MappingRecord]:
    """A change function setting request fields: a user update at the revision given."""

    def change(current: MappingRecord, revision: int) -> MappingRecord:
        request = {**current.request, **fields}
        return replace(current, request=request, revision=revision, change="update")

    return change


async def test_each_backend_opens_its_own_store(subject: Subject) -> None:
    expected = {
        "memory": MemoryMappingStore,
        "sqlite": SqliteMappingStore,
        "moto": DynamoDBMappingStore,
        "dynamodb_local": DynamoDBMappingStore,
    }[subject.kind]
    assert isinstance(subject.store, expected)


async def test_crud(subject: Subject) -> None:
    store = subject.store
    assert await store.head() == 0
    assert await store.records() == {}
    assert await store.get("u-1") is None

    created = await store.create(new_record("u-1"), limit=10)
    assert (created.revision, created.created_revision, created.written) == (1, 1, 1)
    assert created == replace(new_record("u-1"), revision=1, created_revision=1, written=1)
    assert await store.head() == 1
    assert await store.get("u-1") == created
    second = await store.create(new_record("u-2", OTHER_SOURCE), limit=10)
    assert second.revision == 2
    assert await store.records() == {"u-1": created, "u-2": second}

    updated = await store.update("u-1", set_request(BatchSize=10))
    assert updated is not None
    assert updated.request["BatchSize"] == 10
    assert (updated.revision, updated.written, updated.created_revision) == (3, 3, 1)
    assert await store.get("u-1") == updated
    assert await store.head() == 3
    assert await store.update("missing", set_request(BatchSize=1)) is None
    assert await store.head() == 3


async def test_concurrent_updates_lose_nothing(subject: Subject) -> None:
    store = subject.store
    await store.create(new_record("u-1", log=[]), limit=10)

    def append(entry: str) -> Callable[[MappingRecord, int], MappingRecord]:
        def change(current: MappingRecord, revision: int) -> MappingRecord:
            log = [*current.request["log"], entry]
            return replace(current, request={**current.request, "log": log}, revision=revision)

        return change

    async def writer(name: str) -> None:
        for i in range(25):
            assert await store.update("u-1", append(f"{name}-{i}")) is not None

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, "a")
        tg.start_soon(writer, "b")

    stored = await store.get("u-1")
    assert stored is not None
    log = stored.request["log"]
    assert sorted(log) == sorted([f"{w}-{i}" for w in "ab" for i in range(25)])
    for w in "ab":  # each writer's own changes land in its order
        assert [e for e in log if e.startswith(w)] == [f"{w}-{i}" for i in range(25)]
    assert await store.head() == 51
    assert stored.written == 51


async def test_records_reads_more_than_one_batch(subject: Subject) -> None:
    """105 records: the lease table reads them in two BatchGetItem calls of at most 100."""
    store = subject.store
    created = [
        await store.create(new_record(f"u-{i:03}", f"{SOURCE}-{i}"), limit=200) for i in range(105)
    ]
    assert await store.records() == {record.uuid: record for record in created}
    assert await store.head() == 105


async def test_a_second_mapping_of_the_pair_names_the_first(subject: Subject) -> None:
    store = subject.store
    await store.create(new_record("u-1"), limit=10)
    with pytest.raises(PairTaken) as taken:
        await store.create(new_record("u-2"), limit=10)
    assert taken.value.uuid == "u-1"
    assert await store.head() == 1
    assert set(await store.records()) == {"u-1"}


async def test_an_update_onto_a_taken_pair_names_its_holder(subject: Subject) -> None:
    """An update that changes the function (so the pair) to one another mapping of the
    source has is refused like a create, and writes nothing."""
    store = subject.store
    await store.create(new_record("u-1"), limit=10)
    other = await store.create(new_record("u-2", OTHER_SOURCE), limit=10)

    def onto_u1(current: MappingRecord, revision: int) -> MappingRecord:
        return replace(current, pair_key=pair_key(FUNCTION, SOURCE), revision=revision)

    with pytest.raises(PairTaken) as taken:
        await store.update("u-2", onto_u1)
    assert taken.value.uuid == "u-1"
    assert await store.get("u-2") == other
    assert await store.head() == 2
    moved = await store.update(
        "u-2", lambda c, r: replace(c, pair_key=pair_key(FUNCTION, SOURCE + "-new"), revision=r)
    )
    assert moved is not None
    assert (await store.create(new_record("u-3", OTHER_SOURCE), limit=10)).revision == 4


async def test_concurrent_creates_of_one_pair_one_wins(subject: Subject) -> None:
    store = subject.store
    outcomes: dict[str, str] = {}

    async def create(uuid: str) -> None:
        try:
            await store.create(new_record(uuid), limit=10)
            outcomes[uuid] = "created"
        except PairTaken as taken:
            outcomes[uuid] = f"taken by {taken.uuid}"

    async with anyio.create_task_group() as tg:
        for uuid in ("u-1", "u-2", "u-3"):
            tg.start_soon(create, uuid)

    winners = [uuid for uuid, outcome in outcomes.items() if outcome == "created"]
    assert len(winners) == 1, outcomes
    assert all(o == f"taken by {winners[0]}" for u, o in outcomes.items() if u != winners[0])
    assert set(await store.records()) == set(winners)
    assert await store.head() == 1


async def test_the_limit_counts_stored_mappings(subject: Subject) -> None:
    store = subject.store
    await store.create(new_record("u-1"), limit=2)
    await store.create(new_record("u-2", OTHER_SOURCE), limit=2)
    with pytest.raises(TooManyMappings) as refused:
        await store.create(new_record("u-3", SOURCE + "-3"), limit=2)
    assert refused.value.limit == 2
    assert await store.head() == 2
    assert set(await store.records()) == {"u-1", "u-2"}


async def test_an_update_that_changes_nothing_writes_nothing(subject: Subject) -> None:
    store = subject.store
    created = await store.create(new_record("u-1"), limit=10)
    seen: list[int] = []

    def unchanged(current: MappingRecord, revision: int) -> None:
        seen.append(revision)

    assert await store.update("u-1", unchanged) == created
    assert seen == [2]  # offered the next revision, declined it
    assert await store.head() == 1
    assert await store.get("u-1") == created


async def test_a_refusing_change_propagates_and_writes_nothing(subject: Subject) -> None:
    store = subject.store
    created = await store.create(new_record("u-1"), limit=10)

    def refuse(current: MappingRecord, revision: int) -> MappingRecord:
        raise ValueError("in use")

    with pytest.raises(ValueError, match="in use"):
        await store.update("u-1", refuse)
    assert await store.head() == 1
    assert await store.get("u-1") == created


def mark_deleted(current: MappingRecord, revision: int) -> MappingRecord:
    return replace(current, desired="Deleted", change="delete", revision=revision)


async def test_finalize_is_conditional_on_the_revision(subject: Subject) -> None:
    store = subject.store
    created = await store.create(new_record("u-1"), limit=10)
    other = await store.create(new_record("u-2", OTHER_SOURCE), limit=10)
    assert not await store.finalize_delete("u-1", created.revision)  # not deleted
    deleting = await store.update("u-1", mark_deleted)
    assert deleting is not None
    assert deleting.revision == 3
    assert not await store.finalize_delete("u-1", created.revision)  # an older revision
    assert await store.head() == 3

    # A tag write moves ``written`` but not the revision: the finalize still holds.
    tagged = await store.update("u-1", lambda current, _: replace(current, tags={"a": "b"}))
    assert tagged is not None
    assert (tagged.revision, tagged.written) == (3, 4)
    assert await store.finalize_delete("u-1", 3)
    assert await store.get("u-1") is None
    assert await store.records() == {"u-2": other}
    assert await store.head() == 5
    assert not await store.finalize_delete("u-1", 3)  # once only
    assert await store.head() == 5
    # The pair is free again.
    again = await store.create(new_record("u-3"), limit=10)
    assert again.revision == 6


async def test_acks_and_forgetting_a_replica(subject: Subject) -> None:
    store = subject.store
    assert await store.acks() == {}
    before = time.time()
    await store.ack(REPLICA_A, 1)
    await store.ack(REPLICA_B, 2)
    await store.ack(REPLICA_A, 3)
    after = time.time()
    acks = await store.acks()
    assert {replica: ack.applied for replica, ack in acks.items()} == {REPLICA_A: 3, REPLICA_B: 2}
    assert all(before - 1 <= ack.beat_at <= after + 1 for ack in acks.values())
    assert await store.head() == 0  # acks are no mutation

    await store.forget_replica(REPLICA_A)
    await store.forget_replica("never-acked")
    assert set(await store.acks()) == {REPLICA_B}


async def test_processing_result_moves_nothing_and_survives_updates(subject: Subject) -> None:
    store = subject.store
    created = await store.create(new_record("u-1"), limit=10)
    await store.set_processing_result("u-1", "OK")
    await store.set_processing_result("missing", "OK")  # ignored: no stray record
    stored = await store.get("u-1")
    assert stored == replace(created, last_processing_result="OK")
    assert await store.head() == 1
    assert set(await store.records()) == {"u-1"}

    updated = await store.update("u-1", set_request(BatchSize=5))
    assert updated is not None
    assert updated.last_processing_result == "OK"
    await store.set_processing_result("u-1", "PROBLEM: Function call failed")
    after = await store.get("u-1")
    assert after == replace(updated, last_processing_result="PROBLEM: Function call failed")


async def test_a_result_written_during_an_update_is_kept(subject: Subject) -> None:
    """Only the lease table lets a write land between an update's read and its write (SQLite
    holds a transaction, memory never awaits); that write must survive the update."""
    if subject.sync_result is None:
        pytest.skip(f"{subject.kind}: nothing can land inside an update")
    store, sync_result = subject.store, subject.sync_result
    await store.create(new_record("u-1"), limit=10)

    def change(current: MappingRecord, revision: int) -> MappingRecord:
        sync_result("u-1", "OK")  # after the read, before the write
        return set_request(BatchSize=7)(current, revision)

    await store.update("u-1", change)
    stored = await store.get("u-1")
    assert stored is not None
    assert (stored.request["BatchSize"], stored.last_processing_result) == (7, "OK")


# -- forget_checkpoints ------------------------------------------------------------------------

MAPPING = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
KEPT = "b1b2c3d4-5678-90ab-cdef-1234567890ab"
SHARDS = ("shardId-000000000000", "shardId-000000000001")


async def _leave_checkpoints(checkpoints: Checkpoints, mapping: str) -> None:
    """What running ``mapping`` leaves behind, written through the backend's own API."""
    if isinstance(checkpoints, SharedCheckpoints):
        table = checkpoints.table
        await table.pin_mapping_start(mapping, 1_700_000_000.0)
        for shard in SHARDS:
            assert await table.create(mapping, shard)
        lease = await table.get(mapping, SHARDS[0])
        assert lease is not None
        taken = await table.take(lease, REPLICA_A)
        assert taken is not None
        await table.checkpoint(taken, REPLICA_A, Checkpoint("4959033827149025660855969253836"))
        await table.heartbeat(mapping, REPLICA_A, 1)
        return
    store = checkpoints.store
    await store.pin_mapping_start(mapping, 1_700_000_000.0)
    for shard in SHARDS:
        await store.put(mapping, shard, Checkpoint("4959033827149025660855969253836"))
    if isinstance(store, SqliteCheckpointStore):
        await store.request_rewinds(mapping, {SHARDS[0]: RewindTarget("trim_horizon")}, "rw-1")
        await store.serve(mapping, REPLICA_A)


async def _remains(checkpoints: Checkpoints, mapping: str) -> dict[str, Any]:
    """What the backend still holds of ``mapping``."""
    if isinstance(checkpoints, SharedCheckpoints):
        table = checkpoints.table
        return {
            "leases": [lease.shard_id for lease in await table.list_leases(mapping)],
            "start": await table.mapping_start(mapping),
            "members": await table.members(mapping) != Members({}, 0),
        }
    store = checkpoints.store
    found: dict[str, Any] = {
        "leases": sorted(await store.get_all(mapping)),
        "start": await store.mapping_start(mapping),
    }
    if isinstance(store, SqliteCheckpointStore):
        found["served"] = await store.server_of(mapping) is not None
        found["rewinds"] = await store.pending_rewinds(mapping)
    return found


async def test_forget_checkpoints_removes_the_mappings_and_no_other(subject: Subject) -> None:
    checkpoints = subject.checkpoints
    await _leave_checkpoints(checkpoints, MAPPING)
    await _leave_checkpoints(checkpoints, KEPT)
    kept_before = await _remains(checkpoints, KEPT)
    assert kept_before["leases"] == list(SHARDS)
    assert (await _remains(checkpoints, MAPPING)) == kept_before

    await forget_checkpoints(checkpoints, MAPPING)
    gone = await _remains(checkpoints, MAPPING)
    assert gone["leases"] == []
    assert gone["start"] is None
    assert not any(v for k, v in gone.items() if k not in ("leases", "start"))
    assert await _remains(checkpoints, KEPT) == kept_before

    await forget_checkpoints(checkpoints, MAPPING)  # safe to run again
    assert await _remains(checkpoints, MAPPING) == gone


# -- the lease table through the fault proxy ---------------------------------------------------


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as faults:
        yield faults


@pytest.fixture
async def proxied(proxy: FaultProxy) -> AsyncIterator[DynamoDBMappingStore]:
    """A lease table store whose client (the service's control settings: 3 attempts) goes
    through the fault proxy."""
    async with aws_client("dynamodb", proxy.url, CONTROL_CLIENT_CONFIG) as client:
        table = DynamoDBLeaseTable(client, unique("leases"))
        await table.ensure_table()
        settings = CheckpointSettings(backend="dynamodb", table=table.table)
        store = await open_mapping_store(SharedCheckpoints(table, REPLICA_A, settings))
        assert isinstance(store, DynamoDBMappingStore)
        yield store


TRANSACT = "DynamoDB_20120810.TransactWriteItems"


async def _lost_once(proxy: FaultProxy, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``call`` with the answer of its first transaction lost (applied, then the
    connection dropped: the SDK retries the same request)."""
    before = len(proxy.calls(TRANSACT))
    rule = proxy.lose_responses(TRANSACT, times=1)
    try:
        result = await call()
    finally:
        proxy.remove(rule)
    assert proxy.injected["lost_response"] >= 1
    assert len(proxy.calls(TRANSACT)) - before >= 2  # the lost one and its retry
    return result


async def test_a_lost_reply_is_not_applied_twice(
    proxy: FaultProxy, proxied: DynamoDBMappingStore
) -> None:
    store = proxied
    created = await _lost_once(proxy, lambda: store.create(new_record("u-1", log=[]), limit=10))
    assert created.revision == 1
    assert await store.records() == {"u-1": created}
    assert await store.head() == 1

    def append(current: MappingRecord, revision: int) -> MappingRecord:
        log = [*current.request["log"], "once"]
        return replace(current, request={**current.request, "log": log}, revision=revision)

    updated = await _lost_once(proxy, lambda: store.update("u-1", append))
    assert updated.request["log"] == ["once"]
    assert await store.get("u-1") == updated
    assert await store.head() == 2

    await store.update("u-1", mark_deleted)
    assert await _lost_once(proxy, lambda: store.finalize_delete("u-1", 3))
    assert await store.records() == {}
    assert await store.head() == 4


async def test_an_outage_is_a_checkpoint_error_naming_the_table(
    proxy: FaultProxy, proxied: DynamoDBMappingStore
) -> None:
    store = proxied
    proxy.outage(600, "DynamoDB_20120810.*", code="InternalServerError", status=500)
    for call in (store.head, store.records, lambda: store.create(new_record("u"), limit=1)):
        with pytest.raises(CheckpointError, match=store.table):
            await call()
    proxy.heal()
    assert await store.head() == 0
