"""The batch helper's responses through the real engines and the Python target.

A handler built on :func:`poller.batch.process_batch` runs in a real ``PythonTarget`` (worker
threads, Lambda's context); the stream runner reads a ``FakeStreamApi`` and the SQS runner a
``FakeQueue``. Each test checks that what the engine does with the response is what the
helper's rule means: a stream checkpoints before the first failure and retries from it (inside
a KPL aggregate too), a standard queue keeps only the failed messages, and a FIFO queue keeps a
failed message with the rest of its group while the other groups go on.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from poller.batch import aprocess_batch, process_batch
from poller.targets.python import PythonTarget
from poller.testing import FakeStreamApi, MemoryCheckpointStore, Put, kpl_aggregate
from poller.types import SHARD_END, Checkpoint
from tests.component.harness import MAPPING, SHARD, make_runner, mapping_config, running
from tests.component.sqs_fakes import FakeQueue, python_target_running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

#: Generous: the handler runs in worker threads on a shared, loaded machine.
LIMIT = 30.0


class Seen:
    """What the helper handed to the record function, across invocations (thread-safe: the
    Python target calls sync handlers in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[str] = []
        self.attempts: dict[str, int] = {}

    def note(self, name: str) -> int:
        """Record a call for ``name``; return how many times it has been handled."""
        with self._lock:
            self.calls.append(name)
            self.attempts[name] = self.attempts.get(name, 0) + 1
            return self.attempts[name]


def failing_first_time(
    seen: Seen, name_of: Callable[[dict[str, Any]], str], failing: set[str], **options: Any
) -> Callable[[dict[str, Any], Any], Any]:
    """A Lambda handler: ``process_batch`` over a record function that fails the records named
    in ``failing`` on their first attempt only."""

    def handle(record: dict[str, Any]) -> None:
        name = name_of(record)
        if seen.note(name) == 1 and name in failing:
            raise RuntimeError(f"{name} failed")

    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_batch(event, handle, context=context, **options)

    return handler


# -- Kinesis ----------------------------------------------------------------------------------


def kinesis_data(record: dict[str, Any]) -> str:
    return base64.b64decode(record["kinesis"]["data"]).decode()


def kinesis_position(record: dict[str, Any]) -> str:
    kinesis = record["kinesis"]
    sub = kinesis.get("subSequenceNumber")
    return str(kinesis["sequenceNumber"]) + ("" if sub is None else f":{sub}")


async def read_to_the_end(
    api: FakeStreamApi,
    store: MemoryCheckpointStore,
    stopping: anyio.Event,
    handler: Callable[[dict[str, Any], Any], Any],
    **fields: Any,
) -> None:
    """Run a mapping with ReportBatchItemFailures (batches of up to 10, sent at once, and
    ``fields``) and ``handler`` in a Python target until the shard is read to its end."""
    mapping = mapping_config(
        batch_size=10,
        maximum_batching_window_in_seconds=0,
        function_response_types=["ReportBatchItemFailures"],
        **fields,
    )
    target = PythonTarget(handler, timeout_seconds=30)
    runner = make_runner(mapping, api=api, target=target, store=store, stopping=stopping)
    try:
        async with running(runner, stopping):
            await wait_until(
                lambda: store.checkpoints.get((MAPPING, SHARD)) == Checkpoint(SHARD_END),
                LIMIT,
                "the shard read to its end",
            )
    finally:
        await target.aclose()


async def test_kinesis_stops_at_the_failure_checkpoints_before_it_and_retries_from_it(
    store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """a..e in one batch; c fails once. The helper stops there (d and e are not handled) and
    reports c, d, e; the engine checkpoints b, retries c, d, e, and ends the shard."""
    api = FakeStreamApi()
    api.add_shard(SHARD)
    sequences = [
        str(raw["SequenceNumber"])
        for raw in api.add_page(SHARD, [Put(k, k.encode()) for k in "abcde"])
    ]
    api.close_shard(SHARD)
    seen = Seen()
    await read_to_the_end(api, store, stopping, failing_first_time(seen, kinesis_data, {"c"}))
    assert seen.calls == ["a", "b", "c", "c", "d", "e"]
    checkpoints = [c.sequence_number for m, s, c in store.writes if (m, s) == (MAPPING, SHARD)]
    assert checkpoints[0] == sequences[1]  # before c, the first failure
    assert sequences[4] in checkpoints[1:]
    assert checkpoints[-1] == SHARD_END


async def test_a_kpl_user_record_failure_resumes_inside_the_aggregate(
    store: MemoryCheckpointStore, stopping: anyio.Event
) -> None:
    """An aggregate of u0 u1 u2, then a plain p; u1 fails once. The helper reports
    ``seq:1``, ``seq:2`` and p; the engine checkpoints at ``seq:0`` and retries from u1."""
    api = FakeStreamApi(deaggregate=True)
    api.add_shard(SHARD)
    users = [("k0", b"u0"), ("k1", b"u1"), ("k2", b"u2")]
    [aggregate] = [str(r["SequenceNumber"]) for r in api.add_page(SHARD, [kpl_aggregate(users)])]
    api.add_page(SHARD, [Put("k3", b"p")])
    api.close_shard(SHARD)
    seen = Seen()
    handler = failing_first_time(seen, kinesis_data, {"u1"})
    await read_to_the_end(api, store, stopping, handler, deaggregate_records=True)
    assert seen.calls[:2] == ["u0", "u1"]
    assert seen.calls[2:] == ["u1", "u2", "p"]
    first = next(c for m, s, c in store.writes if (m, s) == (MAPPING, SHARD))
    assert first == Checkpoint(sequence_number=aggregate, sub_sequence_number=0)


# -- SQS --------------------------------------------------------------------------------------


def queue_running(
    queue: FakeQueue, handler: Callable[..., Any]
) -> AbstractAsyncContextManager[None]:
    """An SQS runner with ReportBatchItemFailures on ``queue``, ``handler`` in a Python
    target, until the block ends."""
    return python_target_running(queue, handler, limit=LIMIT * 2)


def message_id(record: dict[str, Any]) -> str:
    return str(record["messageId"])


async def deleted(queue: FakeQueue, *ids: str) -> None:
    await wait_until(lambda: set(ids) <= set(queue.deleted), LIMIT, f"{ids} deleted", 0.005)


async def test_a_standard_queue_keeps_only_the_failed_messages() -> None:
    """b and d fail once: the helper goes on past them, the engine deletes a, c, e and
    redelivers only b and d."""
    queue, seen = FakeQueue(), Seen()
    for name in "abcde":
        queue.send(name)
    async with queue_running(queue, failing_first_time(seen, message_id, {"b", "d"})):
        await deleted(queue, "a", "c", "e")
        assert seen.calls == list("abcde")
        assert sorted(queue.in_flight()) == ["b", "d"]
        queue.expire_visibility()
        await deleted(queue, "b", "d")
    assert seen.calls[5:] == ["b", "d"]


async def test_a_fifo_queue_stops_at_the_first_failure_by_default() -> None:
    """x2 fails once: nothing after it is handled; x2 and everything after it come back."""
    queue, seen = FakeQueue("orders.fifo"), Seen()
    for name in ("x1", "y1", "x2", "y2", "x3"):
        queue.send(name, group=name[0])
    async with queue_running(queue, failing_first_time(seen, message_id, {"x2"})):
        await deleted(queue, "x1", "y1")
        assert seen.calls == ["x1", "y1", "x2"]
        assert sorted(queue.in_flight()) == ["x2", "x3", "y2"]
        queue.expire_visibility()
        await deleted(queue, "x2", "y2", "x3")
    assert seen.calls[3:] == ["x2", "y2", "x3"]


async def test_a_fifo_group_is_skipped_after_its_failure_while_other_groups_go_on() -> None:
    """skip_group_on_failure: x2 fails once; y2 is handled and deleted in the same batch, x3
    is reported with x2, and the group comes back in order."""
    queue, seen = FakeQueue("orders.fifo"), Seen()
    for name in ("x1", "y1", "x2", "y2", "x3"):
        queue.send(name, group=name[0])
    handler = failing_first_time(seen, message_id, {"x2"}, skip_group_on_failure=True)
    async with queue_running(queue, handler):
        await deleted(queue, "x1", "y1", "y2")
        assert seen.calls == ["x1", "y1", "x2", "y2"]
        assert sorted(queue.in_flight()) == ["x2", "x3"]
        queue.expire_visibility()
        await deleted(queue, "x2", "x3")
    assert seen.calls[4:] == ["x2", "x3"]
    assert queue.remaining() == []


async def test_an_async_handler_with_aprocess_batch_runs_on_the_handler_loop() -> None:
    """The same rules for an ``async def`` handler (run on the Python target's handler loop):
    on a FIFO queue x2 fails once and stops the batch; x2 and what follows come back."""
    queue, seen = FakeQueue("orders.fifo"), Seen()
    for name in ("x1", "y1", "x2", "y2"):
        queue.send(name, group=name[0])

    async def handle(record: dict[str, Any]) -> None:
        await anyio.lowlevel.checkpoint()
        if seen.note(record["messageId"]) == 1 and record["messageId"] == "x2":
            raise RuntimeError("x2 failed")

    async def handler(event: dict[str, Any], context: Any) -> Any:
        return await aprocess_batch(event, handle, context=context, reserve_ms=1)

    async with queue_running(queue, handler):
        await deleted(queue, "x1", "y1")
        assert seen.calls == ["x1", "y1", "x2"]
        assert sorted(queue.in_flight()) == ["x2", "y2"]
        queue.expire_visibility()
        await deleted(queue, "x2", "y2")
    assert seen.calls[3:] == ["x2", "y2"]
