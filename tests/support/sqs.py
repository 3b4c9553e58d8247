"""SQS test helpers: a sped-up moto server, queue creation, sending and draining.

moto's SQS recomputes every queue attribute, with per-message datetime conversions, on every
send and receive, so each call costs O(queue depth) several times over (emulators.md: 12 msg/s
sending into a queue of 5,000). :func:`speed_up_moto_sqs` applies the TEST-ONLY speed-up
documented in ``/work/shared/reference/emulators.md`` (retention checked without
GetQueueAttributes; the O(depth) message counts computed only for GetQueueAttributes), here in
a thread-safe form: the attribute names are chosen per call from a thread-local flag instead of
swapping a class attribute, because moto's server answers concurrent requests from threads.
Two more patches of the same kind keep the semantics and drop constant factors that dominate at
a few thousand messages: the visible-messages list reads the clock once per call instead of
twice per message, and DeleteMessage and DeleteMessageBatch find their messages in one pass.

moto's SQS backend also has no locking: concurrent deletes rebuild the queue's message list
from stale copies (a deleted message comes back) and concurrent receives can take the same
message. The patched receive and delete calls therefore hold the queue's own lock (the
``threading.Condition`` moto already uses for long polls, which releases it while waiting).
And moto keeps a FIFO group "in flight" after its messages' visibility lapsed until it has
scanned each of them again, so it hands out the group's *last* message first (real SQS returns
the group in order); the patched receive, a corrected copy of moto's, works out the groups in
flight afresh on every scan, leaving out messages whose visibility lapsed.

The SQS tests run against their own moto server (:func:`shared_sqs_server`), started after the
patch; the session's shared server lives in the same process and so is patched too, which the
functional SQS behaviour it relies on (send, receive, delete, redrive) does not notice.

The rest: queue helpers (create, send, depth, receive, wait until drained), :func:`sqs_settings`
for a service with one SQS mapping, :func:`mapping_runner` for one mapping's runner without the
service (:func:`runner_on_endpoint`: the same with its own client), :func:`handler`, the Python
target that records every invocation and runs a per-queue behaviour, and :func:`sink_handler`
for service subprocess tests.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from poller.aws.clients import ClientFactory
from poller.config import Settings, SqsMapping, parse_settings
from poller.observability.metrics import RecordingMetrics
from poller.queues import SqsMappingRunner
from poller.sources.sqs import SqsQueue
from poller.targets.python import PythonTarget
from poller.types import Target
from tests.support.aws import ACCOUNT, CREDENTIALS, REGION, aws_client, chunked, moto_server
from tests.support.service_config import service_config
from tests.support.waiting import wait_until

_patched = False
_patch_lock = threading.Lock()
_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
)


def speed_up_moto_sqs() -> None:
    """Patch moto's SQS backend in this process (idempotent). TEST-ONLY, see the module doc."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        import moto.sqs.models as m
        from moto.core.utils import camelcase_to_underscores, unix_time
        from moto.sqs.exceptions import ReceiptHandleIsInvalid

        local = threading.local()

        def valid(self: Any, queue_name: str, message: Any) -> bool:
            # Was: a GetQueueAttributes (every attribute, counts included) per received message.
            queue = self.get_queue(queue_name)
            return bool(
                int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()
            )

        def attributes(self: Any) -> dict[str, Any]:
            # moto's Queue.attributes, except that the O(depth) counts are left out unless
            # GetQueueAttributes asked for them.
            wanted = getattr(local, "want_counts", False)
            names = [a for a in self.BASE_ATTRIBUTES if wanted or a not in _COUNTS]
            if self.fifo_queue:
                names += self.FIFO_ATTRIBUTES
            if self.kms_master_key_id:
                names += self.KMS_ATTRIBUTES
            result = {a: getattr(self, camelcase_to_underscores(a)) for a in names}
            if self.policy:
                result["Policy"] = self.policy
            if self.redrive_policy:
                result["RedrivePolicy"] = json.dumps(self.redrive_policy)
            return {k: str(v).lower() if isinstance(v, bool) else v for k, v in result.items()}

        original_get_attributes = m.SQSBackend.get_queue_attributes

        def get_queue_attributes(self: Any, *args: Any, **kwargs: Any) -> Any:
            local.want_counts = True
            try:
                return original_get_attributes(self, *args, **kwargs)
            finally:
                local.want_counts = False

        def messages(self: Any) -> list[Any]:
            # moto's Queue.messages (visible, not delayed), reading the clock once per call
            # instead of twice per message through datetime arithmetic.
            now = time.time() * 1000.0
            return [
                message
                for message in self._messages
                if now > message.visible_at and not now < message.delayed_until
            ]

        def delete_message(self: Any, receipt_handle: str) -> None:
            # moto's Queue.delete_message in one pass, without building a list of every
            # message's receipt handles per message, and under the queue's lock.
            with self._messages_lock:
                if receipt_handle in self.deleted_messages:
                    return
                kept, found = [], False
                for message in self._messages:
                    if (
                        receipt_handle == message.receipt_handle
                        or receipt_handle in message._old_receipt_handles
                    ):
                        found = True
                        self.pending_messages.discard(message)
                        self.deleted_messages.update(message.all_receipt_handles)
                        continue
                    kept.append(message)
                if not found:
                    raise ReceiptHandleIsInvalid()
                self._messages = kept
                self._messages_lock.notify_all()

        def delete_message_batch(
            self: Any, queue_name: str, receipts: list[dict[str, Any]]
        ) -> tuple[list[str], list[dict[str, str]]]:
            # moto's DeleteMessageBatch in one pass over the queue for the whole batch.
            queue = self.get_queue(queue_name)
            with queue._messages_lock:
                wanted = {r["ReceiptHandle"] for r in receipts} - queue.deleted_messages
                found: set[str] = set()
                kept = []
                for message in queue._messages:
                    if message.receipt_handle not in wanted and not any(
                        h in wanted for h in message._old_receipt_handles
                    ):
                        kept.append(message)
                        continue
                    found.update(wanted.intersection(message.all_receipt_handles))
                    queue.pending_messages.discard(message)
                    queue.deleted_messages.update(message.all_receipt_handles)
                queue._messages = kept
                queue._messages_lock.notify_all()
            success, errors = [], []
            for receipt in receipts:
                handle = receipt["ReceiptHandle"]
                if handle in found or handle in queue.deleted_messages:
                    success.append(receipt["Id"])
                else:
                    errors.append(
                        {
                            "Id": receipt["Id"],
                            "SenderFault": True,
                            "Code": "ReceiptHandleIsInvalid",
                            "Message": f'The input receipt handle "{handle}" is not a valid '
                            "receipt handle.",
                        }
                    )
            return success, errors

        def receive_message(
            self: Any,
            queue_name: str,
            count: int,
            wait_seconds_timeout: int,
            visibility_timeout: int,
            message_attribute_names: list[str] | None = None,
        ) -> list[Any]:
            # moto's SQSBackend.receive_message, corrected: under the queue's lock (released
            # while it long-polls), and with the FIFO groups in flight computed afresh on every
            # scan, without the messages whose visibility lapsed.
            queue = self.get_queue(queue_name)
            names = message_attribute_names or []
            result: list[Any] = []
            polling_end = unix_time() + wait_seconds_timeout
            with queue._messages_lock:
                while not result:
                    now = time.time() * 1000.0
                    queue.pending_messages.difference_update(
                        [msg for msg in queue.pending_messages if now > msg.visible_at]
                    )
                    busy_groups = set(queue.pending_message_groups)
                    to_dlq = []
                    for message in queue.messages:
                        if queue.fifo_queue and message.group_id in busy_groups:
                            continue
                        policy = queue.redrive_policy
                        if (
                            queue.dead_letter_queue is not None
                            and policy
                            and message.approximate_receive_count >= policy["maxReceiveCount"]
                        ):
                            to_dlq.append(message)
                            continue
                        queue.pending_messages.add(message)
                        message.mark_received(visibility_timeout=visibility_timeout)
                        copied = copy.deepcopy(message)
                        m._filter_message_attributes(copied, names)
                        if not self.is_message_valid_based_on_retention_period(queue_name, message):
                            break
                        result.append(copied)
                        if len(result) >= count:
                            break
                    for message in to_dlq:
                        queue._messages.remove(message)
                        queue.dead_letter_queue.add_message(message)
                    if result or not wait_seconds_timeout or unix_time() > polling_end:
                        break
                    # moto waits while *no* message is visible, which spins while the visible
                    # ones all belong to FIFO groups in flight; wait a tick instead (sends and
                    # deletes notify).
                    queue._messages_lock.wait(0.1)
            return result

        m.SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
        m.SQSBackend.is_message_valid_based_on_retention_period = valid  # type: ignore[method-assign]
        m.SQSBackend.delete_message_batch = delete_message_batch  # type: ignore[method-assign]
        m.Queue.messages = property(messages)  # type: ignore[assignment,method-assign]
        m.Queue.delete_message = delete_message  # type: ignore[method-assign]
        m.Queue.attributes = property(attributes)  # type: ignore[assignment,method-assign]
        m.SQSBackend.get_queue_attributes = get_queue_attributes  # type: ignore[method-assign]
        _patched = True


