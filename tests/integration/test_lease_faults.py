"""The lease runtime under lease-table faults and shutdown, end to end in the test's loop.

Services run in-process (``poller.app.Service``) with the ``dynamodb`` checkpoint backend on
moto; the lease table is reached through the fault-injecting proxy
(``tests/support/fault_proxy.py``), so outages and lost responses are real HTTP failures that
botocore retries and then reports. Handlers record, per replica, when each batch of each shard
ran, which is what the exclusivity checks read.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pytest

from poller.app import Service
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.config import Settings, parse_settings
from poller.errors import CheckpointError
from tests.support import sqs as sqs_support
from tests.support.aws import aws_client, create_stream, put_records, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import NewQueue
from tests.support.waiting import wait_until

# serial (scripts/test runs these after the parallel workers, alone): each bounds how long a
# lease move or an outage's recovery takes in lease durations of a few seconds, which the
# other workers' emulators and service processes stretch on a 2-core machine.
pytestmark = [pytest.mark.anyio, pytest.mark.serial]

LEASE = 3.0
BALANCE = 1.0


@dataclass(frozen=True)
class Run:
    """One invocation of a shard's batch by one replica."""

    replica: str
    shard: str
    started: float
    finished: float
    sequence_numbers: tuple[str, ...]


#: Every batch run, by stream ARN (the handlers below append; tests read).
RUNS: dict[str, list[Run]] = defaultdict(list)
#: Seconds the next batch of a stream takes, consumed by the first batch that sees it.
SLOW: dict[str, float] = {}


async def _record(replica: str, event: dict[str, Any]) -> None:
    records = event["Records"]
    arn = records[0]["eventSourceARN"]
    started = time.monotonic()
    delay = SLOW.pop(arn, 0.0)
    if delay:
        await anyio.sleep(delay)
    shard = records[0]["eventID"].split(":", 1)[0]
    sequences = tuple(r["kinesis"]["sequenceNumber"] for r in records)
    RUNS[arn].append(Run(replica, shard, started, time.monotonic(), sequences))


async def replica_a(event: dict[str, Any], context: Any) -> None:
    await _record("a", event)


async def replica_b(event: dict[str, Any], context: Any) -> None:
    await _record("b", event)


def overlapping(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one shard by different replicas whose invocations overlapped."""
    found = []
    for first in runs:
        for second in runs:
            same_shard = first.replica < second.replica and first.shard == second.shard
            if same_shard and first.started < second.finished and second.started < first.finished:
                found.append((first, second))
    return found


def delivered(arn: str) -> set[str]:
    return {seq for run in RUNS[arn] for seq in run.sequence_numbers}


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """The lease table's endpoint: moto behind the fault proxy."""
    with FaultProxy(moto_url) as faults:
        yield faults


@pytest.fixture
def streams() -> Iterator[list[str]]:
    arns: list[str] = []
    yield arns
    for arn in arns:
        RUNS.pop(arn, None)
        SLOW.pop(arn, None)


def settings(
    moto_url: str,
    proxy: FaultProxy,
    table: str,
    mappings: list[dict[str, Any]],
    *,
    replica: str,
    drain: float = 30,
    sqs_url: str | None = None,
    balance: float = BALANCE,
    lease: float = LEASE,
) -> Settings:
    endpoints = {"dynamodb": proxy.url} | ({"sqs": sqs_url} if sqs_url else {})
    config = service_config(
        moto_url,
        mappings[0],
        checkpoints={
            "backend": "dynamodb",
            "table": table,
            "lease_duration_seconds": lease,
            "balance_interval_seconds": balance,
            "replica_id": replica,
        },
        endpoints=endpoints,
        shutdown={"drain_timeout_seconds": drain},
    )
    config["mappings"] = mappings
    return parse_settings(config)


def kinesis_mapping(arn: str, replica: str) -> dict[str, Any]:
    return stream_mapping(
        "leased",
        arn,
        f"tests.integration.test_lease_faults:replica_{replica}",
        batch_size=10,
        shard_discovery_interval_seconds=2,
    )


async def new_stream(moto_url: str, shards: int, streams: list[str]) -> tuple[str, Any]:
    name = unique("leasefault")
    async with aws_client("kinesis", moto_url) as kinesis:
        described = await create_stream(kinesis, name, shards)
    streams.append(stream_arn(name))
    return name, described


async def put(moto_url: str, stream: str, count: int, prefix: str) -> list[str]:
    async with aws_client("kinesis", moto_url) as kinesis:
        written = await put_records(
            kinesis, stream, [(f"{prefix}{i}", b"{}", None) for i in range(count)]
        )
    return [seq for _, seq in written]


async def lease_items(moto_url: str, table: str) -> list[Lease]:
    """The mapping's leases, read past the proxy (none before a replica made the table)."""
    async with aws_client("dynamodb", moto_url) as client:
        try:
            return await DynamoDBLeaseTable(client, table).list_leases("leased")
        except CheckpointError:
            return []


async def member_beats(moto_url: str, table: str) -> dict[str, int]:
    """The replicas' heartbeats of the mapping, read past the proxy (none before the table)."""
    async with aws_client("dynamodb", moto_url) as client:
        try:
            return (await DynamoDBLeaseTable(client, table).members("leased")).beats
        except CheckpointError:
            return {}


@contextlib.asynccontextmanager
async def service_running(config: Settings) -> AsyncIterator[tuple[Service, anyio.Event]]:
    """The service in this loop until the block ends (then stopped and awaited); yields it and
    an event set when its run returned. A run that raises fails the test."""
    service = Service(config)
    exited = anyio.Event()

    async def run() -> None:
        try:
            await service.run(handle_signals=False)
        finally:
            exited.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(30):
            await service.ready.wait()
        try:
            yield service, exited
        finally:
            service.request_stop()


def metric(service: Service, name: str, **labels: str) -> float:
    """A sample of the service's Prometheus registry (0 when absent)."""
    value = service.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)


