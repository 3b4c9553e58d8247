"""``poller replay``: re-deliver a time range of a stream mapping, in lineage order, resumably.

Data flow::

    --from, --to (ISO 8601 or epoch) --> [start, end]; --to left out: the first run's start,
        pinned in the state file so that a resumed run ends where the first would have
    ListShards (the live adapter) --(--shard filter)--> ShardInfo listing
        --poller.core.lineage.plan_shards(listing, the replay's own checkpoints)--> ready shards
          (parents before children: a child is ready once its parents are done)
    each ready shard, concurrently: AT_TIMESTAMP start (or after the replay's checkpoint)
        --read_range (stops at the first record past --to, the shard's end or its tip)-->
        the live engine's shard processor (deliver_shard: the mapping's batching, retries,
        bisection, events) --> the mapping's target or --target-override
        --settled--> the replay's SQLite state file (its own checkpoints, keyed by the replay
          id; the live checkpoints are never opened) --shard done--> SHARD_END there
    ReplayProgress: a redrawn line on a terminal, ``replay.progress`` JSON lines otherwise

A run holds ``<state>.lock`` (flock) throughout: a second replay with the same state file is
refused (exit 2, naming the lock and its holder's pid) instead of delivering the same records.
The replay id is a hash of the mapping, its stream, the range, the shards chosen and the
override: the same command resumes the same replay (an interrupted one goes on after its last
checkpoint; a finished one has nothing left to do), a different one starts afresh. Records
given up on (the target still fails after the retries) are reported, not sent to the
mapping's on-failure destination, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import Settings
from poller.core.lineage import ShardInfo, plan_shards
from poller.errors import CheckpointError, ConfigError, OperationError, SourceError
from poller.observability.logging import configure_logging
from poller.operations.common import (
    ShardDelivery,
    StreamMapping,
    add_common_arguments,
    client_factory,
    deliver_shard,
    find_stream_mapping,
    load,
    open_stream,
    operation_policy,
    operation_target,
    override_config,
    target_name,
)
from poller.operations.progress import ReplayProgress
from poller.operations.ranges import RangeRead, read_range
from poller.operations.times import age_text, iso, parse_time
from poller.ports import StartPosition, StreamApi
from poller.streams.processor import BatchPolicy, ChunkSink
from poller.types import SHARD_END, Checkpoint, Target

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Batches given up on that the summary lists by sequence range, per shard.
MAX_FAILED_LINES = 20
#: Shards replayed at once (the rest wait their turn, as children wait for their parents).
CONCURRENT_SHARDS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    add_common_arguments(parser)
    parser.add_argument(
        "--from", dest="start", required=True, metavar="TIME", help="ISO 8601 or epoch seconds"
    )
    parser.add_argument(
        "--to", dest="end", metavar="TIME", help="ISO 8601 or epoch seconds (default: now)"
    )
    parser.add_argument(
        "--shard", action="append", default=[], metavar="ID", help="only this shard (repeatable)"
    )
    parser.add_argument(
        "--state",
        metavar="PATH",
        help="the SQLite file keeping replays' progress (default: beside the config, "
        "<config>.replay.db)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="forget this replay's progress and replay the range from its start again",
    )
    parser.add_argument("--log-level", default="WARNING", help="the engine's log level")


def main(args: argparse.Namespace) -> int:
    """Run the command: 0 when every record was delivered, 1 when some were given up on or a
    shard could not be read, 2 for bad input, 130 when interrupted (run it again to resume)."""
    settings = load(args.config)
    configure_logging(args.log_level, settings.logging.format)
    state = Path(args.state) if args.state else Path(f"{args.config}.replay.db")
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops a replay as Ctrl-C does: the checkpoints written so far are kept.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary: Summary | None = None
    try:
        with contextlib.nullcontext() if args.dry_run else state_lock(state):
            summary = anyio.run(_replay, settings, args, state)
    except OperationError as exc:
        print(f"poller replay: {exc}", file=sys.stderr)  # noqa: T201 - user-facing error
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(  # noqa: T201 - user-facing
            f"\npoller replay: interrupted; progress is kept in {state}: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(summary.render())  # noqa: T201 - CLI output
    return EXIT_OK if summary.ok else EXIT_FAILED


@contextlib.contextmanager
def state_lock(state: Path) -> Iterator[None]:
    """Hold ``<state>.lock`` (an exclusive, non-blocking flock) for the whole run: two
    replays with one state file would both deliver what neither has checkpointed yet. The
    kernel drops the lock when the process ends, however it ends; the file stays (removing
    it would let a third run lock a new file while the second holds the old one)."""
    path = Path(f"{state}.lock")
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OperationError(f"cannot open the replay lock {str(path)!r} ({exc})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OperationError(
                f"another replay holds {str(path)!r} (pid {holder}); wait for it to end, or "
                "give this one another --state"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(handle)  # closing the descriptor releases the lock


def replay_id(
    mapping: StreamMapping, start: float, end: float | None, args: argparse.Namespace
) -> str:
    """The same command, the same replay."""
    parts = [
        mapping.name,
        mapping.stream_arn,
        repr(start),
        "open" if end is None else repr(end),
        ",".join(sorted(args.shard)),
        args.target_override or "",
    ]
    return "replay-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


@dataclass(slots=True)
class Summary:
    """What the replay came to."""

    replay_id: str
    mapping: str
    target: str
    start: float
    end: float
    state: Path
    dry_run: bool
    lines: list[str] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    unreadable: int = 0
    shards_done: int = 0
    already_done: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing given up on, every shard read."""
        return self.failed == 0 and self.unreadable == 0

    def render(self) -> str:
        """The per-shard lines and the totals."""
        head = "replay (dry run: nothing delivered)" if self.dry_run else "replay"
        rate = self.delivered / self.seconds if self.seconds > 0 else 0.0
        return "\n".join(
            [
                f"{head} {self.replay_id}: mapping {self.mapping}, {iso(self.start)} .. "
                f"{iso(self.end)} -> {self.target} (progress in {self.state})",
                *self.lines,
                f"shards done: {self.shards_done} (already done before this run: "
                f"{self.already_done}); unreadable: {self.unreadable}",
                f"delivered: {self.delivered}, failed: {self.failed}; "
                f"{self.seconds:.1f} s ({rate:,.0f} records/s)",
            ]
        )


