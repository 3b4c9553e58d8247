"""The mapping store in the lease table: shared by every replica, no new table, no new ARN.

Data flow::

    poller.control.operations / poller.reconcile --MappingStore--> DynamoDBMappingStore
        --TableCalls (GetItem, BatchGetItem, UpdateItem, TransactWriteItems)--> lease table

Items (hash key ``leaseKey``; none has a ``mapping`` attribute, so the view index, every Scan
filtered on ``mapping`` and ``poller status`` never see them; ``__esm__`` cannot be a mapping
name, which starts with a letter or digit)::

    __esm__#__head__      revision N, writeId S    the head: moved by every mutation, read
                                                   by every replica every poll interval, so
                                                   it holds nothing else (a read costs by the
                                                   item's size, whatever it projects)
    __esm__#__registry__  revision N, esmRegistry M  uuid -> {r: written N, p: pair digest S};
                                                   what creates check the pair and the limit
                                                   on, and what ``records`` reads first
    __esm__#<uuid>        esmOf S, esmRecord S (the record's JSON), revision N, written N,
                          desired S, writeId S, recentWrites L (the latest writes' tokens),
                          lastProcessingResult S (apart from the JSON: written without a
                          condition on ``written``, merged on read)
    __esm__#__replicas__  esmReplicas M            replica -> {applied N, beat N}

Every mutation is one TransactWriteItems: the record (put on ``attribute_not_exists``, updated
or deleted on ``written = :w``), the head (on ``revision = :g``) and the registry entry. The
head's condition serializes every mutation, so a create's pair and limit checks, made on the
registry read at that head, still hold when it lands. A transaction refused by a condition is
read again and retried, with jittered backoff, up to ``MAX_WRITE_ATTEMPTS`` times.

A lost answer (the write applied, the SDK retried it): the request carries a
``ClientRequestToken`` (DynamoDB answers the retry with success), and the written items carry
it as ``writeId``, so that where the token is not honoured (emulators; a retry 10 minutes
later) the refused retry is recognised as this writer's own write and not applied twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid as uuids
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio

from poller.control.store import (
    ACK_RETENTION_SECONDS,
    MAX_WRITE_ATTEMPTS,
    ChangeFn,
    MappingRecord,
    PairTaken,
    ReplicaAck,
    TooManyMappings,
    fresh_acks,
)
from poller.errors import CheckpointError
from poller.retry import Backoff

if TYPE_CHECKING:
    from poller.checkpoints.dynamodb.calls import TableCalls

PREFIX = "__esm__#"
HEAD_KEY = f"{PREFIX}__head__"
REGISTRY_KEY = f"{PREFIX}__registry__"
REPLICAS_KEY = f"{PREFIX}__replicas__"
#: How many of its latest writes' tokens a record item keeps (``recentWrites``), so that a
#: writer whose answer was lost recognises its write though others wrote the record since.
RECENT_WRITES = 8
#: BatchGetItem's limit of keys per call.
BATCH_GET_KEYS = 100
#: How often a store looks for acks to forget (before its first ack, then at most this often).
ACK_PRUNE_SECONDS = 3600.0
#: How many acks one UpdateItem forgets (its expressions stay within DynamoDB's 4 KB: short
#: placeholders, ``#m.#r99.#b = :b99 AND`` is 22 characters).
ACK_PRUNE_BATCH = 100
#: Between attempts of a refused mutation, and of a batch read's unprocessed keys.
CONTENTION_BACKOFF = Backoff(initial=0.02, maximum=0.5, jitter=0.5)

Item = dict[str, Any]


def record_key(uuid: str) -> str:
    """The ``leaseKey`` of a mapping's record."""
    return f"{PREFIX}{uuid}"


def pair_digest(pair_key: str) -> str:
    """What the registry keeps of a pair key: 128 bits of its SHA-256 (the pair keys are two
    ARNs, about 150 bytes; the registry holds one per mapping in one item of 400 KB)."""
    return hashlib.sha256(pair_key.encode()).hexdigest()[:32]


def _s(value: str) -> Item:
    return {"S": value}


