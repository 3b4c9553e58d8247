"""The fault proxy's enhanced fan-out support: SubscribeToShard relayed as a stream from ministack
and kinesis-local to a real aiobotocore client, the initial-response kinesis-local lacks, the
subscription faults (clean end, abort, exception frame), AWS's one-subscription and
one-subscribe-a-second rules, and what the proxy observes (calls, open subscriptions, endings,
clients that leave)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from aiobotocore.config import AioConfig
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, ConnectionClosedError, EventStreamError
from botocore.parsers import ResponseParserError

from tests.support.aws import aws_client, create_stream, hash_key_for, unique
from tests.support.fault_proxy import FaultProxy, FrameSplitter, encode_event, exception_event
from tests.support.kinesis_local import kinesis_local
from tests.support.ministack import active_consumer, ministack, ministack_available
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

ONE_TRY = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"})
LATEST = {"Type": "LATEST"}
TRIM_HORIZON = {"Type": "TRIM_HORIZON"}
Event = dict[str, Any]


@pytest.fixture(scope="module")
def ms_url() -> Iterator[str]:
    if reason := ministack_available():
        pytest.skip(reason)
    with ministack() as url:
        yield url


@dataclass
class Efo:
    """A stream with consumers registered, reached through a proxy."""

    kinesis: Any
    proxy: FaultProxy
    stream: str
    shards: list[dict[str, Any]]
    consumers: list[str]

    def shard(self, index: int = 0) -> str:
        return str(self.shards[index]["ShardId"])

    async def subscribe(
        self, shard: int = 0, consumer: int = 0, position: dict[str, str] = LATEST
    ) -> Any:
        """The aiobotocore event stream of a new subscription."""
        response = await self.kinesis.subscribe_to_shard(
            ConsumerARN=self.consumers[consumer],
            ShardId=self.shard(shard),
            StartingPosition=position,
        )
        return response["EventStream"]

    async def put(self, data: bytes, shard: int = 0) -> str:
        put = await self.kinesis.put_record(
            StreamName=self.stream,
            Data=data,
            PartitionKey="k",
            ExplicitHashKey=hash_key_for(self.shards[shard]),
        )
        return str(put["SequenceNumber"])


@contextlib.asynccontextmanager
async def efo_on(
    url: str,
    stack: contextlib.ExitStack | None = None,
    shards: int = 1,
    consumers: int = 1,
    **options: Any,
) -> AsyncIterator[Efo]:
    """An :class:`Efo` on a fresh stream of ``url``, through a proxy made with ``options``
    (entered on ``stack`` when given, so that a test can stop it before the client)."""
    with contextlib.ExitStack() as own:
        proxy = (stack or own).enter_context(FaultProxy(url, **options))
        async with aws_client("kinesis", proxy.url, ONE_TRY) as kinesis:
            name = unique("efo")
            listed = await create_stream(kinesis, name, shards)
            summary = await kinesis.describe_stream_summary(StreamName=name)
            arn = summary["StreamDescriptionSummary"]["StreamARN"]
            registered = [await active_consumer(kinesis, arn, f"c{i}") for i in range(consumers)]
            yield Efo(kinesis, proxy, name, listed, registered)


async def events_until(
    stream: Any, done: Callable[[list[Event]], bool], limit: float = 10.0
) -> list[Event]:
    """The subscription's events until ``done(events so far)`` or the stream ends."""
    events: list[Event] = []
    with anyio.fail_after(limit):
        async for event in stream:
            events.append(event["SubscribeToShardEvent"])
            if done(events):
                break
    return events


async def all_events(stream: Any, limit: float = 10.0) -> list[Event]:
    """Every event until the subscription ends."""
    return await events_until(stream, lambda _: False, limit)


def data_of(events: list[Event]) -> list[bytes]:
    return [record["Data"] for event in events for record in event["Records"]]


# -- the event-stream encoding ----------------------------------------------------------------


