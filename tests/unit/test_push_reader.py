"""The enhanced fan-out reader (poller.streams.push_reader) over an in-memory shard that pushes
its records: positions across re-subscriptions, failures, the subscribe rate, shard end,
backpressure, cancellation, and the same records and warnings as the polling reader."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import structlog.testing

from poller.errors import (
    PositionTrimmed,
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    SubscriptionBusy,
    Throttled,
)
from poller.ports import PushEvent, RecordsPage, StartPosition
from poller.retry import Backoff
from poller.streams.budget import ReadBudget, ShardAccount
from poller.streams.push_reader import (
    PUSH_TIMING,
    PushShardReader,
    PushTiming,
    failure_reason,
    later_sequence,
)
from poller.testing import FakeStreamApi, Put, RecordingMetrics, kpl_aggregate
from poller.types import Chunk, ShardEnd
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARD = "shard-0"
MAPPING = "orders"
#: Spacing is measured in the fake, just after the reader's own clock reading: microseconds
#: apart, unless the OS preempts the process in between (about 35 ms seen at CI's peak load),
#: which makes a measured spacing shorter than the one the reader kept.
SLACK = 0.04
#: Short waits, no jitter: the tests measure the spacing they ask for.
FAST = PushTiming(
    subscribe_interval=0.1,  # well above SLACK: a spacing kept is told from none
    busy=Backoff(initial=0.1, maximum=0.4, jitter=0.0),
    throttled_minimum=0.3,
    failed=Backoff(initial=0.01, maximum=0.02, jitter=0.0),
    missing=Backoff(initial=0.01, maximum=0.02, jitter=0.0),
)


# -- the fake service -----------------------------------------------------------------------------


@dataclass
class Plan:
    """What one subscription does.

    ``refuse``: raised by the subscribe call. ``script``: these events, then the end (instead
    of the shard's records). Otherwise the shard's records after the position, ``per_event``
    a push, ``events`` pushes (None: until they run out, then idle as an open subscription
    does), then the service ends the subscription, or ``fail`` breaks it.
    """

    refuse: SourceError | None = None
    events: int | None = None
    fail: SourceError | None = None
    per_event: int = 2
    script: Sequence[PushEvent] | None = None
    millis_behind: int = 0


@dataclass
class Subscribe:
    at: float
    position: StartPosition


@dataclass
class FakeSubscriptions:
    """A ``Subscriptions`` over one shard's raw records, following a plan per subscribe call
    (then the default plan). A closed shard (``children`` not None) ends with an event naming
    them."""

    records: list[dict[str, Any]]
    children: tuple[str, ...] | None = None
    plans: deque[Plan] = field(default_factory=deque)
    calls: list[Subscribe] = field(default_factory=list)
    #: Events pulled from the subscriptions; subscriptions open now, and left.
    pulled: int = 0
    open: int = 0
    left: int = 0

    @asynccontextmanager
    async def subscribe(
        self, shard_id: str, position: StartPosition
    ) -> AsyncIterator[AsyncIterator[PushEvent]]:
        assert shard_id == SHARD
        self.calls.append(Subscribe(time.monotonic(), position))
        plan = self.plans.popleft() if self.plans else Plan()
        if plan.refuse is not None:
            raise plan.refuse
        self.open += 1
        try:
            yield self._events(plan, position)
        finally:
            self.open -= 1
            self.left += 1

    async def _events(self, plan: Plan, position: StartPosition) -> AsyncIterator[PushEvent]:
        if plan.script is not None:
            for event in plan.script:
                self.pulled += 1
                yield event
            return
        offset, served = self._offset(position), 0
        while plan.events is None or served < plan.events:
            batch = self.records[offset : offset + plan.per_event]
            offset += len(batch)
            if offset == len(self.records) and self.children is not None:
                self.pulled += 1
                yield PushEvent(batch, None, 0, self.children, shard_end=True)
                return
            if not batch:
                await anyio.sleep_forever()  # an open subscription with nothing new
            self.pulled += 1
            yield PushEvent(batch, batch[-1]["SequenceNumber"], plan.millis_behind)
            served += 1
        if plan.fail is not None:
            raise plan.fail

    def _offset(self, position: StartPosition) -> int:
        """The index of the first record a subscription at ``position`` pushes."""
        if position.type == "TRIM_HORIZON":
            return 0
        if position.type == "LATEST":
            return len(self.records)
        if position.type == "AT_TIMESTAMP":
            when = position.timestamp or 0.0
            arrivals = [r["ApproximateArrivalTimestamp"] for r in self.records]
            return next((i for i, at in enumerate(arrivals) if at >= when), len(self.records))
        wanted = int(position.sequence_number or 0)
        after = position.type == "AFTER_SEQUENCE_NUMBER"
        for index, raw in enumerate(self.records):
            number = int(raw["SequenceNumber"])
            if number > wanted or (number == wanted and not after):
                return index
        return len(self.records)

    def positions(self) -> list[StartPosition]:
        return [call.position for call in self.calls]


# -- helpers --------------------------------------------------------------------------------------


def shard(count: int, **api_options: Any) -> tuple[FakeStreamApi, list[dict[str, Any]]]:
    """A stream adapter (for the converter) and ``count`` raw records of one shard."""
    api = FakeStreamApi(**api_options)
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [Put(f"key-{i}", f"record {i}".encode()) for i in range(count)])
    # Closed, as the fake subscriptions end it: an end without child shards is believed only
    # when ListShards says the shard is closed.
    api.close_shard(SHARD)
    return api, raws


def reader(
    api: FakeStreamApi,
    subscriptions: FakeSubscriptions,
    *,
    start: StartPosition | None = None,
    metrics: RecordingMetrics | None = None,
    account: ShardAccount | None = None,
    timing: PushTiming = FAST,
    pages: list[RecordsPage] | None = None,
) -> PushShardReader:
    return PushShardReader(
        api,
        subscriptions=subscriptions,
        shard_id=SHARD,
        start=start or StartPosition("TRIM_HORIZON"),
        on_page=None if pages is None else pages.append,
        metrics=metrics,
        mapping=MAPPING,
        account=account,
        timing=timing,
    )


async def read_all(push: PushShardReader, capacity: int = 10, limit: float = 10) -> list[Chunk]:
    """Every chunk the reader sends until it ends the shard (and closes its stream)."""
    send, receive = anyio.create_memory_object_stream[Chunk](capacity)
    chunks: list[Chunk] = []
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            tg.start_soon(push.run, send)
            async with receive:
                async for chunk in receive:
                    chunks.append(chunk)
    return chunks


def sequences(chunks: list[Chunk]) -> list[str]:
    return [r.sequence_number for c in chunks if not isinstance(c, ShardEnd) for r in c]


def after(raw: dict[str, Any]) -> StartPosition:
    return StartPosition("AFTER_SEQUENCE_NUMBER", raw["SequenceNumber"])


def spacing(subscriptions: FakeSubscriptions) -> list[float]:
    at = [call.at for call in subscriptions.calls]
    return [later - earlier for earlier, later in itertools.pairwise(at)]


def reasons(metrics: RecordingMetrics, hook: str) -> list[str]:
    return [call["reason"] for call in metrics.calls_to(hook, MAPPING)]


# -- records and positions ------------------------------------------------------------------------


async def test_pushed_records_are_the_polled_records_and_the_shard_ends_with_its_children() -> None:
    api, raws = shard(5)
    subscriptions = FakeSubscriptions(raws, children=("shard-1", "shard-2"))
    chunks = await read_all(reader(api, subscriptions))

    polled = api.converter(SHARD, StartPosition("TRIM_HORIZON"))(raws)
    records = [r for c in chunks if not isinstance(c, ShardEnd) for r in c]
    assert records == polled
    assert [len(c) for c in chunks if not isinstance(c, ShardEnd)] == [2, 2, 1]  # per event
    assert chunks[-1] == ShardEnd(("shard-1", "shard-2"))
    assert subscriptions.open == 0


async def test_an_expired_subscription_resumes_after_the_last_event_handed_on() -> None:
    api, raws = shard(7)
    subscriptions = FakeSubscriptions(
        raws, children=(), plans=deque([Plan(events=1), Plan(events=2), Plan(events=0)])
    )
    metrics = RecordingMetrics()
    chunks = await read_all(reader(api, subscriptions, metrics=metrics))

    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws]  # no skip, no repeat
    assert subscriptions.positions() == [
        StartPosition("TRIM_HORIZON"),
        after(raws[1]),
        after(raws[5]),
        after(raws[5]),  # a subscription that pushed nothing does not move the position
    ]
    assert reasons(metrics, "subscription_ended") == ["expired"] * 3 + ["shard_end"]
    assert len(metrics.calls_to("subscription_started", MAPPING)) == 4


async def test_an_empty_event_moves_the_position_to_its_continuation() -> None:
    api, raws = shard(3)
    continuation = raws[1]["SequenceNumber"]  # records the consumer was not sent (filtered)
    subscriptions = FakeSubscriptions(
        raws, children=(), plans=deque([Plan(script=[PushEvent([], continuation, 0)])])
    )
    chunks = await read_all(reader(api, subscriptions))

    assert subscriptions.positions()[1] == after(raws[1])
    assert sequences(chunks) == [raws[2]["SequenceNumber"]]


async def test_a_continuation_before_the_last_record_never_moves_the_position_back() -> None:
    api, raws = shard(4)
    behind = PushEvent(raws[:2], raws[0]["SequenceNumber"], 0)
    ahead = PushEvent(raws[2:3], raws[3]["SequenceNumber"], 0)
    subscriptions = FakeSubscriptions(
        raws, children=(), plans=deque([Plan(script=[behind]), Plan(script=[ahead])])
    )
    chunks = await read_all(reader(api, subscriptions))

    assert subscriptions.positions()[1:] == [after(raws[1]), after(raws[3])]
    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws[:3]]


@pytest.mark.parametrize(
    "start",
    [
        StartPosition("LATEST"),
        StartPosition("AT_TIMESTAMP", timestamp=1234.5),
        StartPosition("AFTER_SEQUENCE_NUMBER", "000000000000000000002"),
    ],
)
async def test_the_first_subscription_starts_at_the_mapping_s_start(start: StartPosition) -> None:
    api, raws = shard(3)
    subscriptions = FakeSubscriptions(raws, children=())
    await read_all(reader(api, subscriptions, start=start))
    assert subscriptions.positions()[0] == start


async def test_a_kpl_aggregate_settled_in_part_is_resumed_by_the_converter() -> None:
    api = FakeStreamApi(deaggregate=True)
    api.add_shard(SHARD)
    users = [("a", b"one"), ("b", b"two"), ("c", b"three")]
    raws = api.add_page(SHARD, [kpl_aggregate(users), Put("d", b"four")])
    api.close_shard(SHARD)
    start = StartPosition("AT_SEQUENCE_NUMBER", raws[0]["SequenceNumber"], settled_through=0)
    subscriptions = FakeSubscriptions(raws, children=())
    chunks = await read_all(reader(api, subscriptions, start=start))

    assert subscriptions.positions()[0] == start
    records = [r for c in chunks if not isinstance(c, ShardEnd) for r in c]
    assert [r.position for r in records] == [
        f"{raws[0]['SequenceNumber']}:1",
        f"{raws[0]['SequenceNumber']}:2",
        raws[1]["SequenceNumber"],
    ]


async def test_an_event_whose_records_are_all_settled_sends_nothing_but_moves_on() -> None:
    api = FakeStreamApi(deaggregate=True)
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [kpl_aggregate([("a", b"1"), ("b", b"2")]), Put("c", b"3")])
    api.close_shard(SHARD)
    start = StartPosition("AT_SEQUENCE_NUMBER", raws[0]["SequenceNumber"], settled_through=1)
    plans = deque([Plan(events=1, per_event=1)])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    chunks = await read_all(reader(api, subscriptions, start=start))

    assert subscriptions.positions() == [start, after(raws[0])]
    assert sequences(chunks) == [raws[1]["SequenceNumber"]]
    assert len(chunks) == 2  # no empty chunk, then the records, then the shard's end


async def test_the_lag_is_reported_per_event_and_the_push_latency_per_event_with_records() -> None:
    api, raws = shard(3)
    subscriptions = FakeSubscriptions(
        raws,
        children=(),
        plans=deque(
            [Plan(script=[PushEvent([], "0", 0), PushEvent(raws[:2], None, 1500)]), Plan()]
        ),
    )
    metrics, pages = RecordingMetrics(), list[RecordsPage]()
    push = reader(api, subscriptions, metrics=metrics, pages=pages)
    await read_all(push)

    assert [page.millis_behind_latest for page in pages] == [0, 1500, 0]
    assert push.millis_behind_latest == 0
    latencies = [call["seconds"] for call in metrics.calls_to("push_latency", MAPPING)]
    assert len(latencies) == 2  # the empty event has no latency
    assert all(0.0 <= seconds < 60.0 for seconds in latencies)


# -- the subscribe rate and failures --------------------------------------------------------------


async def test_subscribes_are_at_least_a_second_apart_with_aws_timing() -> None:
    api, raws = shard(2)
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque([Plan(events=0)]))
    await read_all(reader(api, subscriptions, timing=PUSH_TIMING))

    assert len(subscriptions.calls) == 2
    assert spacing(subscriptions)[0] >= 1.0 - SLACK


async def test_re_subscribes_keep_the_interval_from_the_previous_call() -> None:
    api, raws = shard(4)
    plans = deque([Plan(events=1), Plan(events=0), Plan(refuse=SourceUnavailable("reset"))])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    await read_all(reader(api, subscriptions))

    assert len(subscriptions.calls) == 4
    assert min(spacing(subscriptions)) >= FAST.subscribe_interval - SLACK


async def test_a_busy_subscription_is_retried_with_a_growing_backoff_from_the_same_place() -> None:
    api, raws = shard(4)
    busy = [Plan(refuse=SubscriptionBusy("ResourceInUseException")) for _ in range(3)]
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque([Plan(events=1), *busy]))
    metrics = RecordingMetrics()
    chunks = await read_all(reader(api, subscriptions, metrics=metrics))

    assert subscriptions.positions()[1:5] == [after(raws[1])] * 4
    waits = spacing(subscriptions)[1:4]
    assert waits[0] >= 0.1
    assert waits[1] >= 0.2
    assert waits[2] >= 0.4
    assert reasons(metrics, "subscription_failed") == ["resource_in_use"] * 3
    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws]


def test_the_busy_backoff_starts_near_a_second_and_stays_within_a_few() -> None:
    first = [PUSH_TIMING.busy.delay(1) for _ in range(50)]
    late = [PUSH_TIMING.busy.delay(9) for _ in range(50)]
    assert all(0.75 <= delay <= 1.25 for delay in first)
    assert all(delay <= 5.0 for delay in late)


async def test_a_throttled_subscribe_waits_at_least_its_minimum() -> None:
    api, raws = shard(2)
    plans = deque([Plan(refuse=Throttled("LimitExceededException"))])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    metrics = RecordingMetrics()
    chunks = await read_all(reader(api, subscriptions, metrics=metrics))

    assert spacing(subscriptions)[0] >= FAST.throttled_minimum
    assert PUSH_TIMING.throttled_minimum >= 1.0
    assert reasons(metrics, "subscription_failed") == ["limit_exceeded"]
    assert len(sequences(chunks)) == 2


async def test_a_broken_stream_resumes_after_the_last_event_with_nothing_lost_or_repeated() -> None:
    api, raws = shard(6)
    plans = deque(
        [
            Plan(events=1, fail=SourceUnavailable("connection reset")),
            Plan(refuse=SourceUnavailable("connect timeout")),
            Plan(events=1, fail=SourceUnavailable("internal failure event")),
        ]
    )
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    metrics = RecordingMetrics()
    with structlog.testing.capture_logs() as logs:
        chunks = await read_all(reader(api, subscriptions, metrics=metrics))

    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws]
    assert subscriptions.positions()[1:] == [after(raws[1]), after(raws[1]), after(raws[3])]
    assert reasons(metrics, "subscription_failed") == ["stream_error", "connection", "stream_error"]
    failed = [log for log in logs if log["event"] == "shard.read_failed"]
    # Failures reset after an event: the third failure came after one, so it is attempt 1.
    assert [log["attempt"] for log in failed] == [1, 2, 1]
    assert all(log["log_level"] == "warning" for log in failed)


async def test_a_deleted_consumer_is_logged_as_an_error_and_retried_not_raised() -> None:
    api, raws = shard(2)
    missing = [Plan(refuse=StreamNotFound("consumer not found")) for _ in range(3)]
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque(missing))
    metrics = RecordingMetrics()
    with structlog.testing.capture_logs() as logs:
        chunks = await read_all(reader(api, subscriptions, metrics=metrics))

    assert reasons(metrics, "subscription_failed") == ["not_found"] * 3
    errors = [log for log in logs if log["event"] == "shard.subscription_not_found"]
    assert [log["log_level"] for log in errors] == ["error"] * 3
    assert len(sequences(chunks)) == 2


def test_failure_reasons_name_each_kind_of_source_error() -> None:
    assert failure_reason(SubscriptionBusy("x"), opened=False) == "resource_in_use"
    assert failure_reason(Throttled("x"), opened=False) == "limit_exceeded"
    assert failure_reason(StreamNotFound("x"), opened=False) == "not_found"
    assert failure_reason(SourceUnavailable("x"), opened=False) == "connection"
    assert failure_reason(SourceUnavailable("x"), opened=True) == "stream_error"
    assert failure_reason(SourceError("x"), opened=True) == "other"


def test_sequence_numbers_compare_as_numbers() -> None:
    assert later_sequence("9", "10") == "10"
    assert later_sequence("49590338271490256608559692538361571095921575989136588898", "3") != "3"
    assert later_sequence("b", "a") == "b"


# -- backpressure and stopping --------------------------------------------------------------------


async def test_a_full_stream_stops_the_pulling_of_events() -> None:
    api, raws = shard(10)
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque([Plan(per_event=1)]))
    push = reader(api, subscriptions)
    send, receive = anyio.create_memory_object_stream[Chunk](1)
    received: list[Chunk] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(push.run, send)
            await wait_until(
                lambda: send.statistics().tasks_waiting_send == 1, 5, "the reader to be blocked"
            )
            await anyio.wait_all_tasks_blocked()
            # One chunk in the stream, one being sent: nothing more is pulled from the service.
            assert subscriptions.pulled == 2
            async with receive:
                async for chunk in receive:
                    received.append(chunk)
    assert sequences(received) == [raw["SequenceNumber"] for raw in raws]  # nothing dropped


async def test_a_used_up_read_budget_stops_the_pulling_of_events_until_records_settle() -> None:
    api, raws = shard(8)
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque([Plan(per_event=4)]))
    budget = ReadBudget(1000)
    account = budget.account(MAPPING, SHARD, floor_records=1, max_records=10_000)
    push = reader(api, subscriptions, account=account)
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    received: list[Chunk] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(push.run, send)
            first = await receive.receive()
            assert isinstance(first, list)
            await anyio.wait_all_tasks_blocked()
            assert account.next_limit() is None  # its four records hold the share
            assert subscriptions.pulled == 1
            account.release(first)
            async with receive:
                async for chunk in receive:
                    received.append(chunk)
                    if isinstance(chunk, list):
                        account.release(chunk)
    assert sequences([first, *received]) == [raw["SequenceNumber"] for raw in raws]
    assert subscriptions.pulled == 2  # the second half came with the shard's end


@pytest.mark.parametrize("waiting_in", ["pull", "send"])
async def test_a_cancelled_reader_leaves_the_subscription_at_once(waiting_in: str) -> None:
    api, raws = shard(4)
    # "pull": the shard has nothing new; "send": the stream is full.
    subscriptions = FakeSubscriptions(raws, plans=deque([Plan(per_event=1)]))
    metrics = RecordingMetrics()
    push = reader(api, subscriptions, metrics=metrics)
    send, receive = anyio.create_memory_object_stream[Chunk](10 if waiting_in == "pull" else 1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(push.run, send)
            blocked = (
                (lambda: subscriptions.pulled == len(raws))
                if waiting_in == "pull"
                else (lambda: send.statistics().tasks_waiting_send == 1)
            )
            await wait_until(blocked, 5, f"the reader to wait in {waiting_in}")
            await anyio.wait_all_tasks_blocked()
            assert subscriptions.open == 1
            tg.cancel_scope.cancel()
    assert subscriptions.open == 0
    assert subscriptions.left == 1
    assert reasons(metrics, "subscription_ended") == ["stopped"]
    receive.close()


async def test_a_reader_cancelled_between_subscriptions_counts_no_subscription_end() -> None:
    api, raws = shard(2)
    plans = deque([Plan(refuse=SubscriptionBusy("in use"))])
    subscriptions = FakeSubscriptions(raws, plans=plans)
    metrics = RecordingMetrics()
    timing = PushTiming(busy=Backoff(initial=60.0, maximum=60.0))
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader(api, subscriptions, metrics=metrics, timing=timing).run, send)
            await wait_until(lambda: subscriptions.calls, 5, "the refused subscribe")
            tg.cancel_scope.cancel()
    assert reasons(metrics, "subscription_ended") == []
    assert reasons(metrics, "subscription_failed") == ["resource_in_use"]
    receive.close()


# -- retention ------------------------------------------------------------------------------------


async def test_a_checkpoint_resumed_at_the_retention_edge_is_warned_about() -> None:
    api = FakeStreamApi(retention=3600.0)
    api.add_shard(SHARD)
    old = time.time() - 3500.0
    raws = api.add_page(SHARD, [Put("k", b"a", arrival=old), Put("k", b"b", arrival=old)])
    api.close_shard(SHARD)
    checkpoint = StartPosition("AFTER_SEQUENCE_NUMBER", "000000000000000000000")
    subscriptions = FakeSubscriptions(raws, children=())
    with structlog.testing.capture_logs() as logs:
        await read_all(reader(api, subscriptions, start=checkpoint))

    warnings = [log for log in logs if log["event"] == "shard.possible_retention_gap"]
    assert len(warnings) == 1  # for the first record after the checkpoint only
    assert warnings[0]["first_sequence"] == raws[0]["SequenceNumber"]


async def test_a_trimmed_checkpoint_goes_on_from_the_oldest_record_held_and_says_so() -> None:
    api, raws = shard(3, reports_trims=True)
    checkpoint = StartPosition("AFTER_SEQUENCE_NUMBER", "000000000000000000000")
    plans = deque([Plan(refuse=PositionTrimmed("TrimmedDataAccessException"))])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    metrics = RecordingMetrics()
    with structlog.testing.capture_logs() as logs:
        chunks = await read_all(reader(api, subscriptions, start=checkpoint, metrics=metrics))

    assert subscriptions.positions() == [checkpoint, StartPosition("TRIM_HORIZON")]
    assert len(sequences(chunks)) == 3
    events = [log["event"] for log in logs]
    assert events.count("shard.retention_gap") == 1
    assert events.count("shard.retention_gap_end") == 1
    assert len(metrics.calls_to("retention_gap", MAPPING)) == 1
    assert reasons(metrics, "subscription_failed") == []  # not a failure: a gap, reported


async def test_a_fresh_record_after_a_checkpoint_is_not_warned_about() -> None:
    api, raws = shard(2, retention=3600.0)
    checkpoint = StartPosition("AFTER_SEQUENCE_NUMBER", "000000000000000000000")
    with structlog.testing.capture_logs() as logs:
        await read_all(reader(api, FakeSubscriptions(raws, children=()), start=checkpoint))
    assert not [log for log in logs if log["event"] == "shard.possible_retention_gap"]


async def test_subscriptions_ended_before_any_event_are_backed_off_and_logged() -> None:
    """A service that ends every subscription at once (AWS keeps one for 5 minutes and sends
    an event every few seconds) is not renewed every second for ever: each early end grows the
    read backoff and is logged, and records flow again once subscriptions last."""
    api, raws = shard(4)
    timing = PushTiming(
        subscribe_interval=0.01, failed=Backoff(initial=0.1, maximum=0.4, jitter=0.0)
    )
    plans = deque([Plan(script=[]), Plan(script=[]), Plan(script=[])])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    metrics = RecordingMetrics()
    with structlog.testing.capture_logs() as logs:
        chunks = await read_all(reader(api, subscriptions, metrics=metrics, timing=timing))

    waits = spacing(subscriptions)[:3]
    assert waits[0] >= 0.1
    assert waits[1] >= 0.2
    assert waits[2] >= 0.4
    early = [e["attempt"] for e in logs if e["event"] == "shard.subscription_ended_early"]
    assert early == [1, 2, 3]
    assert reasons(metrics, "subscription_ended")[:3] == ["expired"] * 3
    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws]


async def test_an_end_without_child_shards_is_believed_only_for_a_closed_shard() -> None:
    """A missing continuation alone (an old-style end, or an event a proxy mangled) ends the
    shard only once ListShards says it is closed: an open shard ended by mistake would be
    checkpointed SHARD_END and its later records never read."""
    api = FakeStreamApi()
    api.add_shard(SHARD)
    raws = api.add_page(SHARD, [Put(f"key-{i}", b"x") for i in range(3)])
    bogus_end = PushEvent(raws[:1], None, 0, shard_end=True)
    plans = deque([Plan(script=[bogus_end])])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    push = reader(api, subscriptions)
    send, receive = anyio.create_memory_object_stream[Chunk](10)
    got: list[Chunk] = []
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(push.run, send)
            async with receive:
                while len(sequences(got)) < 3:
                    with anyio.fail_after(10):
                        got.append(await receive.receive())
                api.close_shard(SHARD)  # now the end is real
                async for chunk in receive:
                    got.append(chunk)
    assert isinstance(got[-1], ShardEnd)
    assert sequences(got) == [raw["SequenceNumber"] for raw in raws]
    assert any("says the shard is open" in e.get("error", "") for e in logs)
