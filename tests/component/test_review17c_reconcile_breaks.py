"""Hostile review of hot apply (poller.reconcile, poller.app): each test is a way the running
service broke, kept as a regression test.

The real :class:`~poller.app.Service` runs as in ``test_c4_reconcile.py`` (its harness is
reused): SQLite checkpoints, a :class:`MemoryMappingStore` (here made slow, or made to answer
garbage), the fakes of :mod:`poller.testing` as the source and the target.
"""

from __future__ import annotations

import functools
import operator
from pathlib import Path
from typing import Any

import anyio
import pytest

import poller.reconcile
from poller.config import AnyMapping
from poller.control.store import MappingRecord
from poller.control.store_memory import MemoryMappingStore
from poller.testing import FakeStreamApi, RecordingTarget, Slow
from poller.types import InvokeResult, Target
from tests.component.test_c4_reconcile import (
    LIMIT,
    REPLICA,
    SHARD,
    UUID,
    FakeSourceService,
    all_sequences,
    api_service,
    applied,
    change,
    config,
    events,
    file_mapping,
    file_service,
    put,
    record,
    running,
    slow_success,
    write,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

OTHER = "7a2b3c4d-2222-4333-8444-a55566667777"
OTHER_STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/other"


@pytest.fixture
def api() -> FakeStreamApi:
    """The one shard every stream mapping reads (as in test_c4_reconcile)."""
    api = FakeStreamApi()
    api.add_shard(SHARD)
    return api


@pytest.fixture
def target() -> RecordingTarget:
    return RecordingTarget(default=slow_success)


class GarbageStore(MemoryMappingStore):
    """A memory store whose ``records()`` cannot be parsed while ``corrupt`` is set (an item
    edited by hand, or written by a broken tool): not an outage, a ValueError."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt = False

    async def records(self) -> dict[str, MappingRecord]:
        if self.corrupt:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        return await super().records()


async def test_a_store_answer_that_does_not_parse_never_stops_the_service(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Break: any error of a pass but CheckpointError ended the reconciler's task, and the
    service with it (every mapping stopped). Now it is logged with its traceback and
    retried like an outage; the running mappings run on."""
    store = GarbageStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service) as logs:
        await store.create(record(5), limit=10)
        put(api, 10)
        await wait_until(lambda: len(target.delivered()) == 10, LIMIT, "the first records")
        store.corrupt = True
        other = await store.create(record(5, uuid=OTHER, source=OTHER_STREAM), limit=10)
        await wait_until(
            lambda: events(logs, "reconcile.pass_failed"), LIMIT, "the failed read logged"
        )
        put(api, 10)
        await wait_until(lambda: len(target.delivered()) == 20, LIMIT, "the mapping runs on")
        assert not service.stopping.is_set()
        store.corrupt = False
        await applied(store, other.revision)  # the store is read again, the change applied
        assert events(logs, "mapping_store.recovered")


class SlowStore(MemoryMappingStore):
    """A memory store whose ``records()`` waits for ``release`` while ``held`` (a BatchGetItem
    retried with backoff, a throttled table); the other calls answer."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.waiting = False
        self.release = anyio.Event()

    async def records(self) -> dict[str, MappingRecord]:
        if self.held:
            self.waiting = True
            await self.release.wait()
            self.waiting = False
        return await super().records()


async def test_a_slow_store_read_keeps_the_replica_beating(
    tmp_path: Path,
    api: FakeStreamApi,
    target: RecordingTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break: the heartbeat ran only while a pass applied, not while it read the store. A
    read slower than a replica's liveness made the peers count this replica dead, so a delete
    could be finalized (and its checkpoints removed) while this replica still ran the mapping.
    Now the replica beats, with the revision it applied before, for the whole pass."""
    monkeypatch.setattr(poller.reconcile, "ACK_INTERVAL_SECONDS", 0.2)
    store = SlowStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        created = await store.create(record(5), limit=10)
        await applied(store, created.revision)
        store.held = True
        deleted = await change(store, UUID, desired="Deleted", change="delete")
        await wait_until(lambda: store.waiting, LIMIT, "the reconciler reading the store")
        first = (await store.acks())[REPLICA].beat_at

        async def beaten_since() -> bool:
            ack = (await store.acks())[REPLICA]
            return ack.beat_at > first + 1.0 and ack.applied == created.revision

        await wait_until(beaten_since, LIMIT, "heartbeats during the slow read")
        assert store.waiting, "the read was still in progress"
        assert (await store.get(UUID)) is not None, "the delete is not finalized without us"
        store.release.set()
        await wait_until(
            lambda: _gone(store, UUID), LIMIT, "the delete finalized once this replica drained"
        )
        assert deleted.revision > created.revision


