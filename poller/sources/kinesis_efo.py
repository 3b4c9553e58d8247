"""Kinesis enhanced fan-out: the consumer a mapping reads through, and its shard subscriptions.

Where it sits in the data flow::

    mapping (stream ARN + consumer name, or a consumer ARN)
        --ensure_consumer / wait_until_active--> the ARN of an ACTIVE consumer
        --KinesisSubscriptions.subscribe(shard, position)--> PushEvents (raw records and the
          continuation), read as they are pushed
        --> the push reader (poller.streams) --> the shard's converter (poller.sources.kinesis)

What aiobotocore does under a subscription, which the behaviour here relies on:

- ``subscribe_to_shard`` returns once the response headers and the ``initial-response`` event
  have arrived; its ``EventStream`` then reads the body only when the next event is asked for
  (``content.iter_chunks()`` into botocore's ``EventStreamBuffer``, one chunk at a time). When
  nobody asks, aiohttp buffers at most its high-water mark (2 x 64 KiB) and then stops reading
  the socket, so TCP flow control holds the service back: nothing buffers without bound.
- The client's ``read_timeout`` is aiohttp's ``sock_read``: restarted by every byte received
  and stopped while reading is paused for backpressure. A subscription that receives an event
  every few seconds (AWS sends one at least every 5 s) is never cut by it; one that receives
  nothing for longer fails with ``SocketTimeoutError`` (here ``SourceUnavailable``).
- Events are parsed with the client's parser settings, so a source client
  (``ClientFactory.client(..., purpose="source")``) gives records with ``Data`` as base64 text
  and ``ApproximateArrivalTimestamp`` as epoch seconds, as GetRecords does.
- Its parser walks the service model for every value of every record (half the CPU a backlog
  costs), so :class:`EventDecoder` reads ``SubscribeToShardEvent`` payloads with the event
  shape compiled once (:func:`poller.aws.lean.compile_output`, the lean GetRecords path's),
  which gives an equal result. The frames are still botocore's (``EventStreamBuffer``: CRCs,
  lengths, headers, in the stream's own generator), and every other message (exceptions,
  unknown events) and any payload the compiled parser refuses goes to the stream's own
  ``_parse_event``, so errors are botocore's. ``POLLER_LEAN_READS=0`` turns it off.
- ``EventStream.close()`` closes aiohttp's response, which closes the connection (it is not
  returned to the pool mid-body): the service sees the subscription end at once. A call that
  fails or is cancelled before the ``initial-response`` never hands its response back, so a
  ``before-parse`` handler notes it and the failure closes it.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import anyio
import structlog
from botocore.eventstream import EventStreamMessage, ParserError
from botocore.exceptions import BotoCoreError, ClientError, EventStreamError
from botocore.parsers import EventStreamJSONParser, ResponseParserError

from poller.aws.clients import epoch_seconds, keep_base64
from poller.aws.lean import compile_output, lean_enabled
from poller.aws.shapes import Malformed, Parser
from poller.aws.translate import error_code
from poller.errors import (
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    SubscriptionBusy,
    Throttled,
)
from poller.ports import PushEvent, StartPosition

log = structlog.get_logger("poller.aws")

#: A consumer ARN, as pydantic field patterns take it (no look-ahead): the stream's ARN, then
#: ``/consumer/<name>`` and, on AWS, ``:<creation epoch>`` (moto leaves the epoch out).
#: Groups ``stream`` and ``name``.
CONSUMER_ARN: Final = (
    r"^(?P<stream>arn:(?:aws|aws-cn|aws-us-gov):kinesis:[a-z0-9-]+:[0-9]{12}:"
    r"stream/[A-Za-z0-9_.-]{1,128})/consumer/(?P<name>[A-Za-z0-9_.-]{1,128})(?::[0-9]{1,20})?$"
)
_CONSUMER_ARN = re.compile(CONSUMER_ARN)

#: The call names error messages give.
SUBSCRIBE_CALL: Final = "SubscribeToShard"
STREAM_CALL: Final = "SubscribeToShard event stream"
#: The event type that carries records; other event types are skipped.
_EVENT_TYPE: Final = "SubscribeToShardEvent"

#: How long :func:`ensure_consumer` waits for a consumer to become ACTIVE (or to finish
#: deleting) by default. AWS activates a new consumer within seconds to a minute.
CONSUMER_WAIT_SECONDS: Final = 300.0
#: DescribeStreamConsumer polling: the first pause, doubled up to the last (AWS allows 20
#: DescribeStreamConsumer calls per second per account, shared by every replica).
_FIRST_PAUSE, _LONGEST_PAUSE = 0.2, 5.0

_BUSY_CODES = frozenset({"ResourceInUseException"})
_LIMIT_CODES = frozenset({"LimitExceededException"})
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})

#: Failures of the connection itself (refused, reset, timed out, body cut short).
_CONNECTION_FAILURES: Final = (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
#: Event stream frames that cannot be read (bad CRC, bad lengths, a payload that does not parse).
_FRAME_FAILURES: Final = (ParserError, ResponseParserError)
_SUBSCRIBE_FAILURES: Final = (ClientError, *_FRAME_FAILURES, *_CONNECTION_FAILURES)
#: What botocore's event parser (or a malformed record list) raises for a payload it cannot
#: read; ValueError includes UnicodeDecodeError and json's JSONDecodeError.
_MALFORMED_EVENT: Final = (ValueError, TypeError, AttributeError, KeyError, OverflowError)


# -- pure helpers ------------------------------------------------------------------------------


def parse_consumer_arn(arn: str) -> tuple[str, str]:
    """The stream ARN and consumer name of a consumer ARN; ValueError if it is not one."""
    match = _CONSUMER_ARN.match(arn)
    if match is None:
        raise ValueError(
            f"{arn!r} is not a Kinesis consumer ARN (arn:<partition>:kinesis:<region>:"
            "<account>:stream/<stream>/consumer/<name>:<creation epoch>)"
        )
    return match["stream"], match["name"]


def starting_position(position: StartPosition) -> dict[str, Any]:
    """SubscribeToShard's ``StartingPosition`` for ``position`` (``settled_through`` is the
    converter's business, not the service's)."""
    wanted: dict[str, Any] = {"Type": position.type}
    if position.type in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
        if position.sequence_number is None:
            raise ValueError(f"{position.type} needs a sequence number")
        wanted["SequenceNumber"] = position.sequence_number
    elif position.type == "AT_TIMESTAMP":
        if position.timestamp is None:
            raise ValueError("AT_TIMESTAMP needs a timestamp")
        wanted["Timestamp"] = position.timestamp
    return wanted


def push_event(event: Mapping[str, Any]) -> PushEvent:
    """A parsed ``SubscribeToShardEvent`` as a :class:`PushEvent`.

    The shard has ended when the event names child shards or has no continuation (AWS sends
    both on a closed shard's last event); an empty ``ChildShards`` list is not an end. An event
    without any field (what botocore makes of an unreadable payload) raises ``ValueError``: an
    unreadable event, not an end.
    """
    if not event:
        raise ValueError("an event without any field")
    records = event.get("Records") or []
    continuation = event.get("ContinuationSequenceNumber")
    children = tuple(str(child["ShardId"]) for child in event.get("ChildShards") or ())
    return PushEvent(
        records=records,
        continuation=continuation,
        millis_behind_latest=event.get("MillisBehindLatest"),
        child_shard_ids=children,
        shard_end=bool(children) or continuation is None,
    )


def translate_subscribe_error(call: str, shard_id: str, exc: BaseException) -> SourceError:
    """The SourceError for a failed SubscribeToShard call or event stream on ``shard_id``.

    An error code (on the call, or in an exception event mid-stream) says what to do:
    ResourceInUse -> ``SubscriptionBusy``, LimitExceeded -> ``Throttled``, ResourceNotFound ->
    ``StreamNotFound``, anything else -> ``SourceUnavailable``. A connection that fails, times
    out or is cut, and a frame that cannot be read, are ``SourceUnavailable``. The error's
    ``reason`` is :func:`failure_reason` of ``exc``, which the push reader counts it under.
    """
    error = _translated(call, shard_id, exc)
    error.reason = failure_reason(exc)
    return error


def _translated(call: str, shard_id: str, exc: BaseException) -> SourceError:
    where = f"{call} on shard {shard_id}"
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"{where} failed with {code}: {message}".rstrip(": ")
        if code in _BUSY_CODES:
            return SubscriptionBusy(text)
        if code in _LIMIT_CODES:
            return Throttled(text)
        if code in _NOT_FOUND_CODES:
            return StreamNotFound(text)
        return SourceUnavailable(text)
    if isinstance(exc, _FRAME_FAILURES):
        return SourceUnavailable(f"{where} sent an unreadable frame ({type(exc).__name__}): {exc}")
    return SourceUnavailable(f"{where} lost its connection ({type(exc).__name__}): {exc}")


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of ``poller_efo_subscriptions_failed_total`` for a failed subscribe
    call or subscription: one of ``SUBSCRIPTION_FAILURE_REASONS``. Accepts the SourceError
    this module raised (its cause tells a connection from a stream error) or a raw exception."""
    if isinstance(exc, SubscriptionBusy):
        return "resource_in_use"
    if isinstance(exc, Throttled):
        return "limit_exceeded"
    if isinstance(exc, StreamNotFound):
        return "not_found"
    cause = exc.__cause__ if isinstance(exc, SourceError) else exc
    if isinstance(cause, ClientError):
        code = error_code(cause)
        if code in _BUSY_CODES:
            return "resource_in_use"
        if code in _LIMIT_CODES:
            return "limit_exceeded"
        if code in _NOT_FOUND_CODES:
            return "not_found"
        # An exception event that ended an open subscription, or the call's other refusals.
        return "stream_error" if isinstance(cause, EventStreamError) else "other"
    if isinstance(cause, _FRAME_FAILURES):
        return "stream_error"
    if isinstance(cause, _CONNECTION_FAILURES):
        return "connection"
    return "other"


# -- subscriptions -----------------------------------------------------------------------------


class KinesisSubscriptions:
    """SubscribeToShard for one consumer. Implements ``poller.ports.Subscriptions``.

    Args:
        client: an aiobotocore Kinesis client of ClientFactory's source session (records
            must come as the wire's base64 text and epoch seconds); its connection pool must
            hold one connection per open subscription, and its read timeout is the longest
            silence a live subscription may have.
        consumer_arn: the consumer's ARN (:func:`ensure_consumer` returns it).
    """

    def __init__(self, client: Any, consumer_arn: str) -> None:
        if not _parses_as_source(client):
            raise ValueError(
                "KinesisSubscriptions needs a client of ClientFactory's source session (record "
                "data as base64 text, timestamps as epoch seconds), not botocore's defaults"
            )
        self._client = client
        self.consumer_arn = consumer_arn
        # Idempotent (one handler per client, whatever the number of consumers on it).
        client.meta.events.register(_BEFORE_PARSE, _hold_body, unique_id=_BEFORE_PARSE)
        #: Shared by every subscription of this consumer (it counts their fallbacks).
        self.decoder = EventDecoder.for_client(client)

    def subscribe(
        self, shard_id: str, position: StartPosition
    ) -> AbstractAsyncContextManager[AsyncIterator[PushEvent]]:
        """Open a subscription to ``shard_id`` at ``position`` when entered; see
        ``poller.ports.Subscriptions.subscribe``."""
        return self._subscription(shard_id, position)

    @asynccontextmanager
    async def _subscription(
        self, shard_id: str, position: StartPosition
    ) -> AsyncIterator[AsyncIterator[PushEvent]]:
        wanted = starting_position(position)
        bodies: list[Any] = []
        opening = _OPENING.set(bodies)
        try:
            response = await self._client.subscribe_to_shard(
                ConsumerARN=self.consumer_arn, ShardId=shard_id, StartingPosition=wanted
            )
        except _SUBSCRIBE_FAILURES as exc:
            _close_all(bodies)
            raise translate_subscribe_error(SUBSCRIBE_CALL, shard_id, exc) from exc
        except BaseException:  # cancelled, or anything else: aiobotocore dropped the response
            _close_all(bodies)
            raise
        finally:
            _OPENING.reset(opening)
        stream = response["EventStream"]
        live = getattr(stream, "_raw_stream", None)
        if live is not None:  # attempts botocore retried (none with one-attempt clients)
            _close_all([body for body in bodies if body is not live])
        events: _PushEvents | None = None
        try:
            events = _PushEvents(stream, shard_id, self.decoder)
            yield events
        finally:
            # Synchronous, so it runs even in a cancelled scope: aiohttp closes the socket
            # rather than pooling a connection whose body is still streaming.
            stream.close()
            if events is not None:
                await events.aclose()


#: Emitted by the endpoint once a SubscribeToShard response's headers are in, before its body
#: (the initial-response event) is parsed.
_BEFORE_PARSE: Final = "before-parse.kinesis.SubscribeToShard"
#: The HTTP responses of the SubscribeToShard call this task is making. aiobotocore returns
#: the response only once the initial-response event is read: a call cancelled, timed out or
#: refused before that drops it unclosed, its socket held open (and out of the pool) for as
#: long as the service streams. Held here, they are closed on any failure of the call.
_OPENING: ContextVar[list[Any] | None] = ContextVar("poller_efo_opening", default=None)


def _hold_body(response_dict: Mapping[str, Any], **_: Any) -> None:
    """The ``before-parse`` handler: note the call's streaming response (its ``body``)."""
    bodies = _OPENING.get()
    if bodies is not None:
        bodies.append(response_dict["body"])


def _close_all(bodies: list[Any]) -> None:
    """Close the responses of a call that failed (synchronous: runs in a cancelled scope)."""
    for body in bodies:
        close = getattr(body, "close", None)
        if close is not None:
            close()


class EventDecoder:
    """Reads ``SubscribeToShardEvent`` messages without botocore's shape walk, to the same
    result; None for any message botocore must read (see :meth:`decode`).

    Build it with :meth:`for_client`; ``parse`` None decodes nothing (every message goes to
    botocore), as when the client is not one whose parsing the compiled shape reproduces.
    """

    def __init__(self, parse: Parser | None) -> None:
        self._parse = parse
        #: SubscribeToShardEvent messages decoded here, and those whose payload the compiled
        #: parser refused (botocore read them).
        self.decoded = self.fallbacks = 0
        self._logged: set[str] = set()

    @classmethod
    def for_client(cls, client: Any) -> EventDecoder:
        """The decoder for ``client``'s events: the event shape of its model compiled with the
        source clients' parsers, or a decoder of nothing where that would not be equal (the
        lean path switched off, another protocol, other parsers, a shape it cannot compile)."""
        if not lean_enabled():
            return cls(None)
        try:
            model = client.meta.service_model
            parsing = client._endpoint._response_parser_factory._defaults
            if (
                model.protocol != "json"
                or parsing.get("timestamp_parser") is not epoch_seconds
                or parsing.get("blob_parser") is not keep_base64
            ):
                return cls(None)
            return cls(_event_parser(model))
        except (Malformed, KeyError, AttributeError, TypeError, ValueError):
            return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether any message is decoded here (else botocore reads them all)."""
        return self._parse is not None

    def decode(self, message: EventStreamMessage) -> dict[str, Any] | None:
        """The parsed ``SubscribeToShardEvent`` that ``message`` carries, equal to botocore's;
        None for a message of another kind (left to botocore by design) and for a payload the
        compiled parser refuses (counted as a fallback: botocore then returns or raises)."""
        headers = message.headers
        if (
            self._parse is None
            or headers.get(":message-type") != "event"
            or headers.get(":event-type") != _EVENT_TYPE
        ):
            return None
        try:
            event: dict[str, Any] = self._parse(json.loads(message.payload.decode()))
        except Exception as exc:  # noqa: BLE001 (botocore reads it again, and raises its own)
            self._fell_back(type(exc).__name__)
            return None
        self.decoded += 1
        return event

    def _fell_back(self, reason: str) -> None:
        self.fallbacks += 1
        if reason not in self._logged and len(self._logged) < 100:
            self._logged.add(reason)
            log.debug("lean.fallback", operation=STREAM_CALL, reason=reason)


def _event_parser(model: Any) -> Parser | None:
    """``SubscribeToShardEvent``'s payload parser, compiled from the service model; None if the
    event has members botocore reads from headers or a payload member (not this shape today)."""
    stream = model.operation_model(SUBSCRIBE_CALL).output_shape.members["EventStream"]
    shape = stream.members[_EVENT_TYPE]
    for member in shape.members.values():
        if member.serialization.get("eventheader") or member.serialization.get("eventpayload"):
            return None
    return compile_output(shape)


class _PushEvents:
    """The events of one open subscription. Reads the body only when asked for the next event,
    so a consumer that stops pulling holds the service back (no read-ahead).

    Messages come from the event stream's own generator (botocore's ``EventStreamBuffer`` over
    one aiohttp chunk at a time: the one ``get_initial_response`` read the first message of);
    the decoder reads record events, the stream's ``_parse_event`` everything else, exactly as
    iterating the stream would.
    """

    def __init__(self, stream: Any, shard_id: str, decoder: EventDecoder) -> None:
        self._stream = stream
        self._messages = stream._event_generator
        self._shard_id = shard_id
        # The compiled shape reproduces the JSON event parser only.
        lean = decoder.enabled and isinstance(stream._parser, EventStreamJSONParser)
        self._decoder = decoder if lean else EventDecoder(None)

    def __aiter__(self) -> _PushEvents:
        return self

    async def __anext__(self) -> PushEvent:
        while True:
            try:
                message = await anext(self._messages)
                event = self._decoder.decode(message)
                if event is None:
                    event = await self._parsed_by_botocore(message)
                if event is not None:
                    return push_event(event)
            except _SUBSCRIBE_FAILURES as exc:
                raise translate_subscribe_error(STREAM_CALL, self._shard_id, exc) from exc
            except _MALFORMED_EVENT as exc:
                # botocore's parser raises these for a payload it cannot read: a broken
                # event, not a reason to crash the shard; the next subscription resumes.
                error = SourceUnavailable(
                    f"{STREAM_CALL} on shard {self._shard_id} sent an event that could not be "
                    f"read ({type(exc).__name__}: {exc})"
                )
                error.reason = "stream_error"
                raise error from exc

    async def _parsed_by_botocore(self, message: EventStreamMessage) -> dict[str, Any] | None:
        """The record event in ``message`` as the stream parses it, None for another event;
        an exception message raises ``EventStreamError``."""
        parsed = self._stream._parse_event(message)
        if inspect.isawaitable(parsed):  # async from aiobotocore 2.22 on
            parsed = await parsed
        event: dict[str, Any] | None = parsed.get(_EVENT_TYPE) if parsed else None
        return event

    async def aclose(self) -> None:
        """Finish the generator now rather than when it is collected (it awaits nothing)."""
        await self._messages.aclose()


def _parses_as_source(client: Any) -> bool:
    """False when ``client`` is known to parse records as botocore's default (bytes, datetime);
    True when it parses them as a source client, or when its settings cannot be read."""
    try:
        parsing = client._endpoint._response_parser_factory._defaults
    except AttributeError:
        return True
    return bool(
        parsing.get("timestamp_parser") is epoch_seconds
        and parsing.get("blob_parser") is keep_base64
    )


# -- consumers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerState:
    """What DescribeStreamConsumer says about a consumer."""

    arn: str
    name: str
    stream_arn: str
    #: CREATING, ACTIVE or DELETING.
    status: str


async def describe_consumer(client: Any, consumer_arn: str) -> ConsumerState:
    """DescribeStreamConsumer by ARN. Raises ``StreamNotFound`` when it does not exist."""
    stream_arn, name = _names_of(consumer_arn)
    async with _consumer_call("DescribeStreamConsumer", stream_arn, name):
        response = await client.describe_stream_consumer(ConsumerARN=consumer_arn)
    return _state(response["ConsumerDescription"], stream_arn)


async def wait_until_active(
    client: Any,
    consumer_arn: str,
    *,
    timeout: float = CONSUMER_WAIT_SECONDS,  # noqa: ASYNC109 (a deadline with its own error)
) -> ConsumerState:
    """Poll the consumer until it is ACTIVE, with backoff, for at most ``timeout`` seconds.

    Raises ``StreamNotFound`` if it does not exist or is being deleted (its ARN will not come
    back: a consumer registered again gets a new one), ``SourceUnavailable`` at the deadline.
    """
    patience = _Patience(timeout)
    return await _until_active(client, await describe_consumer(client, consumer_arn), patience)


async def ensure_consumer(
    client: Any,
    stream_arn: str,
    consumer_name: str,
    *,
    timeout: float = CONSUMER_WAIT_SECONDS,  # noqa: ASYNC109 (a deadline with its own error)
) -> str:
    """The ARN of the ACTIVE consumer ``consumer_name`` of the stream, registered if need be.

    A consumer that already exists is used as it is (another replica may have registered it);
    one being deleted is waited out and registered again. Never deregisters anything. Raises
    ``StreamNotFound`` (no such stream), ``Throttled`` (still refused for limits at the
    deadline: too many consumers on the stream, or registrations too fast) or
    ``SourceUnavailable`` (other refusals, or still not ACTIVE after ``timeout`` seconds).
    """
    patience = _Patience(timeout)
    what = f"consumer {consumer_name} of stream {stream_arn}"
    while True:
        try:
            state = await _register_or_find(client, stream_arn, consumer_name)
        except Throttled as exc:
            await patience.pause(what, exc)
            continue
        if state is None:  # neither registered nor found: the stream is being updated
            await patience.pause(f"{what} is not registered")
        elif state.status == "DELETING":
            await _until_gone(client, state, patience)
        else:
            return (await _until_active(client, state, patience)).arn


async def _register_or_find(client: Any, stream_arn: str, name: str) -> ConsumerState | None:
    """Register the consumer, or describe it if it exists; None if it neither registered nor
    exists (RegisterStreamConsumer also answers ResourceInUse while the stream is updating)."""
    try:
        async with _consumer_call("RegisterStreamConsumer", stream_arn, name, keep_in_use=True):
            response = await client.register_stream_consumer(
                StreamARN=stream_arn, ConsumerName=name
            )
        return _state(response["Consumer"], stream_arn)
    except ClientError:
        pass  # ResourceInUse, the only code _consumer_call lets through: it exists already
    try:
        async with _consumer_call("DescribeStreamConsumer", stream_arn, name):
            response = await client.describe_stream_consumer(
                StreamARN=stream_arn, ConsumerName=name
            )
    except StreamNotFound:
        return None
    return _state(response["ConsumerDescription"], stream_arn)


async def _until_active(client: Any, state: ConsumerState, patience: _Patience) -> ConsumerState:
    what = f"consumer {state.name} of stream {state.stream_arn}"
    patience.restart()
    while state.status != "ACTIVE":
        if state.status == "DELETING":
            raise StreamNotFound(f"{what} is being deleted ({state.arn})")
        await patience.pause(f"{what} is still {state.status}")
        state = await _described_again(client, state, patience)
    return state


async def _until_gone(client: Any, state: ConsumerState, patience: _Patience) -> None:
    what = f"consumer {state.name} of stream {state.stream_arn}"
    patience.restart()
    while state.status == "DELETING":
        await patience.pause(f"{what} is still DELETING")
        try:
            state = await _described_again(client, state, patience)
        except StreamNotFound:
            return


async def _described_again(client: Any, state: ConsumerState, patience: _Patience) -> ConsumerState:
    """DescribeStreamConsumer once more; a throttled call keeps the last state (and pauses)."""
    try:
        return await describe_consumer(client, state.arn)
    except Throttled as exc:
        await patience.pause(f"consumer {state.name} of stream {state.stream_arn}", exc)
        return state


class _Patience:
    """Pauses with doubling length until a deadline, then raises."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline = anyio.current_time() + timeout
        self._pause = _FIRST_PAUSE

    def restart(self) -> None:
        """Short pauses again, for a new state to wait out (the deadline stays)."""
        self._pause = _FIRST_PAUSE

    async def pause(self, waiting_on: str, last_error: SourceError | None = None) -> None:
        left = self._deadline - anyio.current_time()
        if left <= 0:
            if last_error is not None:
                raise last_error
            raise SourceUnavailable(f"{waiting_on} after {self._timeout:g} s")
        await anyio.sleep(min(self._pause, left))
        self._pause = min(self._pause * 2, _LONGEST_PAUSE)


