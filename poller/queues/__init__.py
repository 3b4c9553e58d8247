"""The SQS engine: runs SQS mappings, pollers that receive, batch, invoke and settle, scaled
like Lambda.

Data flow::

    runner.SqsMappingRunner (lifecycle, scaling loop; core.queue_rules.Scaler decides)
      └─ poller (a task; each holds a CapacityLimiter slot of maximum_concurrency while busy)
           intake.Intake      gather: ReceiveMessage (≤ 10 messages, ≤ 20 s) until batch_size,
                              the batching window (from the first message) or 6 MB, metadata
                              included (core.batching.BatchBuilder); what is received is held
                              in holding.Holding until it is settled
           heartbeat.Heartbeat ChangeMessageVisibilityBatch at half the queue's visibility
                              timeout, for every message the poller holds, until it is settled
           batch.BatchProcessor
                              filter, then Target.invoke({"Records": [...]}); throttles and
                              service errors are retried in place for up to one visibility
                              timeout; core.queue_rules.judge says which messages stay
           settle.Settler     DeleteMessageBatch the settled messages (failed entries retried
                              with backoff); leave the others to reappear, or with
                              ``visibility_timeout_on_failure`` make them visible after a backoff

Every call to the queue goes through ports.QueueApi (:class:`~poller.sources.sqs.SqsQueue`
in the service, an in-memory fake in the component tests).

Lambda's rules (docs/aws-esm.md §2.2, §2.3, §2.5; the pure ones are in
:mod:`poller.core.queue_rules`):

* **Success** deletes the batch. **Failure** (function error, timeout, an invalid partial
  response, a throttle that outlasted the visibility timeout) deletes nothing: the messages
  reappear after the visibility timeout, their receive count goes up, and the queue's redrive
  policy moves them to its dead-letter queue after ``maxReceiveCount`` receives.
* **ReportBatchItemFailures**: every message but the reported ones is deleted
  (:func:`~poller.core.responses.parse_queue_response`; unknown ids, malformed responses and
  non-JSON answers fail the whole batch).
* **Filtering** (``filter_criteria``): messages no filter matches are deleted without an
  invocation, as Lambda does for SQS (docs/aws-esm.md §0); a batch left empty invokes nothing.
* **FIFO**: a batch holds messages of several groups, each group in order. When a message
  fails, the later messages of its group in the batch are kept with it (not deleted), so the
  group is retried in order; SQS delivers nothing more of a group while any of its messages is
  in flight, and other groups go on. Messages received past the 6 MB cut (carried to the next
  batch) follow the same rule: those of a group with a failed message go back with it
  (:func:`~poller.core.queue_rules.carried_apart`).
* **Scaling**: five pollers to start (or ``maximum_concurrency`` if smaller), five more each
  second while batches come back full (Lambda adds 300 a minute), one fewer per empty long
  poll, failed batch or throttle, never fewer than two. An idle queue costs one long poll
  (20 seconds, ``receive_wait_time_seconds``) per poller at a time and nothing else.
* **Provisioned mode** (``provisioned_poller_config``): a poller is one receive loop with up to
  ten batches in flight and at most ten receives a second; their number starts at
  ``minimum_pollers`` and grows by up to 1,000 concurrency a minute (100 pollers) while
  batches come back full or the backlog (ApproximateNumberOfMessages, read every 5 s) stays,
  up to ``maximum_pollers``; it sheds one a second after 30 idle seconds, never below the
  minimum (:mod:`poller.core.scaling`).

Beyond Lambda: the visibility heartbeat, so that a function running longer than the
visibility timeout is never delivered twice at once; ``visibility_timeout_on_failure``; and
deletes that are retried until SQS confirms them (or the queue is gone) instead of being
dropped.

Shutdown: when ``stopping`` is set, no new receive starts; receives in flight complete (a long
poll lasts at most ``receive_wait_time_seconds``; cancelling it could leave messages SQS had
already handed over invisible for a visibility timeout); every message received is invoked
and settled, and heartbeats keep running until every batch is settled. The service cancels
what still runs at the drain deadline; those messages reappear after their visibility
timeout.
"""

from __future__ import annotations

from poller.core.queue_rules import (
    MIN_POLLERS,
    SCALE_UP_STEP,
    START_POLLERS,
    carried_apart,
    held_back,
)
from poller.queues.heartbeat import HEARTBEAT_RETRY_SECONDS
from poller.queues.intake import UNREACHABLE_AFTER_FAILURES
from poller.queues.ports import QueueApi
from poller.queues.runner import SCALE_INTERVAL, SqsMappingRunner, build_sqs_runner
from poller.queues.settle import DELETE_BACKOFF

__all__ = [
    "DELETE_BACKOFF",
    "HEARTBEAT_RETRY_SECONDS",
    "MIN_POLLERS",
    "SCALE_INTERVAL",
    "SCALE_UP_STEP",
    "START_POLLERS",
    "UNREACHABLE_AFTER_FAILURES",
    "QueueApi",
    "SqsMappingRunner",
    "build_sqs_runner",
    "carried_apart",
    "held_back",
]
