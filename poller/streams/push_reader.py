"""The shard reader of Kinesis enhanced fan-out: records pushed by SubscribeToShard.

One :class:`PushShardReader` runs per shard in place of the polling
:class:`~poller.streams.reader.ShardReader`, with the same contract towards the shard's
processor::

    Subscriptions.subscribe(shard, position) --PushEvent--> converter (the polling one)
        --chunk--> bounded stream --> ShardProcessor
    position := AFTER_SEQUENCE_NUMBER <ContinuationSequenceNumber> after every event

It shares the position, the converter, the read budget's charge, the page report and the
retention warnings with the polling reader (:class:`~poller.streams.reader.BaseShardReader`),
so a shard read either way gives the same records and the same checkpoints.

A subscription lasts until the service ends it (5 minutes on AWS): the reader then subscribes
again after the last event it handed on, never sooner than a second after its previous
subscribe (AWS allows one SubscribeToShard per second per shard). A failure (the previous
owner's subscription still open, a throttle, a broken connection, a deleted consumer) is
counted and backed off, and the reader resumes from the same position: nothing is skipped and
nothing handed on is read again. At the end of a closed shard it sends ``ShardEnd`` with the
child shard ids and stops.

Backpressure: the next event is pulled only once the previous chunk was accepted by the
bounded stream and, with a read budget, once the shard's account may read. Until then the
event iterator is not pulled, and TCP flow control holds the service back: nothing is
dropped. A cancelled reader (lease lost, drain, stop) leaves the subscription at once, which
closes its connection, so the shard's next owner is not refused for long.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from poller.errors import (
    PositionTrimmed,
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    SubscriptionBusy,
    Throttled,
)
from poller.observability.metrics import Metrics
from poller.ports import PushEvent, RecordsPage, StartPosition, StreamApi, Subscriptions
from poller.retry import READ_BACKOFF, Backoff
from poller.streams.budget import ShardAccount
from poller.streams.reader import BaseShardReader
from poller.types import Chunk, ShardEnd

log = structlog.get_logger("poller.sources")

#: The previous owner's subscription is still open: it clears when that owner leaves it (at
#: once) or when AWS times its connection out, so it is retried often, a few seconds apart.
BUSY_BACKOFF = Backoff(initial=1.0, maximum=4.0)
#: The consumer (or stream) is gone: nothing to do but wait for it, and say so.
MISSING_BACKOFF = Backoff(initial=1.0, maximum=30.0)


@dataclass(frozen=True, slots=True)
class PushTiming:
    """How long the push reader waits before subscribing again (tests pass shorter ones)."""

    #: AWS allows one SubscribeToShard per second per shard, counted from the call.
    subscribe_interval: float = 1.0
    busy: Backoff = BUSY_BACKOFF
    #: LimitExceeded: the call rate (or the consumer's) was exceeded; at least this long.
    throttled_minimum: float = 1.0
    #: A connection or stream failure, or a throttle: as a failed read.
    failed: Backoff = READ_BACKOFF
    missing: Backoff = MISSING_BACKOFF


#: The timing AWS asks for.
PUSH_TIMING = PushTiming()


class PushShardReader(BaseShardReader):
    """Reads one shard through enhanced fan-out and sends chunks of records to its processor."""

    def __init__(
        self,
        api: StreamApi,
        *,
        subscriptions: Subscriptions,
        shard_id: str,
        start: StartPosition,
        on_page: Callable[[RecordsPage], None] | None = None,
        metrics: Metrics | None = None,
        mapping: str = "",
        account: ShardAccount | None = None,
        timing: PushTiming = PUSH_TIMING,
    ) -> None:
        """``api``: the stream's polling adapter, for the converter, the record fields and
        the retention; ``account``: the shard's part of the process's read budget, which is
        charged with each event's records and holds the next pull back while the share is
        used up."""
        super().__init__(
            api,
            shard_id=shard_id,
            start=start,
            on_page=on_page,
            metrics=metrics,
            mapping=mapping,
            account=account,
        )
        self._subscriptions = subscriptions
        self._timing = timing
        self._last_subscribe = float("-inf")
        #: Failures since the last event received: the backoff's step.
        self._failures = 0
        #: Events received in the current subscription.
        self._received = 0

    async def run(self, send: MemoryObjectSendStream[Chunk]) -> None:
        """Read until the shard ends or the task is cancelled."""
        async with send:
            while not await self._subscription(send):
                pass
            await send.send(ShardEnd(self._child_ids))

    async def _subscription(self, send: MemoryObjectSendStream[Chunk]) -> bool:
        """One subscription from the current position, until the service ends it (False) or
        the shard ends (True); a failure is backed off and gives False."""
        await self._wait_to_subscribe()
        opened = False
        try:
            async with self._subscriptions.subscribe(self.shard_id, self._position) as events:
                opened = True
                self._metrics.subscription_started(self._mapping)
                ended = await self._consume(events, send)
        except SourceError as exc:
            failure = exc
        except anyio.get_cancelled_exc_class():
            # The context is left by now: its connection is closed, the next owner may come.
            if opened:
                self._metrics.subscription_ended(self._mapping, "stopped")
            raise
        else:
            self._metrics.subscription_ended(self._mapping, "shard_end" if ended else "expired")
            if not ended and not self._received:
                await self._ended_early()
            return ended
        await self._recover(failure, opened)
        return False

    async def _ended_early(self) -> None:
        """A subscription the service ended before its first event (AWS keeps one for 5
        minutes and sends an event at least every few seconds): not normal, so it is backed
        off and logged like a failed read, not renewed every second for ever."""
        self._failures += 1
        log.warning("shard.subscription_ended_early", attempt=self._failures)
        await anyio.sleep(self._timing.failed.delay(self._failures))

    async def _wait_to_subscribe(self) -> None:
        """Keep to one subscribe a second per shard, timed from the previous call."""
        wait = self._last_subscribe + self._timing.subscribe_interval - time.monotonic()
        if wait > 0:
            await anyio.sleep(wait)
        self._last_subscribe = time.monotonic()

    async def _consume(
        self, events: AsyncIterator[PushEvent], send: MemoryObjectSendStream[Chunk]
    ) -> bool:
        """Hand on every event of a subscription; True when the shard ended."""
        self._received = 0
        while True:
            await self._wait_for_budget()
            event = await anext(events, None)
            if event is None:
                return False  # the service ended the subscription
            self._received += 1
            self._failures = 0
            if await self._hand_on(event, send):
                return True
            # Not kept while the next pull waits: its records are the processor's now.
            del event

    async def _wait_for_budget(self) -> None:
        """Backpressure: wait while the shard's share of the read budget is used up. Nothing
        is read against a reservation (the service sizes its events), so it is given back
        at once; the event's records are charged when converted."""
        account = self._account
        if account is None or account.next_limit() is not None:
            return  # may read: no reservation to make and give back (it would wake waiters)
        await account.reserve()
        account.unreserve()

    async def _hand_on(self, event: PushEvent, send: MemoryObjectSendStream[Chunk]) -> bool:
        """Convert, charge and send an event's records, then move past the event; True
        when it ended the shard."""
        raw = event.records
        self._report_page(RecordsPage(raw, None, event.millis_behind_latest, event.child_shard_ids))
        chunk = await self._accept(raw) if raw else []
        self._count_polled(chunk)  # an event without records is an empty read
        if chunk:
            await send.send(chunk)
        if raw:
            newest = self._api.arrival_of(raw[-1])
            self._metrics.push_latency(self._mapping, max(0.0, time.time() - newest))
        self._advance(event, raw)
        if event.shard_end and not event.child_shard_ids:
            await self._confirm_end()
        return event.shard_end

    async def _confirm_end(self) -> None:
        """An end without ``ChildShards`` (only a missing continuation) is believed once
        ListShards says the shard is closed or gone: ending an open shard by mistake would
        checkpoint it SHARD_END and leave its later records unread for good. Raises
        ``SourceUnavailable`` (the subscription is renewed after a backoff) otherwise."""
        listing = await self._api.list_shards()
        for shard in listing:
            if shard.shard_id == self.shard_id and not shard.closed:
                raise SourceUnavailable(
                    f"SubscribeToShard on shard {self.shard_id} sent an event without a "
                    "continuation or child shards, but ListShards says the shard is open"
                )

    def _advance(self, event: PushEvent, raw: list[dict[str, Any]]) -> None:
        """The next subscription starts after the event's continuation (an empty event moves
        it too), never before the last record handed on."""
        continuation = event.continuation
        if raw:
            last = self._api.sequence_of(raw[-1])
            continuation = last if continuation is None else later_sequence(continuation, last)
        position = self._position
        if continuation is not None and position.type == "AFTER_SEQUENCE_NUMBER":
            # An empty event out of step must not send the next subscription back over
            # records already handed on (they would be delivered twice, out of order).
            assert position.sequence_number is not None
            continuation = later_sequence(continuation, position.sequence_number)
        if continuation is not None:
            self._position = StartPosition("AFTER_SEQUENCE_NUMBER", continuation)

    async def _recover(self, exc: SourceError, opened: bool) -> None:
        """Count the failure, log it and wait as it requires; the next subscription resumes
        from the same position. A trimmed position (a service that reports trims) goes on
        from the oldest record held at once, as the polling reader does."""
        if isinstance(exc, PositionTrimmed) and self._position.sequence_number is not None:
            self._skip_trimmed(exc)
            return
        self._failures += 1
        attempt = self._failures
        self._metrics.subscription_failed(self._mapping, failure_reason(exc, opened=opened))
        if isinstance(exc, SubscriptionBusy):
            log.info("shard.subscription_busy", error=str(exc), attempt=attempt)
            delay = self._timing.busy.delay(attempt)
        elif isinstance(exc, Throttled):
            log.info("shard.read_failed", error=str(exc), attempt=attempt)
            delay = max(self._timing.throttled_minimum, self._timing.failed.delay(attempt))
        elif isinstance(exc, StreamNotFound):
            log.error("shard.subscription_not_found", error=str(exc), attempt=attempt)
            delay = self._timing.missing.delay(attempt)
        else:
            log.warning("shard.read_failed", error=str(exc), attempt=attempt)
            delay = self._timing.failed.delay(attempt)
        await anyio.sleep(delay)


def failure_reason(exc: SourceError, *, opened: bool) -> str:
    """The ``reason`` of ``subscription_failed``: the adapter's, when it gave one (it saw the
    wire error); else by kind, an unreachable service before the subscription opened being a
    connection failure, and after it a failure of the event stream."""
    if exc.reason is not None:
        return exc.reason
    if isinstance(exc, SubscriptionBusy):
        return "resource_in_use"
    if isinstance(exc, Throttled):
        return "limit_exceeded"
    if isinstance(exc, StreamNotFound):
        return "not_found"
    if isinstance(exc, SourceUnavailable):
        return "stream_error" if opened else "connection"
    return "other"


def later_sequence(first: str, second: str) -> str:
    """The later of two sequence numbers of a shard (decimal strings, of any length)."""
    if first.isdigit() and second.isdigit():
        return first if int(first) >= int(second) else second
    return first if (len(first), first) >= (len(second), second) else second
