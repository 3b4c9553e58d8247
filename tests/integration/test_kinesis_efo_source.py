"""Enhanced fan-out over HTTP: ``KinesisSubscriptions`` and consumer resolution against emulators.

Subscriptions run against ministack, the emulator whose SubscribeToShard works from aiobotocore
(it pushes a put record about 0.2 s later, and an empty event on an idle shard every 5 s). It
refuses a second subscription to a shard within 5 s of the first unless it has seen the first
connection end, which lets these tests observe from the service side that leaving a
subscription really closed it. Consumer registration waits (CREATING, DELETING) run against
kinesis-local, whose consumers take about 0.5 s to change state (ministack's are ACTIVE at once).
Faults no emulator makes (a cut, a bad CRC, a flood) come from a small aiohttp server here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlparse

import anyio
import pytest
from aiohttp import web

from poller.aws.clients import ClientFactory, client_config
from poller.errors import SourceError, SourceUnavailable, StreamNotFound, SubscriptionBusy
from poller.ports import PushEvent, StartPosition, Subscriptions
from poller.sources.kinesis_efo import (
    CONSUMER_ARN,
    KinesisSubscriptions,
    describe_consumer,
    ensure_consumer,
    failure_reason,
    parse_consumer_arn,
    wait_until_active,
)
from tests.support.aws import CREDENTIALS, REGION, aws_client, create_stream, stream_arn, unique
from tests.support.kinesis_local import PACKAGE, kinesis_local
from tests.support.ministack import ministack, ministack_available
from tests.support.process import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: ministack refuses a second subscription this soon after the first, unless the first ended.
TAKEOVER_SECONDS = 5.0


@pytest.fixture(scope="module")
def ministack_url() -> Iterator[str]:
    reason = ministack_available()
    if reason is not None:
        pytest.skip(reason)
    with ministack() as url:
        yield url


@pytest.fixture
async def control(ministack_url: str) -> AsyncIterator[Any]:
    """A plain client for setting streams up and putting records."""
    async with aws_client("kinesis", ministack_url) as client:
        yield client


class Sources:
    """Source clients as the service builds them (``purpose="source"``), one factory each so
    that each has its own read timeout and connection pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._factories: list[ClientFactory] = []

    async def client(self, read_timeout: float = 30) -> Any:
        factory = ClientFactory(region=REGION, endpoint_url=self.url, credentials=CREDENTIALS)
        self._factories.append(factory)
        config = client_config(attempts=1, read_timeout=read_timeout, pool=10)
        return await factory.client("kinesis", purpose="source", config=config)

    async def aclose(self) -> None:
        for factory in self._factories:
            await factory.aclose()


@pytest.fixture
async def sources(ministack_url: str) -> AsyncIterator[Sources]:
    made = Sources(ministack_url)
    yield made
    await made.aclose()


class Shard:
    """A one-shard stream with an ACTIVE consumer, and a way to put records into it."""

    def __init__(self, control: Any, name: str, shard_id: str, consumer_arn: str) -> None:
        self.control, self.name, self.id, self.consumer_arn = control, name, shard_id, consumer_arn

    async def put(self, *payloads: bytes) -> list[str]:
        """Put records one by one (in order); their sequence numbers."""
        sequences = []
        for payload in payloads:
            put = await self.control.put_record(
                StreamName=self.name, Data=payload, PartitionKey="k"
            )
            sequences.append(put["SequenceNumber"])
        return sequences


@pytest.fixture
async def shard(control: Any) -> Shard:
    name = unique("efo")
    shards = await create_stream(control, name, 1)
    arn = await ensure_consumer(control, stream_arn(name), "poller")
    return Shard(control, name, shards[0]["ShardId"], arn)


async def subscriptions(sources: Sources, shard: Shard, read_timeout: float = 30) -> Subscriptions:
    return KinesisSubscriptions(await sources.client(read_timeout), shard.consumer_arn)


async def records_of(events: AsyncIterator[PushEvent], count: int) -> list[dict[str, Any]]:
    """Records from ``events`` until ``count`` have come (failing after 5 s); every event with
    records must continue from its last record."""
    records: list[dict[str, Any]] = []
    with anyio.fail_after(5):
        while len(records) < count:
            event = await anext(events)
            if event.records:
                assert event.continuation == event.records[-1]["SequenceNumber"]
            records.extend(event.records)
    return records


