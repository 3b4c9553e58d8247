"""The metrics hooks: what a pipeline stage reports, declared once, in :class:`Metrics`.

Data flow: readers, processors, checkpointers, lease managers and SQS runners call a hook
(``metrics.records_invoked(mapping, n)``) once per batch, never per record. The ``@hook``
decorator turns each declared hook into one call of ``self._report(name, arguments)``, so an
implementation is a single method: :class:`NullMetrics` ignores the call,
:class:`~poller.observability.metrics.prometheus.PrometheusMetrics` updates the series that
:data:`~poller.observability.metrics.catalog.METRICS` says the hook feeds, and
:class:`~poller.observability.metrics.recording.RecordingMetrics` keeps it for a test.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

_S = TypeVar("_S", bound="Metrics")
_P = ParamSpec("_P")


def hook(
    declaration: Callable[Concatenate[_S, _P], None],
) -> Callable[Concatenate[_S, _P], None]:
    """Make a declared hook hand its name and its arguments, in order, to ``self._report``.

    The declaration gives the name, the typed signature and the documentation; its body is
    never run. Keyword arguments are put in the declared order, so an implementation always
    sees the same positional tuple however the caller spelled the call. A call with arguments
    the declaration does not take goes to ``self._wrong_call`` instead.
    """
    name = declaration.__name__
    signature = inspect.signature(declaration)
    arity = len(signature.parameters) - 1

    @functools.wraps(declaration)
    def report(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        if kwargs or len(args) != arity:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as exc:  # arguments the declaration does not take
                self._wrong_call(name, exc)
                return
            self._report(name, tuple(bound.arguments.values())[1:])
        else:
            self._report(name, args)

    return report


class Metrics:
    """The hooks every pipeline stage reports through. All are cheap and never raise.

    Each hook is declared here once; an implementation subclasses this class and defines
    :meth:`_report`. Labels are bounded: mapping, shard, outcome, destination type, lease
    event, operation. Never record ids.
    """

    def _report(self, hook: str, args: tuple[Any, ...]) -> None:
        """Handle one hook call: the hook's name and its arguments in declared order."""
        raise NotImplementedError(f"{type(self).__name__} must define _report")

    def _wrong_call(self, hook: str, error: TypeError) -> None:
        """A hook was called with arguments its declaration does not take: raise ``error``, as
        a wrong call of a plain method would (an implementation that must never raise, such as
        Prometheus, counts it instead)."""
        raise error

    # -- Lambda's event counts, per mapping ------------------------------------------------
    @hook
    def records_polled(self, mapping: str, count: int) -> None:
        """Records of one successful read from the source (GetRecords, an enhanced fan-out
        event, ReceiveMessage); an empty one reports 0 (a shard reader only its first: more
        zeros change no series). A failed read reports nothing."""

    @hook
    def records_filtered(self, mapping: str, count: int) -> None:
        """Records of one read (a chunk; an SQS batch) that no filter matched; 0 when the
        mapping has filters and every record matched. Never called without filters."""

    @hook
    def records_invoked(self, mapping: str, count: int) -> None:
        """Records of one invocation attempt, reported at its start: every attempt, retries,
        throttles and service errors included."""

    @hook
    def records_failed_invoke(self, mapping: str, count: int) -> None:
        """Records of one invocation attempt that did not succeed, reported at its end: a
        throttle, a service or function error, a timeout, a malformed answer, or an answer
        listing at least one item in ``batchItemFailures`` (then the whole batch)."""

    @hook
    def records_dropped(self, mapping: str, count: int) -> None:
        """Stream records given up (maximum record age or retry attempts) without an
        on-failure destination. Not records that outlived the stream's retention, and not
        records sent to a destination (a failed send is retried, never dropped)."""

    @hook
    def records_sent_to_destination(self, mapping: str, count: int) -> None:
        """Stream records whose failure record the on-failure destination accepted."""

    @hook
    def records_deleted(self, mapping: str, count: int) -> None:
        """SQS messages of one delete (after processing or filtering) that SQS confirmed;
        0 when it refused them all."""

    @hook
    def records_oversized(self, mapping: str, count: int) -> None:
        """Records too large for any invocation, given up at once (never invoked, never
        retried): sent to the on-failure destination, or dropped without one."""

    @hook
    def records_expired_by_retention(self, mapping: str, count: int) -> None:
        """Stream records given up without a destination because they outlived the stream's
        retention (maximum record age -1): not dropped in AWS's sense, but lost all the same."""

    @hook
    def batch_item_failures(self, mapping: str, count: int) -> None:
        """The distinct items a function's non-empty ``batchItemFailures`` response listed
        (the invocation's whole batch counts as failed in :meth:`records_failed_invoke`)."""

    @hook
    def destination_delivery_failed(self, mapping: str, destination_type: str) -> None:
        """One send to the on-failure destination failed (once per attempt: the batch
        waits and sends again)."""

    @hook
    def destination_blocked(self, mapping: str, blocked: bool) -> None:
        """A batch starts (True) or stops (False) waiting on an on-failure destination that
        refuses for a permanent reason (access denied, no such queue, topic or bucket)."""

    @hook
    def retention_gap(self, mapping: str, shard: str) -> None:
        """A shard's position was older than the stream's retention: reading went on from
        the oldest record held, and the records in between were lost to the stream's trim."""

    # -- enhanced fan-out (Kinesis SubscribeToShard) ------------------------------------------
    @hook
    def subscription_started(self, mapping: str) -> None:
        """A SubscribeToShard subscription was opened (its ``initial-response`` arrived)."""

    @hook
    def subscription_ended(self, mapping: str, reason: str) -> None:
        """A subscription ended without an error. ``reason``: expired (the service closed it,
        after 5 minutes on AWS), shard_end (the last event named the child shards), stopped
        (the shard was stopped, drained or its lease lost)."""

    @hook
    def subscription_failed(self, mapping: str, reason: str) -> None:
        """A subscribe call or an open subscription failed. ``reason``: resource_in_use,
        limit_exceeded, not_found, connection, stream_error, other."""

    @hook
    def push_latency(self, mapping: str, seconds: float) -> None:
        """For each pushed event with records: seconds from its newest record's arrival in
        the stream to the records being handed to the batcher."""

    # -- invocations ------------------------------------------------------------------------
    @hook
    def invocation(
        self, mapping: str, outcome: str, duration_seconds: float, batch_size: int
    ) -> None:
        """One invocation. ``outcome``: success, function_error, timeout, throttle,
        service_error or partial_failure."""

    @hook
    def retry(self, mapping: str) -> None:
        """A batch (or part of one) is about to be invoked again."""

    @hook
    def handler_thread_abandoned(self, mapping: str) -> None:
        """A sync Python handler ran past its timeout; its thread runs on, abandoned."""

    # -- shard progress ---------------------------------------------------------------------
    @hook
    def iterator_age(self, mapping: str, shard: str, age_ms: float) -> None:
        """Lambda's IteratorAge: now minus the arrival of the last record of a finished batch."""

    @hook
    def millis_behind_latest(self, mapping: str, shard: str, millis: int) -> None:
        """How far the shard's latest read is behind the tip of the stream."""

    @hook
    def checkpoint_written(self, mapping: str, shard: str) -> None:
        """A checkpoint of the shard was written."""

    @hook
    def checkpoint_failed(self, mapping: str, shard: str) -> None:
        """A checkpoint write of the shard failed."""

    @hook
    def shard_released(self, mapping: str, shard: str) -> None:
        """The shard ended or moved away: forget its per-shard series (bounded cardinality)."""

    # -- the read budget (poller.streams.budget) -------------------------------------------
    @hook
    def read_buffered(self, mapping: str, records: int, size_bytes: int) -> None:
        """Records of the mapping read and not settled yet, and their event bytes."""

    @hook
    def read_budget(self, budget_bytes: int, used_bytes: int) -> None:
        """The process's read budget and the bytes held against it (reads in flight too)."""

    # -- leases (several replicas) ----------------------------------------------------------
    @hook
    def leases_held(self, mapping: str, count: int) -> None:
        """The number of shard leases this replica holds now."""

    @hook
    def lease_event(self, mapping: str, event: str) -> None:
        """A lease changed hands. ``event``: taken, stolen, lost or handed_off."""

    @hook
    def dependency_error(self, mapping: str, operation: str) -> None:
        """A call to an AWS dependency failed after retries (``operation``: list_shards,
        sync, balance, retire, renew, release, ...); the mapping retries and keeps running."""

    # -- SQS --------------------------------------------------------------------------------
    @hook
    def sqs_in_flight(self, mapping: str, batches: int) -> None:
        """The number of SQS batches received and not yet settled."""

    @hook
    def sqs_concurrency(self, mapping: str, pollers: int) -> None:
        """The SQS batch slots running now: one per poller in the default mode, ten per
        provisioned poller (each keeps up to ten batches in flight)."""

    @hook
    def provisioned_pollers(self, mapping: str, pollers: int) -> None:
        """The number of SQS event pollers running now in provisioned mode (Lambda's
        ProvisionedPollers); never reported in the default mode."""

    @hook
    def visibility_extended(self, mapping: str, messages: int) -> None:
        """The visibility timeout of these messages was extended (once per extension)."""

    # -- the service ------------------------------------------------------------------------
    @hook
    def mapping_up(self, mapping: str, up: bool) -> None:
        """The mapping's runner started (True), or has not started yet or crashed (False);
        its supervisor keeps retrying while it is down."""

    @hook
    def mapping_info(
        self, mapping: str, uuid: str, event_source_mapping_arn: str, source: str, present: bool
    ) -> None:
        """The mapping's identity, constant while it exists (``present``), for joins:
        its UUID, its event source mapping ARN and its source type (kinesis, dynamodb, sqs)."""


def _hook_parameters() -> dict[str, tuple[str, ...]]:
    """Each hook of :class:`Metrics` and its parameter names, read from the declarations."""
    return {
        name: tuple(inspect.signature(member).parameters)[1:]
        for name, member in vars(Metrics).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


#: Each hook's parameter names, in order, after ``self``.
HOOK_PARAMETERS: Final = _hook_parameters()


class NullMetrics(Metrics):
    """Ignores every hook: unit tests, and a service with metrics off."""

    def _report(self, hook: str, args: tuple[Any, ...]) -> None:
        """Ignored."""