@asynccontextmanager
async def _consumer_call(
    call: str, stream_arn: str, name: str, *, keep_in_use: bool = False
) -> AsyncIterator[None]:
    """Translate a consumer call's failures; ``keep_in_use`` lets ResourceInUse through as the
    ClientError it is."""
    what = f"{call} for consumer {name} of stream {stream_arn}"
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if keep_in_use and code in _BUSY_CODES:
            raise
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"{what} failed with {code}: {message}".rstrip(": ")
        if code in _NOT_FOUND_CODES:
            raise StreamNotFound(text) from exc
        if code in _LIMIT_CODES:
            raise Throttled(text) from exc
        raise SourceUnavailable(text) from exc
    except _CONNECTION_FAILURES as exc:
        raise SourceUnavailable(f"{what} could not reach the service: {exc}") from exc


def _names_of(consumer_arn: str) -> tuple[str, str]:
    """Stream ARN and name for messages; an ARN of another form is still sent to the service."""
    try:
        return parse_consumer_arn(consumer_arn)
    except ValueError:
        return "?", consumer_arn


def _state(description: Mapping[str, Any], stream_arn: str) -> ConsumerState:
    return ConsumerState(
        arn=str(description["ConsumerARN"]),
        name=str(description["ConsumerName"]),
        stream_arn=str(description.get("StreamARN") or stream_arn),
        status=str(description["ConsumerStatus"]),
    )
