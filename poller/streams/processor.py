"""The shard processor: batch, invoke, apply Lambda's error handling, settle, checkpoint.

Data flow for one shard::

    reader --chunks--> [bounded stream] --> dispatcher --(hash of partition key)--> lanes 0..PF-1
        lane: BatchBuilder (count, 6 MB) + batching window -> segments -> Target.invoke
              -> StreamRetryPolicy: settle / retry / bisect / give up (failure destination)
        settled records -> Watermark -> CheckpointStore.put(highest contiguous settled record)

* **Lanes.** With ``parallelization_factor`` 1 there is one lane: one batch in flight per
  shard. With more, records go to lanes by a stable hash of their partition key, so the order
  of each key holds while up to ten batches of a shard are in flight.
* **Batches** are cut at ``batch_size``, when the next record would push the event past 6 MB,
  or when the batching window (from the batch's first record) ends. With a window of 0 the
  batch holds what has been read so far, as Lambda does.
* **Errors** follow :mod:`poller.core.retry_policy`; a lane that retries blocks only itself.
  Records that exhaust their retries or age are sent to the on-failure destination (retried
  until it accepts them) or, without one, logged and dropped, as AWS does; only then are they
  settled. An infinite maximum record age is the stream's retention (``retention``). A
  destination that refuses for a permanent reason (access denied, no such queue) is waited
  for too, never dropped: the lane stays blocked and says so once a minute per destination,
  however many shards it blocks (``destination.blocked`` at error level, the
  ``destination_blocked`` gauge).
* **Checkpoints.** The checkpoint is the highest record below which every record is settled
  (:class:`~poller.core.watermark.Watermark`). A lane writes it, durably, before taking its next
  batch, so a restart re-delivers at most what was in flight.
* **Tumbling windows** (``tumbling_window_seconds`` > 0, one lane): a batch never spans two
  windows; each event carries the window and its state (:mod:`poller.core.windows`), and the
  6 MB cut counts them (a retry after a partial failure, whose state may have grown, leaves
  the records that no longer fit for the next invocation); a final
  invocation closes a window when a record of a later window comes, at the shard's end, or
  when the wall clock passes the window's end on an idle shard. The open window and its state
  are stored with every checkpoint and restored when the shard starts again.

Shutdown: when ``stopping`` is set, reading stops and waiting (for records, between retries,
or between sends to a refusing destination) is abandoned at once, while invocations in
progress finish and are checkpointed. The service cancels what still runs at the drain
deadline; those records are re-delivered later.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from poller.core.batching import MAX_PAYLOAD_BYTES, BatchBuilder
from poller.core.failure_record import SourceKind, failure_record
from poller.core.filtering import FilterSet
from poller.core.retry_policy import (
    Action,
    GiveUp,
    Judgement,
    Retry,
    Segment,
    Settle,
    Split,
    StreamRetryPolicy,
    first_segment,
)
from poller.core.watermark import Watermark
from poller.core.windows import (
    CLOSE_GRACE_SECONDS,
    MAX_STATE_BYTES,
    Window,
    decode_window_state,
    encode_window_state,
    parse_window_response,
    state_size,
    state_too_large,
    window_event,
    window_of,
    window_overhead,
)
from poller.destinations import FailureDestination
from poller.errors import CheckpointError, DestinationError
from poller.observability.metrics import Metrics, NullMetrics
from poller.retry import INVOKE_BACKOFF, Backoff, retrying
from poller.types import (
    SHARD_END,
    Checkpoint,
    CheckpointStore,
    Chunk,
    InvokeResult,
    Outcome,
    ShardEnd,
    StreamRecord,
    Target,
)

log = structlog.get_logger("poller.pipeline")

#: How long a checkpoint write may take once the drain deadline has cancelled the worker.
CHECKPOINT_SHIELD_SECONDS = 10.0
#: While a destination refuses for a permanent reason, the error log repeats this often.
BLOCKED_ALERT_SECONDS = 60.0
#: Backoff between sends of a failure record the destination refused.
DESTINATION_BACKOFF = Backoff(initial=0.5, maximum=30.0)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How batches are cut, how many are in flight, and how failures are handled."""

    batch_size: int
    window_seconds: float
    max_bytes: int = MAX_PAYLOAD_BYTES
    backoff: Backoff = INVOKE_BACKOFF
    parallelization_factor: int = 1
    retry: StreamRetryPolicy = field(default_factory=StreamRetryPolicy)
    #: FilterCriteria: records no filter matches are never invoked.
    filters: FilterSet | None = None
    #: TumblingWindowInSeconds: 0 for none; else windows of this length (one lane only).
    tumbling_window_seconds: int = 0

    def __post_init__(self) -> None:
        if self.tumbling_window_seconds > 0 and self.parallelization_factor > 1:
            raise ValueError("tumbling windows need a parallelization factor of 1")


