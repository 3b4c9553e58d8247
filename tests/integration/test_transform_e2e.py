"""Input templates end to end on moto: the service reshapes each record before delivery.

(a) A Kinesis mapping posts to a local HTTP endpoint with a template: the endpoint receives
``{"Records": [...]}`` of transformed records, with the data decoded from base64 JSON.
(b) An SQS mapping calls a Python handler with ``batch_shape: array``: the handler gets a
bare array, reports one transformed record's ``messageId`` as failed, and that message alone
comes back (rendered again from the original) while the others are deleted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import kinesis_settings
from tests.integration.stream_errors_harness import stream_with
from tests.support.aws import unique
from tests.support.http_server import JsonEndpoint
from tests.support.service import run_until, running
from tests.support.sqs import (
    REPORTED_BACK_IN_A_SECOND,
    NewQueue,
    eventually,
    queue_depth,
    send_bodies,
    sqs_settings,
)

pytestmark = pytest.mark.anyio


class Endpoint(JsonEndpoint):
    """A local HTTP endpoint that records every JSON body and answers 200 {}."""

    def __init__(self) -> None:
        super().__init__(name="transform-endpoint")


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as ep:
        yield ep


async def test_http_target_receives_transformed_kinesis_records(
    moto_url: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    stream = unique("tpl")
    data = [json.dumps({"order": i, "customer": {"id": f"c{i}"}}).encode() for i in range(5)]
    written = await stream_with(moto_url, stream, [(f"k{i}", d) for i, d in enumerate(data)])
    settings = kinesis_settings(
        endpoint_url=moto_url,
        stream=stream,
        db=tmp_path / "c.db",
        name="orders",
        target={
            "type": "http",
            "url": endpoint.url,
            "timeout_seconds": 5,
            "input_template": (
                '{"seq": <$.kinesis.sequenceNumber>, "order": <$.kinesis.data.order>,'
                ' "customer": "<$.kinesis.data.customer.id>", "pipe": <aws.pipes.pipe-name>}'
            ),
        },
    )

    def delivered() -> list[Any]:
        return [r for body in endpoint.bodies for r in body["Records"]]

    await run_until(settings, lambda: len(delivered()) >= 5, 60, "five transformed records")
    assert delivered() == [
        {"seq": seq, "order": i, "customer": f"c{i}", "pipe": "orders"}
        for i, seq in enumerate(written)
    ]
    assert all(set(body) == {"Records"} for body in endpoint.bodies)


#: What :func:`collect` received, per call (the service runs in this process).
_calls: list[Any] = []
_lock = threading.Lock()


def collect(event: Any, context: Any) -> Any:
    """A handler of bare arrays: fails the record of order 1 the first time it sees it."""
    with _lock:
        first_time = not any(item["order"] == 1 for call in _calls for item in call)
        _calls.append(event)
    failed = [item["id"] for item in event if item["order"] == 1 and first_time]
    return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}


async def test_python_target_gets_a_bare_array_and_partial_responses_map_back(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path
) -> None:
    _calls.clear()
    queue = await new_queue("tpl")
    ids = await send_bodies(sqs, queue.url, (json.dumps({"order": i}) for i in range(3)))
    settings = sqs_settings(
        endpoint_url=sqs_url,
        queue=queue.name,
        db=tmp_path / "c.db",
        **REPORTED_BACK_IN_A_SECOND,
        target={
            "type": "python",
            "handler": "tests.integration.test_transform_e2e:collect",
            "input_template": '{"id": <$.messageId>, "order": <$.body.order>}',
            "batch_shape": "array",
        },
    )

    async def settled() -> bool:
        with _lock:
            orders = sorted(item["order"] for call in _calls for item in call)
        return orders == [0, 1, 1, 2] and await queue_depth(sqs, queue.url) == (0, 0)

    async with running(settings):
        await eventually(settled, 60, "three messages delivered, one of them twice, all deleted")
    assert all(isinstance(call, list) for call in _calls)
    items = [item for call in _calls for item in call]
    assert {item["id"]: item["order"] for item in items} == {ids[i]: i for i in range(3)}
    # The retry carried only the reported message, rendered again from the original.
    assert _calls[-1] == [{"id": ids[1], "order": 1}]