@contextlib.contextmanager
def sqs_moto_server() -> Iterator[str]:
    """A moto server of its own for SQS tests, with the speed-up applied."""
    speed_up_moto_sqs()
    with moto_server() as url:
        yield url


_shared: contextlib.ExitStack | None = None
_shared_lock = threading.Lock()
_shared_url = ""


def shared_sqs_server() -> str:
    """The URL of the SQS tests' moto server, started on first use, stopped at exit."""
    global _shared, _shared_url
    with _shared_lock:
        if _shared is None:
            stack = contextlib.ExitStack()
            _shared_url = stack.enter_context(sqs_moto_server())
            atexit.register(stack.close)
            _shared = stack
    return _shared_url


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


# --------------------------------------------------------------------------- queues


@dataclass(frozen=True, slots=True)
class Queue:
    """A test's queue: its name, URL and ARN."""

    name: str
    url: str

    @property
    def arn(self) -> str:
        return queue_arn(self.name)


#: The ``new_queue`` fixture (tests/integration/conftest.py): makes a :class:`Queue` from a
#: name prefix and :func:`create_queue`'s keywords.
NewQueue = Callable[..., Awaitable[Queue]]


#: The ``drain`` fixture (tests/integration/conftest.py): runs the service on a queue until
#: the given messages were delivered and the queue is empty (queue, ids, limit, what, mapping).
Drain = Callable[..., Awaitable[None]]