def _n(value: int | float) -> Item:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _key(key: str) -> Item:
    return {"leaseKey": _s(key)}


# -- items <-> records (no I/O) ---------------------------------------------------------------


def record_item(record: MappingRecord, token: str) -> Item:
    """The item of a new record, written by the write ``token``."""
    item = {
        **_key(record_key(record.uuid)),
        "esmOf": _s(record.uuid),
        "esmRecord": _s(record.to_json()),
        "revision": _n(record.revision),
        "written": _n(record.written),
        "desired": _s(record.desired),
        "writeId": _s(token),
        "recentWrites": {"L": [_s(token)]},
    }
    if record.last_processing_result is not None:
        item["lastProcessingResult"] = _s(record.last_processing_result)
    return item


def record_from_item(item: Mapping[str, Any]) -> MappingRecord:
    """The record an item holds, with its processing result (kept apart) merged in."""
    record = MappingRecord.from_json(item["esmRecord"]["S"])
    result = item.get("lastProcessingResult")
    return record if result is None else replace(record, last_processing_result=result["S"])


def recent_writes(item: Mapping[str, Any] | None) -> list[str]:
    """The tokens of the latest writes of a record item, newest first (its ``writeId`` alone
    for an item without the list)."""
    if item is None:
        return []
    if "recentWrites" in item:
        return [str(token["S"]) for token in item["recentWrites"]["L"]]
    return [str(item["writeId"]["S"])] if "writeId" in item else []


def registry_entry(record: MappingRecord) -> Item:
    """A record's entry in the registry map."""
    return {"M": {"r": _n(record.written), "p": _s(pair_digest(record.pair_key))}}


def registry_from_item(item: Mapping[str, Any] | None) -> tuple[int, dict[str, str]]:
    """(the head revision it was written at, uuid -> pair digest); (0, {}) for no item."""
    if item is None:
        return 0, {}
    entries = item.get("esmRegistry", {}).get("M", {})
    return int(Decimal(item["revision"]["N"])), {u: e["M"]["p"]["S"] for u, e in entries.items()}


def pair_owner(
    entries: Mapping[str, str], pair_key: str, *, excluding: str | None = None
) -> str | None:
    """The UUID the registry ``entries`` hold ``pair_key`` under (other than ``excluding``)."""
    digest = pair_digest(pair_key)
    return next((u for u, p in sorted(entries.items()) if p == digest and u != excluding), None)


def acks_from_item(item: Mapping[str, Any] | None) -> dict[str, ReplicaAck]:
    """Every replica's ack in the replicas item (none for no item)."""
    if item is None:
        return {}
    return {
        replica: ReplicaAck(
            applied=int(Decimal(ack["M"]["applied"]["N"])),
            beat_at=float(Decimal(ack["M"]["beat"]["N"])),
        )
        for replica, ack in item.get("esmReplicas", {}).get("M", {}).items()
    }


def stale_beats(item: Mapping[str, Any] | None, now: float) -> dict[str, Item]:
    """replica -> its ``beat`` value as stored, for the acks in the replicas item older than
    ``ACK_RETENTION_SECONDS`` at ``now``."""
    if item is None:
        return {}
    return {
        replica: ack["M"]["beat"]
        for replica, ack in item.get("esmReplicas", {}).get("M", {}).items()
        if now - float(Decimal(ack["M"]["beat"]["N"])) > ACK_RETENTION_SECONDS
    }


def forget_acks_update(beats: Mapping[str, Item]) -> tuple[str, str, Item, dict[str, str]]:
    """(update, condition, values, names) removing the acks ``beats`` names, each only while
    its beat is the one read (a replica back meanwhile keeps its ack)."""
    names = {"#m": "esmReplicas", "#b": "beat"}
    names.update({f"#r{i}": replica for i, replica in enumerate(beats)})
    values = {f":b{i}": beat for i, beat in enumerate(beats.values())}
    update = "REMOVE " + ", ".join(f"#m.#r{i}" for i in range(len(beats)))
    condition = " AND ".join(f"#m.#r{i}.#b = :b{i}" for i in range(len(beats)))
    return update, condition, values, names


