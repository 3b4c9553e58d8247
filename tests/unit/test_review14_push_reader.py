"""Hostile review 14 of the enhanced fan-out reader (poller.streams.push_reader): a position
that an empty event moves backwards, and the reasons its failed subscriptions are counted
under (``poller_efo_subscriptions_failed_total``)."""

from __future__ import annotations

from collections import deque
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from poller.errors import SourceError
from poller.ports import PushEvent
from poller.sources.kinesis_efo import (
    STREAM_CALL,
    SUBSCRIBE_CALL,
    translate_subscribe_error,
)
from poller.sources.kinesis_efo import failure_reason as adapter_reason
from poller.testing import RecordingMetrics
from tests.unit.test_push_reader import (
    SHARD,
    FakeSubscriptions,
    Plan,
    after,
    read_all,
    reader,
    reasons,
    sequences,
    shard,
)

pytestmark = pytest.mark.anyio


async def test_an_empty_event_with_an_older_continuation_never_moves_the_position_back() -> None:
    """Records handed on are never read again: an empty event whose continuation lies before
    the last record handed on (a service's heartbeat out of step) must not send the next
    subscription back over them (they would be delivered twice, and out of order)."""
    api, raws = shard(4)
    handed_on = PushEvent(raws[:2], raws[1]["SequenceNumber"], 0)
    stale_heartbeat = PushEvent([], raws[0]["SequenceNumber"], 0)
    plans = deque([Plan(script=[handed_on, stale_heartbeat])])
    subscriptions = FakeSubscriptions(raws, children=(), plans=plans)
    chunks = await read_all(reader(api, subscriptions))

    assert subscriptions.positions()[1] == after(raws[1])
    assert sequences(chunks) == [raw["SequenceNumber"] for raw in raws]


def _refused(code: str) -> SourceError:
    """A subscribe call refused with ``code``, as KinesisSubscriptions raises it."""
    raised = ClientError({"Error": {"Code": code, "Message": "no"}}, "SubscribeToShard")
    error = translate_subscribe_error(SUBSCRIBE_CALL, SHARD, raised)
    error.__cause__ = raised  # as `raise ... from` sets it
    return error


def _broken(cause: Exception) -> SourceError:
    """An open subscription that failed with ``cause``, as KinesisSubscriptions raises it."""
    error = translate_subscribe_error(STREAM_CALL, SHARD, cause)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        # The call answered, refusing (IAM, KMS, a bad position): not the network's fault.
        (lambda: Plan(refuse=_refused("AccessDeniedException")), "other"),
        (lambda: Plan(refuse=_refused("KMSAccessDeniedException")), "other"),
        # The connection was cut under an open subscription: a connection failure.
        (
            lambda: Plan(events=1, fail=_broken(aiohttp.ServerDisconnectedError())),
            "connection",
        ),
    ],
    ids=["access_denied", "kms_access_denied", "cut_mid_stream"],
)
async def test_subscription_failures_are_counted_with_the_reason_the_adapter_gives(
    plan: Any, expected: str
) -> None:
    """``poller_efo_subscriptions_failed_total{reason}`` is documented (catalog) and computed
    (``kinesis_efo.failure_reason``, tested in test_kinesis_efo_parsing) from the error's
    cause; the reader must count that reason, not guess it from whether the subscription had
    opened (a refusal for access is not a "connection" failure)."""
    api, raws = shard(4)
    failing = plan()
    subscriptions = FakeSubscriptions(raws, children=(), plans=deque([failing]))
    metrics = RecordingMetrics()
    await read_all(reader(api, subscriptions, metrics=metrics))

    failure = failing.refuse or failing.fail
    assert adapter_reason(failure) == expected  # the adapter's own classification
    assert reasons(metrics, "subscription_failed") == [expected]