def test_encode_event_round_trips_through_botocores_decoder() -> None:
    headers: dict[str, str | bytes] = {":message-type": "event", "raw": b"\x00\x01"}
    payload = b'{"Records": [], "ContinuationSequenceNumber": "1", "MillisBehindLatest": 0}'
    decoder = EventStreamBuffer()
    decoder.add_data(encode_event(headers, payload) + exception_event("Boom", "it broke"))
    event, failure = list(decoder)
    assert (event.headers, event.payload) == (headers, payload)
    assert failure.to_response_dict()["status_code"] == 400
    assert failure.headers[":exception-type"] == "Boom"
    assert failure.payload == b'{"message": "it broke"}'


# -- relaying and observing -------------------------------------------------------------------


async def test_subscription_is_relayed_and_recorded(ms_url: str) -> None:
    async with efo_on(ms_url) as e:
        stream = await e.subscribe(position=TRIM_HORIZON)
        await e.proxy.wait_open_subscriptions(1, e.shard())
        await e.put(b"hello")
        events = await events_until(stream, lambda got: b"hello" in data_of(got))
        [call] = e.proxy.calls("SubscribeToShard")
        assert call["ShardId"] == e.shard()
        assert call["StartingPosition"] == TRIM_HORIZON
        assert call["ConsumerARN"] == e.consumers[0]
        [subscription] = e.proxy.subscriptions(e.shard())
        assert (subscription.open, subscription.records) == (True, 1)
        assert subscription.events == len(events)
        assert not subscription.injected_initial_response  # ministack sends its own
        stream.close()
        await e.proxy.wait_open_subscriptions(0)
        assert subscription.ending == "client_closed"


async def test_a_client_that_leaves_closes_the_emulators_subscription_at_once(ms_url: str) -> None:
    async with efo_on(ms_url) as e:
        stream = await e.subscribe()
        await events_until(stream, lambda got: len(got) == 1)
        stream.close()
        await e.proxy.wait_open_subscriptions(0, limit=1.0)
        # ministack refuses a second subscription for 5 s unless the first one's connection
        # closed: an immediate direct subscribe shows the proxy hung up on it.
        async with aws_client("kinesis", ms_url, ONE_TRY) as direct:

            async def subscribed() -> bool:
                try:
                    answer = await direct.subscribe_to_shard(
                        ConsumerARN=e.consumers[0], ShardId=e.shard(), StartingPosition=LATEST
                    )
                except ClientError as refused:
                    if refused.response["Error"]["Code"] != "ResourceInUseException":
                        raise
                    return False
                answer["EventStream"].close()
                return True

            await wait_until(subscribed, 2.0, "ministack to accept a new subscription")
        assert e.proxy.subscriptions()[0].ending == "client_closed"


async def test_per_call_faults_apply_before_a_subscribe_is_forwarded(ms_url: str) -> None:
    async with efo_on(ms_url, shards=2) as e:
        e.proxy.fail("SubscribeToShard", code="ResourceNotFoundException")
        with pytest.raises(ClientError) as refused:
            await e.subscribe()
        assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"
        e.proxy.drop(operations="SubscribeToShard", times=1)
        with pytest.raises(ConnectionClosedError):
            await e.subscribe(shard=1)
        assert e.proxy.calls("SubscribeToShard") == []
        stream = await e.subscribe()
        assert await events_until(stream, lambda got: len(got) == 1)
        stream.close()


# -- subscription faults ----------------------------------------------------------------------


async def test_end_subscriptions_after_events_ends_cleanly_on_one_shard_only(ms_url: str) -> None:
    async with efo_on(ms_url, shards=2) as e:
        fault = e.proxy.end_subscriptions(after_events=1, shard_id=e.shard(0), times=5)
        ended, other = await e.subscribe(0), await e.subscribe(1)
        assert len(await all_events(ended)) == 1  # ministack's first (empty) event, then the end
        await e.put(b"still here", shard=1)
        await events_until(other, lambda got: b"still here" in data_of(got))
        assert [s.ending for s in e.proxy.subscriptions(e.shard(0))] == ["end"]
        assert e.proxy.open_subscriptions(e.shard(1)) == 1
        assert fault.remaining == 4
        assert e.proxy.injected["subscription_end"] == 1
        other.close()


