"""Hot apply (poller.reconcile, wired in poller.app): mappings created, changed, disabled and
deleted while the service runs, through the mapping store and through SIGHUP.

The real :class:`~poller.app.Service` runs here with SQLite checkpoints in a temporary file,
a :class:`~poller.control.store_memory.MemoryMappingStore` as its mapping store, and the fakes
of :mod:`poller.testing` as its source and target: every stream mapping reads the one
:class:`FakeStreamApi` shard and delivers to one :class:`RecordingTarget`. The reconciler,
the mapping set, the supervisors, the runners, the drains and the checkpoints are the
production ones. The control API's HTTP server is not started (its own tests cover it); the
store is written directly, as the API's operations would.
"""

from __future__ import annotations

import math
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import yaml
from anyio.abc import TaskStatus

from poller.app import Service
from poller.checkpoints import Checkpoints
from poller.config import AnyMapping, KinesisMapping, SqsMapping, parse_settings
from poller.control.context import ControlContext
from poller.control.store import MappingRecord, MappingStore, ReplicaAck
from poller.control.store_memory import MemoryMappingStore
from poller.core.windows import Window
from poller.errors import CheckpointError, HandlerImportError
from poller.queues import SqsMappingRunner
from poller.streams import StreamMappingRunner
from poller.streams.ownership import ownership_for
from poller.testing import (
    STREAM_ARN,
    FakeStreamApi,
    Put,
    RecordingTarget,
    Slow,
    event_positions,
    function_error,
    success,
)
from poller.types import InvokeResult, Target
from tests.component.sqs_fakes import FAST_BACKOFF, FakeQueue
from tests.support.aws import aws_client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
REPLICA = "replica-c4"
UUID = "6f1c2a34-1111-4222-8333-944455556666"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:fake"
#: The longest any wait of this file may take before the test fails.
LIMIT = 20.0

Logs = list[MutableMapping[str, Any]]


async def slow_success(event: dict[str, Any]) -> InvokeResult:
    """A function that takes a moment, so that a change lands while batches are in flight."""
    await anyio.sleep(0.005)
    return success()


