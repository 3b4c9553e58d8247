"""A hostile review of input templates end to end: an SQS mapping posts transformed messages
to a local HTTP endpoint, which answers with a partial batch response built from the
transformed records.

What the first end-to-end tests left open: SQS message attributes reached by a template, the
HTTP target (not the Python one) with a bare array, and an ``itemIdentifier`` taken from the
transformed payload over HTTP settling the original message while the others are deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_server import JsonEndpoint
from tests.support.service import running
from tests.support.sqs import (
    REPORTED_BACK_IN_A_SECOND,
    NewQueue,
    eventually,
    queue_depth,
    send_bodies,
    sqs_settings,
)

pytestmark = pytest.mark.anyio


class FailingOnce(JsonEndpoint):
    """A local HTTP endpoint of bare arrays: reports the ``id`` of the item whose ``order`` is
    1 the first time it sees it, and records every body."""

    def __init__(self) -> None:
        super().__init__(name="transform-review-endpoint")

    def answer(self, body: Any) -> Any:
        first_time = not any(i["order"] == 1 for b in self.bodies for i in b)
        failed = [i["id"] for i in body if i["order"] == 1 and first_time]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}


@pytest.fixture
def endpoint() -> Iterator[FailingOnce]:
    with FailingOnce() as ep:
        yield ep


async def test_sqs_to_http_with_attributes_and_a_partial_response_from_transformed_ids(
    sqs: Any, sqs_url: str, new_queue: NewQueue, tmp_path: Path, endpoint: FailingOnce
) -> None:
    queue = await new_queue("tplrev")
    attributes = {"tenant-id": {"DataType": "String", "StringValue": "t-7"}}
    ids = await send_bodies(
        sqs,
        queue.url,
        (json.dumps({"order": i, "note": f'say "hi" <{i}>'}) for i in range(3)),
        MessageAttributes=attributes,
    )
    settings = sqs_settings(
        endpoint_url=sqs_url,
        queue=queue.name,
        db=tmp_path / "c.db",
        **REPORTED_BACK_IN_A_SECOND,
        target={
            "type": "http",
            "url": endpoint.url,
            "timeout_seconds": 5,
            "input_template": (
                '{"id": <$.messageId>, "order": <$.body.order>, "note": "<$.body.note>",'
                ' "tenant": <$.messageAttributes.tenant-id.stringValue>,'
                ' "count": "<$.attributes.ApproximateReceiveCount>"}'
            ),
            "batch_shape": "array",
        },
    )

    async def settled() -> bool:
        orders = sorted(item["order"] for item in endpoint.items())
        return orders == [0, 1, 1, 2] and await queue_depth(sqs, queue.url) == (0, 0)

    async with running(settings):
        await eventually(settled, 60, "three messages delivered, one of them twice, all deleted")
    items = endpoint.items()
    assert {item["id"]: item["order"] for item in items} == {ids[i]: i for i in range(3)}
    assert {item["note"] for item in items} == {f'say "hi" <{i}>' for i in range(3)}
    assert {item["tenant"] for item in items} == {"t-7"}
    # The retry carried the reported message alone, rendered again (a second receive).
    assert endpoint.bodies[-1] == [
        {"id": ids[1], "order": 1, "note": 'say "hi" <1>', "tenant": "t-7", "count": "2"}
    ]
