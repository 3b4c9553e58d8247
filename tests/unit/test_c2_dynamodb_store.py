"""The lease table's mapping store on a fake of its :class:`TableCalls` (our own interface):
the retry, lost-reply and paging paths that emulators cannot be made to take on demand. The
fake evaluates the few expression forms the store sends, over items in DynamoDB's wire
format; the contract against moto and DynamoDB Local is
``tests/integration/test_c2_store_contract.py``."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from poller.checkpoints.dynamodb.calls import Transaction, _Write
from poller.control.store import MAX_WRITE_ATTEMPTS, MappingRecord, PairTaken, pair_key
from poller.control.store_dynamodb import (
    HEAD_KEY,
    REGISTRY_KEY,
    REPLICAS_KEY,
    DynamoDBMappingStore,
    record_from_item,
    record_item,
    record_key,
)
from poller.errors import CheckpointError
from poller.retry import Backoff

pytestmark = pytest.mark.anyio

Item = dict[str, Any]
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"


class Refused(Exception):
    """A false condition inside the fake."""


class FakeTableCalls:
    """The calls the mapping store makes, on a dict of items. Hooks for tests:
    ``before_transact`` runs before each transaction is evaluated (another writer landing
    first); ``lose_next`` applies the next transaction and then answers as the SDK's refused
    retry would; ``unprocessed`` holds back that many keys of the next batch reads."""

    def __init__(self) -> None:
        self.table = "leases"
        self.items: dict[str, Item] = {}
        self.before_transact: Callable[[], None] | None = None
        self.lose_next = 0
        self.unprocessed = 0
        self.transactions = 0
        self.down = False

    def _check_up(self, call: str) -> None:
        if self.down:
            raise CheckpointError(f"lease table {self.table}: {call} could not reach DynamoDB")

    async def call(self, call: str, method: str, **params: Any) -> Item:
        self._check_up(call)
        assert method == "get_item"
        item = self.items.get(params["Key"]["leaseKey"]["S"])
        return {} if item is None else {"Item": copy.deepcopy(item)}

    async def read(self, call: str, key: str) -> Item | None:
        self._check_up(call)
        return copy.deepcopy(self.items.get(key))

    async def batch_read(self, call: str, keys: Sequence[str]) -> tuple[list[Item], list[str]]:
        self._check_up(call)
        held, self.unprocessed = list(keys[: self.unprocessed]), max(0, self.unprocessed - 1)
        found = [copy.deepcopy(self.items[k]) for k in keys if k in self.items and k not in held]
        return found, held

    async def put_new(self, item: Item, what: str) -> bool:
        self._check_up(what)
        key = item["leaseKey"]["S"]
        if key in self.items:
            return False
        self.items[key] = copy.deepcopy(item)
        return True

    async def update(
        self,
        call: str,
        key: str,
        *,
        update: str,
        condition: str,
        values: Item,
        names: dict[str, str] | None = None,
        return_new: bool = True,
    ) -> _Write:
        self._check_up(call)
        body = {
            "Key": {"leaseKey": {"S": key}},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names or {},
            "ExpressionAttributeValues": values,
        }
        staged = copy.deepcopy(self.items)
        try:
            _apply(staged, {"Update": body})
        except Refused:
            return _Write(False, copy.deepcopy(self.items.get(key)))
        self.items = staged
        return _Write(True, None)

    async def transact_write(
        self, call: str, actions: Sequence[Item], *, token: str | None = None
    ) -> Transaction:
        self._check_up(call)
        self.transactions += 1
        if self.before_transact is not None:
            self.before_transact()
        staged = copy.deepcopy(self.items)
        try:
            for action in actions:
                _apply(staged, action)
        except Refused:
            return Transaction(False, ("ConditionalCheckFailed",))
        self.items = staged
        if self.lose_next:
            self.lose_next -= 1
            return Transaction(False, ("ConditionalCheckFailed",))
        return Transaction(True)


def _path(expression: str, names: dict[str, str]) -> list[str]:
    return [names.get(part, part.lstrip("#")) for part in expression.strip().split(".")]


def _get(item: Item | None, path: list[str]) -> Any:
    value: Any = item
    for i, name in enumerate(path):
        if value is None:
            return None
        value = value.get(name) if i == 0 else value.get("M", {}).get(name)
    return value


def _holds(item: Item | None, condition: str, names: dict[str, str], values: Item) -> bool:
    for atom in condition.split(" AND "):
        found = re.fullmatch(r"attribute_(not_)?exists\((.+)\)", atom.strip())
        if found:
            present = item is not None and _get(item, _path(found.group(2), names)) is not None
            if present == bool(found.group(1)):
                return False
            continue
        left, right = atom.split(" = ")
        if _get(item, _path(left, names)) != values[right.strip()]:
            return False
    return True


def _apply(items: dict[str, Item], action: Item) -> None:
    """One write in place, or Refused (nothing written by the caller's staging)."""
    ((kind, body),) = action.items()
    key = (body.get("Item") or body["Key"])["leaseKey"]["S"]
    names, values = (
        body.get("ExpressionAttributeNames", {}),
        body.get("ExpressionAttributeValues", {}),
    )
    current = items.get(key)
    if "ConditionExpression" in body and not _holds(
        current, body["ConditionExpression"], names, values
    ):
        raise Refused
    if kind == "Put":
        items[key] = copy.deepcopy(body["Item"])
    elif kind == "Delete":
        items.pop(key, None)
    else:
        item = items.setdefault(key, {"leaseKey": {"S": key}})
        for clause, paths in re.findall(
            r"(SET|REMOVE) (.*?)(?= SET | REMOVE |$)", body["UpdateExpression"]
        ):
            for part in paths.split(", "):
                if clause == "SET":
                    left, right = part.split(" = ")
                    _set(item, _path(left, names), copy.deepcopy(values[right.strip()]))
                else:
                    _set(item, _path(part, names), None)


def _set(item: Item, path: list[str], value: Any) -> None:
    parent = item if len(path) == 1 else _get(item, path[:-1])
    if parent is None:
        raise AssertionError(f"DynamoDB refuses a nested path in a missing map: {path}")
    target = parent if len(path) == 1 else parent["M"]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


def new_record(uuid: str, source: str = SOURCE, **request: Any) -> MappingRecord:
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": source, **request},
        tags={},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, source),
        last_modified=1.0,
    )