async def test_end_subscriptions_fires_only_the_given_number_of_times(ms_url: str) -> None:
    async with efo_on(ms_url, consumers=2) as e:
        e.proxy.end_subscriptions(after_events=1, times=1)
        assert len(await all_events(await e.subscribe(consumer=0))) == 1
        spared = await e.subscribe(consumer=1)
        await e.put(b"after")
        events = await events_until(spared, lambda got: b"after" in data_of(got))
        assert len(events) >= 2
        assert e.proxy.open_subscriptions() == 1
        spared.close()


async def test_end_subscriptions_after_seconds(ms_url: str) -> None:
    async with efo_on(ms_url) as e:
        e.proxy.end_subscriptions(after_seconds=0.5)
        started = time.monotonic()
        await all_events(await e.subscribe(), limit=5.0)
        assert time.monotonic() - started >= 0.5
        [subscription] = e.proxy.subscriptions()
        assert subscription.ending == "end"


@pytest.mark.parametrize("mid_frame", [False, True])
async def test_break_subscriptions_aborts_the_connection(ms_url: str, mid_frame: bool) -> None:
    async with efo_on(ms_url) as e:
        e.proxy.break_subscriptions(after_events=1, mid_frame=mid_frame)
        stream = await e.subscribe()
        await events_until(stream, lambda got: len(got) == 1)
        await e.put(b"next frame")  # the frame a mid-frame break cuts in half
        # aiobotocore lets aiohttp's error through: the chunked body ended unfinished.
        with pytest.raises(aiohttp.ClientPayloadError), anyio.fail_after(10):
            await all_events(stream)
        [subscription] = e.proxy.subscriptions()
        assert (subscription.ending, subscription.events) == ("abort", 1)


async def read_until_broken(response: aiohttp.ClientResponse, wire: bytearray, e: Efo) -> None:
    """Read the raw stream into ``wire``, putting a record once the first event arrived."""
    async for chunk in response.content.iter_any():
        wire += chunk
        if len(FrameSplitter().feed(bytes(wire))) == 2:  # the initial response and one event
            await e.put(b"to be cut")


async def test_a_mid_frame_break_leaves_part_of_a_frame_on_the_wire(ms_url: str) -> None:
    async with efo_on(ms_url) as e, aiohttp.ClientSession() as http:
        e.proxy.break_subscriptions(after_events=1, mid_frame=True)
        call = {"ConsumerARN": e.consumers[0], "ShardId": e.shard(), "StartingPosition": LATEST}
        headers = {"X-Amz-Target": "Kinesis_20131202.SubscribeToShard"}
        headers["Content-Type"] = "application/x-amz-json-1.1"
        wire = bytearray()
        async with http.post(e.proxy.url, json=call, headers=headers) as response:
            with pytest.raises(aiohttp.ClientPayloadError), anyio.fail_after(10):
                await read_until_broken(response, wire, e)
    frames = FrameSplitter()
    whole = frames.feed(bytes(wire))
    assert [m.headers[":event-type"] for _, m in whole] == [
        "initial-response",
        "SubscribeToShardEvent",
    ]
    assert len(wire) > sum(len(raw) for raw, _ in whole)  # part of a third frame, never ended


async def test_leaving_the_proxy_ends_its_open_subscriptions(ms_url: str) -> None:
    with contextlib.ExitStack() as proxy_running:
        async with efo_on(ms_url, proxy_running) as e:
            stream = await e.subscribe()
            await events_until(stream, lambda got: len(got) == 1)
            proxy_running.close()  # stops the proxy; the client stays
            with pytest.raises(aiohttp.ClientPayloadError), anyio.fail_after(10):
                await all_events(stream)
            assert e.proxy.subscriptions()[0].ending == "proxy_closed"


async def test_subscription_error_raises_event_stream_error(ms_url: str) -> None:
    async with efo_on(ms_url) as e:
        e.proxy.subscription_error(after_events=1, message="injected failure")
        stream = await e.subscribe()
        await events_until(stream, lambda got: len(got) == 1)
        with pytest.raises(EventStreamError) as failed:
            await all_events(stream)
        assert failed.value.response["Error"]["Code"] == "InternalFailureException"
        assert failed.value.response["Error"]["Message"] == "injected failure"
        assert e.proxy.subscriptions()[0].ending == "error"


# -- AWS's subscription rules -----------------------------------------------------------------