def _times(args: argparse.Namespace, now: float) -> tuple[float, float | None]:
    start = parse_time(args.start, "--from", now=now)
    end = None if args.end is None else parse_time(args.end, "--to", now=now)
    if end is not None and end < start:
        raise OperationError(
            f"--to {args.end!r} ({iso(end)}) is before --from {args.start!r} ({iso(start)})"
        )
    return start, end


async def _replay(settings: Settings, args: argparse.Namespace, state: Path) -> Summary:
    mapping = find_stream_mapping(settings, args.mapping, "replay")
    now = time.time()
    start, end = _times(args, now)
    if args.target_override is not None:
        override_config(args.target_override)
    rid = replay_id(mapping, start, end, args)
    store = await _open_state(state)
    clients = client_factory(settings)
    target: Target | None = None
    try:
        if args.restart and not args.dry_run:
            await _forget(store, rid)
        end = end if end is not None else await _pinned_end(store, rid, now)
        api = await open_stream(mapping, clients, settings)
        shards = _selected(await api.list_shards(), args.shard)
        summary = Summary(
            rid,
            mapping.name,
            target_name(mapping, args.target_override),
            start,
            end,
            state,
            args.dry_run,
        )
        await _warn_retention(api, start, now, summary)
        if args.dry_run:
            await _plan(store, rid, shards, summary)
        else:
            target = await operation_target(mapping, args.target_override, clients)
            policy = operation_policy(mapping, args.max_retries)
            run = _Run(mapping, api, target, store, rid, (start, end), summary, policy)
            await run.all(shards)
    except ConfigError as exc:
        raise OperationError("; ".join(exc.problems)) from None
    except SourceError as exc:
        raise OperationError(f"cannot read {mapping.stream_arn}: {exc}") from None
    else:
        return summary
    finally:
        with anyio.CancelScope(shield=True):
            if target is not None:
                await target.aclose()
            await clients.aclose()
            await store.aclose()