async def create_queue(
    sqs: Any,
    name: str,
    *,
    visibility_timeout: int = 30,
    dlq_arn: str | None = None,
    max_receive_count: int = 2,
) -> str:
    """Create a queue (FIFO when the name ends in .fifo), optionally with a redrive policy."""
    attributes = {"VisibilityTimeout": str(visibility_timeout)}
    if name.endswith(".fifo"):
        attributes["FifoQueue"] = "true"
    if dlq_arn is not None:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
        )
    response = await sqs.create_queue(QueueName=name, Attributes=attributes)
    return str(response["QueueUrl"])


async def send_entries(sqs: Any, url: str, entries: Iterable[dict[str, Any]]) -> list[str]:
    """SendMessageBatch ten at a time, in order; return the message ids. Fails on any failure."""
    ids: list[str] = []
    for batch in chunked(entries, 10):
        response = await sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), **e} for i, e in enumerate(batch)]
        )
        assert not response.get("Failed"), response["Failed"]
        by_id = {int(s["Id"]): s["MessageId"] for s in response["Successful"]}
        ids.extend(by_id[i] for i in range(len(batch)))
    return ids


async def send_bodies(sqs: Any, url: str, bodies: Iterable[str], **extra: Any) -> list[str]:
    return await send_entries(sqs, url, ({"MessageBody": b, **extra} for b in bodies))