def _delivered(target: RecordingTarget, count: int) -> bool:
    return len(target.delivered()) == count


async def _gone(store: MemoryMappingStore, uuid: str) -> bool:
    return await store.get(uuid) is None


class ClosingTarget:
    """One build of a mapping's target: delegates to the shared recorder, closes alone."""

    def __init__(self, inner: RecordingTarget) -> None:
        self.inner = inner
        self.closed = False
        self.function_arn = inner.function_arn

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        return await self.inner.invoke(event)

    async def aclose(self) -> None:
        self.closed = True


class TargetPerBuild(FakeSourceService):
    """The fake service, with a target of its own per build (each closed on its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[ClosingTarget] = []

    async def _build_target(self, mapping: AnyMapping, clients: Any) -> Target:
        built = ClosingTarget(self.target)
        self.built.append(built)
        return built


async def test_a_forced_stop_during_an_update_drain_still_closes_the_old_target(
    tmp_path: Path, api: FakeStreamApi
) -> None:
    """Break: an update's drain cut short by the service's drain deadline (here a forced
    stop, the second SIGTERM) left the drained run's target open: it was out of the running
    set already, so the shutdown's close step never saw it (a Lambda client, a Python
    handler's threads). Now the drain closes it whatever ends it."""
    target = RecordingTarget()
    target.script(Slow(anyio.Event()))  # the first batch never finishes: the drain hangs
    store = MemoryMappingStore()
    shutdown = {"drain_timeout_seconds": 60}
    service = await api_service(tmp_path, api, target, store, shutdown=shutdown)
    service = TargetPerBuild(service.settings, api=api, target=target, store=store, start_grace=0)
    with anyio.fail_after(LIMIT):
        async with running(service) as logs:
            created = await store.create(record(5), limit=10)
            await applied(store, created.revision)
            put(api, 10)
            await wait_until(lambda: target.in_flight == 1, LIMIT, "the first batch stuck")
            await change(store, UUID, request={"BatchSize": 2}, change="update")
            await wait_until(
                lambda: service._mapping_stops[UUID].is_set(), LIMIT, "the update's drain begun"
            )
            service.request_stop(force=True)
    assert [built.closed for built in service.built] == [True]
    assert not events(logs, "mapping.drain_deadline")  # the service's deadline, not the mapping's