class FakeSourceService(Service):
    """The real service, whose stream mappings read ``api`` and deliver to ``target``.

    ``broken``: names of mappings whose target fails to build (a handler that does not
    import). ``store``: the mapping store the control API would use.
    """

    def __init__(
        self,
        settings: Any,
        *,
        api: FakeStreamApi,
        target: RecordingTarget,
        store: MappingStore | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, **kwargs)
        self.api, self.target, self.store = api, target, store
        self.queue = FakeQueue("orders")
        self.broken: set[str] = set()
        self.runners: list[AnyMapping] = []

    async def _build_target(self, mapping: AnyMapping, clients: Any) -> Target:
        if mapping.name in self.broken:
            raise HandlerImportError(f"{mapping.name}: module 'gone' not found")
        return self.target

    async def _build_runner(
        self, mapping: Any, clients: Any, checkpoints: Checkpoints, target: Target
    ) -> Any:
        self.runners.append(mapping)
        if isinstance(mapping, SqsMapping):
            return SqsMappingRunner(
                mapping,
                queue=self.queue,
                target=target,
                stopping=self._stop_of(mapping),
                metrics=self._runner_metrics(mapping),
                backoff=FAST_BACKOFF,
            )
        assert isinstance(mapping, KinesisMapping)
        return StreamMappingRunner(
            mapping,
            api=self.api,
            kind="kinesis",
            target=target,
            ownership=ownership_for(checkpoints, mapping, metrics=self.metrics),
            stopping=self._stop_of(mapping),
            metrics=self._runner_metrics(mapping),
        )

    async def _open_mapping_store(self, checkpoints: Any, stack: Any) -> MappingStore | None:
        return self.store if self.settings.control_api.enabled else None

    async def _serve_control(
        self, ctx: ControlContext, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.control_context = ctx
        task_status.started()


class FlakyStore(MemoryMappingStore):
    """A memory store that fails every call while ``down`` (an outage of the lease table)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise CheckpointError("the lease table does not answer")

    async def head(self) -> int:
        self._check()
        return await super().head()

    async def records(self) -> dict[str, MappingRecord]:
        self._check()
        return await super().records()

    async def ack(self, replica: str, applied: int) -> None:
        self._check()
        await super().ack(replica, applied)


def file_mapping(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "event_source_arn": STREAM_ARN,
        "starting_position": "TRIM_HORIZON",
        "maximum_batching_window_in_seconds": 0,
        "target": {"type": "python", "handler": "tests.support.recorder:record"},
        **fields,
    }


def config(tmp_path: Path, *mappings: dict[str, Any], api: bool, **sections: Any) -> dict[str, Any]:
    return {
        "aws": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:1"},
        "checkpoints": {"backend": "sqlite", "path": str(tmp_path / "c.db"), "replica_id": REPLICA},
        "observability": {"enabled": False},
        "control_api": {"enabled": api, "poll_interval_seconds": 0.1},
        **sections,
        "mappings": list(mappings),
    }


def record(batch_size: int, *, uuid: str = UUID, source: str = STREAM_ARN) -> MappingRecord:
    """A Kinesis (or SQS) mapping as the API stores it (the store sets the revisions)."""
    request: dict[str, Any] = {
        "EventSourceArn": source,
        "FunctionName": "fake",
        "BatchSize": batch_size,
        "MaximumBatchingWindowInSeconds": 0,
    }
    if source == STREAM_ARN:
        request["StartingPosition"] = "TRIM_HORIZON"
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request=request,
        tags={},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION_ARN,
        pair_key=f"{FUNCTION_ARN} {source}",
        last_modified=0.0,
    )


async def change(store: MappingStore, uuid: str, **fields: Any) -> MappingRecord:
    """A configuration change as the API's Update or Delete writes it."""

    def apply(current: MappingRecord, revision: int) -> MappingRecord:
        request = dict(current.request)
        request.update(fields.pop("request", {}))
        return replace(current, request=request, revision=revision, **fields)

    stored = await store.update(uuid, apply)
    assert stored is not None
    return stored


async def applied(store: MappingStore, revision: int) -> None:
    """Wait until this replica acked ``revision``: it drained and started what it must."""

    async def acked() -> bool:
        ack: ReplicaAck | None = (await store.acks()).get(REPLICA)
        return ack is not None and ack.applied >= revision

    await wait_until(acked, LIMIT, f"revision {revision} applied")


def put(api: FakeStreamApi, count: int, page: int = 10) -> None:
    """``count`` records on the shard, in pages of ``page``."""
    for start in range(0, count, page):
        api.add_page(SHARD, [Put(f"k{i}", b"{}") for i in range(start, min(count, start + page))])


def all_sequences(api: FakeStreamApi) -> list[str]:
    return [api.sequence_of(raw) for raw in api._shards[SHARD].records]


@asynccontextmanager
async def running(service: Service) -> AsyncIterator[Logs]:
    """Run ``service`` until the block ends, then stop it and wait for its exit."""
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            with anyio.fail_after(LIMIT):
                await service.ready.wait()
            try:
                yield logs
            finally:
                service.request_stop()


def events(logs: Logs, name: str) -> Logs:
    return [e for e in logs if e["event"] == name]


@pytest.fixture
def api() -> FakeStreamApi:
    api = FakeStreamApi()
    api.add_shard(SHARD)
    return api


@pytest.fixture
def target() -> RecordingTarget:
    return RecordingTarget(default=slow_success)


async def api_service(
    tmp_path: Path,
    api: FakeStreamApi,
    target: RecordingTarget,
    store: MappingStore,
    **sections: Any,
) -> FakeSourceService:
    settings = parse_settings(config(tmp_path, api=True, **sections))
    return FakeSourceService(settings, api=api, target=target, store=store, start_grace=0)


# -- the control API's mappings ------------------------------------------------------------


async def test_no_mapping_and_the_api_on_is_ready_with_nothing_to_run(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        assert service.health.readiness().ready
        assert service.health.readiness().mappings == {}
        await applied(store, 0)  # the replica says it is there (its heartbeat)


async def test_a_create_starts_the_mapping_and_an_update_drains_then_restarts_it(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """The batch size changes while records flow: every record is delivered exactly once, in
    shard order, and every batch after the update's ack holds at most the new size."""
    store = MemoryMappingStore()
    metrics_on = {"observability": {"host": "127.0.0.1", "port": 0}}
    service = await api_service(tmp_path, api, target, store, **metrics_on)
    async with running(service) as logs:
        created = await store.create(record(5), limit=10)
        put(api, 200)
        await wait_until(lambda: len(target.delivered()) >= 50, LIMIT, "the first batches")
        updated = await change(store, UUID, request={"BatchSize": 2}, change="update")
        await applied(store, updated.revision)
        after = len(target.events)
        put(api, 20)
        await wait_until(lambda: len(target.delivered()) == 220, LIMIT, "every record")

        assert target.delivered() == all_sequences(api)  # none lost, none twice, in order
        assert created.revision < updated.revision
        assert all(len(e["Records"]) <= 5 for e in target.events)
        assert all(len(e["Records"]) <= 2 for e in target.events[after:])
        assert [m.batch_size for m in service.runners] == [5, 2]
        drained = events(logs, "mapping.drained")
        assert [(e["mapping"], e["then"]) for e in drained] == [(UUID, "restart")]
        assert service.health.readiness().mappings == {UUID: "up"}
        await wait_until(
            lambda: f'poller_mapping_up{{mapping="{UUID}"}} 1.0' in scrape(service),
            LIMIT,
            "the restarted mapping's gauge up",
        )
        arn = f"arn:aws:lambda:us-east-1:123456789012:event-source-mapping:{UUID}"
        info = f'poller_mapping_info{{event_source_mapping_arn="{arn}",mapping="{UUID}"'
        assert info in scrape(service)

        deleted = await change(store, UUID, desired="Deleted", change="delete")
        await applied(store, deleted.revision)
        assert f'mapping="{UUID}"' not in scrape(service)  # its series are gone


def scrape(service: Service) -> str:
    assert service.observability_url is not None
    with urllib.request.urlopen(f"{service.observability_url}/metrics") as answer:
        return str(answer.read().decode())


async def test_an_sqs_mapping_updated_while_messages_flow_handles_each_once(
    tmp_path: Path, api: FakeStreamApi
) -> None:
    """The SQS runner drains too: the batches in flight finish and are deleted, then the new
    configuration reads on. Each message reaches the function once and is deleted once."""

    async def slower(event: dict[str, Any]) -> InvokeResult:
        await anyio.sleep(0.05)
        return success()

    target = RecordingTarget(default=slower)
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    queue = service.queue
    async with running(service):
        two_at_a_time = replace(
            record(5, source=queue.arn),
            request={
                **record(5, source=queue.arn).request,
                "ScalingConfig": {"MaximumConcurrency": 2},
            },
        )
        await store.create(two_at_a_time, limit=10)
        ids = [f"m{i}" for i in range(60)]
        for message_id in ids:
            queue.send(message_id)
        await wait_until(lambda: len(queue.deleted) >= 15, LIMIT, "the first batches")
        updated = await change(store, UUID, request={"BatchSize": 2}, change="update")
        await applied(store, updated.revision)
        after = len(target.events)
        await wait_until(lambda: len(queue.deleted) == 60, LIMIT, "every message deleted")

        handled = [r["messageId"] for e in target.events for r in e["Records"]]
        assert sorted(handled) == sorted(ids)
        assert sorted(queue.deleted) == sorted(ids)
        assert target.events[after:], "some messages were left for the new configuration"
        assert all(len(e["Records"]) <= 2 for e in target.events[after:])
        assert [m.batch_size for m in service.runners] == [5, 2]


async def test_a_drain_past_its_deadline_is_cancelled_and_its_batch_delivered_again(
    tmp_path: Path, api: FakeStreamApi
) -> None:
    """The batch in flight never finishes: the update's drain gives up after
    ``shutdown.drain_timeout_seconds``, and the new run delivers that batch again (at least
    once), then the rest; nothing is lost and first deliveries keep their order."""
    store = MemoryMappingStore()
    target = RecordingTarget()
    target.script(Slow(anyio.Event()))  # the first batch hangs for good
    shutdown = {"drain_timeout_seconds": 0.5}
    service = await api_service(tmp_path, api, target, store, shutdown=shutdown)
    async with running(service) as logs:
        await store.create(record(5), limit=10)
        put(api, 10)
        await wait_until(lambda: target.in_flight == 1, LIMIT, "the first batch stuck")
        updated = await change(store, UUID, request={"BatchSize": 2}, change="update")
        await applied(store, updated.revision)
        await wait_until(lambda: len(set(target.delivered())) == 10, LIMIT, "every record")

        assert [e["mapping"] for e in events(logs, "mapping.drain_deadline")] == [UUID]
        first = list(dict.fromkeys(target.delivered()))
        assert first == all_sequences(api)
        stuck = event_positions(target.events[0])
        assert [target.delivered().count(s) for s in stuck] == [2] * len(stuck)


async def test_an_open_tumbling_window_closes_on_its_old_bounds_after_a_length_change(
    tmp_path: Path, api: FakeStreamApi
) -> None:
    """The open window is kept with the checkpoint: after TumblingWindowInSeconds changes
    from 60 to 30, the restarted mapping closes it with its old bounds when a record of a
    later window comes, and opens windows of the new length."""
    target = RecordingTarget(default=success({"state": {"seen": 1}}))
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    base = (math.floor(time.time() / 600) + 10) * 600  # windows that are not due yet
    async with running(service):
        windowed = record(10)
        windowed = replace(windowed, request={**windowed.request, "TumblingWindowInSeconds": 60})
        await store.create(windowed, limit=10)
        api.add_page(SHARD, [Put("a", b"{}", base + 1), Put("b", b"{}", base + 2)])
        await wait_until(lambda: len(target.delivered()) == 2, LIMIT, "the first window's records")
        updated = await change(
            store, UUID, request={"TumblingWindowInSeconds": 30}, change="update"
        )
        await applied(store, updated.revision)
        api.add_page(SHARD, [Put("c", b"{}", base + 121)])
        await wait_until(lambda: len(target.delivered()) == 3, LIMIT, "the later record")

        finals = [e for e in target.events if e["isFinalInvokeForWindow"]]
        assert [e["window"] for e in finals] == [Window(base, base + 60).as_event()]
        assert finals[0]["state"] == {"seen": 1}  # the state carried over the restart
        assert target.events[-1]["window"] == Window(base + 120, base + 150).as_event()
        assert target.delivered() == all_sequences(api)


async def test_a_disabled_mapping_stops_and_resumes_from_its_checkpoint_when_enabled(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        await store.create(record(10), limit=10)
        put(api, 30)
        await wait_until(lambda: len(target.delivered()) == 30, LIMIT, "the first records")
        disabled = await change(store, UUID, desired="Disabled", change="disable")
        await applied(store, disabled.revision)
        assert service.health.readiness().mappings == {}
        reads = len(api.calls)
        put(api, 30)
        await anyio.sleep(0.5)  # the window in which a running mapping would have read them
        assert len(target.delivered()) == 30
        assert api.calls[reads:] == []

        enabled = await change(store, UUID, desired="Enabled", change="enable")
        await applied(store, enabled.revision)
        await wait_until(lambda: len(target.delivered()) == 60, LIMIT, "the rest")
        assert target.delivered() == all_sequences(api)


async def test_a_delete_stops_delivery_finalizes_and_removes_the_checkpoints(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service) as logs:
        await store.create(record(10), limit=10)
        put(api, 20)
        await wait_until(lambda: len(target.delivered()) == 20, LIMIT, "the records")
        assert checkpoint_rows(tmp_path, UUID) == 1
        await change(store, UUID, desired="Deleted", change="delete")

        async def finalized() -> bool:
            return await store.get(UUID) is None

        await wait_until(finalized, LIMIT, "the delete finalized")
        put(api, 10)
        await anyio.sleep(0.5)  # the window in which a running mapping would have read them
        assert len(target.delivered()) == 20
        assert checkpoint_rows(tmp_path, UUID) == 0
        assert [e["mapping"] for e in events(logs, "mapping.deleted")] == [UUID]
        assert [e["mapping"] for e in events(logs, "mapping.checkpoints_removed")] == [UUID]
        assert service.health.readiness().mappings == {}


async def test_a_delete_keeps_the_checkpoints_when_told_to(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    control = {"enabled": True, "poll_interval_seconds": 0.1, "delete_checkpoints": False}
    service = await api_service(tmp_path, api, target, store, control_api=control)
    async with running(service) as logs:
        await store.create(record(10), limit=10)
        put(api, 5)
        await wait_until(lambda: len(target.delivered()) == 5, LIMIT, "the records")
        await change(store, UUID, desired="Deleted", change="delete")
        await wait_until(lambda: events(logs, "mapping.deleted"), LIMIT, "the delete finalized")
        assert checkpoint_rows(tmp_path, UUID) == 1
        assert not events(logs, "mapping.checkpoints_removed")


def checkpoint_rows(tmp_path: Path, mapping: str) -> int:
    with sqlite3.connect(tmp_path / "c.db") as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM checkpoints WHERE mapping = ?", (mapping,)
        ).fetchone()
    return int(count)


async def test_a_mapping_whose_target_does_not_build_is_down_and_still_acked(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    service.broken.add(UUID)
    async with running(service) as logs:
        created = await store.create(record(10), limit=10)
        await applied(store, created.revision)
        assert service.health.readiness().mappings == {UUID: "down"}
        assert service.health.readiness().ready  # the others run; start-up is over
        crashed = events(logs, "mapping.crashed")
        assert [e["mapping"] for e in crashed] == [UUID]
        assert "module 'gone' not found" in crashed[0]["error"]
        await wait_until(
            lambda: result_of(store, UUID), LIMIT, "the build failure as LastProcessingResult"
        )
        assert (await result_of(store, UUID) or "").startswith("PROBLEM: HandlerImportError")

        service.broken.clear()  # fixed; the next change of the mapping builds it again
        updated = await change(store, UUID, request={"BatchSize": 3}, change="update")
        await applied(store, updated.revision)
        put(api, 6)
        await wait_until(lambda: len(target.delivered()) == 6, LIMIT, "delivery once fixed")


async def result_of(store: MappingStore, uuid: str) -> str | None:
    stored = await store.get(uuid)
    return None if stored is None else stored.last_processing_result


async def test_the_last_processing_result_follows_the_invocations(
    tmp_path: Path, api: FakeStreamApi
) -> None:
    """OK once a batch succeeded; PROBLEM when the function fails (the first result is
    written at once, later changes at most every 10 s)."""
    store = MemoryMappingStore()
    failing = RecordingTarget(default=function_error("boom"))
    service = await api_service(tmp_path, api, failing, store)
    async with running(service):
        await store.create(record(10), limit=10)
        assert await result_of(store, UUID) is None  # "No records processed" in the API
        put(api, 3)

        async def problem() -> bool:
            return await result_of(store, UUID) == "PROBLEM: Function call failed"

        await wait_until(problem, LIMIT, "the failure reported")

    api2 = FakeStreamApi()
    api2.add_shard(SHARD)
    store2 = MemoryMappingStore()
    service = await api_service(tmp_path / "ok", api2, RecordingTarget(), store2)
    async with running(service):
        await store2.create(record(10), limit=10)
        put(api2, 3)

        async def ok() -> bool:
            return await result_of(store2, UUID) == "OK"

        await wait_until(ok, LIMIT, "the success reported")


async def test_a_record_that_no_longer_validates_does_not_run_and_is_acked(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """``control_api.functions`` no longer lists the record's function and unlisted functions
    are refused: the mapping does not run, the change is acked, the reason is its result."""
    store = MemoryMappingStore()
    control = {"enabled": True, "poll_interval_seconds": 0.1, "unlisted_functions": "refuse"}
    service = await api_service(tmp_path, api, target, store, control_api=control)
    async with running(service) as logs:
        created = await store.create(record(10), limit=10)
        await applied(store, created.revision)
        put(api, 3)
        await wait_until(
            lambda: result_of(store, UUID), LIMIT, "the reason as LastProcessingResult"
        )
        assert (await result_of(store, UUID) or "").startswith("PROBLEM: ")
        assert [e["mapping"] for e in events(logs, "mapping.unusable")] == [UUID]
        assert service.runners == []
        assert target.events == []


async def test_a_store_outage_keeps_the_mappings_running(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = FlakyStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service) as logs:
        created = await store.create(record(10), limit=10)
        await applied(store, created.revision)
        store.down = True
        put(api, 20)
        await wait_until(lambda: len(target.delivered()) == 20, LIMIT, "delivery in the outage")
        await wait_until(
            lambda: events(logs, "mapping_store.unavailable"), LIMIT, "the outage logged"
        )
        store.down = False
        await wait_until(
            lambda: events(logs, "mapping_store.recovered"), LIMIT, "the recovery logged"
        )
        assert len(events(logs, "mapping_store.unavailable")) == 1
        assert service.health.readiness().mappings == {UUID: "up"}


class ApiServingService(FakeSourceService):
    """The fake-source service with its real control API server (aiohttp, auth none)."""

    _serve_control = Service._serve_control


async def test_the_control_api_drives_the_running_mappings_end_to_end(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    """Through the real HTTP server and an AWS SDK client: a create delivers, an update's
    State settles to Enabled once this replica applied it, a delete ends in a 404 and stops
    delivery. A write through this replica's API applies without waiting for the poll."""
    store = MemoryMappingStore()
    slow_poll = {"enabled": True, "port": 0, "poll_interval_seconds": 60}
    settings = parse_settings(config(tmp_path, api=True, control_api=slow_poll))
    service = ApiServingService(settings, api=api, target=target, store=store, start_grace=0)
    async with running(service), aws_client("lambda", str(service.control_url)) as aws:
        created = await aws.create_event_source_mapping(
            EventSourceArn=STREAM_ARN,
            FunctionName="fake",
            BatchSize=4,
            StartingPosition="TRIM_HORIZON",
            MaximumBatchingWindowInSeconds=0,
        )
        uuid = created["UUID"]

        async def state() -> str:
            return str((await aws.get_event_source_mapping(UUID=uuid))["State"])

        await wait_until(lambda: _is(state, "Enabled"), LIMIT, "the create settled")
        put(api, 8)
        await wait_until(lambda: len(target.delivered()) == 8, LIMIT, "delivery")

        await aws.update_event_source_mapping(UUID=uuid, BatchSize=2)
        await wait_until(lambda: _is(state, "Enabled"), LIMIT, "the update settled")
        after = len(target.events)
        put(api, 6)
        await wait_until(lambda: len(target.delivered()) == 14, LIMIT, "delivery after")
        assert all(len(e["Records"]) <= 2 for e in target.events[after:])
        assert target.delivered() == all_sequences(api)

        await aws.delete_event_source_mapping(UUID=uuid)

        async def gone() -> bool:
            try:
                await aws.get_event_source_mapping(UUID=uuid)
            except aws.exceptions.ResourceNotFoundException:
                return True
            return False

        await wait_until(gone, LIMIT, "the delete finalized")
        assert service.health.readiness().mappings == {}


async def _is(state: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await state() == wanted


# -- the file's mappings and SIGHUP ------------------------------------------------------


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


async def file_service(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget, document: dict[str, Any]
) -> tuple[FakeSourceService, Path]:
    path = write(tmp_path / "poller.yaml", document)
    settings = parse_settings(document)
    service = FakeSourceService(settings, api=api, target=target, config_path=path)
    return service, path


async def wait_for_runs(service: FakeSourceService, count: int) -> None:
    await wait_until(lambda: len(service.runners) >= count, LIMIT, f"{count} runs")


async def test_sighup_with_a_valid_file_restarts_the_changed_mapping_only(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    document = config(
        tmp_path, file_mapping("orders", batch_size=5), file_mapping("audit"), api=False
    )
    service, path = await file_service(tmp_path, api, target, document)
    async with running(service) as logs:
        put(api, 40)
        await wait_until(lambda: len(target.delivered()) == 80, LIMIT, "both mappings")
        document["mappings"][0]["batch_size"] = 2
        write(path, document)
        assert await service.reload_config()
        await wait_until(
            lambda: events(logs, "mapping.drained"), LIMIT, "the changed mapping drained"
        )
        await wait_for_runs(service, 3)
        put(api, 10)
        await wait_until(lambda: len(target.delivered()) == 100, LIMIT, "the new records")

        orders = [m for m in service.runners if m.name == "orders"]
        assert [m.batch_size for m in orders] == [5, 2]
        assert [m.name for m in service.runners].count("audit") == 1
        drained = events(logs, "mapping.drained")
        assert [(e["mapping"], e["then"]) for e in drained] == [("orders", "restart")]
        assert not events(logs, "config.reload_needs_restart")
        # Both mappings read the one shard: each record reached the function once per mapping.
        seen = target.delivered()
        assert all(seen.count(sequence) == 2 for sequence in all_sequences(api))


async def test_sighup_with_an_invalid_file_keeps_the_running_configuration(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    document = config(tmp_path, file_mapping("orders"), api=False)
    service, path = await file_service(tmp_path, api, target, document)
    async with running(service) as logs:
        document["mappings"][0]["batch_size"] = 0
        write(path, document)
        assert not await service.reload_config()
        put(api, 10)
        await wait_until(lambda: len(target.delivered()) == 10, LIMIT, "delivery goes on")
        [failed] = events(logs, "config.reload_failed")
        assert any("batch_size" in problem for problem in failed["problems"])
        assert len(service.runners) == 1
        assert [m.name for m in service.file_mappings] == ["orders"]


async def test_sighup_names_the_sections_that_need_a_restart_and_applies_the_mappings(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    document = config(tmp_path, file_mapping("orders"), api=False)
    service, path = await file_service(tmp_path, api, target, document)
    async with running(service) as logs:
        document["shutdown"] = {"drain_timeout_seconds": 7}
        document["mappings"].append(file_mapping("audit"))
        write(path, document)
        assert await service.reload_config()
        await wait_for_runs(service, 2)
        [needs] = events(logs, "config.reload_needs_restart")
        assert needs["sections"] == ["shutdown"]
        assert service.settings.shutdown.drain_timeout_seconds != 7
        await wait_until(
            lambda: service.health.readiness().mappings == {"orders": "up", "audit": "up"},
            LIMIT,
            "the added mapping up",
        )

        del document["mappings"][0]
        write(path, document)
        assert await service.reload_config()
        await wait_until(
            lambda: service.health.readiness().mappings == {"audit": "up"},
            LIMIT,
            "the removed mapping gone",
        )
        assert service.health.readiness().ready


async def test_a_clean_stop_removes_the_replicas_ack(
    tmp_path: Path, api: FakeStreamApi, target: RecordingTarget
) -> None:
    store = MemoryMappingStore()
    service = await api_service(tmp_path, api, target, store)
    async with running(service):
        await applied(store, 0)
    assert REPLICA not in await store.acks()