# -- (a) a lease-table outage mid-run --------------------------------------------------------


async def test_a_lease_table_outage_stops_nothing_and_shards_come_back(
    moto_url: str,
    sqs_url: str,
    sqs: Any,
    proxy: FaultProxy,
    streams: list[str],
    new_queue: NewQueue,
) -> None:
    """Every lease-table call fails with 500 for 8 s (past the 3 s lease). The service keeps
    running; the Kinesis shards fence themselves (no batch runs while the lease could be a
    peer's); the SQS mapping keeps delivering throughout; once the table answers, the shards
    are taken back and deliver again within a lease duration plus a balance interval."""
    stream, _ = await new_stream(moto_url, 2, streams)
    arn = stream_arn(stream)
    queue = await new_queue("leasefault")
    table = unique("leases")
    sqs_mapping = {
        "name": "queue",
        "event_source_arn": queue.arn,
        "target": {"type": "python", "handler": "tests.support.sqs:handler"},
        "receive_wait_time_seconds": 1,
    }
    config = settings(
        moto_url,
        proxy,
        table,
        [kinesis_mapping(arn, "a"), sqs_mapping],
        replica="a",
        sqs_url=sqs_url,
    )
    async with service_running(config) as (service, exited):
        first = await put(moto_url, stream, 20, "before")
        await wait_until(lambda: delivered(arn) >= set(first), 20, "records before the outage")

        outage_at = time.monotonic()
        proxy.outage(8, "DynamoDB_20120810.*", code="InternalServerError", status=500)
        during = await put(moto_url, stream, 10, "during")
        sent = await sqs_support.send_bodies(sqs, queue.url, [f"m{i}" for i in range(5)])

        def sqs_delivered() -> bool:
            return set(sent) <= set(sqs_support.delivered_ids(queue.arn))

        await wait_until(sqs_delivered, 6, "SQS deliveries during the lease-table outage")
        await wait_until(
            lambda: (
                metric(service, "poller_lease_events_total", mapping="leased", event="lost") >= 2
            ),
            LEASE + 5,
            "both shards fencing themselves",
        )
        fenced_at = time.monotonic()
        await anyio.sleep(max(outage_at + 8 - time.monotonic(), 0))
        assert not exited.is_set(), "the service stopped during the lease-table outage"
        assert metric(
            service, "poller_dependency_errors_total", mapping="leased", operation="balance"
        )
        runs_while_fenced = [r for r in RUNS[arn] if fenced_at < r.started < outage_at + 8 - 0.5]
        assert runs_while_fenced == []

        healed_at = time.monotonic()
        after = await put(moto_url, stream, 10, "after")
        await wait_until(
            lambda: delivered(arn) >= set(first + during + after),
            LEASE + BALANCE + 5,
            "both shards delivering again after the outage",
        )
        back = time.monotonic() - healed_at
        owners = {lease.owner for lease in await lease_items(moto_url, table)}
        assert owners == {"a"}
        assert not exited.is_set()
    assert back <= LEASE + BALANCE + 3, f"the shards took {back:.1f} s to come back"