def ack_value(applied: int, beat_at: float) -> Item:
    """A replica's entry in the replicas map."""
    return {"M": {"applied": _n(applied), "beat": _n(float(beat_at))}}


# -- transaction actions (no I/O) -------------------------------------------------------------


def head_update(previous: int, revision: int, token: str) -> Item:
    """Move the head from ``previous`` to ``revision``: the condition that serializes every
    mutation (``previous`` 0: the head item does not exist yet)."""
    condition = "attribute_not_exists(#revision)" if previous == 0 else "#revision = :previous"
    values = {":revision": _n(revision), ":token": _s(token)}
    if previous:
        values[":previous"] = _n(previous)
    return {
        "Update": {
            "Key": _key(HEAD_KEY),
            "UpdateExpression": "SET #revision = :revision, #writeId = :token",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#revision": "revision", "#writeId": "writeId"},
            "ExpressionAttributeValues": values,
        }
    }


def registry_put(revision: int, entries: Mapping[str, Item]) -> Item:
    """Write the whole registry (its first write): no condition, the head's serializes."""
    item = {**_key(REGISTRY_KEY), "revision": _n(revision), "esmRegistry": {"M": dict(entries)}}
    return {"Put": {"Item": item}}


def registry_set(revision: int, uuid: str, entry: Item | None) -> Item:
    """Set (``entry``) or remove (None) one registry entry."""
    names = {"#revision": "revision", "#registry": "esmRegistry", "#uuid": uuid}
    values = {":revision": _n(revision)}
    expression = "SET #revision = :revision"
    if entry is None:
        expression += " REMOVE #registry.#uuid"
    else:
        expression += ", #registry.#uuid = :entry"
        values[":entry"] = entry
    return {
        "Update": {
            "Key": _key(REGISTRY_KEY),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }


def record_put(record: MappingRecord, token: str) -> Item:
    """Create a record's item, only if no item has its key."""
    return {
        "Put": {
            "Item": record_item(record, token),
            "ConditionExpression": "attribute_not_exists(#leaseKey)",
            "ExpressionAttributeNames": {"#leaseKey": "leaseKey"},
        }
    }


def record_update(
    current: MappingRecord, new: MappingRecord, token: str, earlier: Sequence[str] = ()
) -> Item:
    """Rewrite a record read at ``current.written``, only if nobody wrote it since. The
    processing result is written only when the change made it differ from what was read
    (otherwise a concurrent :meth:`~DynamoDBMappingStore.set_processing_result` would be
    undone). ``earlier``: the tokens of the record's latest writes, as read (kept after
    ``token``, up to ``RECENT_WRITES``)."""
    sets = [
        "#esmRecord = :record",
        "#revision = :revision",
        "#written = :written",
        "#desired = :desired",
        "#writeId = :token",
        "#recentWrites = :recent",
    ]
    names = {f"#{name}": name for name in ("esmRecord", "revision", "written", "desired")}
    names["#writeId"] = "writeId"
    names["#recentWrites"] = "recentWrites"
    recent = [token, *earlier][:RECENT_WRITES]
    values = {
        ":record": _s(new.to_json()),
        ":revision": _n(new.revision),
        ":written": _n(new.written),
        ":desired": _s(new.desired),
        ":token": _s(token),
        ":recent": {"L": [_s(t) for t in recent]},
        ":read": _n(current.written),
    }
    expression = ""
    if new.last_processing_result != current.last_processing_result:
        names["#result"] = "lastProcessingResult"
        if new.last_processing_result is None:
            expression = " REMOVE #result"
        else:
            sets.append("#result = :result")
            values[":result"] = _s(new.last_processing_result)
    return {
        "Update": {
            "Key": _key(record_key(new.uuid)),
            "UpdateExpression": "SET " + ", ".join(sets) + expression,
            "ConditionExpression": "#written = :read",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }


def record_delete(current: MappingRecord) -> Item:
    """Delete a finalized record, only if nobody wrote it since it was read."""
    return {
        "Delete": {
            "Key": _key(record_key(current.uuid)),
            "ConditionExpression": "#written = :read AND #desired = :deleted",
            "ExpressionAttributeNames": {"#written": "written", "#desired": "desired"},
            "ExpressionAttributeValues": {":read": _n(current.written), ":deleted": _s("Deleted")},
        }
    }


# -- the store --------------------------------------------------------------------------------


class DynamoDBMappingStore:
    """Implements :class:`~poller.control.store.MappingStore` in the lease table.

    Args:
        calls: the lease table's calls (its client and name; the caller owns the client).
        clock: the wall clock of acks (epoch seconds).
        backoff: between attempts of a mutation refused by contention.
    """

    def __init__(
        self,
        calls: TableCalls,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = CONTENTION_BACKOFF,
    ) -> None:
        self._calls = calls
        self._clock = clock
        self._backoff = backoff
        #: When (monotonic) this store last looked for acks to forget; None: never.
        self._pruned_at: float | None = None

    @property
    def table(self) -> str:
        """The lease table's name."""
        return self._calls.table

    # -- reads ----------------------------------------------------------------------------

    async def head(self) -> int:
        """The head revision: one consistent GetItem of a tiny item (every poll interval)."""
        response = await self._calls.call(
            "GetItem (mapping store head)",
            "get_item",
            Key=_key(HEAD_KEY),
            ConsistentRead=True,
            ProjectionExpression="#revision",
            ExpressionAttributeNames={"#revision": "revision"},
        )
        item = response.get("Item")
        return 0 if item is None else int(Decimal(item["revision"]["N"]))

    async def records(self) -> dict[str, MappingRecord]:
        """Every stored record: the registry, then its records by consistent BatchGetItem."""
        _, entries = registry_from_item(await self._read("mapping registry", REGISTRY_KEY))
        items = await self._batch_get([record_key(uuid) for uuid in sorted(entries)])
        # A record finalized between the two reads is simply absent: it is gone.
        return {record.uuid: record for record in map(record_from_item, items)}

    async def get(self, uuid: str) -> MappingRecord | None:
        """One record (a consistent GetItem), or None."""
        item = await self._read("mapping record", record_key(uuid))
        return None if item is None else record_from_item(item)

    async def acks(self) -> dict[str, ReplicaAck]:
        """Every replica's last ack, but those too old (one consistent GetItem)."""
        return fresh_acks(
            acks_from_item(await self._read("mapping acks", REPLICAS_KEY)), self._clock()
        )

    # -- mutations ------------------------------------------------------------------------

    async def create(self, record: MappingRecord, *, limit: int) -> MappingRecord:
        """Store a new record at the next head revision (one transaction, retried when
        another mutation landed first). A create of a UUID already stored with the same pair
        (this call's own write, whose answer was lost) returns the stored record."""
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            registry = await self._read("mapping registry", REGISTRY_KEY)
            head, entries = registry_from_item(registry)
            owner = pair_owner(entries, record.pair_key)
            if owner is not None:
                return await self._own_create_or_taken(record, owner)
            if len(entries) >= limit:
                raise TooManyMappings(limit)
            token = str(uuids.uuid4())
            stored = replace(record, revision=head + 1, created_revision=head + 1, written=head + 1)
            entry = registry_entry(stored)
            on_registry = (
                registry_put(head + 1, {stored.uuid: entry})
                if registry is None
                else registry_set(head + 1, stored.uuid, entry)
            )
            actions = [record_put(stored, token), head_update(head, head + 1, token), on_registry]
            if await self._transact("create", actions, token, stored.uuid):
                return stored
            await self._back_off(attempt)
        raise self._contended("create", record.uuid)

    async def update(self, uuid: str, change: ChangeFn) -> MappingRecord | None:
        """Read the record and the head, apply ``change``, write on both being unchanged
        (one transaction); retried on contention. Raises PairTaken when the change moves the
        record to a function and source another record has."""
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            item = await self._read("mapping record", record_key(uuid))
            if item is None:
                return None
            current = record_from_item(item)
            head = await self.head()
            new = change(current, head + 1)
            if new is None:
                return current
            if new.pair_key != current.pair_key and not await self._pair_free(new, head):
                await self._back_off(attempt)  # the registry moved on since the head read
                continue
            token = str(uuids.uuid4())
            stored = replace(new, written=head + 1)
            actions = [
                record_update(current, stored, token, recent_writes(item)),
                head_update(head, head + 1, token),
                registry_set(head + 1, uuid, registry_entry(stored)),
            ]
            if await self._transact("update", actions, token, uuid):
                return stored
            await self._back_off(attempt)
        raise self._contended("update", uuid)

    async def finalize_delete(self, uuid: str, revision: int) -> bool:
        """Remove a deleted record still at ``revision`` with its registry entry, moving the
        head (one transaction); retried while only other mappings' writes get in the way.

        A record gone after this call's transaction was refused was finalized at ``revision``
        (only a finalize removes records, and a deleted record's revision no longer moves):
        by this call, whose answer was lost while another write moved the head past its
        token, or by a replica racing it. Either way True, so that the caller removes the
        checkpoints (idempotent): False would leave them behind for good."""
        refused = False
        for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
            current = await self.get(uuid)
            if current is None:
                return refused
            if current.revision != revision or current.desired != "Deleted":
                return False
            head = await self.head()
            token = str(uuids.uuid4())
            actions = [
                record_delete(current),
                head_update(head, head + 1, token),
                registry_set(head + 1, uuid, None),
            ]
            if await self._transact("finalize_delete", actions, token, None):
                return True
            refused = True
            await self._back_off(attempt)
        raise self._contended("finalize_delete", uuid)

    async def set_processing_result(self, uuid: str, result: str) -> None:
        """Set ``lastProcessingResult`` on the record's item, if it exists; neither the head
        nor ``written`` moves, and a concurrent user change keeps it (it is merged on read)."""
        await self._calls.update(
            "UpdateItem (mapping processing result)",
            record_key(uuid),
            update="SET #lastProcessingResult = :result",
            condition="attribute_exists(#leaseKey)",  # never creates a stray item
            values={":result": _s(result)},
            return_new=False,
        )

    async def ack(self, replica: str, applied: int) -> None:
        """Set ``replica``'s entry (``SET esmReplicas.#replica``); a nested path needs the map,
        so the first ack of a table puts the item, and a put that lost that race updates.
        Before its first ack, then at most every ``ACK_PRUNE_SECONDS``, the store forgets the
        acks too old first (so that an item full of crashed replicas' acks takes this one)."""
        now = self._clock()
        if self._pruned_at is None or time.monotonic() - self._pruned_at >= ACK_PRUNE_SECONDS:
            # Housekeeping: its failure must never be what keeps the ack from landing (an
            # outage fails the ack below anyway; the next look is in ACK_PRUNE_SECONDS).
            with contextlib.suppress(CheckpointError):
                await self._forget_stale_acks(now)
            self._pruned_at = time.monotonic()
        value = ack_value(applied, now)
        for attempt in range(2):
            write = await self._calls.update(
                "UpdateItem (mapping ack)",
                REPLICAS_KEY,
                update="SET #esmReplicas.#replica = :ack",
                condition="attribute_exists(#esmReplicas)",
                values={":ack": value},
                names={"#replica": replica},
                return_new=False,
            )
            if write.ok:
                return
            item = {**_key(REPLICAS_KEY), "esmReplicas": {"M": {replica: value}}}
            if attempt == 0 and await self._calls.put_new(item, "PutItem (mapping ack)"):
                return
        raise CheckpointError(
            f"lease table {self.table}: UpdateItem (mapping ack) was refused: the item"
            f" {REPLICAS_KEY} has no esmReplicas map"
        )

    async def forget_replica(self, replica: str) -> None:
        """Remove ``replica``'s entry; nothing happens when it has none."""
        await self._calls.update(
            "UpdateItem (mapping forget replica)",
            REPLICAS_KEY,
            update="REMOVE #esmReplicas.#replica",
            condition="attribute_exists(#esmReplicas)",
            values={},
            names={"#replica": replica},
            return_new=False,
        )

    async def aclose(self) -> None:
        """Nothing of its own: the client is the service's."""

    async def _forget_stale_acks(self, now: float) -> None:
        """Remove the acks older than ``ACK_RETENTION_SECONDS``, ``ACK_PRUNE_BATCH`` an
        UpdateItem; a batch refused (one of its replicas acked meanwhile) waits for the next
        look."""
        beats = stale_beats(await self._read("mapping acks", REPLICAS_KEY), now)
        replicas = sorted(beats)
        for start in range(0, len(replicas), ACK_PRUNE_BATCH):
            batch = {r: beats[r] for r in replicas[start : start + ACK_PRUNE_BATCH]}
            update, condition, values, names = forget_acks_update(batch)
            await self._calls.update(
                "UpdateItem (mapping forget stale acks)",
                REPLICAS_KEY,
                update=update,
                condition=condition,
                values=values,
                names=names,
                return_new=False,
            )

    # -- helpers --------------------------------------------------------------------------

    async def _read(self, what: str, key: str) -> Item | None:
        return await self._calls.read(f"GetItem ({what})", key)

    async def _transact(
        self, what: str, actions: Sequence[Item], token: str, uuid: str | None
    ) -> bool:
        """Send one mutation; whether it applied. A refusal is checked against the token:
        the record (``uuid``: among its latest writes, as others may have written it since)
        or, for a removal, the head carrying it means this very write applied and only its
        answer was lost (the SDK's retry was the one refused)."""
        result = await self._calls.transact_write(
            f"TransactWriteItems (mapping {what})", actions, token=token
        )
        if result.ok:
            return True
        item = await self._read(
            "mapping write check", HEAD_KEY if uuid is None else record_key(uuid)
        )
        if uuid is None:
            return item is not None and item.get("writeId") == _s(token)
        return token in recent_writes(item)

    async def _pair_free(self, record: MappingRecord, head: int) -> bool:
        """Whether ``record``'s new pair is free, judged on the registry at ``head`` (False:
        the registry is at another revision, so judge again); PairTaken when it is not."""
        revision, entries = registry_from_item(await self._read("mapping registry", REGISTRY_KEY))
        if revision != head:
            return False
        owner = pair_owner(entries, record.pair_key, excluding=record.uuid)
        if owner is not None:
            raise PairTaken(owner)
        return True

    async def _own_create_or_taken(self, record: MappingRecord, owner: str) -> MappingRecord:
        """The pair is registered to ``owner``: this create's own earlier write (same UUID)
        whose answer was lost, or another mapping's (AWS's 409)."""
        if owner == record.uuid:
            stored = await self.get(owner)
            if stored is not None and stored.pair_key == record.pair_key:
                return stored
        raise PairTaken(owner)

    async def _batch_get(self, keys: Sequence[str]) -> list[Item]:
        """The items at ``keys`` by consistent BatchGetItem, 100 keys a call, unprocessed
        keys asked again (with backoff) until none is left or the attempts run out."""
        found: list[Item] = []
        for start in range(0, len(keys), BATCH_GET_KEYS):
            pending = list(keys[start : start + BATCH_GET_KEYS])
            for attempt in range(1, MAX_WRITE_ATTEMPTS + 1):
                items, pending = await self._calls.batch_read(
                    "BatchGetItem (mapping records)", pending
                )
                found.extend(items)
                if not pending:
                    break
                await self._back_off(attempt)
            else:
                raise CheckpointError(
                    f"lease table {self.table}: BatchGetItem (mapping records) left"
                    f" {len(pending)} keys unprocessed after {MAX_WRITE_ATTEMPTS} attempts"
                )
        return found

    async def _back_off(self, attempt: int) -> None:
        if attempt < MAX_WRITE_ATTEMPTS:
            await anyio.sleep(self._backoff.delay(attempt))

    def _contended(self, what: str, uuid: str) -> CheckpointError:
        return CheckpointError(
            f"lease table {self.table}: TransactWriteItems (mapping {what}) of {uuid} was"
            f" refused {MAX_WRITE_ATTEMPTS} times: other writes kept landing first"
        )
