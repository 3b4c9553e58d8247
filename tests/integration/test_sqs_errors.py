"""SQS failure paths against moto: FIFO order through a partial failure, visibility backoff,
throttles retried in place, deletes that SQS does not confirm, and start-up warnings."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog

from poller.observability.metrics import RecordingMetrics
from poller.sources.sqs import SETTLE_CLIENT_CONFIG
from poller.types import InvokeResult, Outcome
from tests.support import sqs as support
from tests.support.aws import aws_client
from tests.support.fault_proxy import FaultProxy
from tests.support.sqs import (
    Drain,
    NewQueue,
    Queue,
    delivered_ids,
    drained,
    eventually,
    invocations,
    mapping_runner,
    queue_depth,
    send_bodies,
    send_entries,
)

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- FIFO


def acknowledged(calls: list[support.Invocation]) -> dict[str, list[tuple[int, float]]]:
    """Per group, the messages the function completed, in the order it completed them.

    A message counts as completed in an invocation if the response did not report it and did
    not report an earlier message of its group in that invocation (Powertools' FIFO rule); the
    time is the invocation's end.
    """
    done: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for call in calls:
        reported = {f["itemIdentifier"] for f in (call.result or {}).get("batchItemFailures", [])}
        blocked: set[str] = set()
        for record in call.records:
            group = record["attributes"]["MessageGroupId"]
            if record["messageId"] in reported or group in blocked:
                blocked.add(group)
                continue
            done[group].append((json.loads(record["body"])["n"], call.finished))
    return done


async def test_fifo_order_holds_per_group_through_a_failure(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """20 message groups of 5 messages; message 2 of group g07 fails on its first delivery and
    the function reports only that one. Its group's later messages in that batch are kept with
    it, so g07 is completed in order 0..4; every invocation starts each group at its next
    uncompleted message; and the other 19 groups complete without waiting for g07's retry."""
    queue = await new_queue("fifo.fifo", visibility_timeout=2)
    entries = [
        {
            "MessageBody": json.dumps({"group": f"g{g:02d}", "n": n}),
            "MessageGroupId": f"g{g:02d}",
            "MessageDeduplicationId": f"g{g:02d}-{n}",
        }
        for n in range(5)
        for g in range(20)
    ]
    ids = await send_entries(sqs, queue.url, entries)

    def function(records: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [
            r["messageId"]
            for r in records
            if json.loads(r["body"]) == {"group": "g07", "n": 2}
            and r["attributes"]["ApproximateReceiveCount"] == "1"
        ]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}

    support.BEHAVIOUR[queue.arn] = function
    await drain(
        queue,
        ids,
        30,
        "every group completed",
        batch_size=10,
        function_response_types=["ReportBatchItemFailures"],
    )
    calls = sorted(invocations(queue.arn), key=lambda c: c.finished)
    done = acknowledged(calls)
    assert assert_group_order(calls) == {f"g{g:02d}": [0, 1, 2, 3, 4] for g in range(20)}
    retried = next(
        c
        for c in calls
        if any(
            json.loads(r["body"]) == {"group": "g07", "n": 2}
            and r["attributes"]["ApproximateReceiveCount"] == "2"
            for r in c.records
        )
    )
    others_done = max(t for g, completed in done.items() if g != "g07" for _, t in completed)
    assert others_done < retried.started, "other groups waited for g07's retry"


def assert_group_order(calls: list[support.Invocation]) -> dict[str, list[int]]:
    """Every invocation starts each group at its next uncompleted message, and each group is
    completed in order; return the completed numbers per group."""
    progress: dict[str, int] = defaultdict(int)
    for call in calls:
        seen: dict[str, list[int]] = defaultdict(list)
        for record in call.records:
            body = json.loads(record["body"])
            seen[body["group"]].append(body["n"])
        for group, ns in seen.items():
            first = progress[group]
            assert ns == list(range(first, first + len(ns))), (group, ns, first)
        for group, completed in acknowledged([call]).items():
            progress[group] += len(completed)
    return {group: [n for n, _ in done] for group, done in acknowledged(calls).items()}


async def test_fifo_messages_carried_past_the_6_mb_cut_wait_for_their_failed_group(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """Ten 700 kB messages of one FIFO group arrive in one receive; eight fit in 6 MB and the
    last two are carried to the next batch. The function reports message 3 as failed on its
    first delivery: the carried 8 and 9 must not be delivered before 3..7 are retried, so
    every invocation starts the group at its next uncompleted message and the group completes
    in order 0..9."""
    queue = await new_queue("carry.fifo", visibility_timeout=2)
    entries = [
        {
            "MessageBody": json.dumps({"group": "g", "n": n, "pad": "x" * 700_000}),
            "MessageGroupId": "g",
            "MessageDeduplicationId": f"g-{n}",
        }
        for n in range(10)
    ]
    ids = [(await sqs.send_message(QueueUrl=queue.url, **entry))["MessageId"] for entry in entries]

    def function(records: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [
            r["messageId"]
            for r in records
            if json.loads(r["body"])["n"] == 3 and r["attributes"]["ApproximateReceiveCount"] == "1"
        ]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}

    support.BEHAVIOUR[queue.arn] = function
    await drain(
        queue,
        ids,
        45,
        "the group completed",
        batch_size=10,
        function_response_types=["ReportBatchItemFailures"],
        scaling_config={"maximum_concurrency": 2},
    )
    calls = sorted(invocations(queue.arn), key=lambda c: c.started)
    first = [json.loads(r["body"])["n"] for r in calls[0].records]
    assert first == list(range(8)), "the first batch is cut at 6 MB after eight messages"
    assert assert_group_order(calls) == {"g": list(range(10))}


# --------------------------------------------------------------------------- visibility


async def test_visibility_backoff_brings_a_failed_message_back_early(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """visibility_timeout_on_failure {base 1, max 1} on a queue with a 30-second visibility
    timeout: a failed message is back after about a second, not thirty."""
    queue = await new_queue("backoff", visibility_timeout=30)
    ids = await send_bodies(sqs, queue.url, ["once"])

    def fail_first(records: list[dict[str, Any]]) -> None:
        if records[0]["attributes"]["ApproximateReceiveCount"] == "1":
            raise RuntimeError("first delivery fails")

    support.BEHAVIOUR[queue.arn] = fail_first
    await drain(
        queue,
        ids,
        15,
        "the retry and delete",
        visibility_timeout_on_failure={"base_seconds": 1, "max_seconds": 1},
    )
    first, second = invocations(queue.arn)
    assert first.error == "first delivery fails"
    assert second.error is None
    assert 0.9 <= second.started - first.finished < 10


# --------------------------------------------------------------------------- throttles


class FlakyTarget:
    """A target that throttles a number of times, then succeeds; counts its invocations."""

    function_arn = "python:flaky"

    def __init__(self, throttles: int) -> None:
        self.throttles = throttles
        self.calls: list[dict[str, Any]] = []

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.calls.append(event)
        if len(self.calls) <= self.throttles:
            return InvokeResult(Outcome.THROTTLE, error="TooManyRequestsException")
        return InvokeResult(Outcome.SUCCESS)

    async def aclose(self) -> None:
        pass


async def test_throttles_are_retried_in_place(sqs: Any, new_queue: NewQueue) -> None:
    """Two throttles, then success: the batch is invoked three times while held (receive count
    1 each time: SQS never delivered it again) and deleted once."""
    queue = await new_queue("throttle", visibility_timeout=30)
    await send_bodies(sqs, queue.url, ["m"])
    target = FlakyTarget(throttles=2)
    metrics = RecordingMetrics()

    async def settled() -> bool:
        return len(target.calls) == 3 and await queue_depth(sqs, queue.url) == (0, 0)

    mapping = {"name": "t", "event_source_arn": queue.arn}
    async with mapping_runner(mapping, receive=sqs, settle=sqs, target=target, metrics=metrics):
        await eventually(settled, 15, "three attempts and a delete")
    counts = {e["Records"][0]["attributes"]["ApproximateReceiveCount"] for e in target.calls}
    assert counts == {"1"}
    outcomes = [c["outcome"] for c in metrics.calls_to("invocation", "t")]
    assert outcomes == ["throttle", "throttle", "success"]
    assert metrics.count("retry", "t") == 2
    assert metrics.count("records_invoked", "t") == 3
    assert metrics.count("records_failed_invoke", "t") == 2
    assert metrics.count("records_deleted", "t") == 1


# --------------------------------------------------------------------------- deletes


async def settle_through(
    proxy: FaultProxy,
    sqs: Any,
    queue: Queue,
    ids: list[str],
    name: str,
    metrics: RecordingMetrics | None = None,
) -> list[MutableMapping[str, Any]]:
    """Run mapping ``name`` on ``queue``, receiving directly and settling through ``proxy``
    with a client configured as the service's settle client (botocore retries off, so the
    retries seen are poller's), until every message of ``ids`` is delivered and deleted;
    return the log lines."""
    async with aws_client("sqs", proxy.url, SETTLE_CLIENT_CONFIG) as through_proxy:
        with structlog.testing.capture_logs() as logs:
            mapping = {"name": name, "event_source_arn": queue.arn}
            async with mapping_runner(mapping, receive=sqs, settle=through_proxy, metrics=metrics):
                await eventually(
                    lambda: drained(sqs, queue.url, queue.arn, ids), 20, "the end state"
                )
    return logs


async def test_unconfirmed_deletes_are_retried(sqs: Any, sqs_url: str, new_queue: NewQueue) -> None:
    """DeleteMessageBatch fails four times with a 500: the deletes are retried with backoff
    (about 7.5 s in all) while the heartbeat keeps the messages hidden (visibility timeout
    4 s, extended every 2 s); each message is delivered once and the queue ends empty.

    The timeout is no shorter than 4 s: with 2 s (a heartbeat every second) a loaded CI
    machine once stalled the service's loop past a second, and SQS delivered again."""
    queue = await new_queue("deletes", visibility_timeout=4)
    ids = await send_bodies(sqs, queue.url, (f"m{i}" for i in range(5)))
    metrics = RecordingMetrics()
    with FaultProxy(sqs_url) as proxy:
        proxy.fail("AmazonSQS.DeleteMessageBatch", code="InternalError", status=500, times=4)
        logs = await settle_through(proxy, sqs, queue, ids, "d", metrics)
        assert proxy.faulted("AmazonSQS.DeleteMessageBatch") == 4
    assert sorted(delivered_ids(queue.arn)) == sorted(ids), "nothing delivered twice"
    retries = [e for e in logs if e["event"] == "messages.delete_retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4]
    assert {e["log_level"] for e in retries} == {"warning"}
    assert any(e["event"] == "queue.no_redrive_policy" for e in logs)
    assert metrics.count("records_deleted", "d") == 5
    assert metrics.count("visibility_extended", "d") >= 5, "the heartbeat ran"


async def test_refused_deletes_are_logged_not_retried(
    sqs: Any, sqs_url: str, new_queue: NewQueue
) -> None:
    """An entry SQS refuses as the sender's fault (ReceiptHandleIsInvalid) is logged as a
    warning, since the message will be delivered again, and not retried."""
    queue = await new_queue("refused")
    ids = await send_bodies(sqs, queue.url, ["m0", "m1"])

    def refuse_first(answer: dict[str, Any]) -> dict[str, Any]:
        successful = answer.get("Successful", [])
        if not successful:
            return answer
        failed = {
            "Id": successful[0]["Id"],
            "SenderFault": True,
            "Code": "ReceiptHandleIsInvalid",
            "Message": "The input receipt handle is not a valid receipt handle.",
        }
        return {"Successful": successful[1:], "Failed": [failed]}

    with FaultProxy(sqs_url) as proxy:
        proxy.rewrite("AmazonSQS.DeleteMessageBatch", refuse_first)
        logs = await settle_through(proxy, sqs, queue, ids, "r")
        deletes = proxy.calls("AmazonSQS.DeleteMessageBatch")
    refused = [e for e in logs if e["event"] == "messages.delete_refused"]
    assert refused
    assert refused[0]["codes"] == {"ReceiptHandleIsInvalid": 1}
    assert refused[0]["log_level"] == "warning"
    assert not [e for e in logs if e["event"] == "messages.delete_retry"]
    handles = [e["ReceiptHandle"] for c in deletes for e in c["Entries"]]
    assert len(handles) == len(set(handles)), "no delete was repeated"


async def test_no_message_body_is_logged(sqs: Any, new_queue: NewQueue, drain: Drain) -> None:
    """One line per batch with mapping, size, outcome and duration; bodies never appear."""
    queue = await new_queue("quiet")
    secret = "do-not-log-this-body"
    ids = await send_bodies(sqs, queue.url, [secret] * 3)
    support.BEHAVIOUR[queue.arn] = lambda records: time.sleep(0)
    with structlog.testing.capture_logs() as logs:
        await drain(queue, ids, 15, "delivery")

        async def logged() -> bool:
            # A batch's line is written once it is settled, which may be just after the
            # handler saw its messages (when the drain above returns).
            return bool(sum(e["size"] for e in logs if e["event"] == "batch.processed") == 3)

        await eventually(logged, 15, "every batch logged")
    batches = [e for e in logs if e["event"] == "batch.processed"]
    assert sum(e["size"] for e in batches) == 3
    # (the mapping's name is bound as a context variable, which capture_logs leaves out)
    assert all({"size", "outcome", "duration_ms", "deleted"} <= set(e) for e in batches)
    assert secret not in repr(logs)


class BrokenOnceTarget(FlakyTarget):
    """A target that breaks its contract once: it raises instead of returning a result."""

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.calls.append(event)
        if len(self.calls) == 1:
            raise RuntimeError("a bug in a target")
        return InvokeResult(Outcome.SUCCESS)


async def test_a_crashed_poller_is_logged_and_restarted(sqs: Any, new_queue: NewQueue) -> None:
    """An unexpected error in a poller is logged (poller.crashed) and the poller restarts;
    the message it held reappears after its visibility timeout and is delivered again."""
    queue = await new_queue("crash", visibility_timeout=1)
    await send_bodies(sqs, queue.url, ["m"])
    target = BrokenOnceTarget(throttles=0)

    async def settled() -> bool:
        return len(target.calls) == 2 and await queue_depth(sqs, queue.url) == (0, 0)

    with structlog.testing.capture_logs() as logs:
        mapping = {"name": "c", "event_source_arn": queue.arn}
        async with mapping_runner(mapping, receive=sqs, settle=sqs, target=target):
            await eventually(settled, 15, "the retry after the crash")
    crashes = [e for e in logs if e["event"] == "poller.crashed"]
    assert [(e["attempt"], e["held"], e["log_level"]) for e in crashes] == [(1, 1, "error")]
    counts = [e["Records"][0]["attributes"]["ApproximateReceiveCount"] for e in target.calls]
    assert counts == ["1", "2"]