async def test_deleted_mappings_leave_nothing_behind_in_the_service(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Break: each mapping created and deleted through the API left its stop event and its
    LastProcessingResult in the service for good: over weeks of create/delete cycles (a CI
    pipeline's Terraform) the process only grew. Now a deleted mapping's go with it."""
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        reconciler = service._reconciler
        assert reconciler is not None
        uuids = [f"8b3c4d5e-3333-4444-8555-b6667778888{i}" for i in range(3)]
        put(api, 5)
        for i, uuid in enumerate(uuids):  # one after the other: the pair is free again
            created = await store.create(record(5, uuid=uuid), limit=10)
            await applied(store, created.revision)
            # Each new mapping reads the shard from its start (checkpoints of its own).
            count = functools.partial(_delivered, target, 5 * (i + 1))
            await wait_until(count, LIMIT, "records delivered")
            noted = functools.partial(operator.contains, reconciler.results._latest, uuid)
            await wait_until(noted, LIMIT, "its result noted")
            deleted = await change(store, uuid, desired="Deleted", change="delete")
            await applied(store, deleted.revision)
            await wait_until(functools.partial(_gone, store, uuid), LIMIT, "the delete finalized")
        await wait_until(
            lambda: not set(uuids) & set(service._mapping_stops), LIMIT, "stop events dropped"
        )
        assert not set(uuids) & set(reconciler.results._latest)
        assert not set(uuids) & set(reconciler.results._written)


class HangingStore(MemoryMappingStore):
    """A memory store whose ``head()`` never answers while ``held`` (a lease table whose
    calls time out slowly, retried); the other calls answer."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.waiting = False

    async def head(self) -> int:
        if self.held:
            self.waiting = True
            await anyio.sleep_forever()
        return await super().head()


async def test_a_stop_while_the_store_hangs_does_not_wait_for_the_drain_deadline(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Break: the reconciler's pass was not abandoned on a stop, only cancelled with the work
    at the drain deadline: a store call that hangs made every SIGTERM take the whole
    ``drain_timeout_seconds`` even with every mapping drained at once (and an orchestrator's
    grace period may kill the process before it closes clients). Now a stop abandons a pass
    outside the mapping set's apply; the mappings still drain and checkpoint."""
    store = HangingStore()
    shutdown = {"drain_timeout_seconds": 120}
    service = await api_service(tmp_path, api, target, store, shutdown=shutdown)
    with anyio.fail_after(LIMIT):
        async with running(service):
            created = await store.create(record(5), limit=10)
            await applied(store, created.revision)
            put(api, 10)
            await wait_until(lambda: len(target.delivered()) == 10, LIMIT, "records delivered")
            store.held = True
            await wait_until(lambda: store.waiting, LIMIT, "the reconciler stuck on the store")
            service.request_stop()
    assert target.delivered() == all_sequences(api)
    assert REPLICA not in await store.acks()  # the clean stop's last step ran


async def test_a_stop_during_start_up_while_the_store_hangs_exits_at_once(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """The same break at start-up: the first pass (read before the service is ready) hung on
    the store, and a SIGTERM then waited for the whole drain deadline. Now it exits cleanly
    and promptly."""
    store = HangingStore()
    store.held = True
    shutdown = {"drain_timeout_seconds": 120}
    service = await api_service(tmp_path, api, target, store, shutdown=shutdown)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            await wait_until(lambda: store.waiting, LIMIT, "start-up stuck on the store")
            assert not service.ready.is_set()
            service.request_stop()
    assert REPLICA not in await store.acks()


async def test_rapid_updates_while_records_flow_lose_nothing_and_keep_order(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Probe (held): updates landing while the previous one still drains, then a disable and
    an enable: every record is delivered once, in shard order, and the last configuration
    is the one that runs."""
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        await store.create(record(5), limit=10)
        put(api, 300)
        last = None
        for size in (4, 3, 2, 3, 1):
            await wait_until(
                functools.partial(_delivered_at_least, target, len(target.delivered()) + 3),
                LIMIT,
                "some batches between updates",
            )
            last = await change(store, UUID, request={"BatchSize": size}, change="update")
        assert last is not None
        disabled = await change(store, UUID, desired="Disabled", change="disable")
        await applied(store, disabled.revision)
        enabled = await change(store, UUID, desired="Enabled", change="enable")
        await applied(store, enabled.revision)
        await wait_until(functools.partial(_delivered, target, 300), LIMIT, "every record")
        assert target.delivered() == all_sequences(api)
        assert service.runners[-1].batch_size == 1


def _delivered_at_least(target: RecordingTarget, count: int) -> bool:
    return len(target.delivered()) >= count


async def test_a_reloaded_file_mapping_with_an_api_mappings_pair_does_not_run_both(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Break: the API refuses a mapping whose function and source a file mapping has, but a
    SIGHUP could add the file mapping after the API's: both ran, each with checkpoints of its
    own, and the function got every record twice from then on (AWS never has two mappings of
    one function and source). Now the file's wins, as it does for a UUID: the API's mapping
    drains and says why in its LastProcessingResult."""
    document = config(tmp_path, api=True)
    service, path = await file_service(tmp_path, api, target, document)
    service.store = store = MemoryMappingStore()
    async with running(service) as logs:
        created = await store.create(record(5), limit=10)
        await applied(store, created.revision)
        put(api, 10)
        await wait_until(functools.partial(_delivered, target, 10), LIMIT, "the API mapping's")
        lambda_fake = {"type": "lambda", "function_name": "fake"}
        document["mappings"] = [file_mapping("orders", target=lambda_fake)]
        write(path, document)
        assert await service.reload_config()
        await wait_until(lambda: events(logs, "mapping.drained"), LIMIT, "the API mapping drained")
        put(api, 10)
        # The file's mapping reads the shard from its start: 10 + 20 records reach the function.
        await wait_until(functools.partial(_delivered, target, 30), LIMIT, "the file mapping's")

        assert service.health.readiness().mappings == {"orders": "up"}
        drained = events(logs, "mapping.drained")
        assert [(e["mapping"], e["then"]) for e in drained] == [(UUID, "stopped")]
        later = all_sequences(api)[10:]
        assert [target.delivered().count(sequence) for sequence in later] == [1] * 10
        await wait_until(
            functools.partial(_result_mentions, store, UUID, "orders"), LIMIT, "the reason"
        )


async def _result_mentions(store: MemoryMappingStore, uuid: str, text: str) -> bool:
    stored = await store.get(uuid)
    return stored is not None and text in (stored.last_processing_result or "")
