"""Review 17b, fast tier: the mapping store's record encoding at AWS's limits and across
versions, the acks of replicas gone for good, and an update or a finalized delete whose
answer was lost
(on the fake :class:`TableCalls` of ``test_c2_dynamodb_store``; the emulators' side is
``tests/integration/test_review17b_store_limits.py``)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from poller.checkpoints.dynamodb.calls import Transaction
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.control.store import ACK_RETENTION_SECONDS, MappingRecord
from poller.control.store_dynamodb import (
    ACK_PRUNE_BATCH,
    HEAD_KEY,
    RECENT_WRITES,
    REPLICAS_KEY,
    DynamoDBMappingStore,
    recent_writes,
    record_item,
    record_key,
)
from poller.control.store_memory import MemoryMappingStore
from poller.control.store_sqlite import SqliteMappingStore
from poller.errors import CheckpointError
from poller.retry import Backoff
from tests.unit.test_c2_dynamodb_store import FakeTableCalls, append, mark_deleted, new_record

pytestmark = pytest.mark.anyio

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
#: A Unicode letter outside the BMP, which AWS accepts in tags: 12 bytes as JSON's ASCII
#: escapes, 4 in UTF-8.
LETTER = "\U00020000"
#: DynamoDB's item limit, names and values together.
ITEM_LIMIT = 400 * 1024


def largest_record() -> MappingRecord:
    """50 tags of 128/256 letters and 5 filter patterns of 4096 characters: AWS's limits."""
    tags = {f"{i:02}{LETTER * 126}": LETTER * 256 for i in range(50)}
    pattern = '{"k": ["%s"]}' % (LETTER * 4085)
    assert len(pattern) == 4096
    request = {"EventSourceArn": SOURCE, "FilterCriteria": {"Filters": [{"Pattern": pattern}] * 5}}
    return replace(new_record("u-1"), request=request, tags=tags)


def test_a_record_at_aws_limits_leaves_room_in_one_item() -> None:
    record = largest_record()
    text = record.to_json()
    assert len(text.encode()) < ITEM_LIMIT // 2  # the item's other attributes take < 1 KB
    assert MappingRecord.from_json(text) == record


def test_text_utf8_cannot_carry_is_escaped() -> None:
    """A lone surrogate (a JSON body may spell one as ``\\ud800``) cannot be UTF-8: the
    record falls back to ASCII escapes, and reads back the same."""
    record = replace(new_record("u-1"), request={"EventSourceArn": SOURCE, "x": "a\ud800b"})
    text = record.to_json()
    assert text.isascii()
    assert MappingRecord.from_json(text) == record


def test_a_newer_versions_field_is_left_out() -> None:
    record = new_record("u-1")
    newer = {**json.loads(record.to_json()), "future": [1, 2]}
    assert MappingRecord.from_json(json.dumps(newer)) == record


def test_an_older_record_without_a_defaulted_field_reads() -> None:
    record = new_record("u-1")
    older = json.loads(record.to_json())
    del older["last_processing_result"]
    assert MappingRecord.from_json(json.dumps(older)) == record


async def test_sqlite_reads_a_newer_versions_record(tmp_path: Path) -> None:
    checkpoints = await SqliteCheckpointStore(tmp_path / "c.db").open()
    store = await SqliteMappingStore(checkpoints).open()
    created = await store.create(new_record("u-1"), limit=5)
    newer = json.dumps({**json.loads(created.to_json()), "future": True})

    def rewrite(c: Any) -> None:
        c.execute("UPDATE esm_mappings SET record = ? WHERE uuid = 'u-1'", (newer,))

    await checkpoints.query(rewrite)
    assert await store.get("u-1") == created
    assert await store.records() == {"u-1": created}
    await checkpoints.aclose()


class LostThenOverwritten(FakeTableCalls):
    """Applies the next transaction, loses its answer, and lets another mutation move the
    head before the SDK's retry is refused (what moto, which ignores ClientRequestToken,
    answers after a lost reply when another replica wrote in between)."""

    async def transact_write(
        self, call: str, actions: Any, *, token: str | None = None
    ) -> Transaction:
        losing = self.lose_next > 0
        result = await super().transact_write(call, actions, token=token)
        if losing:
            head = self.items[HEAD_KEY]
            head["revision"] = {"N": str(int(head["revision"]["N"]) + 1)}
            head["writeId"] = {"S": "another replica's write"}
        return result