# -- (b) SIGTERM while a batch outlives the lease -------------------------------------------


async def test_a_draining_replica_keeps_its_lease_until_the_batch_settled(
    moto_url: str, proxy: FaultProxy, streams: list[str]
) -> None:
    """Replica a gets SIGTERM (request_stop) while a 10 s batch runs; the lease is 3 s. A peer
    b is running and wants the shard. a keeps heartbeating through the drain, so b invokes the
    shard only after a's batch settled (no overlapping invocations), and then delivers the
    rest from a's checkpoint: nothing lost."""
    stream, _ = await new_stream(moto_url, 1, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    config_a = settings(moto_url, proxy, table, [kinesis_mapping(arn, "a")], replica="a")
    config_b = settings(moto_url, proxy, table, [kinesis_mapping(arn, "b")], replica="b")
    counters: list[tuple[float, str | None, int]] = []
    beats: list[tuple[float, int | None]] = []

    async def watch_lease() -> None:
        while True:
            items = await lease_items(moto_url, table)
            if items:
                counters.append((time.monotonic(), items[0].owner, items[0].counter))
            beats.append((time.monotonic(), (await member_beats(moto_url, table)).get("a")))
            await anyio.sleep(0.25)

    async with service_running(config_a) as (service_a, exited_a):
        await wait_until(lambda: lease_items(moto_url, table), 10, "a lease")
        await wait_until(lambda: _owned_by(moto_url, table, "a"), 10, "replica a holding the shard")
        SLOW[arn] = 10.0
        written = await put(moto_url, stream, 5, "slow")
        await wait_until(lambda: SLOW.get(arn) is None, 10, "the slow batch starting")
        async with service_running(config_b) as (_, exited_b), anyio.create_task_group() as tg:
            tg.start_soon(watch_lease)
            await anyio.sleep(0.5)
            stopped_at = time.monotonic()
            service_a.request_stop()
            more = await put(moto_url, stream, 5, "more")
            await wait_until(lambda: exited_a.is_set(), 25, "replica a draining and exiting")
            await wait_until(
                lambda: delivered(arn) >= set(written + more), 20, "b delivering the rest"
            )
            tg.cancel_scope.cancel()
            assert not exited_b.is_set()

    runs = RUNS[arn]
    assert overlapping(runs) == []
    slow = next(r for r in runs if r.replica == "a" and r.finished - r.started >= 9)
    assert all(r.started >= slow.finished for r in runs if r.replica == "b")
    assert any(r.replica == "b" for r in runs)
    # a kept its lease alive through the drain: it still owned it past a lease after the stop,
    # and its heartbeat (protocol v2; v1 moved the lease's counter) moved meanwhile.
    held = [
        c for t, owner, c in counters if owner == "a" and stopped_at + LEASE < t < slow.finished
    ]
    assert held, counters
    alive = {b for t, b in beats if b is not None and stopped_at + LEASE < t < slow.finished}
    assert len(alive) >= 2, beats


async def _owned_by(moto_url: str, table: str, owner: str) -> bool:
    items = await lease_items(moto_url, table)
    return bool(items) and all(lease.owner == owner for lease in items)


# -- (c) our own write lands but its response is lost ---------------------------------------


async def test_a_lost_response_of_our_own_write_leads_to_a_retake(
    moto_url: str, proxy: FaultProxy, streams: list[str]
) -> None:
    """One replica. A checkpoint (a fenced UpdateItem) is applied but its answer lost;
    botocore's retry, or the checkpointer's, is refused (the counter moved: by us), so the
    write reports the lease lost although the table still names us. The replica takes the lease
    back and keeps delivering (before the fix nobody ever read the shard again).

    Protocol v2 moves a lease's counter only by takes and checkpoints (heartbeats are
    idempotent), so the answers are lost while a batch ends and checkpoints; the lease is long
    enough that the heartbeats failing meanwhile fence nothing off."""
    stream, _ = await new_stream(moto_url, 1, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    config = settings(moto_url, proxy, table, [kinesis_mapping(arn, "a")], replica="a", lease=10)
    async with service_running(config) as (service, exited):
        first = await put(moto_url, stream, 5, "first")
        await wait_until(lambda: delivered(arn) >= set(first), 20, "the first records")

        SLOW[arn] = 1.0
        await put(moto_url, stream, 5, "slow")
        await wait_until(lambda: SLOW.get(arn) is None, 10, "the slow batch starting")
        proxy.lose_responses("DynamoDB_20120810.UpdateItem", mode="error", seconds=3.0)
        lost = lambda: metric(service, "poller_lease_events_total", mapping="leased", event="lost")  # noqa: E731
        await wait_until(lost, 10, "the replica believing its lease lost")
        assert {lease.owner for lease in await lease_items(moto_url, table)} == {"a"}

        second = await put(moto_url, stream, 5, "second")
        await wait_until(
            lambda: delivered(arn) >= set(second), LEASE + BALANCE + 5, "delivery after re-take"
        )
        assert {lease.owner for lease in await lease_items(moto_url, table)} == {"a"}
        assert not exited.is_set()


# -- (d) replicas starting together: no hot potato --------------------------------------------


async def test_three_replicas_starting_together_move_each_lease_at_most_once(
    moto_url: str, proxy: FaultProxy, streams: list[str]
) -> None:
    """3 replicas start at once on a 6-shard stream (before: all six leases moved together
    every ~3 s for 23 s, 62 acquisitions). Watching the table every 0.1 s: they reach 2/2/2,
    no lease changes owner more than once, acquisitions stay at 6 plus the moves, and for the
    next 10 s (five balance intervals) nothing moves."""
    stream, _ = await new_stream(moto_url, 6, streams)
    arn = stream_arn(stream)
    table = unique("leases")
    history: dict[str, list[str]] = defaultdict(list)

    async def watch() -> None:
        while True:
            for lease in await lease_items(moto_url, table):
                owners = history[lease.shard_id]
                if lease.owner is not None and (not owners or owners[-1] != lease.owner):
                    owners.append(lease.owner)
            await anyio.sleep(0.1)

    def moves() -> dict[str, int]:
        return {shard: len(owners) - 1 for shard, owners in history.items()}

    async def even() -> bool:
        owners = [lease.owner for lease in await lease_items(moto_url, table)]
        counts = sorted(owners.count(name) for name in "abc")
        return counts == [2, 2, 2] and len(owners) == 6

    services = [
        Service(
            settings(moto_url, proxy, table, [kinesis_mapping(arn, "a")], replica=name, balance=2)
        )
        for name in "abc"
    ]
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        for service in services:  # together: no replica waits for another to be ready
            tg.start_soon(partial(service.run, handle_signals=False))
        await wait_until(even, 40, "an even 2/2/2 balance")

        async def watched() -> bool:  # the watcher has seen the balanced table
            leases = await lease_items(moto_url, table)
            return all(history[lease.shard_id][-1:] == [lease.owner] for lease in leases)

        await wait_until(watched, 5, "the watcher catching up")
        balanced = moves()
        await anyio.sleep(10)
        steady = moves()
        events = {
            event: sum(
                metric(service, "poller_lease_events_total", mapping="leased", event=event)
                for service in services
            )
            for event in ("taken", "stolen", "lost")
        }
        for service in services:
            service.request_stop()
        await wait_until(lambda: all(s.stopping.is_set() for s in services), 1, "stop requests")
        tg.cancel_scope.cancel()
    assert max(balanced.values()) <= 1, history
    assert steady == balanced, history
    # Every acquisition is a first take, a move, or the re-take of a lease that self-fenced
    # (on a loaded machine a renewal can come late).
    acquired = events["taken"] + events["stolen"]
    assert acquired <= 6 + sum(balanced.values()) + events["lost"], events