@dataclass(frozen=True, slots=True)
class FailureRouting:
    """What a failure record needs besides the records: where it goes and what it names."""

    kind: SourceKind
    stream_arn: str
    mapping_uuid: str
    destination: FailureDestination | None = None


class ShardProcessor:
    """Consumes one shard's records through its lanes, and checkpoints the shard."""

    def __init__(
        self,
        *,
        mapping: str,
        shard_id: str,
        target: Target,
        store: CheckpointStore,
        policy: BatchPolicy,
        routing: FailureRouting,
        stopping: anyio.Event,
        metrics: Metrics | None = None,
        guard: Callable[[], None] | None = None,
        retention: Callable[[], Awaitable[float | None]] | None = None,
    ) -> None:
        self.mapping = mapping
        #: The stream's retention, seconds: the age limit when the maximum age is infinite.
        self._retention = retention
        #: Called before every invocation; raises to stop the shard (lease self-fencing).
        self._guard = guard
        self._metrics: Metrics = metrics or NullMetrics()
        self.shard_id = shard_id
        self._target = target
        self._store = store
        #: A window state past this ends its window early: Lambda's 1 MB, or less where the
        #: store cannot hold that much (a state it cannot checkpoint would stall the shard).
        self._window_state_limit = min(MAX_STATE_BYTES, store.window_state_limit)
        self.policy = policy
        self._routing = routing
        self._stopping = stopping
        self._watermark: Watermark[str] = Watermark()
        self._checkpoint_lock = anyio.Lock()
        self._scopes: set[anyio.CancelScope] = set()
        self._lanes = [_Lane(self, i) for i in range(policy.parallelization_factor)]
        self._room = anyio.Event()
        self._ended: ShardEnd | None = None
        self._durable: str | None = None
        # Tumbling windows: the open window, its state, and the checkpoint read at start.
        self._retry = policy.retry
        if policy.tumbling_window_seconds > 0:
            self._retry = dataclasses.replace(policy.retry, require_window_state=True)
        self._window: Window | None = None
        self._window_state: dict[str, Any] = {}
        self._resumed: Checkpoint | None = None

    # -- shutdown ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Called on shutdown: abandon every wait; invocations in progress carry on."""
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def interruptible(self) -> Iterator[anyio.CancelScope]:
        """A scope that shutdown cancels; entered only where nothing is in flight."""
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            if self._stopping.is_set():
                scope.cancel()
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    @property
    def stopping(self) -> bool:
        """True once shutdown began."""
        return self._stopping.is_set()

    # -- intake -----------------------------------------------------------------------------

    async def run(self, receive: MemoryObjectReceiveStream[Chunk]) -> ShardEnd | None:
        """Process the shard until it ends or shutdown. Returns the ShardEnd if reached."""
        await self._restore_window()
        async with receive, anyio.create_task_group() as lanes:
            for lane in self._lanes:
                lanes.start_soon(lane.run, name=f"lane {lane.index}")
            await self._dispatch(receive)
            for lane in self._lanes:
                lane.close_input()
        if self._ended is not None and self._watermark.pending == 0 and self._window is None:
            await self._checkpoint(SHARD_END)
            log.info("shard.ended", child_shards=list(self._ended.child_shard_ids))
            return self._ended
        return None

    async def _dispatch(self, receive: MemoryObjectReceiveStream[Chunk]) -> None:
        with self.interruptible():
            async for chunk in receive:
                if isinstance(chunk, ShardEnd):
                    self._ended = chunk
                    return
                self._watermark.track(r.position for r in chunk)
                self._metrics.records_polled(self.mapping, len(chunk))
                chunk = await self._filter(chunk)
                self._distribute(chunk)
                await self._wait_for_room()

    async def _filter(self, chunk: list[StreamRecord]) -> list[StreamRecord]:
        """Drop records no filter matches: settled at once, so the checkpoint moves past them
        (Lambda: "the iterator advances past them"); they are counted as filtered out."""
        filters = self.policy.filters
        if filters is None:
            return chunk
        kept: list[StreamRecord] = []
        dropped: list[StreamRecord] = []
        for record in chunk:
            (kept if filters.matches(record.event_record) else dropped).append(record)
        if dropped:
            self._metrics.records_filtered(self.mapping, len(dropped))
            await self._settle(dropped)
        return kept

    def _distribute(self, chunk: list[StreamRecord]) -> None:
        if len(self._lanes) == 1:
            self._lanes[0].extend(chunk)
            return
        count = len(self._lanes)
        by_lane: list[list[StreamRecord]] = [[] for _ in self._lanes]
        for record in chunk:
            # A stable hash (not hash()), so a key's lane does not depend on the process.
            by_lane[zlib.crc32(record.partition_key.encode()) % count].append(record)
        for lane, records in zip(self._lanes, by_lane, strict=True):
            if records:
                lane.extend(records)

    async def _wait_for_room(self) -> None:
        """Backpressure: read on only when the lanes' buffers are below a batch each."""
        limit = self.policy.batch_size * len(self._lanes)
        while sum(len(lane.pending) for lane in self._lanes) >= limit:
            self._room = anyio.Event()
            await self._room.wait()

    def notify_room(self) -> None:
        """A lane took records from its buffer."""
        self._room.set()

    # -- delivery ---------------------------------------------------------------------------

    async def deliver(self, records: Sequence[StreamRecord], lane: int) -> bool:
        """Carry a batch through invocations until every record is settled.

        Returns False when shutdown abandoned it between attempts (nothing settled from then).
        """
        if self.policy.tumbling_window_seconds > 0 and not await self._enter_window(records[0]):
            return False
        queue: deque[Segment] = deque([first_segment(records)])
        retry_policy = self._retry
        while queue:
            retention = await self._retention_limit()
            expired, segment = retry_policy.expire(queue.popleft(), time.time(), retention)
            if expired is not None and not await self._give_up(expired):
                return False
            if segment is None:
                continue
            segment = self._fit(segment, queue)
            result, duration = await self._invoke(segment)
            judgement = retry_policy.judge(segment, result)
            self._count_invocation(segment, result, judgement, duration)
            _log_invocation(segment, result, judgement, lane, duration)
            if not await self._carry_out(judgement.actions, self._answered_state(result), queue):
                return False
        return True

    async def _retention_limit(self) -> float | None:
        """The stream's retention when the maximum record age is infinite, else None."""
        if self._retention is None or self._retry.maximum_record_age_seconds >= 0:
            return None
        return await self._retention()

    def _fit(self, segment: Segment, queue: deque[Segment]) -> Segment:
        """Keep a windowed event within the payload limit. The batch was cut for the state it
        had then; a retry after a partial failure carries the state the function returned,
        which may be larger. Records that no longer fit go back to the front of the queue."""
        if self._window is None or len(segment.records) < 2:
            return segment
        builder = self.batch_builder(segment.records[0], len(segment.records))
        for record in segment.records:
            if not builder.try_add(record):
                break
        kept = len(builder.records)
        if kept == len(segment.records):
            return segment
        queue.appendleft(dataclasses.replace(segment, records=segment.records[kept:]))
        return dataclasses.replace(segment, records=segment.records[:kept])

    def batch_builder(self, first: StreamRecord | None, max_records: int) -> BatchBuilder:
        """A builder for a batch starting at ``first``: with a tumbling window, the 6 MB cut
        counts the window fields and the state the batch will be sent with."""
        policy = self.policy
        if policy.tumbling_window_seconds <= 0 or first is None:
            return BatchBuilder(max_records, policy.max_bytes)
        window = window_of(first, policy.tumbling_window_seconds)
        state = self._window_state if window == self._window else {}
        overhead = window_overhead(
            window, state, shard_id=self.shard_id, event_source_arn=self._routing.stream_arn
        )
        return BatchBuilder(max_records, policy.max_bytes, overhead)

    async def _carry_out(
        self, actions: list[Action], state: dict[str, Any] | None, queue: deque[Segment]
    ) -> bool:
        """Carry out the retry policy's actions; False when shutdown abandoned the batch.

        ``state`` is what a windowed invocation answered: it becomes the window's state right
        before the records are settled, with no await between, so a checkpoint pairs them.
        """
        for action in actions:
            if isinstance(action, Settle):
                if state is not None:
                    if not await self._adopt_state(state):
                        return False
                    state = None
                await self._settle(action.records)
            elif isinstance(action, GiveUp):
                if not await self._give_up(action):
                    return False
            elif isinstance(action, Split):
                queue.extendleft((action.second, action.first))
            elif isinstance(action, Retry):
                queue.appendleft(action.segment)
                self._metrics.retry(self.mapping)
                if not await self._backoff(action.segment):
                    return False
        return True

    def _count_invocation(
        self, segment: Segment, result: InvokeResult, judgement: Judgement, duration: float
    ) -> None:
        """Lambda's event counts for one invocation (see ``poller.observability.metrics``).

        A malformed answer is a ``function_error`` (as AWS counts it, and as SQS does here);
        ``partial_failure`` counts the records from the first reported one."""
        size, metrics, mapping = len(segment.records), self._metrics, self.mapping
        reached_function = result.outcome not in (Outcome.THROTTLE, Outcome.SERVICE_ERROR)
        if reached_function:
            metrics.records_invoked(mapping, size)
        if judgement.outcome == "success":
            metrics.iterator_age(mapping, self.shard_id, _age_ms(segment.records[-1]))
        elif judgement.outcome == "partial_failure":
            settled = sum(len(a.records) for a in judgement.actions if isinstance(a, Settle))
            metrics.records_failed_invoke(mapping, size - settled)
        else:
            metrics.records_failed_invoke(mapping, size)
        metrics.invocation(mapping, judgement.outcome, duration, size)

    async def _invoke(self, segment: Segment) -> tuple[InvokeResult, float]:
        if self._guard is not None:
            self._guard()
        started = time.monotonic()
        result = await self._target.invoke(self._event(segment.records))
        return result, time.monotonic() - started

    def _event(self, records: Sequence[StreamRecord]) -> dict[str, Any]:
        if self._window is None:
            return {"Records": [r.event_record for r in records]}
        return window_event(
            records,
            window=self._window,
            state=self._window_state,
            shard_id=self.shard_id,
            event_source_arn=self._routing.stream_arn,
        )

    # -- tumbling windows -------------------------------------------------------------------

    @property
    def window_open(self) -> bool:
        """Whether a tumbling window is open (it has had records and no final invocation)."""
        return self._window is not None

    @property
    def shard_ended(self) -> bool:
        """Whether the reader reached the end of a closed shard."""
        return self._ended is not None

    def window_due(self) -> bool:
        """Whether the open window's end (plus a grace) has passed on the wall clock."""
        return self._window is not None and self._window.is_due(time.time())

    def window_close_deadline(self, window: Window | None = None) -> float | None:
        """When (monotonic) ``window`` (by default the open one) should close if idle."""
        window = window or self._window
        if window is None:
            return None
        return time.monotonic() + (window.end + CLOSE_GRACE_SECONDS - time.time())

    async def _restore_window(self) -> None:
        """Resume the window stored with the shard's checkpoint (beyond Lambda)."""
        if self.policy.tumbling_window_seconds <= 0:
            return

        async def get() -> Checkpoint | None:
            return await self._store.get(self.mapping, self.shard_id)

        checkpoint = await retrying(f"read checkpoint {self.shard_id}", get)
        if checkpoint is None or checkpoint.window_state is None:
            return
        try:
            self._window, self._window_state = decode_window_state(checkpoint.window_state)
        except ValueError as exc:
            log.exception("window.state_unreadable", error=str(exc))
            return
        self._resumed = checkpoint
        log.info("window.resumed", window=self._window.as_event())

    async def _enter_window(self, first: StreamRecord) -> bool:
        """Before a batch: close the open window if the batch is in another one, then open
        the batch's window. False when shutdown abandoned the final invocation."""
        window = window_of(first, self.policy.tumbling_window_seconds)
        if self._window is not None and self._window != window and not await self.close_window():
            return False
        if self._window is None:
            self._window, self._window_state = window, {}
            log.debug("window.opened", window=window.as_event())
        return True

    def _answered_state(self, result: InvokeResult) -> dict[str, Any] | None:
        """The state a successful windowed invocation returned, else None."""
        if self._window is None or result.outcome is not Outcome.SUCCESS:
            return None
        answer = parse_window_response(result.payload, payload_is_json=result.payload_is_json)
        return answer.state

    async def _adopt_state(self, state: dict[str, Any]) -> bool:
        """Make ``state`` the window's; past the state limit it ends the window early first."""
        limit = self._window_state_limit
        if state_too_large(state, limit):
            log.warning("window.terminated_early", state_bytes=state_size(state), limit=limit)
            if not await self._final_invoke(state, terminated_early=True):
                return False
            state = {}
        self._window_state = state
        return True

    async def close_window(self) -> bool:
        """The final invocation of the open window, retried until it succeeds; then the
        state is dropped and the checkpoint says so. False when shutdown abandoned it."""
        window = self._window
        if window is None:
            return True
        if not await self._final_invoke(self._window_state, terminated_early=False):
            return False
        self._window, self._window_state = None, {}
        async with self._checkpoint_lock:
            position = self._watermark.checkpoint
            if position is not None:
                await self._checkpoint(position)
                self._durable = position
            elif self._resumed is not None:
                await self._write(dataclasses.replace(self._resumed, window_state=None))
        log.info("window.closed", window=window.as_event())
        return True

    async def _final_invoke(self, state: dict[str, Any], *, terminated_early: bool) -> bool:
        """Invoke with no records and ``isFinalInvokeForWindow``; retry until the function
        answers with a state. Processing of the shard waits meanwhile (as Lambda's does)."""
        window = self._window
        assert window is not None
        event = window_event(
            [],
            window=window,
            state=state,
            shard_id=self.shard_id,
            event_source_arn=self._routing.stream_arn,
            final=True,
            terminated_early=terminated_early,
        )
        fields: dict[str, Any] = {
            "window": window.as_event(),
            "terminated_early": terminated_early,
        }
        failures = 0
        while True:
            if self._guard is not None:
                self._guard()
            started = time.monotonic()
            result = await self._target.invoke(event)
            duration = time.monotonic() - started
            outcome, error = result.outcome.value, result.error
            if result.outcome is Outcome.SUCCESS:
                answer = parse_window_response(
                    result.payload, payload_is_json=result.payload_is_json
                )
                if answer.kind == "ok":
                    self._metrics.invocation(self.mapping, outcome, duration, 0)
                    log.info(
                        "window.final_invoked", duration_ms=round(duration * 1000, 1), **fields
                    )
                    return True
                outcome, error = Outcome.FUNCTION_ERROR.value, answer.reason
            self._metrics.invocation(self.mapping, outcome, duration, 0)
            failures += 1
            log.warning(
                "window.final_invoke_failed",
                outcome=outcome,
                error=error,
                attempt=failures,
                **fields,
            )
            self._metrics.retry(self.mapping)
            with self.interruptible() as scope:
                await anyio.sleep(self.policy.backoff.delay(failures))
            if scope.cancelled_caught:
                log.info("window.final_invoke_abandoned", **fields)
                return False

    async def _backoff(self, segment: Segment) -> bool:
        with self.interruptible() as scope:
            await anyio.sleep(self.policy.backoff.delay(segment.failures))
        if scope.cancelled_caught:
            log.info("batch.abandoned", size=len(segment.records), attempt=segment.failures + 1)
            return False
        return True

    async def _give_up(self, action: GiveUp) -> bool:
        """Route records that failed for good, then settle them. False when shutdown abandoned
        the wait for the destination (the records stay unsettled, to be re-delivered)."""
        last = action.last_result if action.condition == "RetryAttemptsExhausted" else None
        request_id = (action.last_result.request_id if action.last_result else "") or str(
            uuid.uuid4()
        )
        routing = self._routing
        record = failure_record(
            kind=routing.kind,
            condition=action.condition,
            approximate_invoke_count=action.invoke_count,
            request_id=request_id,
            function_arn=self._target.function_arn,
            last_result=last,
            shard_id=self.shard_id,
            stream_arn=routing.stream_arn,
            records=action.records,
            now=time.time(),
        )
        fields = _span(action.records) | {
            "condition": action.condition,
            "invoke_count": action.invoke_count,
        }
        if routing.destination is None:
            log.error("records.dropped", reason="no on-failure destination", **fields)
            self._metrics.records_dropped(self.mapping, len(action.records))
        else:
            if not await self._send_failure(routing.destination, record, action.records):
                return False
            log.warning(
                "records.sent_to_destination", destination=routing.destination.arn, **fields
            )
            self._metrics.records_sent_to_destination(self.mapping, len(action.records))
        await self._settle(action.records)
        return True

    async def _send_failure(
        self,
        destination: FailureDestination,
        record: dict[str, Any],
        records: Sequence[StreamRecord],
    ) -> bool:
        """Deliver the failure record; until it is accepted, the records stay unsettled.
        False when shutdown came while waiting to send again: nothing is in flight then, so
        the shard stops at once instead of waiting for the drain deadline."""
        blocked = _Blocked(self.mapping, self.shard_id, destination.arn, self._metrics)
        kind = destination.arn.split(":")[2]
        failures = 0
        try:
            while not blocked.delivered:
                try:
                    await destination.send(
                        record,
                        records=records,
                        mapping_uuid=self._routing.mapping_uuid,
                        shard_id=self.shard_id,
                    )
                except DestinationError as exc:
                    failures += 1
                    self._metrics.destination_delivery_failed(self.mapping, kind)
                    blocked.refused(exc, failures, _span(records))
                    with self.interruptible() as scope:
                        await anyio.sleep(DESTINATION_BACKOFF.delay(failures))
                    if scope.cancelled_caught:
                        log.info("destination.abandoned", destination=destination.arn)
                        return False
                else:
                    blocked.delivered = True
        finally:
            blocked.end()
        return True

    # -- settlement and checkpoints ---------------------------------------------------------

    async def _settle(self, records: Iterable[StreamRecord]) -> None:
        """Mark records settled and checkpoint the watermark if it is past the durable one.

        Compared with the last *durable* position, not with the last advance: a write that was
        cancelled is made again by the next settlement.
        """
        self._watermark.settle(r.position for r in records)
        async with self._checkpoint_lock:
            self._watermark.advance()
            position = self._watermark.checkpoint
            if position is not None and position != self._durable:
                await self._checkpoint(position)
                self._durable = position

    async def _checkpoint(self, position: str) -> None:
        """Durably record progress before the lane takes its next batch.

        The first window of attempts is shielded, so that the drain deadline cannot cancel the
        write for a batch that was already delivered. If the store stays down past it, the
        worker keeps trying, now cancellable: it never moves on without a checkpoint.
        """
        checkpoint = checkpoint_at(position)
        if self._window is not None and position != SHARD_END:
            state = encode_window_state(self._window, self._window_state)
            checkpoint = dataclasses.replace(checkpoint, window_state=state)
        await self._write(checkpoint)

    async def _write(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint``, shielded at first (see :meth:`_checkpoint`)."""

        async def put() -> None:
            try:
                await self._store.put(self.mapping, self.shard_id, checkpoint)
            except CheckpointError:
                self._metrics.checkpoint_failed(self.mapping, self.shard_id)
                raise
            self._metrics.checkpoint_written(self.mapping, self.shard_id)

        what = f"checkpoint {self.shard_id}"
        with anyio.CancelScope(shield=True), anyio.move_on_after(CHECKPOINT_SHIELD_SECONDS):
            await retrying(what, put)
            return
        await retrying(what, put)


class _BlockedAlerts:
    """The batches each destination blocks, process-wide, and when that was last logged.

    Shared by every shard, so that a destination blocking many shards is reported in one
    line a minute (naming how many batches it blocks), not one line a minute per shard.
    An entry lives only while a batch is blocked.
    """

    def __init__(self) -> None:
        self._blocked: dict[tuple[str, str], int] = {}
        self._last_alert: dict[tuple[str, str], float] = {}

    def start(self, key: tuple[str, str]) -> None:
        """One more batch blocked by ``key`` (mapping, destination)."""
        self._blocked[key] = self._blocked.get(key, 0) + 1

    def stop(self, key: tuple[str, str]) -> None:
        """One batch fewer; the last one forgets the destination."""
        left = self._blocked.get(key, 1) - 1
        if left > 0:
            self._blocked[key] = left
        else:
            self._blocked.pop(key, None)
            self._last_alert.pop(key, None)

    def blocked(self, key: tuple[str, str]) -> int:
        """How many batches ``key`` blocks now."""
        return self._blocked.get(key, 0)

    def due(self, key: tuple[str, str], now: float) -> bool:
        """Whether ``key`` is to be reported now (and, if so, note that it was)."""
        last = self._last_alert.get(key)
        if last is not None and now - last < BLOCKED_ALERT_SECONDS:
            return False
        self._last_alert[key] = now
        return True


_BLOCKED_ALERTS = _BlockedAlerts()


class _Blocked:
    """The alerts of one failure record while its destination refuses it.

    A passing refusal (throttling, a 5xx, the network) logs a warning per attempt. A permanent
    one (``DestinationError.permanent``: access denied, no such queue, topic or bucket) cannot
    pass without an operator, so the batch counts in the ``destination_blocked`` gauge until it
    is delivered, and ``destination.blocked`` is logged at error level once a minute per
    destination (whatever the number of shards it blocks). Nothing is dropped either way: the
    operator can fix the permission or create the queue.
    """

    def __init__(self, mapping: str, shard_id: str, arn: str, metrics: Metrics) -> None:
        self._mapping, self._shard_id, self._arn, self._metrics = mapping, shard_id, arn, metrics
        self._key = (mapping, arn)
        self._since: float | None = None
        self.delivered = False

    def refused(self, exc: DestinationError, attempt: int, span: dict[str, Any]) -> None:
        """One refused send."""
        fields = {"destination": self._arn, "shard": self._shard_id, "error": str(exc)} | span
        now = time.monotonic()
        if not exc.permanent:
            log.warning("destination.refused", attempt=attempt, **fields)
            return
        if self._since is None:
            self._since = now
            self._metrics.destination_blocked(self._mapping, True)
            _BLOCKED_ALERTS.start(self._key)
        if not _BLOCKED_ALERTS.due(self._key, now):
            return
        log.error(
            "destination.blocked",
            attempt=attempt,
            blocked_s=round(now - self._since),
            blocked_batches=_BLOCKED_ALERTS.blocked(self._key),
            action="fix the destination or the permission; the shard waits, nothing is dropped",
            **fields,
        )

    def end(self) -> None:
        """The send loop ended: delivered, or abandoned by the drain deadline."""
        if self._since is None:
            return
        self._metrics.destination_blocked(self._mapping, False)
        _BLOCKED_ALERTS.stop(self._key)
        log.info(
            "destination.unblocked",
            destination=self._arn,
            shard=self._shard_id,
            delivered=self.delivered,
            blocked_s=round(time.monotonic() - self._since),
        )


class _Lane:
    """One partition-key lane: its own buffer, one batch in flight."""

    def __init__(self, processor: ShardProcessor, index: int) -> None:
        self._processor = processor
        self.index = index
        self.pending: deque[StreamRecord] = deque()
        self._arrived = anyio.Event()
        self._input_closed = False

    def extend(self, records: list[StreamRecord]) -> None:
        self.pending.extend(records)
        self._arrived.set()

    def close_input(self) -> None:
        """No more records will come: flush what is buffered without waiting for the window."""
        self._input_closed = True
        self._arrived.set()

    async def run(self) -> None:
        processor = self._processor
        while not processor.stopping:
            batch = await self._next_batch()
            if batch:
                if not await processor.deliver(batch, self.index):
                    return
            elif processor.stopping:
                return
            elif processor.window_open and (
                processor.window_due() or (self._input_closed and processor.shard_ended)
            ):
                # An idle shard past its window's end, or the end of the shard (resharding
                # closes the window before SHARD_END is checkpointed).
                if not await processor.close_window():
                    return
            elif self._input_closed:
                return

    async def _next_batch(self) -> list[StreamRecord]:
        """The next batch; empty when interrupted, when the input closed with nothing
        buffered, or when the open tumbling window is due to close on an idle shard."""
        processor = self._processor
        policy = processor.policy
        builder = processor.batch_builder(None, policy.batch_size)
        deadline: float | None = None
        wait_until: float | None
        with processor.interruptible():
            while True:
                if not builder.records and self.pending:
                    # The batch's first record is known now: its window sizes the event.
                    builder = processor.batch_builder(self.pending[0], policy.batch_size)
                at_boundary = self._fill(builder)
                processor.notify_room()
                if builder.is_full or at_boundary or self._input_closed:
                    return builder.records
                if builder.records:
                    if deadline is None:
                        deadline = time.monotonic() + policy.window_seconds
                        if policy.tumbling_window_seconds > 0:
                            # Never hold a window's records past the time it would close.
                            window = window_of(builder.records[0], policy.tumbling_window_seconds)
                            deadline = min(deadline, processor.window_close_deadline(window) or 0)
                    if time.monotonic() >= deadline:
                        return builder.records
                    wait_until = deadline
                else:
                    if processor.window_due():
                        return []
                    wait_until = processor.window_close_deadline()  # None: no open window
                await self._wait_for_records(wait_until)
        return []

    def _fill(self, builder: BatchBuilder) -> bool:
        """Move buffered records into the batch; True when the batch stopped at a tumbling
        window's boundary (the next record belongs to another window)."""
        seconds = self._processor.policy.tumbling_window_seconds
        if seconds <= 0:
            builder.fill_from(self.pending)
            return False
        pending = self.pending
        while pending and not builder.is_full:
            first = builder.records[0] if builder.records else pending[0]
            if window_of(pending[0], seconds) != window_of(first, seconds):
                return True
            if not builder.try_add(pending[0]):
                return False
            pending.popleft()
        return False

    async def _wait_for_records(self, deadline: float | None) -> None:
        self._arrived = anyio.Event()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        with anyio.move_on_after(timeout):
            await self._arrived.wait()


def checkpoint_at(position: str) -> Checkpoint:
    """The checkpoint for a watermark position: ``seq``, ``seq:sub`` (KPL) or ``SHARD_END``."""
    sequence, _, sub = position.partition(":")
    return Checkpoint(sequence_number=sequence, sub_sequence_number=int(sub) if sub else None)


def _age_ms(record: StreamRecord) -> float:
    """Lambda's IteratorAge: how old the batch's last record is now that the batch finished."""
    return (time.time() - record.arrival_timestamp) * 1000


def _span(records: Sequence[StreamRecord]) -> dict[str, Any]:
    return {
        "size": len(records),
        "first_sequence": records[0].sequence_number,
        "last_sequence": records[-1].sequence_number,
    }


def _log_invocation(
    segment: Segment, result: InvokeResult, judgement: Judgement, lane: int, duration: float
) -> None:
    """The one log line per invocation: never record data, only positions, the outcome (as the
    invocation metric counts it) and why it failed."""
    records = segment.records
    fields = _span(records) | {
        "duration_ms": round(duration * 1000, 1),
        "outcome": judgement.outcome,
        "attempt": segment.failures + 1,
        "lane": lane,
        "iterator_age_ms": int(_age_ms(records[-1])),
    }
    if judgement.outcome == "success":
        log.info("batch.processed", **fields)
    elif judgement.outcome == "partial_failure":
        log.warning("batch.partially_failed", reason=judgement.reason, **fields)
    elif result.outcome is Outcome.SUCCESS:
        # The function returned normally, but its answer was malformed: a function error
        # with no functionError, as in the failure record.
        log.warning("batch.failed", error=judgement.reason, function_error=None, **fields)
    else:
        log.warning(
            "batch.failed", error=result.error, function_error=result.function_error, **fields
        )