async def test_a_finalize_whose_answer_was_lost_says_it_removed_the_record() -> None:
    """Otherwise the replica that removed the record never removes its checkpoints, and no
    other replica will (the record is gone)."""
    calls = LostThenOverwritten()
    store = DynamoDBMappingStore(
        calls,  # type: ignore[arg-type]
        backoff=Backoff(initial=0.0, maximum=0.0),
    )
    await store.create(new_record("u-1"), limit=5)
    deleting = await store.update("u-1", mark_deleted)
    assert deleting is not None
    calls.lose_next = 1
    assert await store.finalize_delete("u-1", deleting.revision)
    assert record_key("u-1") not in calls.items
    assert not await store.finalize_delete("u-1", deleting.revision)  # once gone: no more


async def test_a_finalize_refused_by_a_changed_record_still_says_no() -> None:
    calls = FakeTableCalls()
    store = DynamoDBMappingStore(
        calls,  # type: ignore[arg-type]
        backoff=Backoff(initial=0.0, maximum=0.0),
    )
    created = await store.create(new_record("u-1"), limit=5)
    assert not await store.finalize_delete("u-1", created.revision)  # not deleted
    deleting = await store.update("u-1", mark_deleted)
    assert deleting is not None
    assert not await store.finalize_delete("u-1", deleting.revision - 1)
    assert record_key("u-1") in calls.items


# -- acks of replicas that never stopped cleanly ------------------------------------------------

NOW = 1_800_000_000.0
GONE = NOW - ACK_RETENTION_SECONDS - 1


def lease_table_store(calls: FakeTableCalls, now: float) -> DynamoDBMappingStore:
    return DynamoDBMappingStore(
        calls,  # type: ignore[arg-type]
        clock=lambda: now,
        backoff=Backoff(initial=0.0, maximum=0.0),
    )


async def test_the_lease_table_forgets_acks_too_old_before_acking() -> None:
    calls = FakeTableCalls()
    for i in range(ACK_PRUNE_BATCH + 5):  # two batches
        await lease_table_store(calls, GONE).ack(f"crashed-{i}", 1)
    await lease_table_store(calls, NOW - 60).ack("live", 2)
    store = lease_table_store(calls, NOW)
    assert set(await store.acks()) == {"live"}  # listed: never the old ones
    await store.ack("new", 3)
    assert set(calls.items[REPLICAS_KEY]["esmReplicas"]["M"]) == {"live", "new"}
    assert {r: a.applied for r, a in (await store.acks()).items()} == {"live": 2, "new": 3}


async def test_the_lease_table_looks_for_old_acks_at_most_so_often() -> None:
    calls = FakeTableCalls()
    store = lease_table_store(calls, NOW)
    await store.ack("new", 1)
    await lease_table_store(calls, GONE).ack("crashed", 1)
    await store.ack("new", 2)  # within ACK_PRUNE_SECONDS of its first look
    assert "crashed" in calls.items[REPLICAS_KEY]["esmReplicas"]["M"]
    assert set(await store.acks()) == {"new"}