#: The row of a replay's state that keeps its end when --to was left out (not a shard id).
END_ROW = "~end"


async def _pinned_end(store: SqliteCheckpointStore, rid: str, now: float) -> float:
    """The end of an open-ended replay: its first run's start, kept for the runs resuming it."""
    kept = await store.get(rid, END_ROW)
    if kept is not None and kept.start_timestamp is not None:
        return kept.start_timestamp
    await store.put(rid, END_ROW, Checkpoint(start_timestamp=now))
    return now


async def _forget(store: SqliteCheckpointStore, rid: str) -> None:
    """--restart: the replay's progress and pinned end are dropped."""
    for shard_id in await store.get_all(rid):
        await store.delete(rid, shard_id)


async def _open_state(path: Path) -> SqliteCheckpointStore:
    try:
        return await SqliteCheckpointStore(path).open()
    except (CheckpointError, OSError) as exc:
        raise OperationError(
            f"--state {str(path)!r}: cannot open the replay state file ({exc})"
        ) from None


def _selected(listing: list[ShardInfo], wanted: list[str]) -> list[ShardInfo]:
    """The shards to replay; parents outside the selection do not hold a child back."""
    if not wanted:
        return listing
    known = {s.shard_id for s in listing}
    missing = [s for s in wanted if s not in known]
    if missing:
        names = ", ".join(sorted(known)) or "none"
        raise OperationError(
            f"--shard {missing[0]!r}: no such shard in the stream (shards: {names})"
        )
    chosen = set(wanted)
    return [
        ShardInfo(s.shard_id, tuple(p for p in s.parent_ids if p in chosen), s.closed)
        for s in listing
        if s.shard_id in chosen
    ]


async def _warn_retention(api: StreamApi, start: float, now: float, summary: Summary) -> None:
    retention = await api.retention_seconds()
    if retention is not None and now - start > retention:
        summary.lines.append(
            f"  note: --from is {age_text(now - start)} ago; the stream keeps records "
            f"{age_text(retention)}: records before {iso(now - retention)} are gone"
        )


async def _plan(
    store: SqliteCheckpointStore, rid: str, shards: list[ShardInfo], summary: Summary
) -> None:
    """A dry run: every shard, in lineage order, with where it would start."""
    saved = await store.get_all(rid)
    by_id = {s.shard_id: s for s in shards}
    for shard in _lineage_order(shards):
        checkpoint = saved.get(shard)
        parents = ",".join(by_id[shard].parent_ids)
        after = f" after parents {parents}" if parents else ""
        if checkpoint is not None and checkpoint.is_shard_end:
            summary.already_done += 1
            summary.lines.append(f"  {shard}: done already")
        elif checkpoint is not None and checkpoint.sequence_number:
            summary.lines.append(
                f"  {shard}: would resume after {checkpoint.sequence_number}{after}"
            )
        else:
            summary.lines.append(f"  {shard}: would read from {iso(summary.start)}{after}")


def _lineage_order(shards: list[ShardInfo]) -> list[str]:
    """Shard ids with every parent before its children (planning as if each finished)."""
    done: dict[str, Checkpoint] = {}
    order: list[str] = []
    while True:
        ready = [s for s in plan_shards(shards, done).ready if s not in done]
        if not ready:
            return order + [s.shard_id for s in shards if s.shard_id not in done]
        for shard in ready:
            done[shard] = Checkpoint(sequence_number=SHARD_END)
            order.append(shard)


