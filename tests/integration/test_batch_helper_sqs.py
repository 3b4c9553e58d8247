"""The batch helper end to end on moto: a FIFO group's failed message comes back, in order.

The service runs one SQS mapping (``ReportBatchItemFailures``) on a FIFO queue of moto's, and
the function answers with :func:`poller.batch.process_batch` and ``skip_group_on_failure``.
One message fails on its first delivery; the helper reports it and the rest of its group, the
service deletes everything else, and SQS redelivers that group from the failed message on.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

import pytest

from poller.batch import process_batch
from tests.support import sqs as support
from tests.support.sqs import Drain, NewQueue, invocations, send_entries

pytestmark = pytest.mark.anyio

GROUPS = [f"g{g}" for g in range(4)]
MESSAGES = 4
#: The message that fails on its first delivery.
FAILING = ("g2", 1)


async def test_a_failed_fifo_message_and_its_group_successors_are_redelivered_in_order(
    sqs: Any, new_queue: NewQueue, drain: Drain
) -> None:
    """Four groups of four messages, sent interleaved; g2's message 1 fails once. Every group
    is handled exactly once per message, in order; g2 is handled 0, 1 (failed), then 1, 2, 3
    again from the redelivery; the failing invocation reported g2's 1 and its later messages
    in that batch, and nothing of another group."""
    queue = await new_queue("helper.fifo", visibility_timeout=2)
    entries = [
        {
            "MessageBody": json.dumps({"group": group, "n": n}),
            "MessageGroupId": group,
            "MessageDeduplicationId": f"{group}-{n}",
        }
        for n in range(MESSAGES)
        for group in GROUPS
    ]
    ids = await send_entries(sqs, queue.url, entries)
    lock = threading.Lock()
    handled: list[tuple[str, int, str]] = []

    def handle(record: dict[str, Any]) -> None:
        body = json.loads(record["body"])
        receives = record["attributes"]["ApproximateReceiveCount"]
        with lock:
            handled.append((body["group"], body["n"], receives))
        if (body["group"], body["n"]) == FAILING and receives == "1":
            raise RuntimeError("the first delivery fails")

    def function(records: list[dict[str, Any]]) -> Any:
        return process_batch({"Records": records}, handle, skip_group_on_failure=True)

    support.BEHAVIOUR[queue.arn] = function
    await drain(
        queue,
        ids,
        60,
        "every group completed",
        batch_size=10,
        function_response_types=["ReportBatchItemFailures"],
    )

    per_group: dict[str, list[int]] = defaultdict(list)
    for group, n, _ in handled:
        per_group[group].append(n)
    failed_group, failed_n = FAILING
    expected = {g: list(range(MESSAGES)) for g in GROUPS}
    expected[failed_group] = [*range(failed_n + 1), *range(failed_n, MESSAGES)]
    assert dict(per_group) == expected
    retry = handled.index((failed_group, failed_n, "2"))
    assert all(r == "1" for g, _, r in handled[:retry] if g == failed_group)

    failing_call = next(
        c for c in invocations(queue.arn) if (FAILING, "1") in map(_position, c.records)
    )
    in_group_after = [
        r["messageId"]
        for r in failing_call.records
        if _position(r)[0][0] == failed_group and _position(r)[0][1] >= failed_n
    ]
    reported = [f["itemIdentifier"] for f in failing_call.result["batchItemFailures"]]
    assert reported == in_group_after


def _position(record: dict[str, Any]) -> tuple[tuple[str, int], str]:
    """((group, n), receive count) of a record."""
    body = json.loads(record["body"])
    return (body["group"], body["n"]), record["attributes"]["ApproximateReceiveCount"]