@pytest.fixture
def calls() -> FakeTableCalls:
    return FakeTableCalls()


@pytest.fixture
def store(calls: FakeTableCalls) -> DynamoDBMappingStore:
    return DynamoDBMappingStore(
        calls,  # type: ignore[arg-type]
        clock=lambda: 7.5,
        backoff=Backoff(initial=0.0, maximum=0.0),
    )


def append(entry: str) -> Callable[[MappingRecord, int], MappingRecord]:
    def change(current: MappingRecord, revision: int) -> MappingRecord:
        log = [*current.request["log"], entry]
        return replace(current, request={**current.request, "log": log}, revision=revision)

    return change


def mark_deleted(current: MappingRecord, revision: int) -> MappingRecord:
    return replace(current, desired="Deleted", change="delete", revision=revision)


async def test_writes_go_through_and_read_back(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    assert (await store.head(), await store.records(), await store.acks()) == (0, {}, {})
    created = await store.create(new_record("u-1", log=[]), limit=5)
    updated = await store.update("u-1", append("x"))
    assert updated is not None
    assert await store.records() == {"u-1": updated}
    assert await store.head() == 2
    await store.set_processing_result("u-1", "OK")
    await store.set_processing_result("gone", "OK")
    assert record_key("gone") not in calls.items
    assert (await store.get("u-1")) == replace(updated, last_processing_result="OK")
    assert created.written == 1
    await store.update("u-1", mark_deleted)
    assert await store.finalize_delete("u-1", 3)
    assert await store.records() == {}
    await store.aclose()


async def test_a_write_landing_first_is_read_again_and_merged(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    await store.create(new_record("u-1", log=[]), limit=5)
    landed: list[str] = []

    def another_writer() -> None:
        if not landed:  # once: the store's first attempt then finds the head moved
            landed.append("other")
            calls.before_transact = None
            key = record_key("u-1")
            theirs = append("other")(record_from_item(calls.items[key]), 2)
            calls.items[key] = record_item(replace(theirs, written=2), "their-token")
            calls.items[HEAD_KEY]["revision"] = {"N": "2"}

    calls.before_transact = another_writer
    updated = await store.update("u-1", append("mine"))
    assert updated is not None
    assert updated.written == 3
    assert updated.request["log"] == ["other", "mine"]
    assert calls.transactions == 3  # create, refused update, retried update


async def test_contention_without_end_is_a_checkpoint_error(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    await store.create(new_record("u-1", log=[]), limit=5)
    await store.update("u-1", mark_deleted)

    def bump() -> None:
        head = calls.items[HEAD_KEY]
        head["revision"] = {"N": str(int(head["revision"]["N"]) + 1)}

    calls.before_transact = bump
    for call in (
        lambda: store.update("u-1", append("x")),
        lambda: store.create(new_record("u-2", SOURCE + "-2"), limit=5),
        lambda: store.finalize_delete("u-1", 2),
    ):
        before = calls.transactions
        with pytest.raises(CheckpointError, match=f"refused {MAX_WRITE_ATTEMPTS} times"):
            await call()
        assert calls.transactions - before == MAX_WRITE_ATTEMPTS


async def test_a_lost_reply_counts_as_written_once(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    calls.lose_next = 1
    created = await store.create(new_record("u-1", log=[]), limit=5)
    assert await store.records() == {"u-1": created}
    calls.lose_next = 1
    updated = await store.update("u-1", append("once"))
    assert updated is not None
    assert updated.request["log"] == ["once"]
    assert await store.head() == 2
    await store.update("u-1", mark_deleted)
    calls.lose_next = 1
    assert await store.finalize_delete("u-1", 3)
    assert calls.transactions == 4


async def test_a_create_of_its_own_stored_uuid_returns_the_record(
    store: DynamoDBMappingStore,
) -> None:
    created = await store.create(new_record("u-1"), limit=5)
    assert await store.create(new_record("u-1"), limit=5) == created  # the SDK's late retry
    with pytest.raises(PairTaken, match="u-1"):
        await store.create(new_record("u-2"), limit=5)


async def test_unprocessed_keys_are_asked_again(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    for i in range(105):  # two BatchGetItem pages
        await store.create(new_record(f"u-{i:03}", f"{SOURCE}-{i}"), limit=200)
    calls.unprocessed = 3
    assert len(await store.records()) == 105
    calls.unprocessed = MAX_WRITE_ATTEMPTS + 1
    with pytest.raises(CheckpointError, match="unprocessed"):
        await store.records()


async def test_acks_create_their_item_then_set_entries(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    await store.forget_replica("a")  # no item yet: nothing happens
    await store.ack("a", 1)
    await store.ack("b", 2)
    await store.forget_replica("a")
    assert {r: (a.applied, a.beat_at) for r, a in (await store.acks()).items()} == {"b": (2, 7.5)}
    assert "mapping" not in calls.items[REPLICAS_KEY]


async def test_an_ack_item_without_its_map_is_an_error(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    calls.items[REPLICAS_KEY] = {"leaseKey": {"S": REPLICAS_KEY}}
    with pytest.raises(CheckpointError, match="no esmReplicas map"):
        await store.ack("a", 1)


async def test_an_outage_propagates(calls: FakeTableCalls, store: DynamoDBMappingStore) -> None:
    calls.down = True
    with pytest.raises(CheckpointError, match="leases"):
        await store.head()


async def test_an_update_onto_a_taken_pair_is_refused(
    calls: FakeTableCalls, store: DynamoDBMappingStore
) -> None:
    await store.create(new_record("u-1"), limit=5)
    await store.create(new_record("u-2", SOURCE + "-2"), limit=5)

    def onto(source: str) -> Callable[[MappingRecord, int], MappingRecord]:
        return lambda c, r: replace(c, pair_key=pair_key(FUNCTION, source), revision=r)

    with pytest.raises(PairTaken, match="u-1"):
        await store.update("u-2", onto(SOURCE))
    moved = await store.update("u-2", onto(SOURCE + "-3"))
    assert moved is not None
    assert moved.written == 3

    calls.items[REGISTRY_KEY]["revision"] = {"N": "99"}  # out of step with the head
    before = calls.transactions
    with pytest.raises(CheckpointError, match="refused"):
        await store.update("u-2", onto(SOURCE + "-4"))
    assert calls.transactions == before  # judged again each time, never written