class BackMeanwhile(FakeTableCalls):
    """The acks item as read, then ``replica`` acks (it was only paused) before the removal."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self.replica = replica

    async def read(self, call: str, key: str) -> Any:
        item = await super().read(call, key)
        if key == REPLICAS_KEY and item is not None:
            beat = self.items[key]["esmReplicas"]["M"][self.replica]["M"]
            beat["beat"] = {"N": repr(NOW)}
        return item


async def test_an_old_ack_renewed_meanwhile_is_kept() -> None:
    calls = BackMeanwhile("paused")
    await lease_table_store(calls, GONE).ack("paused", 1)
    await lease_table_store(calls, NOW).ack("new", 2)
    assert set(calls.items[REPLICAS_KEY]["esmReplicas"]["M"]) == {"paused", "new"}


async def test_memory_and_sqlite_forget_acks_too_old(tmp_path: Path) -> None:
    checkpoints = await SqliteCheckpointStore(tmp_path / "c.db").open()
    clock = [GONE]
    stores: list[Any] = [
        MemoryMappingStore(clock=lambda: clock[0]),
        await SqliteMappingStore(checkpoints, clock=lambda: clock[0]).open(),
    ]
    for store in stores:
        clock[0] = GONE
        await store.ack("crashed", 1)
        clock[0] = NOW
        assert await store.acks() == {}
        await store.ack("new", 2)
        assert set(await store.acks()) == {"new"}
        clock[0] = GONE  # the old row is gone, not only hidden
        assert set(await store.acks()) == {"new"}
    rows = await checkpoints.query(lambda c: c.execute("SELECT replica FROM esm_acks").fetchall())
    assert rows == [("new",)]
    await checkpoints.aclose()


# -- an update whose answer was lost while another replica wrote the record ----------------------


class LostThenRecordWritten(FakeTableCalls):
    """Applies the next transaction and loses its answer; before the SDK's retry is refused,
    ``other`` (another replica's store) updates the same record."""

    other: DynamoDBMappingStore | None = None

    async def transact_write(
        self, call: str, actions: Any, *, token: str | None = None
    ) -> Transaction:
        losing = self.lose_next > 0
        result = await super().transact_write(call, actions, token=token)
        if losing and self.other is not None:
            other, self.other = self.other, None
            assert await other.update("u-1", append("theirs")) is not None
        return result


async def test_an_update_whose_answer_was_lost_is_applied_once() -> None:
    """moto ignores ClientRequestToken, so the SDK's retry is refused; the record's token must
    still be found though another replica wrote the record meanwhile."""
    calls = LostThenRecordWritten()
    mine, theirs = lease_table_store(calls, NOW), lease_table_store(calls, NOW)
    await mine.create(new_record("u-1", log=[]), limit=5)
    calls.other, calls.lose_next = theirs, 1
    await mine.update("u-1", append("mine"))
    stored = await mine.get("u-1")
    assert stored is not None
    assert stored.request["log"] == ["mine", "theirs"]
    assert len(recent_writes(calls.items[record_key("u-1")])) == 3  # create, mine, theirs


async def test_only_the_latest_writes_are_kept() -> None:
    calls = FakeTableCalls()
    store = lease_table_store(calls, NOW)
    await store.create(new_record("u-1", log=[]), limit=5)
    for i in range(RECENT_WRITES + 3):
        await store.update("u-1", append(str(i)))
    assert len(recent_writes(calls.items[record_key("u-1")])) == RECENT_WRITES


def test_an_item_without_the_list_has_its_write_id() -> None:
    item = record_item(new_record("u-1"), "t")
    del item["recentWrites"]
    assert recent_writes(item) == ["t"]
    del item["writeId"]
    assert recent_writes(item) == []
    assert recent_writes(None) == []


class PruneRefusedByDynamoDB(FakeTableCalls):
    """DynamoDB refuses the removal of old acks (whatever the reason); other calls work."""

    async def update(self, call: str, key: str, **params: Any) -> Any:
        if "forget stale acks" in call:
            raise CheckpointError(f"lease table {self.table}: {call} failed with Validation")
        return await super().update(call, key, **params)


async def test_a_failed_look_for_old_acks_never_stops_the_ack() -> None:
    calls = PruneRefusedByDynamoDB()
    await lease_table_store(calls, GONE).ack("crashed", 1)
    await lease_table_store(calls, NOW).ack("new", 2)
    assert set(calls.items[REPLICAS_KEY]["esmReplicas"]["M"]) == {"crashed", "new"}


# -- SQLite: a database made by an older release ------------------------------------------------

#: The first release's schema (a5b2f45): checkpoints only; no starts, rewinds or services.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    mapping TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    sequence_number TEXT,
    start_timestamp REAL,
    sub_sequence_number INTEGER,
    window_state TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (mapping, shard_id)
)
"""


async def test_a_first_release_database_takes_mappings_and_their_clean_up(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.execute(FIRST_RELEASE_SCHEMA)
        for mapping in ("gone", "kept"):
            old.execute(
                "INSERT INTO checkpoints (mapping, shard_id, sequence_number, updated_at)"
                " VALUES (?, 'shardId-0', '49590338', 1.0)",
                (mapping,),
            )
        old.commit()
    checkpoints = await SqliteCheckpointStore(path).open()
    store = await SqliteMappingStore(checkpoints).open()
    created = await store.create(new_record("u-1"), limit=5)
    assert await store.records() == {"u-1": created}
    await checkpoints.forget_mapping("gone")
    assert await checkpoints.get_all("gone") == {}
    assert set(await checkpoints.get_all("kept")) == {"shardId-0"}
    await checkpoints.aclose()
