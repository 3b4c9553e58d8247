"""A mapping's enhanced fan-out consumer, resolved once and shared by its shards' readers.

Data flow::

    KinesisMapping (consumer ARN, or stream ARN + enhanced_fan_out.consumer_name)
        --ConsumerSubscriptions.subscribe(shard, position)--> on first use: the consumer
          described (a consumer ARN: it must be ACTIVE and belong to the stream) or
          registered (a consumer name: RegisterStreamConsumer unless it exists, then wait
          until ACTIVE)
        --> KinesisSubscriptions.subscribe (SubscribeToShard) --> PushShardReader

Resolving on first use, not at start-up, puts an outage of the control plane on the path that
already handles one: a failed resolution is a failed subscribe, which the shard's reader backs
off and retries, and the service never exits for it. One resolution runs at a time for the
whole mapping (a lock), so a thousand shards starting together register the consumer once;
after a failure the others fail fast for :data:`RESOLVE_RETRY_SECONDS` instead of each making
the same slow calls in turn. A consumer that disappears later (deregistered by an operator)
makes subscribes fail with ``StreamNotFound``: a named consumer is then registered again on
the next subscribe; a consumer ARN is the configuration, so it is not, and the readers keep
backing off and logging until it exists again.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog

from poller.errors import SourceError, StreamNotFound
from poller.ports import PushEvent, StartPosition
from poller.sources.kinesis_efo import (
    KinesisSubscriptions,
    describe_consumer,
    ensure_consumer,
    wait_until_active,
)

log = structlog.get_logger("poller.sources")

#: After a failed resolution, subscribes fail at once with its error for this long.
RESOLVE_RETRY_SECONDS = 1.0


class ConsumerSubscriptions:
    """Implements ``Subscriptions`` for one mapping: resolves its consumer once, then
    subscribes through it."""

    def __init__(
        self,
        client: Any,
        *,
        stream_arn: str,
        consumer_arn: str | None = None,
        consumer_name: str | None = None,
    ) -> None:
        if (consumer_arn is None) == (consumer_name is None):
            raise ValueError("give exactly one of consumer_arn and consumer_name")
        self._client = client
        self._stream_arn = stream_arn
        self._consumer_arn = consumer_arn
        self._consumer_name = consumer_name
        self._lock = anyio.Lock()
        self._resolved: KinesisSubscriptions | None = None
        self._failure: tuple[float, SourceError] | None = None

    @property
    def consumer_arn(self) -> str | None:
        """The consumer read through, once resolved (or as configured)."""
        return self._consumer_arn

    @asynccontextmanager
    async def subscribe(
        self, shard_id: str, position: StartPosition
    ) -> AsyncIterator[AsyncIterator[PushEvent]]:
        """One subscription to ``shard_id`` at ``position`` (see ``Subscriptions``)."""
        subscriptions = await self._resolve()
        try:
            async with subscriptions.subscribe(shard_id, position) as events:
                yield events
        except StreamNotFound:
            self._forget(subscriptions)
            raise

    async def _resolve(self) -> KinesisSubscriptions:
        """The consumer's subscriptions, resolving (or registering) it on first use."""
        if self._resolved is not None:
            return self._resolved
        async with self._lock:
            if self._resolved is not None:
                return self._resolved
            if self._failure is not None:
                failed_at, error = self._failure
                if time.monotonic() - failed_at < RESOLVE_RETRY_SECONDS:
                    raise error
            try:
                arn = await self._resolve_arn()
            except SourceError as exc:
                self._failure = (time.monotonic(), exc)
                log.warning(
                    "consumer.unresolved",
                    stream=self._stream_arn,
                    consumer=self._consumer_arn or self._consumer_name,
                    error=str(exc),
                )
                raise
            self._failure = None
            self._consumer_arn = arn
            self._resolved = KinesisSubscriptions(self._client, arn)
            log.info("consumer.resolved", stream=self._stream_arn, consumer=arn)
            return self._resolved

    async def _resolve_arn(self) -> str:
        """A consumer ARN that is ACTIVE on the mapping's stream."""
        if self._consumer_name is not None:
            return await ensure_consumer(self._client, self._stream_arn, self._consumer_name)
        arn = self._consumer_arn
        assert arn is not None  # one of the two is set (__init__)
        state = await describe_consumer(self._client, arn)
        if state.stream_arn != self._stream_arn:
            raise StreamNotFound(
                f"DescribeStreamConsumer: consumer {arn} belongs to stream {state.stream_arn}, "
                f"not to {self._stream_arn}"
            )
        if state.status != "ACTIVE":
            await wait_until_active(self._client, arn)
        return arn

    def _forget(self, subscriptions: KinesisSubscriptions) -> None:
        """A named consumer that is gone is registered again on the next subscribe; a
        configured consumer ARN is kept (it is the configuration)."""
        if self._consumer_name is not None and self._resolved is subscriptions:
            log.warning(
                "consumer.gone",
                stream=self._stream_arn,
                consumer=self._consumer_arn,
                action="registering it again on the next subscribe",
            )
            self._resolved = None
            self._consumer_arn = None
