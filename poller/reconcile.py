"""Starts, drains and restarts mappings at run time, as the configuration file and the control
API say: the one place that changes which mappings run.

Data flow::

    the file's mappings (start-up, SIGHUP) --+
                                             +--> Reconciler --desired (uuid -> mapping)-->
    MappingStore records (head polled) ------+        MappingSet.apply --> a supervisor per
                                                      running mapping (poller.app)
    Reconciler --ack(replica, head) after each pass, and every ACK_INTERVAL_SECONDS--> store
    Reconciler --finalize_delete, forget_checkpoints (once every replica drained)--> store

:class:`MappingSet` diffs the desired mappings with the running ones by UUID. A new enabled
mapping gets its target built and its supervisor started. A mapping whose configuration
changed (the built models compare by value) is **drained, then restarted**: its own stop event
is set, its supervisor's end (the runner's drain: no new batch, batches in flight finish and
checkpoint, leases released) is awaited within ``shutdown.drain_timeout_seconds`` (past it the
run is cancelled, and what it held is re-delivered later, at least once), its target closed,
and the new one built. Its name (the UUID for an API mapping) is unchanged, so the new run
resumes from the checkpoints: nothing is lost or re-ordered. A disabled or deleted mapping is
drained and not restarted. A target that does not build is reported down and counts as
applied, so that the API's state does not hang on it.

:class:`Reconciler` turns the sources into that desired set: the file's mappings, and, with
the control API on, the store's records, read whenever the store's head moved (it is polled
every ``control_api.poll_interval_seconds``) or this replica wrote (:meth:`Reconciler.wake`).
A store outage keeps the running set as it is, and is logged once per outage; so does any
other failure of a pass (an item that does not parse, a bug), logged with its traceback. The
replica beats (acks the revision it applied before) for the whole of a pass, so that a slow
store read or a long drain never makes it look dead to its peers while it still runs the old
configuration. A stop abandons a pass (a store call that hangs) at once, except inside the
mapping set's apply, whose drains are the shutdown's own.

:class:`ProcessingResultLog` keeps each API stream mapping's latest ``LastProcessingResult``
(noted on the invoke path by :class:`poller.mappings.ProcessingResults`, a dict write); the
reconciler writes it to the store when it changed, at most every
:data:`PROCESSING_RESULT_SECONDS` per mapping, between its polls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from poller.config import AnyMapping, ControlApiSettings
from poller.control.state import ACK_INTERVAL_SECONDS, settled
from poller.control.store import MappingRecord, MappingStore
from poller.errors import CheckpointError, ConfigError, describe_error, first_leaf
from poller.retry import Backoff
from poller.types import Target

__all__ = ["MappingHooks", "MappingSet", "ProcessingResultLog", "Reconciler", "StoreLink"]

log = structlog.get_logger("poller.app")

#: Between reads of a mapping store that does not answer.
STORE_BACKOFF = Backoff(initial=0.5, maximum=30.0)
#: A mapping's LastProcessingResult is written at most this often (it costs a store write).
PROCESSING_RESULT_SECONDS = 10.0
#: Outcomes of an invocation in which the function ran and answered (a partial failure
#: answers which records failed): ``OK``; any other is ``PROBLEM: Function call failed``.
_ANSWERED = frozenset({"success", "partial_failure"})


class ProcessingResultLog:
    """Each mapping's latest ``LastProcessingResult``, and what was written of it."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latest: dict[str, str] = {}
        self._written: dict[str, tuple[str, float]] = {}

    def note(self, mapping: str, outcome: str) -> None:
        """An invocation's outcome (a hook name of ``Metrics.invocation``); cheap."""
        self._latest[mapping] = "OK" if outcome in _ANSWERED else "PROBLEM: Function call failed"

    def problem(self, mapping: str, reason: str) -> None:
        """The mapping cannot run (its target did not build)."""
        self._latest[mapping] = f"PROBLEM: {reason}"

    def forget(self, mapping: str) -> None:
        """A deleted mapping's results go with it (weeks of creates and deletes)."""
        self._latest.pop(mapping, None)
        self._written.pop(mapping, None)

    async def flush(self, store: MappingStore, mappings: Collection[str]) -> None:
        """Write the results of ``mappings`` that changed, each at most every
        PROCESSING_RESULT_SECONDS."""
        now = self._clock()
        for mapping, result in list(self._latest.items()):
            if mapping in mappings and self._due(mapping, result, now):
                await store.set_processing_result(mapping, result)
                self._written[mapping] = (result, now)

    def _due(self, mapping: str, result: str, now: float) -> bool:
        written = self._written.get(mapping)
        if written is None:
            return True
        return written[0] != result and now - written[1] >= PROCESSING_RESULT_SECONDS