async def failure_of(events: AsyncIterator[PushEvent]) -> SourceError:
    """The error that ends ``events``, reading past every event before it."""
    try:
        while True:
            await anext(events)
    except SourceError as exc:
        return exc


def sequences(records: list[dict[str, Any]]) -> list[str]:
    return [record["SequenceNumber"] for record in records]


def connections_to(url: str) -> set[str]:
    """The local addresses of this process's established TCP connections to ``url``'s port
    (from /proc: its socket descriptors, and the kernel's table of IPv4 connections)."""
    port = urlparse(url).port
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if int(remote.split(":")[1], 16) == port and state == "01" and inode in inodes:
                found.add(local)
    return found


# -- delivery ----------------------------------------------------------------------------------


async def test_pushes_records_in_order_as_the_wire_sent_them(
    sources: Sources, shard: Shard
) -> None:
    before = await shard.put(b"first", b"second", b"third")
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        held = await records_of(events, 3)
        after = await shard.put(b"pushed-1", b"pushed-2")  # while subscribed: pushed
        pushed = await records_of(events, 2)
    assert sequences(held) == before
    assert sequences(pushed) == after
    records = held + pushed
    payloads = [b"first", b"second", b"third", b"pushed-1", b"pushed-2"]
    # The source client's form, as GetRecords gives it: base64 text and epoch seconds.
    assert [r["Data"] for r in records] == [base64.b64encode(p).decode() for p in payloads]
    assert all(type(r["ApproximateArrivalTimestamp"]) is float for r in records)
    assert all(abs(r["ApproximateArrivalTimestamp"] - time.time()) < 60 for r in records)


async def test_resuming_after_a_continuation_rereads_nothing_and_skips_nothing(
    sources: Sources, shard: Shard
) -> None:
    await shard.put(b"a", b"b", b"c")
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        first = await records_of(events, 3)
    continuation = first[-1]["SequenceNumber"]
    later = await shard.put(b"d", b"e")  # between the subscriptions
    resume = StartPosition("AFTER_SEQUENCE_NUMBER", sequence_number=continuation)
    async with subs.subscribe(shard.id, resume) as events:
        event = await anext(events)
    assert sequences(event.records) == later
    assert event.continuation == later[-1]
    assert not event.shard_end


async def test_at_sequence_number_starts_at_that_record(sources: Sources, shard: Shard) -> None:
    put = await shard.put(b"a", b"b", b"c")
    subs = await subscriptions(sources, shard)
    at = StartPosition("AT_SEQUENCE_NUMBER", sequence_number=put[1])
    async with subs.subscribe(shard.id, at) as events:
        assert sequences((await anext(events)).records) == put[1:]


async def test_at_timestamp_starts_at_the_first_record_that_arrived_then(
    sources: Sources, shard: Shard
) -> None:
    await shard.put(b"a", b"b")
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        early = await records_of(events, 2)
    late_sequences = await shard.put(b"c", b"d")
    async with subs.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        late = (await records_of(events, 4))[2:]
    # Between the last early arrival and the first late one (the wire has microseconds).
    gap_start = early[-1]["ApproximateArrivalTimestamp"]
    gap_end = late[0]["ApproximateArrivalTimestamp"]
    assert gap_start < gap_end
    at = StartPosition("AT_TIMESTAMP", timestamp=(gap_start + gap_end) / 2)
    async with subs.subscribe(shard.id, at) as events:
        assert sequences((await anext(events)).records) == late_sequences


async def test_an_idle_shard_pushes_empty_events(sources: Sources, shard: Shard) -> None:
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("LATEST")) as events:
        with anyio.fail_after(TAKEOVER_SECONDS + 2):
            event = await anext(events)
    assert event.records == []
    assert event.continuation is not None
    assert not event.shard_end
    assert event.millis_behind_latest == 0