class _Run:
    """One run of a replay: waves of ready shards until none is left."""

    def __init__(
        self,
        mapping: StreamMapping,
        api: StreamApi,
        target: Target,
        store: SqliteCheckpointStore,
        rid: str,
        span: tuple[float, float],
        summary: Summary,
        policy: BatchPolicy,
    ) -> None:
        self._mapping, self._api, self._target, self._store = mapping, api, target, store
        self._rid, (self._start, self._end) = rid, span
        self._summary, self._policy = summary, policy
        self._progress = ReplayProgress(rid, *span)
        self._failed_shards: set[str] = set()
        self._began = time.monotonic()

    async def all(self, shards: list[ShardInfo]) -> None:
        saved = await self._store.get_all(self._rid)
        self._summary.already_done = sum(1 for c in saved.values() if c.is_shard_end)
        if shards and self._summary.already_done >= len(shards):
            self._summary.lines.append(
                "  this replay finished in an earlier run: nothing left to do "
                "(--restart replays the range again)"
            )
        self._progress.event(
            "replay.started",
            start=iso(self._start),
            end=iso(self._end),
            shards=len(shards),
            already_done=self._summary.already_done,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._progress.run)
            try:
                await self._waves(shards)
            finally:
                tg.cancel_scope.cancel()
                self._progress.finish()
                self._summary.seconds = time.monotonic() - self._began
        self._progress.event(
            "replay.finished", delivered=self._summary.delivered, failed=self._summary.failed
        )

    async def _waves(self, shards: list[ShardInfo]) -> None:
        limiter = anyio.CapacityLimiter(CONCURRENT_SHARDS)
        while True:
            saved = await self._store.get_all(self._rid)
            ready = [s for s in plan_shards(shards, saved).ready if s not in self._failed_shards]
            if not ready:
                return
            async with anyio.create_task_group() as tg:
                for shard_id in ready:
                    tg.start_soon(self._shard, shard_id, saved.get(shard_id), limiter)

    async def _shard(
        self, shard_id: str, checkpoint: Checkpoint | None, limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            start = (
                StartPosition("AFTER_SEQUENCE_NUMBER", checkpoint.sequence_number)
                if checkpoint is not None and checkpoint.sequence_number
                else StartPosition("AT_TIMESTAMP", timestamp=self._start)
            )
            self._progress.event(
                "replay.shard_started",
                shard=shard_id,
                start=start.type,
                after=start.sequence_number,
            )
            seen = RangeRead()
            end = self._end

            async def read(sink: ChunkSink) -> None:
                await read_range(
                    self._api,
                    shard_id,
                    start,
                    sink,
                    beyond=lambda r: r.arrival_timestamp > end,
                    report=seen,
                )

            try:
                outcome = await deliver_shard(
                    self._mapping,
                    shard_id=shard_id,
                    key=self._rid,
                    target=self._target,
                    store=self._store,
                    policy=self._policy,
                    read=read,
                    settled=lambda records: self._progress.settled(shard_id, records),
                )
            except Exception as exc:  # noqa: BLE001 - a shard's failure is reported, the others go on
                self._unreadable(shard_id, _leaf(exc))
                return
            await self._done(shard_id, outcome, seen)

    async def _done(self, shard_id: str, outcome: ShardDelivery, seen: RangeRead) -> None:
        delivered, failed = outcome.delivered, outcome.gave_up.records
        await self._store.put(self._rid, shard_id, Checkpoint(sequence_number=SHARD_END))
        summary = self._summary
        summary.delivered += delivered
        summary.failed += failed
        summary.shards_done += 1
        self._progress.shard(shard_id).done = True
        failed_text = f", {failed} FAILED (given up after the retries)" if failed else ""
        how = "shard ended" if seen.shard_ended else "range ended"
        summary.lines.append(f"  {shard_id}: {delivered} record(s) delivered{failed_text}; {how}")
        for _, records in outcome.gave_up.batches[:MAX_FAILED_LINES]:
            first, last = records[0].sequence_number, records[-1].sequence_number
            summary.lines.append(f"    given up: {first}..{last} ({len(records)} record(s))")
        if len(outcome.gave_up.batches) > MAX_FAILED_LINES:
            summary.lines.append(f"    ... {len(outcome.gave_up.batches) - MAX_FAILED_LINES} more")
        self._progress.event(
            "replay.shard_done", shard=shard_id, delivered=delivered, failed=failed
        )

    def _unreadable(self, shard_id: str, exc: BaseException) -> None:
        self._failed_shards.add(shard_id)
        self._summary.unreadable += 1
        self._summary.lines.append(f"  {shard_id}: NOT REPLAYED: {exc} (run again to resume)")
        self._progress.event("replay.shard_failed", shard=shard_id, error=str(exc))


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
