"""Adversarial review of the service's supervision and of the SQS runner under production
faults: mappings that crash right after starting or return early, a stop while a mapping
waits to restart, shutdown steps that hang, and an SQS queue deleted while a batch is in
flight.

The supervisor tests give the real :class:`~poller.app.Service` a runner that is an
in-memory fake of our own runner interface (``mapping``, ``reachable``, ``run``): the logic
under test is the supervisor's, and a real source cannot be made to crash on cue. The SQS
tests run the real runner against moto.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.abc import TaskStatus

import poller.app as app
from poller.app import Service
from poller.config import AnyMapping, SqsMapping, parse_settings
from poller.errors import SourceUnavailable
from poller.queues import SqsMappingRunner
from poller.retry import Backoff
from poller.sources.sqs import SETTLE_CLIENT_CONFIG, SqsQueue
from poller.targets.python import PythonTarget
from poller.types import Target
from tests.integration.stream_errors_harness import stream_with
from tests.integration.test_sqs_errors import assert_group_order
from tests.support import sqs as support
from tests.support.aws import aws_client, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import (
    Drain,
    NewQueue,
    delivered_ids,
    send_bodies,
    sqs_mapping,
    sqs_settings,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- supervision


class FakeRunner:
    """A mapping runner (our own interface) whose ``run`` does what the test says."""

    def __init__(self, mapping: AnyMapping, behaviour: str, stopping: anyio.Event) -> None:
        self.mapping = mapping
        self.reachable = True
        self._behaviour = behaviour
        self._stopping = stopping

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._behaviour == "crash":
            raise RuntimeError("runner broke after start")
        if self._behaviour == "return":
            return
        await self._stopping.wait()
        if self._behaviour == "crash_in_drain":
            raise SourceUnavailable("DeleteMessageBatch could not reach the service")


class FakeRunnerService(Service):
    """The real service, whose mappings run ``FakeRunner``s; counts the runners built."""

    def __init__(self, settings: Any, behaviour: str, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.behaviour = behaviour
        self.built = 0

    async def _build_runner(self, mapping: Any, clients: Any, store: Any, target: Target) -> Any:
        self.built += 1
        if self.behaviour == "hang_build":  # e.g. creating the embedded stream never ends
            await anyio.sleep_forever()
        return FakeRunner(mapping, self.behaviour, self.stopping)


def fake_settings(moto_url: str, tmp_path: Path) -> Any:
    return parse_settings(
        service_config(
            moto_url,
            stream_mapping(
                "fake",
                "arn:aws:kinesis:us-east-1:123456789012:stream/never-read",
                "tests.support.recorder:record",
            ),
            checkpoints={"path": str(tmp_path / "c.db")},
            shutdown={"drain_timeout_seconds": 30},
        )
    )


async def stop_when(
    service: Service, ready: Callable[[list[MutableMapping[str, Any]]], bool], what: str
) -> tuple[float, list[MutableMapping[str, Any]]]:
    """Run ``service`` until ``ready(logs)`` holds, then request a stop; return when the stop
    was requested (``time.monotonic()``) and the logs of the whole run."""
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            await wait_until(lambda: ready(logs), 10, what)
            began = time.monotonic()
            service.request_stop()
    return began, logs


@pytest.fixture
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> Backoff:
    """Restart backoff in tens of milliseconds, without jitter, so the growth is exact."""
    backoff = Backoff(initial=0.02, maximum=5.0, jitter=0.0)
    monkeypatch.setattr(app, "MAPPING_RESTART_BACKOFF", backoff)
    return backoff


async def test_a_runner_that_crashes_right_after_starting_backs_off_more_each_time(
    moto_url: str, tmp_path: Path, quick_restarts: Backoff
) -> None:
    """A runner that reports started and then raises at once is a crash loop, not a run that
    went well: the restart backoff grows with each crash instead of starting over at the
    first step every time (which would hammer the source once a second forever)."""
    service = FakeRunnerService(fake_settings(moto_url, tmp_path), "crash", start_grace=0)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))

            def crashes() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "mapping.crashed"]

            await wait_until(lambda: len(crashes()) >= 5, 10, "five crashes")
            service.request_stop()
    attempts = [e["attempt"] for e in crashes()[:5]]
    assert attempts == [1, 2, 3, 4, 5]
    waits = [e["restart_in_s"] for e in crashes()[:5]]
    assert waits == sorted(waits)
    assert waits[-1] > waits[0]


async def test_a_runner_that_returns_before_shutdown_is_restarted_and_reported_down(
    moto_url: str, tmp_path: Path, quick_restarts: Backoff
) -> None:
    """A runner that returns while the service runs has stopped reading its source: it is
    logged as crashed and restarted, not left for dead while ``poller_mapping_up`` says 1."""
    service = FakeRunnerService(fake_settings(moto_url, tmp_path), "return", start_grace=0)
    _, logs = await stop_when(service, lambda _: service.built >= 3, "the runner rebuilt twice")
    crashed = [e for e in logs if e["event"] == "mapping.crashed"]
    assert crashed
    assert crashed[0]["error"] == "the runner returned before shutdown"


async def test_a_stop_while_a_mapping_waits_to_restart_ends_the_service_at_once(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapping that crashed waits a long backoff before its restart; a stop request then
    ends the service at once (nothing of it is in flight), not after the backoff or the
    drain deadline."""
    monkeypatch.setattr(app, "MAPPING_RESTART_BACKOFF", Backoff(initial=60, maximum=60))
    service = FakeRunnerService(fake_settings(moto_url, tmp_path), "crash", start_grace=0)
    began, logs = await stop_when(
        service, lambda logs: any(e["event"] == "mapping.crashed" for e in logs), "the crash"
    )
    assert time.monotonic() - began < 5
    assert not any(e["event"] == "shutdown.drain_deadline" for e in logs)