async def fifo_with_dlq(sqs: Any, name: str) -> tuple[Queue, Queue]:
    """A FIFO queue and its FIFO dead-letter queue (after 2 receives), named after ``name``."""
    dlq = Queue(f"{name}-dlq.fifo", await create_queue(sqs, f"{name}-dlq.fifo"))
    queue = Queue(
        f"{name}.fifo",
        await create_queue(sqs, f"{name}.fifo", dlq_arn=dlq.arn, max_receive_count=2),
    )
    return queue, dlq


async def total_depth(sqs_url: str, queue: Queue) -> int:
    """Visible plus in-flight messages of ``queue`` at ``sqs_url``."""
    async with aws_client("sqs", sqs_url) as sqs:
        return sum(await queue_depth(sqs, queue.url))


async def queue_depth(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    response = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = response["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def receive_all(sqs: Any, url: str, *, expected: int, limit: float = 20) -> list[Any]:
    """Receive (and delete) messages until ``expected`` arrived or ``limit`` seconds passed."""
    got: list[Any] = []
    deadline = time.monotonic() + limit
    while len(got) < expected and time.monotonic() < deadline:
        response = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if messages:
            got.extend(messages)
            await sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
    return got


async def eventually(condition: Callable[[], Awaitable[Any]], limit: float, what: str) -> Any:
    """:func:`~tests.support.waiting.wait_until` for a condition that asks SQS, polled every
    0.1 s rather than 0.05 s: each poll is a call that moto answers in O(queue depth)."""
    return await wait_until(condition, limit, what, interval=0.1)


async def drained(sqs: Any, url: str, arn: str, ids: list[str]) -> bool:
    """Every message of ``ids`` was delivered to :func:`handler` and the queue is empty
    (nothing visible, nothing in flight)."""
    return set(delivered_ids(arn)) >= set(ids) and await queue_depth(sqs, url) == (0, 0)


# --------------------------------------------------------------------------- the service


def sqs_mapping(
    name: str, arn: str, target: dict[str, Any] | None = None, **mapping: Any
) -> dict[str, Any]:
    """One SQS mapping on the queue ``arn`` delivering to :func:`handler`."""
    return {
        "name": name,
        "event_source_arn": arn,
        "target": target or {"type": "python", "handler": "tests.support.sqs:handler"},
        # Shutdown waits for receives in flight; 1-second long polls keep it quick.
        "receive_wait_time_seconds": 1,
        **mapping,
    }


#: Mapping fields for partial batch responses: batches of up to 10 gathered for a second, and
#: reported messages back after 1 s (not the queue's 30-second visibility timeout).
REPORTED_BACK_IN_A_SECOND: dict[str, Any] = {
    "batch_size": 10,
    "maximum_batching_window_in_seconds": 1,
    "function_response_types": ["ReportBatchItemFailures"],
    "visibility_timeout_on_failure": {"base_seconds": 1, "max_seconds": 1},
}


def sqs_settings(
    *,
    endpoint_url: str,
    queue: str,
    db: Path,
    name: str = "q",
    target: dict[str, Any] | None = None,
    drain_timeout: float = 10,
    **mapping: Any,
) -> Settings:
    """Settings with one SQS mapping on ``queue`` delivering to :func:`handler`."""
    return parse_settings(
        service_config(
            endpoint_url,
            sqs_mapping(name, queue_arn(queue), target, **mapping),
            checkpoints={"path": str(db)},
            shutdown={"drain_timeout_seconds": drain_timeout},
        )
    )


@contextlib.asynccontextmanager
async def mapping_runner(
    mapping: dict[str, Any],
    *,
    receive: Any,
    settle: Any,
    target: Target | None = None,
    metrics: RecordingMetrics | None = None,
    **runner_options: Any,
) -> AsyncIterator[None]:
    """One mapping's :class:`SqsMappingRunner` alone (no service around it; 1-second long
    polls), receiving and settling through the given clients, until the block ends. The
    target is :func:`handler` unless one is given; ``runner_options`` go to the runner."""
    config = SqsMapping.model_validate(
        {
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            "receive_wait_time_seconds": 1,
            **mapping,
        }
    )
    own_target = target is None
    if target is None:
        target = PythonTarget(handler, timeout_seconds=60, function_arn="python:test")
    queue = SqsQueue(
        receive_client=receive,
        settle_client=settle,
        queue_arn=config.event_source_arn,
        region=REGION,
    )
    stopping = anyio.Event()
    runner = SqsMappingRunner(
        config, queue=queue, target=target, stopping=stopping, metrics=metrics, **runner_options
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            yield
            stopping.set()
    finally:
        if own_target:
            await target.aclose()


@contextlib.asynccontextmanager
async def runner_on_endpoint(
    sqs_url: str,
    arn: str,
    *,
    target: Target,
    metrics: RecordingMetrics,
    **runner_options: Any,
) -> AsyncIterator[None]:
    """:func:`mapping_runner` for the mapping "orders" on the queue ``arn`` at ``sqs_url``,
    with its own client, failing after 120 seconds (so a stuck runner cannot hang the test)."""
    clients = ClientFactory(region=REGION, endpoint_url=sqs_url, credentials=CREDENTIALS)
    try:
        client = await clients.client("sqs")
        with anyio.fail_after(120):
            async with mapping_runner(
                {"name": "orders", "event_source_arn": arn},
                receive=client,
                settle=client,
                target=target,
                metrics=metrics,
                **runner_options,
            ):
                yield
    finally:
        await clients.aclose()


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of :func:`handler`: the records, and what the behaviour returned or raised."""

    records: list[dict[str, Any]]
    result: Any
    error: str | None
    started: float
    finished: float

    @property
    def ids(self) -> list[str]:
        return [r["messageId"] for r in self.records]


_lock = threading.Lock()
#: Invocations by queue ARN, in the order they finished.
INVOCATIONS: dict[str, list[Invocation]] = defaultdict(list)
#: What the handler does per queue ARN: called with the records; its return value is the
#: function's response; an exception fails the invocation.
BEHAVIOUR: dict[str, Callable[[list[dict[str, Any]]], Any]] = {}


def handler(event: dict[str, Any], context: Any) -> Any:
    """The Python target of the SQS tests: run the queue's behaviour and record the call."""
    records = event["Records"]
    arn = records[0]["eventSourceARN"]
    hook = BEHAVIOUR.get(arn)
    started = time.monotonic()
    try:
        result = hook(records) if hook else None
    except Exception as exc:
        _record(arn, Invocation(records, None, str(exc), started, time.monotonic()))
        raise
    _record(arn, Invocation(records, result, None, started, time.monotonic()))
    return result


def _record(arn: str, invocation: Invocation) -> None:
    with _lock:
        INVOCATIONS[arn].append(invocation)


def invocations(arn: str) -> list[Invocation]:
    with _lock:
        return list(INVOCATIONS[arn])


def delivered_ids(arn: str) -> list[str]:
    """Ids of every message of every invocation so far, in order (repeats included)."""
    return [i for call in invocations(arn) for i in call.ids]


def forget(arn: str) -> None:
    with _lock:
        INVOCATIONS.pop(arn, None)
        BEHAVIOUR.pop(arn, None)


# --------------------------------------------------------------------------- subprocess sink


def sink_handler(event: dict[str, Any], context: Any) -> None:
    """For service subprocess tests: append each batch's message ids to ``POLLER_TEST_SINK``.

    ``POLLER_TEST_SLEEP`` makes each batch take that long; ``POLLER_TEST_STARTED`` names a
    file that gets a line as a batch starts. The line is written after the sleep, so a batch
    in the file finished in the handler.
    """
    marker = os.environ.get("POLLER_TEST_STARTED")
    if marker:
        with open(marker, "a", encoding="utf-8") as out:
            out.write(f"{len(event['Records'])}\n")
    time.sleep(float(os.environ.get("POLLER_TEST_SLEEP", "0")))
    line = json.dumps([r["messageId"] for r in event["Records"]])
    with open(os.environ["POLLER_TEST_SINK"], "a", encoding="utf-8") as sink:
        sink.write(line + "\n")
        sink.flush()


def read_sink(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