@dataclass(frozen=True, slots=True)
class MappingHooks:
    """What :class:`MappingSet` needs from the service.

    Attributes:
        build_target: the mapping's target (raises when it cannot be built).
        supervise: runs the mapping until its stop event is set and its runner drained.
        close_target: closes a target of a mapping (named), bounded and shielded.
        started: a mapping begins to run (readiness, ``poller_mapping_info``).
        removed: a mapping no longer runs (disabled, deleted, renamed).
        failed: a mapping's target did not build; ``reason`` says why.
    """

    build_target: Callable[[AnyMapping], Awaitable[Target]]
    supervise: Callable[[AnyMapping, Target, anyio.Event], Awaitable[None]]
    close_target: Callable[[str, Target], Awaitable[None]]
    started: Callable[[AnyMapping], None]
    removed: Callable[[AnyMapping], None]
    failed: Callable[[AnyMapping, str], None]


@dataclass(slots=True, eq=False)
class _Run:
    """One running mapping: its own stop (its drain signal), its scope (cancelled past the
    drain deadline) and ``done`` (its supervisor returned). No target: it failed to build."""

    mapping: AnyMapping
    target: Target | None
    stop: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


class MappingSet:
    """The running mappings, keyed by UUID; changed only by :meth:`apply` (one at a time)."""

    def __init__(
        self,
        hooks: MappingHooks,
        initial: Sequence[tuple[AnyMapping, Target]] = (),
        *,
        stopping: anyio.Event,
        drain_timeout: float,
    ) -> None:
        """``initial``: mappings whose targets are built already (the file's, at start-up);
        owned from now on (:meth:`close_targets` closes them), started by :meth:`run`."""
        self._hooks = hooks
        self._stopping = stopping
        self._drain_timeout = drain_timeout
        self._runs = {mapping.mapping_uuid: _Run(mapping, target) for mapping, target in initial}
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Supervise the initial mappings and every mapping started later, until the service
        stops and every supervisor has drained."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for run in self._runs.values():
                self._launch(run)
            task_status.started()
            await self._stopping.wait()
            for run in self._runs.values():
                run.stop.set()

    async def close_targets(self) -> None:
        """Close the targets of the mappings still applied (after the service's drain)."""
        for run in list(self._runs.values()):
            if run.target is not None:
                await self._hooks.close_target(run.mapping.name, run.target)
                run.target = None

    async def apply(self, desired: Mapping[str, AnyMapping]) -> None:
        """Make the running set ``desired``'s enabled mappings: drain what changed or went,
        then start what is new or changed."""
        async with self._lock:
            stale = [uuid for uuid, run in self._runs.items() if desired.get(uuid) != run.mapping]
            async with anyio.create_task_group() as drains:
                for uuid in stale:
                    drains.start_soon(self._retire, self._runs.pop(uuid), desired.get(uuid))
            for uuid, mapping in desired.items():
                if mapping.enabled and uuid not in self._runs and not self._stopping.is_set():
                    await self._start(mapping)

    async def _retire(self, run: _Run, successor: AnyMapping | None) -> None:
        """Drain ``run``; tell the service it is gone unless it restarts under its name."""
        await self._drain(run)
        restarts = successor is not None and successor.enabled
        if not restarts or successor is None or successor.name != run.mapping.name:
            self._hooks.removed(run.mapping)
        log.info(
            "mapping.drained",
            mapping=run.mapping.name,
            then="restart" if restarts else "stopped",
        )

    async def _drain(self, run: _Run) -> None:
        """Stop ``run`` at a batch boundary, within the drain timeout, and close its target."""
        run.stop.set()
        try:
            with anyio.move_on_after(self._drain_timeout):
                await run.done.wait()
            if not run.done.is_set():
                # Past the deadline the work in flight is cancelled; unsettled records are
                # re-delivered from the checkpoint by the next run (at least once, never lost).
                log.warning(
                    "mapping.drain_deadline", mapping=run.mapping.name, limit_s=self._drain_timeout
                )
                run.scope.cancel()
                await run.done.wait()
        finally:
            # Also when the service's own drain deadline (or a forced stop) cuts this drain
            # short: the run is no longer in the set, so close_targets would not close it.
            if run.target is not None:
                await self._hooks.close_target(run.mapping.name, run.target)
                run.target = None

    async def _start(self, mapping: AnyMapping) -> None:
        try:
            target = await self._hooks.build_target(mapping)
        except Exception as exc:  # noqa: BLE001 - a bad target is this mapping's problem only
            reason = describe_error(exc)
            log.error(  # noqa: TRY400 - the reason is the message (a handler that does not import)
                "mapping.crashed", mapping=mapping.name, error=reason, restart_in_s=None
            )
            failed = _Run(mapping, None)
            failed.done.set()
            self._runs[mapping.mapping_uuid] = failed
            self._hooks.failed(mapping, reason)
            return
        run = _Run(mapping, target)
        self._runs[mapping.mapping_uuid] = run
        if self._stopping.is_set():  # stopped while it was built: close_targets closes it
            run.done.set()
            return
        self._launch(run)

    def _launch(self, run: _Run) -> None:
        assert self._tg is not None, "MappingSet.run starts first"
        self._hooks.started(run.mapping)
        log.info("mapping.applied", mapping=run.mapping.name, uuid=run.mapping.mapping_uuid)
        if self._stopping.is_set():
            run.stop.set()
        self._tg.start_soon(self._supervise, run, name=f"mapping {run.mapping.name}")

    async def _supervise(self, run: _Run) -> None:
        assert run.target is not None
        try:
            with run.scope:
                await self._hooks.supervise(run.mapping, run.target, run.stop)
        finally:
            run.done.set()


