"""``poller status``'s count of the failure records waiting for each mapping.

Data flow (called per mapping by :mod:`poller.status_report`)::

    stream mapping --on_failure_arn--> SQS queue: GetQueueUrl, GetQueueAttributes
                                       S3 bucket: ListObjectsV2 under aws/lambda/<mapping UUID>/
                                       SNS topic: nothing to count
    SQS mapping --its queue's RedrivePolicy--> dead-letter queue: GetQueueAttributes

Every call is one :func:`poller.status_probes.bounded` call, and its failure is the row's
``error`` (the text of the :class:`~poller.errors.DestinationError` the destinations raise),
never an exception.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from poller.aws.clients import ClientFactory
from poller.config import SqsMapping
from poller.destinations import destination_call, parse_arn
from poller.status_probes import StreamMapping, bounded, describe

#: S3 failure records are counted up to this many; beyond it the count shows ``10000+``.
S3_COUNT_CAP = 10_000


def failures_row(
    destination: str | None,
    kind: str | None,
    *,
    count: int | None = None,
    in_flight: int | None = None,
    capped: bool = False,
    note: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The ``failures_waiting`` object of a mapping (every key always present)."""
    return {
        "destination": destination,
        "kind": kind,
        "count": count,
        "in_flight": in_flight,
        "capped": capped,
        "note": note,
        "error": error,
    }


async def failures_waiting(
    mapping: StreamMapping | SqsMapping,
    factory: ClientFactory,
    limiter: anyio.CapacityLimiter,
) -> dict[str, Any]:
    """Failure records waiting for ``mapping``: in its SQS source's dead-letter queue, else
    in its on-failure destination. Never raises: a failure is the row's ``error``."""
    destination: str | None = None
    kind: str | None = None
    try:
        if isinstance(mapping, SqsMapping):
            kind = "sqs-dlq"
            destination = await bounded(limiter, lambda: _dead_letter_arn(mapping, factory))
            if destination is None:
                return failures_row(None, None, note="no dead-letter queue (RedrivePolicy)")
        else:
            destination = mapping.on_failure_arn
            if destination is None:
                return failures_row(None, None, note="no on-failure destination")
        arn = destination
        service = parse_arn(arn).service
        kind = kind or service
        if service == "sns":
            return failures_row(arn, kind, note="n/a (SNS keeps nothing)")
        if service == "sqs":
            visible, in_flight = await bounded(limiter, lambda: _queue_depth(arn, factory))
            return failures_row(arn, kind, count=visible, in_flight=in_flight)
        assert not isinstance(mapping, SqsMapping)
        count, capped = await _s3_count(arn, mapping.mapping_uuid, factory, limiter)
        return failures_row(arn, kind, count=count, capped=capped)
    except Exception as exc:  # noqa: BLE001 - status reports any failure in its place
        return failures_row(destination, kind, error=describe(exc))


async def _queue_url(arn: str, factory: ClientFactory) -> tuple[Any, str]:
    parsed = parse_arn(arn)
    sqs = await factory.client("sqs", purpose="status", region=parsed.region)
    async with destination_call(arn, "GetQueueUrl"):
        found = await sqs.get_queue_url(
            QueueName=parsed.resource, QueueOwnerAWSAccountId=parsed.account
        )
    return sqs, str(found["QueueUrl"])


async def _dead_letter_arn(mapping: SqsMapping, factory: ClientFactory) -> str | None:
    """The source queue's dead-letter queue (``RedrivePolicy.deadLetterTargetArn``), if any."""
    arn = mapping.event_source_arn
    sqs, url = await _queue_url(arn, factory)
    async with destination_call(arn, "GetQueueAttributes"):
        answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    policy = answer.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    target = json.loads(policy).get("deadLetterTargetArn")
    return str(target) if target else None


async def _queue_depth(arn: str, factory: ClientFactory) -> tuple[int, int]:
    """The queue's approximate visible and in-flight (not visible) message counts."""
    sqs, url = await _queue_url(arn, factory)
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    async with destination_call(arn, "GetQueueAttributes"):
        answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    attributes = answer.get("Attributes", {})
    return int(attributes.get(names[0], 0)), int(attributes.get(names[1], 0))


async def _s3_count(
    arn: str, mapping_uuid: str, factory: ClientFactory, limiter: anyio.CapacityLimiter
) -> tuple[int, bool]:
    """Objects under the mapping's failure-record prefix, ``aws/lambda/<mapping UUID>/``
    (:mod:`poller.destinations.s3`), counted up to :data:`S3_COUNT_CAP`; True when capped.
    Each page is one bounded call."""
    bucket = parse_arn(arn).resource
    s3 = await factory.client("s3", purpose="status")
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": f"aws/lambda/{mapping_uuid}/"}
    count = 0
    while True:

        async def page(args: dict[str, Any] = args) -> dict[str, Any]:
            async with destination_call(arn, "ListObjectsV2"):
                answer: dict[str, Any] = await s3.list_objects_v2(**args)
            return answer

        answer = await bounded(limiter, page)
        count += int(answer.get("KeyCount", len(answer.get("Contents", []))))
        token = answer.get("NextContinuationToken")
        if not answer.get("IsTruncated") or not token:
            return count, False
        if count >= S3_COUNT_CAP:
            return S3_COUNT_CAP, True
        args = {**args, "ContinuationToken": token}