async def test_a_stop_while_a_runner_is_being_built_ends_the_service_at_once(
    moto_url: str, tmp_path: Path
) -> None:
    """Building a mapping's runner hangs (nothing of it runs yet): a stop request ends the
    service at once instead of waiting for the build or the drain deadline."""
    service = FakeRunnerService(fake_settings(moto_url, tmp_path), "hang_build", start_grace=0)
    began, logs = await stop_when(service, lambda _: service.built == 1, "the build under way")
    assert time.monotonic() - began < 5
    assert not any(e["event"] == "shutdown.drain_deadline" for e in logs)


async def test_a_runner_that_fails_during_the_drain_is_logged(
    moto_url: str, tmp_path: Path
) -> None:
    """A runner that fails while draining leaves its work unsettled: the failure is logged
    (``mapping.crashed``, with the error, and no restart), never dropped silently because the
    service is stopping anyway."""
    service = FakeRunnerService(fake_settings(moto_url, tmp_path), "crash_in_drain")
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            with anyio.fail_after(20):
                await service.ready.wait()
            service.request_stop()
    crashed = [e for e in logs if e["event"] == "mapping.crashed"]
    assert [(e["error"], e["restart_in_s"]) for e in crashed] == [
        ("SourceUnavailable: DeleteMessageBatch could not reach the service", None)
    ]
    assert service.built == 1


async def test_two_failed_shard_listings_do_not_report_a_stream_mapping_down(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """Two ListShards calls answer 500 in a row (a blip of about a second) while a Kinesis
    mapping runs: the next refresh succeeds, so the mapping is never reported down (no
    ``mapping.down`` warning, ``poller_mapping_up`` stays 1); an outage that lasts is."""
    stream = unique("blip")
    recorded_streams.append(stream_arn(stream))
    await stream_with(moto_url, stream, [("k", b"{}")])
    with FaultProxy(moto_url) as proxy:
        config = service_config(
            moto_url,
            stream_mapping(
                "blip",
                stream_arn(stream),
                "tests.support.recorder:record",
                shard_discovery_interval_seconds=1,
            ),
            checkpoints={"path": str(tmp_path / "c.db")},
            endpoints={"kinesis": proxy.url},
        )
        service = Service(parse_settings(config))
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: service.run(handle_signals=False))
                with anyio.fail_after(20):
                    await service.ready.wait()
                proxy.fail("ListShards", code="InternalFailure", status=500, times=2)
                await wait_until(
                    lambda: proxy.faulted("Kinesis_20131202.ListShards") == 2, 10, "the blip"
                )
                await anyio.sleep(3)  # the reachability check samples every second
                assert not [e for e in logs if e["event"] == "mapping.down"]

                proxy.outage(60, ["ListShards"], code="InternalFailure", status=500)
                await wait_until(
                    lambda: service.health.readiness().mappings == {"blip": "down"},
                    20,
                    "down in an outage",
                )
                service.request_stop()