@dataclass(frozen=True, slots=True)
class StoreLink:
    """The control API's side of the reconciler.

    Attributes:
        store: the mapping store.
        settings: ``control_api``.
        region: the region API mappings' ARNs are formed in.
        replica: this replica's name in the acks.
        to_mapping: a record's mapping (:func:`poller.control.shapes.to_mapping`, bound).
        forget: removes a finalized mapping's checkpoints (called only when
            ``delete_checkpoints``).
        pair_of: a file mapping's pair key (its function ARN as the API shows it, and its
            source), as the store keys records' pairs; None: file mappings shadow by UUID only.
        clock: epoch seconds, for the acks' liveness.
    """

    store: MappingStore
    settings: ControlApiSettings
    region: str
    replica: str
    to_mapping: Callable[[MappingRecord], AnyMapping]
    forget: Callable[[str], Awaitable[None]]
    pair_of: Callable[[AnyMapping], str] | None = None
    clock: Callable[[], float] = time.time


class Reconciler:
    """Feeds :class:`MappingSet` from the file's mappings and the mapping store; acks."""

    def __init__(
        self,
        mappings: MappingSet,
        file_mappings: Sequence[AnyMapping],
        *,
        stopping: anyio.Event,
        link: StoreLink | None = None,
    ) -> None:
        self._set = mappings
        self._file = list(file_mappings)
        self._stopping = stopping
        self._link = link
        self._wake = anyio.Event()
        self._records: dict[str, MappingRecord] = {}
        #: The head revision last applied, and when it was last acked (monotonic).
        self._applied: int | None = None
        self._acked_at = 0.0
        self._ack_lock = anyio.Lock()
        #: Held while the mapping set applies: a stop abandons a pass only outside it.
        self._applying = anyio.Lock()
        self._outage = 0
        #: Finalized deletes whose checkpoints are still to be removed.
        self._unforgotten: set[str] = set()
        #: Deletes this replica tried to finalize. One gone from the store since was finalized
        #: (this replica's answer may have been lost), so its checkpoints are removed.
        self._finalizing: set[str] = set()
        #: LastProcessingResult of the API's stream mappings (see ProcessingResultLog).
        self.results = ProcessingResultLog()

    @property
    def has_store(self) -> bool:
        """Whether mappings come from the control API's store too."""
        return self._link is not None

    def wake(self) -> None:
        """Look at the store (and the file's mappings) now rather than at the next poll."""
        self._wake.set()

    def replace_file_mappings(self, mappings: Sequence[AnyMapping]) -> None:
        """A reloaded file's mappings; applied by the next pass, at once."""
        self._file = list(mappings)
        self.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One pass at once (start-up reads the desired set before it reports started), then
        one whenever something changed, until the service stops."""
        await self._step_until_stopped(force=True)
        task_status.started()
        while not self._stopping.is_set():
            woken = await self._sleep()
            if self._stopping.is_set():
                return
            await self._step_until_stopped(force=woken)

    async def _step_until_stopped(self, *, force: bool) -> None:
        """One pass, abandoned when the service stops, but never inside the mapping set's
        apply (a drain cut there would leave a run nobody stops): a store call that hangs
        (an outage that times out slowly) must not hold the shutdown until the drain
        deadline, past the mappings' own drain."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._abandon_on_stop, tg.cancel_scope)
            await self._step(force=force)
            tg.cancel_scope.cancel()

    async def _abandon_on_stop(self, scope: anyio.CancelScope) -> None:
        await self._stopping.wait()
        async with self._applying:
            scope.cancel()

    async def _sleep(self) -> bool:
        """Wait for the next poll, a wake-up or the stop; whether woken."""
        interval = None if self._link is None else self._poll_delay()
        with anyio.move_on_after(interval if interval is not None else float("inf")):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_when_set, self._wake, tg.cancel_scope)
                tg.start_soon(_cancel_when_set, self._stopping, tg.cancel_scope)
        woken = self._wake.is_set()
        if woken:
            self._wake = anyio.Event()
        return woken

    def _poll_delay(self) -> float:
        assert self._link is not None
        if self._outage:
            return STORE_BACKOFF.delay(self._outage)
        return self._link.settings.poll_interval_seconds

    async def _step(self, *, force: bool) -> None:
        if self._link is None:
            async with self._applying:
                await self._set.apply(self._desired())
            return
        try:
            await self._sync(self._link, force=force)
        except Exception as exc:  # noqa: BLE001 - an outage, an unreadable item, a bug: never the end
            # (The pass runs in a task group beside its heartbeat: errors come grouped.) A
            # store answer that does not parse (a corrupt or hand-edited item) or a bug here
            # would otherwise end the task group, and with it every mapping.
            leaf = first_leaf(exc)
            if isinstance(leaf, CheckpointError):
                self._pass_failed("mapping_store.unavailable", str(leaf))
            else:
                self._pass_failed("reconcile.pass_failed", describe_error(exc), traceback=True)
            return
        if self._outage:
            log.info("mapping_store.recovered", after_attempts=self._outage)
            self._outage = 0

    def _pass_failed(self, event: str, error: str, *, traceback: bool = False) -> None:
        """A pass cut short (the store, or a bug): logged once until a pass succeeds,
        retried with the store's backoff."""
        self._outage += 1
        if self._outage == 1:
            report = log.exception if traceback else log.warning
            hint = "the running mappings keep their configuration; retrying"
            report(event, error=error, hint=hint)

    async def _sync(self, link: StoreLink, *, force: bool) -> None:
        """One pass, beating meanwhile: a drain, or a store read slow to answer, may outlast
        a replica's liveness; the beat (with the revision applied before) makes states and
        deletes wait for this replica instead of skipping it as dead while it still runs
        the old configuration."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat, link)
            await self._pass(link, force=force)
            tg.cancel_scope.cancel()

    async def _pass(self, link: StoreLink, *, force: bool) -> None:
        """Apply the store's records if its head moved (or ``force``), then ack; beat every
        ACK_INTERVAL_SECONDS; finalize the deletes every replica has drained."""
        head = await link.store.head()
        if force or head != self._applied:
            self._records = await link.store.records()
            async with self._applying:
                await self._set.apply(self._desired())
            # Only now: every drain and start this pass needed is done.
            await self._ack(link, head)
        elif time.monotonic() - self._acked_at >= ACK_INTERVAL_SECONDS:
            await self._ack(link, head)
        await self._finalize_deletes(link)
        await self.results.flush(link.store, self._records)

    async def _beat(self, link: StoreLink) -> None:
        while True:
            await anyio.sleep(max(0.0, self._acked_at + ACK_INTERVAL_SECONDS - time.monotonic()))
            # Under the lock: a beat in flight never lands after, and undoes, a newer ack.
            async with self._ack_lock:
                if time.monotonic() - self._acked_at < ACK_INTERVAL_SECONDS:
                    continue  # the pass acked meanwhile: one write per interval is enough
                with contextlib.suppress(CheckpointError):  # an outage: the pass reports it
                    await link.store.ack(link.replica, self._applied or 0)
                self._acked_at = time.monotonic()

    async def _ack(self, link: StoreLink, head: int) -> None:
        async with self._ack_lock:
            await link.store.ack(link.replica, head)
            self._applied, self._acked_at = head, time.monotonic()

    def _desired(self) -> dict[str, AnyMapping]:
        """The file's mappings, then the store's (a store record never shadows the file's,
        by UUID or by pair: a file reloaded with the function and source of an API mapping
        would otherwise invoke the function twice with every record, once per mapping)."""
        desired = {mapping.mapping_uuid: mapping for mapping in self._file}
        file_pairs = self._file_pairs()
        for uuid, record in self._records.items():
            if record.desired == "Deleted" or uuid in desired:
                continue
            owner = file_pairs.get(record.pair_key)
            if owner is not None:
                self._shadowed(record, owner)
                continue
            mapping = self._mapping_of(record)
            if mapping is not None:
                desired[uuid] = mapping
        return desired

    def _file_pairs(self) -> dict[str, str]:
        """The file's mappings' names by pair key (with the store on)."""
        pair_of = None if self._link is None else self._link.pair_of
        if pair_of is None:
            return {}
        return {pair_of(mapping): mapping.name for mapping in self._file}

    def _shadowed(self, record: MappingRecord, owner: str) -> None:
        reason = f"the configuration file's mapping '{owner}' has this function and source"
        log.error("mapping.unusable", mapping=record.uuid, problems=[reason])
        self.results.problem(record.uuid, reason)

    def _mapping_of(self, record: MappingRecord) -> AnyMapping | None:
        """The record's mapping; None (it does not run, and says why in its
        LastProcessingResult) when it no longer validates, e.g. ``control_api.functions``
        lost its function since it was stored."""
        assert self._link is not None
        try:
            return self._link.to_mapping(record)
        except ConfigError as exc:
            log.error(  # noqa: TRY400 - the problems are the message; no traceback
                "mapping.unusable", mapping=record.uuid, problems=exc.problems
            )
            self.results.problem(record.uuid, "; ".join(exc.problems))
        except Exception as exc:  # a bug: logged with its traceback, never the service's end
            log.exception("mapping.unusable", mapping=record.uuid)
            self.results.problem(record.uuid, describe_error(exc))
        return None

    async def _finalize_deletes(self, link: StoreLink) -> None:
        """Remove the deleted records every live replica has drained (the first replica to
        see it does; the store's condition on the revision makes the others' attempts
        no-ops), then their checkpoints."""
        for uuid in [u for u in self._finalizing if u not in self._records]:
            self._finalizing.discard(uuid)
            self.results.forget(uuid)
            if link.settings.delete_checkpoints:
                self._unforgotten.add(uuid)
        deleted = [r for r in self._records.values() if r.desired == "Deleted"]
        acks = await link.store.acks() if deleted else {}
        for record in deleted:
            if not settled(record, acks, link.clock()):
                continue
            self._finalizing.add(record.uuid)
            if await link.store.finalize_delete(record.uuid, record.revision):
                self._finalizing.discard(record.uuid)
                self._records.pop(record.uuid, None)
                self.results.forget(record.uuid)
                log.info("mapping.deleted", mapping=record.uuid)
                if link.settings.delete_checkpoints:
                    self._unforgotten.add(record.uuid)
        await self._forget_checkpoints(link)

    async def _forget_checkpoints(self, link: StoreLink) -> None:
        """Remove the checkpoints of finalized deletes; one cut short by an outage is retried
        at the next pass (the removal is idempotent)."""
        for uuid in sorted(self._unforgotten):
            await link.forget(uuid)
            self._unforgotten.discard(uuid)
            log.info("mapping.checkpoints_removed", mapping=uuid)


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
