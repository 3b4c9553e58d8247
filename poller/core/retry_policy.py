"""Lambda's error handling for stream batches: what to do after each invocation.

The shard processor delivers a batch as a queue of *segments* (a batch, or a part of it after a
bisection or a partial failure). Before each invocation it asks :meth:`StreamRetryPolicy.expire`
to split off records past ``MaximumRecordAgeInSeconds``; after each invocation it asks
:meth:`StreamRetryPolicy.after_invoke` what follows. The answers are plain values
(:class:`Settle`, :class:`GiveUp`, :class:`Retry`, :class:`Split`) that the engine carries out;
this module does no I/O and keeps no clock. The rules, as AWS documents and records them
(docs/aws-esm.md §1.2, §1.3, §2.5, and the recordings in tests/fixtures/aws-recorded):

* Function errors (an exception, a runtime error, a timeout, an HTTP 4xx/5xx) count toward
  ``MaximumRetryAttempts`` (-1 = infinite). A partial batch response counts too, and so does a
  malformed one (which fails the whole batch).
* Throttles and service errors do not count. They are retried until the records expire.
* An infinite ``MaximumRecordAgeInSeconds`` (-1) means the stream's retention: "failed records
  are retried until the record expires". A record that has failed at least once and is older
  than the retention is given up as ``RecordAgeExceeded`` (the stream no longer holds it).
* With ``BisectBatchOnFunctionError`` a failed batch of two or more records is split in two
  halves, each retried in order; splitting does not use up a retry.
* With ``ReportBatchItemFailures`` the records before the lowest reported one are settled and
  the rest is retried from there. Without it, ``batchItemFailures`` is ignored. With KPL
  de-aggregation a user record is reported as ``seq:sub``; the plain ``seq`` of an aggregate
  (what ``kinesis.sequenceNumber`` holds, and what Lambda Powertools reports) means "from the
  first user record of that aggregate in the batch".
* With a tumbling window, an answer without ``state`` (see :mod:`poller.core.windows`) fails
  the whole batch like a malformed partial response: a counted retry, and
  ``functionError: null`` in the failure record.
* ``approximateInvokeCount`` in a failure record counts the invocations that included the
  records; for ``RecordAgeExceeded`` it counts the attempt that was about to be made (AWS
  recorded 1 for a record that expired before its first invocation).
* A record too large for any invocation (:func:`poller.core.batching.fits_alone`) is never
  invoked nor retried: :func:`oversized` gives it up as ``RecordSizeExceeded`` (poller's name;
  AWS documents no behaviour for it) with an invoke count of 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from poller.core.responses import parse_stream_response
from poller.core.windows import parse_window_response
from poller.types import InvokeResult, Outcome, StreamRecord

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded", "RecordSizeExceeded"]


@dataclass(frozen=True, slots=True)
class Segment:
    """Records delivered together, with what they have been through so far.

    Attributes:
        records: the records, in shard order.
        invocations: invocations that included these records and reached the function.
        retries: retries counted toward ``MaximumRetryAttempts``.
        failures: every failed attempt, counted or not; it paces the backoff.
        last_result: the result of the last invocation, for the failure record.
    """

    records: tuple[StreamRecord, ...]
    invocations: int = 0
    retries: int = 0
    failures: int = 0
    last_result: InvokeResult | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """These records are done: delivered."""

    records: tuple[StreamRecord, ...]


@dataclass(frozen=True, slots=True)
class GiveUp:
    """These records failed for good: send a failure record (or drop them), then settle them.

    ``by_retention``: the age limit was the stream's retention (the maximum record age is
    infinite). AWS does not count those records as dropped (``DroppedEventCount``).
    """

    records: tuple[StreamRecord, ...]
    condition: Condition
    invoke_count: int
    last_result: InvokeResult | None
    by_retention: bool = False


@dataclass(frozen=True, slots=True)
class Retry:
    """Invoke this segment again after the backoff for attempt ``segment.failures``."""

    segment: Segment


@dataclass(frozen=True, slots=True)
class Split:
    """Bisected: invoke ``first``, then ``second``, each at once."""

    first: Segment
    second: Segment


Action = Settle | GiveUp | Retry | Split


@dataclass(frozen=True, slots=True)
class Judgement:
    """What an invocation's result means: the actions that follow, and for the logs and
    metrics the outcome and why (the malformed answer's reason, or the reported item)."""

    actions: list[Action]
    #: As the invocation metric names it: success, partial_failure, or the failure's kind
    #: (a malformed answer is a function_error).
    outcome: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StreamRetryPolicy:
    """The mapping's error-handling settings, with AWS's meaning.

    Attributes:
        maximum_retry_attempts: -1 for infinite, else the retries allowed after the first try.
        maximum_record_age_seconds: -1 for infinite, else the age after which records are
            given up (``RecordAgeExceeded``).
        bisect_on_function_error: split failed batches in two.
        report_batch_item_failures: honour ``batchItemFailures`` in responses.
        require_window_state: a tumbling window is on: an answer without ``state`` fails.
    """

    maximum_retry_attempts: int = -1
    maximum_record_age_seconds: int = -1
    bisect_on_function_error: bool = False
    report_batch_item_failures: bool = False
    require_window_state: bool = False
    #: How much later than its reported creation time a record may have been made: 0 on AWS
    #: (whole seconds), 60 on DynamoDB Local (whole minutes). Ages are judged from the latest
    #: such instant, so that no record is given up before it is truly too old.
    arrival_uncertainty_seconds: float = 0.0

    def expire(
        self, segment: Segment, now: float, retention_seconds: float | None = None
    ) -> tuple[GiveUp | None, Segment | None]:
        """Split off the records past their maximum age, before an invocation.

        Records of a shard arrive in order, so the expired ones are a prefix. Returns the
        give-up for that prefix (or None) and what remains to invoke (or None). With an
        infinite maximum age, the stream's ``retention_seconds`` is the limit for records that
        have been tried at least once: a failure counted, or an invocation made (a bisected
        half failed with its batch, without a counted retry). A record read for the first
        time is still in the stream.
        """
        max_age: float = self.maximum_record_age_seconds
        by_retention = max_age < 0
        if by_retention:
            untried = segment.failures == 0 and segment.invocations == 0
            if retention_seconds is None or untried:
                return None, segment
            max_age = retention_seconds
        oldest_allowed = now - max_age - self.arrival_uncertainty_seconds
        cut = 0
        for record in segment.records:
            if record.arrival_timestamp >= oldest_allowed:
                break
            cut += 1
        if cut == 0:
            return None, segment
        expired = GiveUp(
            segment.records[:cut],
            "RecordAgeExceeded",
            segment.invocations + 1,
            None,
            by_retention=by_retention,
        )
        rest = segment.records[cut:]
        return expired, (dataclasses.replace(segment, records=rest) if rest else None)

    def after_invoke(self, segment: Segment, result: InvokeResult) -> list[Action]:
        """What follows an invocation of ``segment`` that ended with ``result``."""
        return self.judge(segment, result).actions

    def judge(self, segment: Segment, result: InvokeResult) -> Judgement:
        """:meth:`after_invoke`, with the outcome and reason the logs and metrics report."""
        if result.outcome in (Outcome.THROTTLE, Outcome.SERVICE_ERROR):
            failed = dataclasses.replace(segment, failures=segment.failures + 1)
            return Judgement([Retry(failed)], result.outcome.value, result.error)
        invoked = dataclasses.replace(
            segment, invocations=segment.invocations + 1, last_result=result
        )
        if result.outcome is Outcome.SUCCESS:
            return self._after_success(invoked, result)
        return Judgement(self._after_function_error(invoked), result.outcome.value, result.error)

    def _after_success(self, segment: Segment, result: InvokeResult) -> Judgement:
        if self.require_window_state:
            answer = parse_window_response(result.payload, payload_is_json=result.payload_is_json)
            if answer.kind == "invalid":
                # The function answered, so no bisection: retried as a whole, like AWS does
                # for a malformed partial response.
                reason = f"invalid window response: {answer.reason}"
                return Judgement([self._count_retry(segment)], "function_error", reason)
        if not self.report_batch_item_failures:
            return Judgement([Settle(segment.records)], "success")
        response = parse_stream_response(
            result.payload,
            payload_is_json=result.payload_is_json,
            item_ids=[r.position for r in segment.records],
            aggregates=[_aggregate_of(r) for r in segment.records],
        )
        if response.kind == "success":
            return Judgement([Settle(segment.records)], "success")
        if response.kind == "invalid":
            # No bisection: the function answered, so AWS retries it as reported.
            reason = f"invalid partial batch response: {response.reason}"
            return Judgement([self._count_retry(segment)], "function_error", reason)
        reason = f"batchItemFailures from record {response.failed_from} of {len(segment.records)}"
        if not response.failed_from:
            # Fails from the first record: the whole batch is retried.
            return Judgement([self._count_retry(segment)], "partial_failure", reason)
        done, rest = (
            segment.records[: response.failed_from],
            segment.records[response.failed_from :],
        )
        actions: list[Action] = [
            Settle(done),
            self._count_retry(dataclasses.replace(segment, records=rest)),
        ]
        return Judgement(actions, "partial_failure", reason)

    def _after_function_error(self, segment: Segment) -> list[Action]:
        if self.bisect_on_function_error and len(segment.records) > 1:
            half = len(segment.records) // 2
            first = dataclasses.replace(segment, records=segment.records[:half])
            second = dataclasses.replace(segment, records=segment.records[half:])
            return [Split(first, second)]
        return [self._count_retry(segment)]

    def _count_retry(self, segment: Segment) -> Retry | GiveUp:
        counted = dataclasses.replace(
            segment, retries=segment.retries + 1, failures=segment.failures + 1
        )
        if 0 <= self.maximum_retry_attempts < counted.retries:
            return GiveUp(
                counted.records, "RetryAttemptsExhausted", counted.invocations, counted.last_result
            )
        return Retry(counted)


def _aggregate_of(record: StreamRecord) -> str | None:
    """The plain sequence number of the KPL aggregate a user record came from, else None."""
    return None if record.sub_sequence_number is None else record.sequence_number


def oversized(record: StreamRecord) -> GiveUp:
    """The give-up of a record no invocation can carry: never invoked, so no invoke count and
    no last result (its failure record has no ``responseContext``)."""
    return GiveUp((record,), "RecordSizeExceeded", 0, None)


def first_segment(records: Sequence[StreamRecord]) -> Segment:
    """The segment a fresh batch starts as."""
    return Segment(tuple(records))