async def test_a_hung_close_step_is_given_up_after_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a component (a target, the checkpoint store, the clients) is shielded from the
    drain's cancellation, but not for ever: one that hangs is abandoned after
    ``CLOSE_STEP_SECONDS`` with a log line, so the process still exits."""
    monkeypatch.setattr(app, "CLOSE_STEP_SECONDS", 0.2, raising=False)
    with structlog.testing.capture_logs() as logs:
        began = time.monotonic()
        await Service._close_step("target hung", lambda: anyio.sleep(10))
    assert time.monotonic() - began < 5
    assert [e["component"] for e in logs if e["event"] == "shutdown.close_timed_out"] == [
        "target hung"
    ]


# --------------------------------------------------------------------------- SQS


async def test_a_queue_deleted_while_a_batch_runs_does_not_hold_up_the_drain(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    """The queue is deleted while the function runs a batch. Its messages are gone with the
    queue, so deleting them can never succeed: the poller gives them up (one warning) instead
    of retrying for ever, and a stop request then drains at once, not at the deadline."""
    queue = await new_queue("deleted")
    ids = await send_bodies(sqs, queue.url, ["slow"])
    running_batch, release = anyio.Event(), anyio.Event()
    token = anyio.lowlevel.current_token()

    def slow(records: list[dict[str, Any]]) -> None:
        anyio.from_thread.run_sync(running_batch.set, token=token)
        anyio.from_thread.run(release.wait, token=token)

    support.BEHAVIOUR[queue.arn] = slow
    settings = sqs_settings(
        endpoint_url=sqs_url, queue=queue.name, db=tmp_path / "c.db", drain_timeout=20
    )
    service = Service(settings)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            with anyio.fail_after(20):
                await running_batch.wait()
            await sqs.delete_queue(QueueUrl=queue.url)
            release.set()
            await wait_until(
                lambda: any(e["event"] == "messages.delete_refused" for e in logs),
                10,
                "the deletes of a queue that is gone given up",
            )
            began = time.monotonic()
            service.request_stop()
    assert delivered_ids(queue.arn) == ids
    assert time.monotonic() - began < 10
    assert not any(e["event"] == "shutdown.drain_deadline" for e in logs)


async def test_a_queue_deleted_and_created_again_is_read_again_without_a_restart(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    """The queue is deleted while the service runs: the mapping is reported down and keeps
    retrying; once a queue of that name exists again, its messages are delivered."""
    queue = await new_queue("recreated")
    settings = sqs_settings(endpoint_url=sqs_url, queue=queue.name, db=tmp_path / "c.db")
    service = Service(settings, start_grace=0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: service.run(handle_signals=False))
        first = await send_bodies(sqs, queue.url, ["before"])
        await wait_until(lambda: delivered_ids(queue.arn) == first, 20, "the first message")
        await sqs.delete_queue(QueueUrl=queue.url)
        await wait_until(
            lambda: service.health.readiness().mappings == {"q": "down"}, 20, "reported down"
        )
        await support.create_queue(sqs, queue.name)
        second = await send_bodies(sqs, queue.url, ["after"])
        await wait_until(
            lambda: delivered_ids(queue.arn) == first + second, 30, "the re-created queue read"
        )
        await wait_until(
            lambda: service.health.readiness().mappings == {"q": "up"}, 30, "reported up"
        )
        service.request_stop()


async def test_a_slow_batch_drains_and_is_deleted_while_another_mapping_is_down(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    """SIGTERM while an SQS batch takes 3 s and a Kinesis mapping cannot find its stream: the
    batch completes and is deleted, the missing stream's retries are abandoned, and the
    service stops well before the drain deadline."""
    queue = await new_queue("drains")
    running_batch = anyio.Event()
    token = anyio.lowlevel.current_token()

    def slow(records: list[dict[str, Any]]) -> None:
        anyio.from_thread.run_sync(running_batch.set, token=token)
        time.sleep(3)

    support.BEHAVIOUR[queue.arn] = slow
    config = service_config(
        sqs_url,
        sqs_mapping("jobs", queue.arn),
        checkpoints={"path": str(tmp_path / "c.db")},
        shutdown={"drain_timeout_seconds": 25},
    )
    config["mappings"].append(
        stream_mapping(
            "absent",
            "arn:aws:kinesis:us-east-1:123456789012:stream/absent-review",
            "tests.support.recorder:record",
        )
    )
    service = Service(parse_settings(config), start_grace=0)
    ids = await send_bodies(sqs, queue.url, ["slow"])
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: service.run(handle_signals=False))
            with anyio.fail_after(20):
                await running_batch.wait()
            began = time.monotonic()
            service.request_stop()
    assert time.monotonic() - began < 15
    assert delivered_ids(queue.arn) == ids
    assert [e["deleted"] for e in logs if e["event"] == "batch.processed"] == [1]
    assert await support.queue_depth(sqs, queue.url) == (0, 0)
    assert not any(e["event"] == "shutdown.drain_deadline" for e in logs)


async def test_one_failed_receive_does_not_report_the_queue_unreachable(
    sqs: Any, sqs_url: str, new_queue: NewQueue
) -> None:
    """SQS answers one ReceiveMessage with a 500 (it does, now and then): the retry succeeds,
    so the mapping must not be reported down for it (``poller_mapping_up`` would flap to 0,
    with a ``mapping.down`` warning, for every passing error); only receives that keep
    failing make it unreachable."""
    queue = await new_queue("blip")
    with FaultProxy(sqs_url) as proxy:
        async with (
            aws_client("sqs", proxy.url, config=SETTLE_CLIENT_CONFIG) as receive,
            aws_client("sqs", sqs_url, config=SETTLE_CLIENT_CONFIG) as settle,
        ):
            stopping = anyio.Event()
            runner = sqs_runner(queue.arn, receive, settle, stopping, receive_wait_time_seconds=5)
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                await anyio.sleep(0.5)  # every poller is in its first long poll
                proxy.fail("ReceiveMessage", code="InternalError", status=500)
                await wait_until(
                    lambda: proxy.faulted("AmazonSQS.ReceiveMessage"), 15, "the failure"
                )
                with anyio.move_on_after(3):  # watch closely: any flip to unreachable counts
                    await wait_until(lambda: not runner.reachable, 10, "a flip", interval=0.01)
                assert runner.reachable, "reported unreachable after one failed receive"

                proxy.outage(60, ["ReceiveMessage"], code="InternalError", status=500)
                await wait_until(lambda: not runner.reachable, 30, "unreachable in an outage")
                stopping.set()


def sqs_runner(
    arn: str, receive: Any, settle: Any, stopping: anyio.Event, **mapping: Any
) -> SqsMappingRunner:
    """One SQS mapping's runner on the given clients, delivering to the SQS tests' handler."""
    config = SqsMapping.model_validate(
        {
            "name": "q",
            "event_source_arn": arn,
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            **mapping,
        }
    )
    queue = SqsQueue(
        receive_client=receive, settle_client=settle, queue_arn=arn, region="us-east-1"
    )
    target = PythonTarget(support.handler, timeout_seconds=60, function_arn="python:test")
    return SqsMappingRunner(config, queue=queue, target=target, stopping=stopping)


async def test_fifo_carried_messages_of_other_groups_go_on_while_a_failed_group_waits(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """Two FIFO groups interleaved, ten 700 kB messages in one receive: a0 b0 .. a3 b3 fit in
    6 MB, a4 and b4 are carried. a1 fails on its first delivery: a4 goes back with a1..a3,
    while b4 starts the next batch at once, before group a is retried; each group is
    delivered and completed in order."""
    queue = await new_queue("interleaved.fifo", visibility_timeout=2)
    ids = []
    for n in range(5):
        for group in ("a", "b"):
            body = json.dumps({"group": group, "n": n, "pad": "x" * 700_000})
            sent = await sqs.send_message(
                QueueUrl=queue.url,
                MessageBody=body,
                MessageGroupId=group,
                MessageDeduplicationId=f"{group}-{n}",
            )
            ids.append(sent["MessageId"])

    def fail_a1_once(records: list[dict[str, Any]]) -> dict[str, Any]:
        failed = [
            r["messageId"]
            for r in records
            if json.loads(r["body"]) == {"group": "a", "n": 1, "pad": "x" * 700_000}
            and r["attributes"]["ApproximateReceiveCount"] == "1"
        ]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}

    support.BEHAVIOUR[queue.arn] = fail_a1_once
    await drain(
        queue,
        ids,
        45,
        "both groups completed",
        batch_size=10,
        function_response_types=["ReportBatchItemFailures"],
        scaling_config={"maximum_concurrency": 3},
    )
    calls = sorted(support.invocations(queue.arn), key=lambda c: c.started)
    numbers = [[(b["group"], b["n"]) for b in map(body_of, c.records)] for c in calls]
    assert numbers[0] == [(g, n) for n in range(4) for g in ("a", "b")]
    assert numbers[1] == [("b", 4)], "b4 starts the next batch before group a's retry"
    assert assert_group_order(calls) == {"a": list(range(5)), "b": list(range(5))}


def body_of(record: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(record["body"])
    return body


def slow_first(records: list[dict[str, Any]]) -> None:
    """The first batch (eight 700 kB messages) spends 2 s in the function, so its
    visibility is extended and the two carried messages wait meanwhile."""
    if len(records) == 8:
        time.sleep(2)


async def run_with_visibility_answers(
    sqs_url: str,
    queue: support.Queue,
    db: Path,
    answers: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    until: Callable[[], Any],
    limit: float,
    what: str,
) -> None:
    """Run one SQS mapping (batches of ten, a slow first batch) with SQS's answers to
    ChangeMessageVisibilityBatch rewritten by ``answers``, until ``until`` holds."""
    support.BEHAVIOUR[queue.arn] = slow_first
    with FaultProxy(sqs_url) as proxy:
        proxy.rewrite("AmazonSQS.ChangeMessageVisibilityBatch", answers)
        settings = sqs_settings(endpoint_url=proxy.url, queue=queue.name, db=db, batch_size=10)
        async with running(settings):
            await wait_until(until, limit, what)


async def test_a_carried_message_whose_visibility_was_refused_is_not_delivered_on_it(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    """Ten 700 kB messages arrive in one receive; eight make the first batch (2 s in the
    function) and two are carried. SQS refuses every visibility extension meanwhile
    (ReceiptHandleIsInvalid, as it answers once a receipt went stale): the carried two may be
    received by another poller by now, so this poller must drop them instead of delivering
    them on receipts it knows are dead (a second, concurrent delivery). Each carried message
    is delivered only from a fresh receive."""
    queue = await new_queue("refused", visibility_timeout=2)
    ids = [
        (await sqs.send_message(QueueUrl=queue.url, MessageBody=f"{n:02d}" + "x" * 700_000))[
            "MessageId"
        ]
        for n in range(10)
    ]

    def refuse_all(answer: dict[str, Any]) -> dict[str, Any]:
        entries = [*answer.get("Successful", []), *answer.get("Failed", [])]
        return {
            "Successful": [],
            "Failed": [
                {"Id": e["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True}
                for e in entries
            ],
        }

    await run_with_visibility_answers(
        sqs_url,
        queue,
        tmp_path / "c.db",
        refuse_all,
        until=lambda: set(delivered_ids(queue.arn)) == set(ids),
        limit=30,
        what="all",
    )
    calls = support.invocations(queue.arn)
    first = set(calls[0].ids)
    assert len(first) == 8
    carried = set(ids) - first
    stale = [
        r["messageId"]
        for c in calls
        for r in c.records
        if r["messageId"] in carried and r["attributes"]["ApproximateReceiveCount"] == "1"
    ]
    assert stale == [], "a carried message was delivered on the receipt SQS refused"


async def test_fifo_carried_messages_behind_a_refused_one_wait_with_it(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    """One FIFO group, ten 700 kB messages in one receive: 0..7 make the first batch (2 s in
    the function), 8 and 9 are carried. SQS refuses the visibility extension of message 8
    only: 8 is let go, and so must 9 be (the same group rule as for a failed message), or 9
    would be delivered before 8 comes back. The group completes in order."""
    queue = await new_queue("refused.fifo", visibility_timeout=2)
    ids = []
    for n in range(10):
        body = json.dumps({"group": "g", "n": n, "pad": "x" * 700_000})
        sent = await sqs.send_message(
            QueueUrl=queue.url, MessageBody=body, MessageGroupId="g", MessageDeduplicationId=str(n)
        )
        ids.append(sent["MessageId"])

    refused: list[str] = []

    def refuse_the_ninth_entry_once(answer: dict[str, Any]) -> dict[str, Any]:
        ok = answer.get("Successful", [])
        if refused or not any(e["Id"] == "8" for e in ok):
            return answer
        refused.append("8")
        failed = {"Id": "8", "Code": "ReceiptHandleIsInvalid", "SenderFault": True}
        return {**answer, "Successful": [e for e in ok if e["Id"] != "8"], "Failed": [failed]}

    await run_with_visibility_answers(
        sqs_url,
        queue,
        tmp_path / "c.db",
        refuse_the_ninth_entry_once,
        until=lambda: support.drained(sqs, queue.url, queue.arn, ids),
        limit=45,
        what="the group",
    )
    assert refused
    calls = sorted(support.invocations(queue.arn), key=lambda c: c.started)
    assert [body_of(r)["n"] for r in calls[0].records] == list(range(8))
    assert assert_group_order(calls) == {"g": list(range(10))}