async def test_a_split_ends_the_shard_with_its_children(sources: Sources, shard: Shard) -> None:
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("LATEST")) as events:
        await anext(events)
        await shard.control.split_shard(
            StreamName=shard.name, ShardToSplit=shard.id, NewStartingHashKey=str(2**127)
        )
        with anyio.fail_after(5):
            last = await anext(events)
            while not last.shard_end:
                last = await anext(events)
            rest = [event async for event in events]
    listed = await shard.control.list_shards(StreamName=shard.name)
    children = [s["ShardId"] for s in listed["Shards"] if s.get("ParentShardId") == shard.id]
    assert len(children) == 2
    assert sorted(last.child_shard_ids) == sorted(children)
    assert rest == []  # the service ends the subscription after the shard's last event


async def test_pushed_events_are_decoded_by_hand_as_botocore_decodes_them(
    sources: Sources, shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, payload in (("ключ-🔑", b"\x00\xff"), ("k", "ü".encode()), ("k" * 256, b"z" * 999)):
        await shard.control.put_record(StreamName=shard.name, Data=payload, PartitionKey=key)
    lean = KinesisSubscriptions(await sources.client(), shard.consumer_arn)
    async with lean.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        decoded = await records_of(events, 3)
    monkeypatch.setenv("POLLER_LEAN_READS", "0")  # the escape hatch: botocore parses all
    plain = KinesisSubscriptions(await sources.client(), shard.consumer_arn)
    async with plain.subscribe(shard.id, StartPosition("TRIM_HORIZON")) as events:
        parsed = await records_of(events, 3)
    assert lean.decoder.decoded >= 1
    assert lean.decoder.fallbacks == 0
    assert not plain.decoder.enabled
    assert [typed(r) for r in decoded] == [typed(r) for r in parsed]
    assert [r["PartitionKey"] for r in decoded] == ["ключ-🔑", "k", "k" * 256]


def typed(value: Any) -> Any:
    """``value`` with each leaf's type beside it (so that 1 and 1.0 differ)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


# -- errors ------------------------------------------------------------------------------------


async def test_a_second_subscription_to_the_shard_is_busy(sources: Sources, shard: Shard) -> None:
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("LATEST")):
        with pytest.raises(SubscriptionBusy) as refused:
            async with subs.subscribe(shard.id, StartPosition("LATEST")):
                pass
    assert failure_reason(refused.value) == "resource_in_use"
    for named in ("SubscribeToShard", shard.id, "ResourceInUseException"):
        assert named in str(refused.value)


async def test_an_unknown_consumer_or_shard_is_not_found(sources: Sources, shard: Shard) -> None:
    stream, _ = parse_consumer_arn(shard.consumer_arn)
    client = await sources.client()
    unknown = KinesisSubscriptions(client, f"{stream}/consumer/nobody:1700000000")
    with pytest.raises(StreamNotFound) as no_consumer:
        async with unknown.subscribe(shard.id, StartPosition("LATEST")):
            pass
    with pytest.raises(StreamNotFound) as no_shard:
        async with (await subscriptions(sources, shard)).subscribe(
            "shardId-000000000099", StartPosition("LATEST")
        ):
            pass
    for refused, shard_id in ((no_consumer, shard.id), (no_shard, "shardId-000000000099")):
        assert failure_reason(refused.value) == "not_found"
        for named in ("SubscribeToShard", shard_id, "ResourceNotFoundException"):
            assert named in str(refused.value)


async def test_an_exception_event_mid_stream_ends_the_subscription(
    sources: Sources, shard: Shard
) -> None:
    subs = await subscriptions(sources, shard)
    async with subs.subscribe(shard.id, StartPosition("LATEST")) as events:
        await anext(events)
        # The test's doing (poller never deregisters): ministack then sends an exception event.
        await shard.control.deregister_stream_consumer(ConsumerARN=shard.consumer_arn)
        with pytest.raises(StreamNotFound) as ended, anyio.fail_after(5):
            await anext(events)
    assert failure_reason(ended.value) == "not_found"
    for named in ("SubscribeToShard event stream", shard.id, "ResourceNotFoundException"):
        assert named in str(ended.value)


async def test_the_read_timeout_spares_a_live_stream_and_ends_a_silent_one(
    sources: Sources, shard: Shard
) -> None:
    read_timeout, live_for = 1.5, 3.0  # alive for twice the read timeout
    subs = await subscriptions(sources, shard, read_timeout=read_timeout)
    received: list[str] = []
    done_reading = anyio.Event()

    async def feed() -> None:
        # A record every quarter second, so an event well within every read timeout.
        while not done_reading.is_set():
            await shard.put(b"tick")
            await anyio.sleep(0.25)

    async with subs.subscribe(shard.id, StartPosition("LATEST")) as events:
        opened = time.monotonic()
        async with anyio.create_task_group() as feeding:
            feeding.start_soon(feed)
            with anyio.fail_after(live_for + 2):
                while time.monotonic() - opened < live_for:
                    received.extend(sequences((await anext(events)).records))
            done_reading.set()
        # Fed no more: ministack's next event is 5 s away, beyond the read timeout.
        with anyio.fail_after(TAKEOVER_SECONDS - 1):
            silent = await failure_of(events)
    assert len(received) >= 6  # about 12 fed while alive
    assert type(silent) is SourceUnavailable
    assert failure_reason(silent) == "connection"
    assert "SocketTimeoutError" in str(silent)


# -- leaving a subscription --------------------------------------------------------------------


class Left(Exception):
    """Raised by a test to leave a subscription by an exception."""


# serial: "at once" is a short deadline on the close, which other workers' load on 2 cores
# can outlast.
@pytest.mark.serial
@pytest.mark.parametrize("way", ["normally", "by_exception", "by_cancellation"])
async def test_leaving_closes_the_connection_at_once(
    sources: Sources, shard: Shard, ministack_url: str, way: str
) -> None:
    subs = await subscriptions(sources, shard)
    before = connections_to(ministack_url)
    started = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        try:
            async with subs.subscribe(shard.id, StartPosition("LATEST")) as events:
                await anext(events)  # the first event comes at once; the next in 5 s
                assert len(connections_to(ministack_url) - before) == 1
                if way == "by_exception":
                    raise Left
                if way == "by_cancellation":
                    await anext(events)  # cancelled while waiting
        except Left:
            pass
    left = time.monotonic()
    assert scope.cancelled_caught == (way == "by_cancellation")
    # Closed, not pooled: the socket is gone once the loop has run the transport's close.
    await wait_until(lambda: connections_to(ministack_url) <= before, 1.0, "the socket to close")
    # And the service saw it end: a new subscription is accepted well inside the 5 s in which
    # ministack refuses one while the first is open.
    while True:
        try:
            async with subs.subscribe(shard.id, StartPosition("LATEST")):
                break
        except SubscriptionBusy:
            assert time.monotonic() - started < TAKEOVER_SECONDS - 1.5
            await anyio.sleep(0.05)
    assert left - started < 1.0


async def test_needs_a_source_client(ministack_url: str) -> None:
    async with aws_client("kinesis", ministack_url) as plain:
        with pytest.raises(ValueError, match="source session"):
            KinesisSubscriptions(
                plain, "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c"
            )


# -- consumers ---------------------------------------------------------------------------------


async def test_ensure_consumer_registers_once_and_is_idempotent(control: Any) -> None:
    name = unique("efo")
    await create_stream(control, name, 1)
    arn = await ensure_consumer(control, stream_arn(name), "reader")
    again = await ensure_consumer(control, stream_arn(name), "reader")
    assert again == arn
    assert parse_consumer_arn(arn) == (stream_arn(name), "reader")
    assert re.match(CONSUMER_ARN, arn)
    state = await describe_consumer(control, arn)
    assert (state.status, state.name, state.stream_arn) == ("ACTIVE", "reader", stream_arn(name))
    listed = await control.list_stream_consumers(StreamARN=stream_arn(name))
    assert [c["ConsumerName"] for c in listed["Consumers"]] == ["reader"]


async def test_ensure_consumer_on_a_missing_stream_is_not_found(control: Any) -> None:
    missing = stream_arn(unique("missing"))
    with pytest.raises(StreamNotFound) as refused:
        await ensure_consumer(control, missing, "reader")
    assert missing in str(refused.value)
    assert "reader" in str(refused.value)


@pytest.fixture(scope="module")
def kinesis_local_url() -> Iterator[str]:
    if not PACKAGE.exists():
        pytest.skip(f"kinesis-local is not installed at {PACKAGE} (scripts/test installs it)")
    with kinesis_local() as url:
        yield url


async def test_ensure_consumer_waits_for_active_and_waits_out_a_deletion(
    kinesis_local_url: str,
) -> None:
    async with aws_client("kinesis", kinesis_local_url) as kinesis:
        name = unique("efo")
        await create_stream(kinesis, name, 1)
        arn = stream_arn(name)
        # This emulator's consumers are CREATING for about 0.5 s after registration.
        probe = await kinesis.register_stream_consumer(StreamARN=arn, ConsumerName="probe")
        assert probe["Consumer"]["ConsumerStatus"] == "CREATING"

        first = await ensure_consumer(kinesis, arn, "reader", timeout=10)
        assert (await describe_consumer(kinesis, first)).status == "ACTIVE"

        await kinesis.deregister_stream_consumer(ConsumerARN=first)  # the test's doing
        assert (await describe_consumer(kinesis, first)).status == "DELETING"
        second = await ensure_consumer(kinesis, arn, "reader", timeout=10)
        assert second != first  # registered again: a new creation epoch
        assert (await describe_consumer(kinesis, second)).status == "ACTIVE"
        with pytest.raises(StreamNotFound):
            await describe_consumer(kinesis, first)
        assert (await wait_until_active(kinesis, probe["Consumer"]["ConsumerARN"])).name == (
            "probe"
        )


async def test_wait_until_active_gives_up_at_its_deadline(kinesis_local_url: str) -> None:
    async with aws_client("kinesis", kinesis_local_url) as kinesis:
        name = unique("efo")
        await create_stream(kinesis, name, 1)
        registered = await kinesis.register_stream_consumer(
            StreamARN=stream_arn(name), ConsumerName="slow"
        )
        with pytest.raises(SourceError) as late:
            await wait_until_active(kinesis, registered["Consumer"]["ConsumerARN"], timeout=0.1)
    assert type(late.value) is SourceUnavailable
    assert "slow" in str(late.value)
    assert "CREATING" in str(late.value)


# -- broken streams ----------------------------------------------------------------------------
# Faults no emulator makes: a tiny HTTP server in the test answers SubscribeToShard with frames
# built here (the event stream encoding: prelude, CRC, string headers, payload, CRC).


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = bytearray()
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded += bytes([len(name_bytes)]) + name_bytes + b"\x07"
        encoded += len(value_bytes).to_bytes(2, "big") + value_bytes
    total = 12 + len(encoded) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(encoded).to_bytes(4, "big")
    head = prelude + zlib.crc32(prelude).to_bytes(4, "big") + bytes(encoded) + payload
    return head + zlib.crc32(head).to_bytes(4, "big")


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":message-type": "event", ":event-type": event_type}
    return frame({**headers, ":content-type": "application/json"}, json.dumps(payload).encode())


INITIAL = event_frame("initial-response", {})
RECORDS = event_frame(
    "SubscribeToShardEvent",
    {
        "Records": [
            {
                "SequenceNumber": "1",
                "Data": "eA==",
                "PartitionKey": "k",
                "ApproximateArrivalTimestamp": 1.5,
            }
        ],
        "ContinuationSequenceNumber": "1",
        "MillisBehindLatest": 0,
    },
)
INTERNAL_FAILURE = frame(
    {
        ":message-type": "exception",
        ":exception-type": "InternalFailureException",
        ":content-type": "application/json",
    },
    b'{"message": "try again"}',
)


#: An event of about 1 MiB, and how much the flooding stream writes at most.
LARGE = event_frame(
    "SubscribeToShardEvent",
    {
        "Records": [
            {
                "SequenceNumber": "2",
                "Data": "eA==" * 2**18,
                "PartitionKey": "k",
                "ApproximateArrivalTimestamp": 1.5,
            }
        ],
        "ContinuationSequenceNumber": "2",
    },
)
FLOOD_CAP = 256 * 2**20


class Written:
    """Bytes the test server has handed to its connection so far."""

    total = 0


@contextlib.asynccontextmanager
async def broken_stream(
    fault: str, written: Written | None = None
) -> AsyncIterator[KinesisSubscriptions]:
    """Subscriptions whose stream sends one good event, then ``fault``."""
    left = anyio.Event()

    async def subscribe(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        await response.write(INITIAL + RECORDS)
        if fault == "cut_mid_frame":
            await response.write(RECORDS[:20])
            assert request.transport is not None
            request.transport.close()
            return response
        elif fault == "bad_crc":
            await response.write(RECORDS[:-1] + bytes([RECORDS[-1] ^ 0xFF]))
        elif fault == "exception_event":
            await response.write(INTERNAL_FAILURE)
        elif fault == "flood" and written is not None:
            # Each write waits while the connection's buffers are full (flow control).
            with contextlib.suppress(ConnectionError):  # the client leaves mid-flood
                while written.total < FLOOD_CAP:
                    await response.write(LARGE)
                    written.total += len(LARGE)
        elif fault == "clean_end_mid_frame":
            await response.write(RECORDS[:20])
            await response.write_eof()
        await left.wait()  # the stream stays open until the test is done with it
        return response

    app = web.Application()
    app.router.add_post("/", subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sources = Sources(f"http://127.0.0.1:{port}")
    try:
        consumer = f"{stream_arn('s')}/consumer/c:1700000000"
        yield KinesisSubscriptions(await sources.client(), consumer)
    finally:
        left.set()
        await sources.aclose()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("fault", "reason", "named"),
    [
        ("cut_mid_frame", "connection", "ClientPayloadError"),
        ("bad_crc", "stream_error", "ChecksumMismatch"),
        ("exception_event", "stream_error", "InternalFailureException"),
    ],
)
async def test_a_broken_stream_is_unavailable(fault: str, reason: str, named: str) -> None:
    async with (
        broken_stream(fault) as subs,
        subs.subscribe("shardId-0", StartPosition("LATEST")) as events,
    ):
        first = await anext(events)
        with anyio.fail_after(5):
            failure = await failure_of(events)
    assert first.continuation == "1"
    assert type(failure) is SourceUnavailable
    assert failure_reason(failure) == reason
    for part in ("SubscribeToShard event stream", "shardId-0", named):
        assert part in str(failure)


async def test_a_clean_end_inside_a_frame_reads_as_the_end_of_the_subscription() -> None:
    # aiobotocore drops the bytes of a frame the body ends inside (its buffer is not in
    # reach), so this cannot be told from the service ending the subscription; nothing is
    # lost, as the next subscription starts after the last continuation.
    async with (
        broken_stream("clean_end_mid_frame") as subs,
        subs.subscribe("shardId-0", StartPosition("LATEST")) as events,
    ):
        with anyio.fail_after(5):
            received = [event async for event in events]
    assert [event.continuation for event in received] == ["1"]


async def test_a_consumer_that_stops_pulling_holds_the_service_back() -> None:
    written = Written()
    async with (
        broken_stream("flood", written) as subs,
        subs.subscribe("shardId-0", StartPosition("LATEST")) as events,
    ):
        await anext(events)  # then nothing is pulled for a while

        last = -1

        def stalled() -> bool:
            nonlocal last
            settled, last = written.total == last, written.total
            return settled

        await wait_until(stalled, 10, "the server's writes to stall", interval=0.3)
        held_back = written.total
        with anyio.fail_after(10):
            for _ in range(8):
                assert (await anext(events)).continuation == "2"
        await wait_until(lambda: written.total > held_back, 5, "the server to write again")
    # What the kernel's socket buffers hold (about 3 MiB measured here; up to 32 MiB receive
    # and 4 MiB send by this machine's limits) plus aiohttp's 128 KiB: far below the 256 MiB
    # an unbounded read-ahead would have taken.
    assert held_back < 48 * 2**20 < FLOOD_CAP


# -- frames decoded by hand or by botocore ---------------------------------------------------------
# The same body served to a subscription that decodes record events by hand and to one that
# leaves every frame to botocore (POLLER_LEAN_READS=0): events and the error or end are equal.


@contextlib.asynccontextmanager
async def served(body: bytes) -> AsyncIterator[str]:
    """A SubscribeToShard endpoint answering every request with the initial response, then
    ``body``, then the end of the stream; its URL."""

    async def subscribe(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        await response.write(INITIAL + body)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", subscribe)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def record_frame(payload: bytes) -> bytes:
    headers = {":message-type": "event", ":event-type": "SubscribeToShardEvent"}
    return frame({**headers, ":content-type": "application/json"}, payload)


SPLIT_END = event_frame(
    "SubscribeToShardEvent",
    {
        "Records": [],
        "MillisBehindLatest": 0,
        "ChildShards": [
            {
                "ShardId": "shardId-1",
                "ParentShards": ["shardId-0"],
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
            }
        ],
    },
)
ODD_BUT_READ = event_frame(
    "SubscribeToShardEvent",
    {
        "Records": [
            {
                "SequenceNumber": "3",
                "Data": "",
                "PartitionKey": "ключ",
                "ApproximateArrivalTimestamp": "2026-12-05T03:00:00.5Z",
                "Unknown": [1],
            },
            {"SequenceNumber": "4", "ApproximateArrivalTimestamp": 1780000000, "Data": None},
        ],
        "ContinuationSequenceNumber": "4",
        "Unknown": {},
    },
)

#: Bodies after the initial response; how many record events of each are decoded by hand, and
#: how many are left to botocore because the compiled shape refuses them.
BODIES = {
    "records": (RECORDS + ODD_BUT_READ + RECORDS, 3, 0),
    "records_then_split": (RECORDS + SPLIT_END, 2, 0),
    "unknown_event_type": (event_frame("SomethingNew", {"x": 1}) + RECORDS, 1, 0),
    "exception": (RECORDS + INTERNAL_FAILURE + RECORDS, 1, 0),
    "not_json": (RECORDS + record_frame(b"not json") + RECORDS, 1, 1),  # unreadable: fails
    "empty_payload": (record_frame(b"") + RECORDS, 0, 1),  # unreadable: fails, no end
    "a_null_record": (
        record_frame(b'{"Records": [null], "ContinuationSequenceNumber": "1"}'),
        0,
        1,
    ),
    "not_utf8": (RECORDS + record_frame(b'{"Records": ["\xff"]}'), 1, 1),
    "bad_timestamp": (
        record_frame(b'{"Records": [{"ApproximateArrivalTimestamp": "soon"}]}') + RECORDS,
        0,
        1,
    ),
    "records_an_object": (record_frame(b'{"Records": {"a": 1}}'), 0, 1),
}


async def outcome(subscriptions: KinesisSubscriptions) -> tuple[list[Any], str]:
    """Every event of a subscription, and how it ended: ``end`` or the error's type and text."""
    received: list[Any] = []
    async with subscriptions.subscribe("shardId-0", StartPosition("LATEST")) as events:
        try:
            with anyio.fail_after(5):
                async for event in events:
                    received.append(typed(dataclasses.asdict(event)))
        except Exception as exc:
            return received, f"{type(exc).__name__}: {exc}"
    return received, "end"


@pytest.mark.parametrize("body", BODIES.keys())
async def test_frames_read_by_hand_or_by_botocore_give_the_same(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames, decoded, fallbacks = BODIES[body]
    async with served(frames) as url:
        sources = Sources(url)
        try:
            consumer = f"{stream_arn('s')}/consumer/c:1700000000"
            lean = KinesisSubscriptions(await sources.client(), consumer)
            monkeypatch.setenv("POLLER_LEAN_READS", "0")
            plain = KinesisSubscriptions(await sources.client(), consumer)
            by_hand, by_botocore = await outcome(lean), await outcome(plain)
        finally:
            await sources.aclose()
    assert by_hand == by_botocore
    assert (lean.decoder.decoded, lean.decoder.fallbacks) == (decoded, fallbacks)
    assert (plain.decoder.decoded, plain.decoder.fallbacks) == (0, 0)
