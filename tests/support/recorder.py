"""An in-process Python handler that records every batch it receives, for assertions.

Used as the target ``tests.support.recorder:record`` by tests that run the service in the
test's own event loop. Behaviour can be steered per stream ARN through ``BEHAVIOUR``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
#: Batches received, by eventSourceARN: each batch is the list of its event records.
BATCHES: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
#: Optional hooks by eventSourceARN, called with the batch before it is recorded; may raise.
BEHAVIOUR: dict[str, Callable[[list[dict[str, Any]]], Any]] = {}


def record(event: dict[str, Any], context: Any) -> Any:
    """Record the batch (after the stream's hook, if any, accepted it)."""
    records = event["Records"]
    arn = records[0]["eventSourceARN"]
    hook = BEHAVIOUR.get(arn)
    result = hook(records) if hook else None
    with _lock:
        BATCHES[arn].append(records)
    return result


def sequence_numbers(arn: str) -> list[tuple[str, str]]:
    """(shard id, sequence number) of every delivered record, in delivery order."""
    with _lock:
        batches = list(BATCHES[arn])
    return [tuple(r["eventID"].split(":", 1)) for b in batches for r in b]


def clear(arn: str) -> None:
    with _lock:
        BATCHES.pop(arn, None)
        BEHAVIOUR.pop(arn, None)


def fail_poison(arn: str) -> list[int]:
    """Make every batch of ``arn`` that holds a record with partition key ``poison`` fail;
    returns a list that gets an entry per such attempt."""
    attempts: list[int] = []

    def hook(records: list[dict[str, Any]]) -> None:
        if any(r["kinesis"]["partitionKey"] == "poison" for r in records):
            attempts.append(1)
            raise RuntimeError("poison")

    BEHAVIOUR[arn] = hook
    return attempts