async def test_exclusive_subscriptions_refuse_a_second_open_one(ms_url: str) -> None:
    async with efo_on(ms_url, shards=2, exclusive_subscriptions=True) as e:
        first = await e.subscribe()
        with pytest.raises(ClientError) as refused:
            await e.subscribe()
        error = refused.value.response["Error"]
        assert error["Code"] == "ResourceInUseException"
        assert error["Message"] == (
            f"Another active subscription exists for this consumer: {e.consumers[0]}"
        )
        assert len(e.proxy.calls("SubscribeToShard")) == 1  # refused before forwarding
        other_shard = await e.subscribe(shard=1)
        first.close()
        await e.proxy.wait_open_subscriptions(0, e.shard(0))

        async def resubscribed() -> Any:
            try:
                return await e.subscribe()
            except ClientError:  # ministack may not have seen the first connection close yet
                return None

        again = await wait_until(resubscribed, 2.0, "a subscribe once the first one closed")
        assert e.proxy.injected["resource_in_use"] == 1
        again.close()
        other_shard.close()


async def test_subscribe_rate_limit_allows_one_subscribe_a_second(ms_url: str) -> None:
    async with efo_on(ms_url, shards=2, subscribe_rate_limit=True) as e:
        first = await e.subscribe()
        first_at = time.monotonic()
        with pytest.raises(ClientError) as limited:
            await e.subscribe()
        assert time.monotonic() - first_at < 1.0
        first.close()
        assert len(e.proxy.calls("SubscribeToShard")) == 1  # refused before forwarding
        assert e.proxy.faulted("Kinesis_20131202.SubscribeToShard") == 1
        assert e.proxy.injected["limit_exceeded"] == 1
        assert limited.value.response["Error"]["Code"] == "LimitExceededException"
        assert limited.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        (await e.subscribe(shard=1)).close()  # the limit is per shard

        async def allowed() -> Any:
            try:
                return await e.subscribe()
            except ClientError as again:
                if again.response["Error"]["Code"] != "LimitExceededException":
                    raise
                return None

        later = await wait_until(allowed, 3.0, "a subscribe a second after the first")
        assert time.monotonic() - first_at >= 1.0
        later.close()


# -- what the emulators do at a shard's end, and kinesis-local's missing initial-response ----


async def test_ministack_ends_a_split_parents_subscription_with_child_shards(ms_url: str) -> None:
    async with efo_on(ms_url) as e:
        # AWS ends a closed shard's subscription with ContinuationSequenceNumber null; ministack
        # sends the last sequence number, which a rewrite can null (as a lead test would).
        def as_aws(event: dict[str, Any]) -> dict[str, Any]:
            return (
                {**event, "ContinuationSequenceNumber": None} if event.get("ChildShards") else event
            )

        e.proxy.rewrite("SubscribeToShard", as_aws)
        stream = await e.subscribe(position=TRIM_HORIZON)
        await e.put(b"before the split")
        await events_until(stream, lambda got: bool(data_of(got)))
        parent = e.shards[0]
        middle = str(int(parent["HashKeyRange"]["EndingHashKey"]) // 2)
        await e.kinesis.split_shard(
            StreamName=e.stream, ShardToSplit=e.shard(), NewStartingHashKey=middle
        )
        *_, last = await all_events(stream)
        children = last["ChildShards"]
        assert len(children) == 2
        assert all(child["ParentShards"] == [e.shard()] for child in children)
        assert "ContinuationSequenceNumber" not in last  # botocore drops a null member
        assert e.proxy.subscriptions()[0].ending == "upstream_end"


async def test_kinesis_local_subscriptions_work_with_an_injected_initial_response() -> None:
    with kinesis_local() as url:
        async with efo_on(url, shards=2) as e:
            stream = await e.subscribe(position=TRIM_HORIZON)
            await e.put(b"through kinesis-local")
            events = await events_until(stream, lambda got: bool(data_of(got)))
            assert data_of(events) == [b"through kinesis-local"]
            assert e.proxy.subscriptions()[0].injected_initial_response
            stream.close()
            e.proxy.inject_initial_response = False
            # Without one botocore refuses the stream before returning from the call.
            with pytest.raises(ResponseParserError, match="First event was not of type initial"):
                await e.subscribe(shard=1)
