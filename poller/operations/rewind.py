"""``poller rewind``: move a live stream mapping's checkpoints, like Kafka's offset reset.

Data flow::

    arguments + config --rewind_plan--> per shard: current checkpoint -> RewindTarget
    --dry-run: print the plan, write nothing
    else: the request goes into the checkpoint backend, and the shard's *owner* applies it
        SQLite:  a row per shard in ``rewinds``; the running service (its ``services`` row is
                 fresh) applies it, else this command does, in one transaction that checks
                 the ``services`` row (poller.checkpoints.sqlite)
        leases:  ``rewindId`` / ``rewindTo`` on each lease item, then ``rewindNotice`` on the
                 mapping's member item; an owned shard's owner applies it, an unowned one is
                 written here, fenced on the lease counter this command read
                 (poller.checkpoints.dynamodb.table.apply_rewind)
    wait (up to --timeout; 0: look once, do not wait) until every shard shows the request
    applied; print, per shard, from where to where and by whom, "skipped" for a shard that
    had ended (``SHARD_END``, never moved), "replaced" when a newer rewind's request took the
    place of this one, or which shards have not applied it (exit 1)

The owner applies a rewind at a batch boundary: the shard's run is drained (no new batch, the
batches in flight finish and checkpoint), then the shard runs again from ``start_checkpoint``,
which writes the rewind's checkpoint through the same fenced write as any checkpoint and marks
the request applied (see :mod:`poller.streams.supervisor` and :mod:`poller.streams.ownership`).
The lease is kept throughout, so no other replica runs the shard meanwhile. A request not
applied when the command gives up stays pending (it is not withdrawn: a paused or busy owner
applies it at its next batch boundary, or the shard's next owner when it starts it; a later
rewind replaces it). Exit 0 only when every shard asked applied it (a shard skipped at
``SHARD_END`` counts, unless ``--to-sequence`` named it); any named shard not moved (no lease,
skipped, replaced, pending) makes it 1. Positions are described in
:mod:`poller.checkpoints.rewinds`; which shards move, in :mod:`poller.operations.rewind_plan`.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from poller.aws.clients import ClientFactory
from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.checkpoints.rewinds import RewindState, RewindTarget, describe_checkpoint
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import DynamoDBStreamMapping, KinesisMapping, Settings, load_settings
from poller.errors import ConfigError, OperationError, PollerError
from poller.operations.common import find_mapping
from poller.operations.rewind_plan import (
    RewindPlan,
    parse_instant,
    parse_sequences,
    plan_rewind,
)
from poller.ports import StartPosition, StreamApi
from poller.types import Checkpoint

#: Default of ``--timeout``: how long to wait for every shard to apply the rewind.
DEFAULT_TIMEOUT_SECONDS = 60.0
#: Between two looks at the backend while waiting.
POLL_SECONDS = 0.5
#: Who the command is, as "applied by" shows it.
COMMAND = "poller rewind"
EXIT_OK, EXIT_NOT_APPLIED, EXIT_USAGE = 0, 1, 2

StreamMapping = KinesisMapping | DynamoDBStreamMapping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    parser.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    parser.add_argument("--mapping", required=True, help="the mapping's name")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-timestamp", metavar="T", help="ISO 8601 (UTC if no zone) or epoch s")
    to.add_argument("--to-trim-horizon", action="store_true", help="the oldest retained record")
    to.add_argument(
        "--to-latest", action="store_true", help="skip to the records arriving after the apply"
    )
    to.add_argument(
        "--to-sequence",
        metavar="SHARD=SEQ",
        action="append",
        help="deliver record SEQ of SHARD again (repeatable; only the shards named move)",
    )
    parser.add_argument(
        "--open-shards-only",
        action="store_true",
        help="after a reshard: move the open shards, leave the closed ones finished",
    )
    parser.add_argument(
        "--allow-skip",
        action="store_true",
        help="accept a --to-sequence beyond the shard's checkpoint (moves it forward: the"
        " records in between are never delivered)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"wait this long for every shard to apply it (default {DEFAULT_TIMEOUT_SECONDS:g};"
        " 0: write the request, look once, do not wait)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the command; the exit status (0 applied everywhere, 1 not everywhere, 2 refused)."""
    if not args.timeout >= 0:  # negative, or NaN
        _err(f"{COMMAND}: --timeout {args.timeout:g}: expected 0 or more seconds")
        return EXIT_USAGE
    settings = load_settings(args.config)
    try:
        mapping = _stream_mapping(settings, args.mapping)
        target, sequences = _targets(args)
        return anyio.run(_rewind, settings, mapping, target, sequences, args)
    except ConfigError as exc:
        if exc.source != COMMAND:
            raise
        for problem in exc.problems:
            _err(f"{COMMAND}: {problem}")
        return EXIT_USAGE
    except OperationError as exc:
        _err(f"{COMMAND}: {exc}")
        return EXIT_USAGE
    except PollerError as exc:
        _err(f"{COMMAND}: {exc}")
        return EXIT_NOT_APPLIED


def _stream_mapping(settings: Settings, name: str) -> StreamMapping:
    """The named stream mapping; refused when unknown or an SQS one."""
    mapping = find_mapping(settings, name)
    if not isinstance(mapping, KinesisMapping | DynamoDBStreamMapping):
        raise OperationError(
            f"mapping {name!r} reads an SQS queue: it has no checkpoints to move (a message"
            " is redelivered by its visibility timeout, and a DLQ by the queue's redrive)"
        )
    return mapping


def _targets(args: argparse.Namespace) -> tuple[RewindTarget | None, dict[str, RewindTarget]]:
    if args.to_sequence:
        return None, parse_sequences(args.to_sequence)
    if args.to_trim_horizon:
        return RewindTarget("trim_horizon"), {}
    if args.to_latest:
        return RewindTarget("latest"), {}
    return RewindTarget("timestamp", timestamp=parse_instant(args.to_timestamp)), {}


# -- the two backends -----------------------------------------------------------------------


@dataclass(slots=True)
class _Backend:
    """What the command does with one checkpoint backend."""

    #: Every shard known for the mapping, with its checkpoint (None: a lease without one).
    stored: Callable[[], Awaitable[dict[str, Checkpoint | None]]]
    #: Who owns each shard now (leases), for the dry run.
    owners: Callable[[], Awaitable[dict[str, str | None]]]
    #: Write the requests (and apply those nobody else will); returns shards it could not ask.
    request: Callable[[RewindPlan, str], Awaitable[list[str]]]
    #: Apply what may be applied here now; the states of the rewind's shards.
    progress: Callable[[str], Awaitable[list[RewindState]]]


def _solo(store: SqliteCheckpointStore, mapping: str) -> _Backend:
    async def stored() -> dict[str, Checkpoint | None]:
        return dict(await store.get_all(mapping))

    async def owners() -> dict[str, str | None]:
        server = await store.server_of(mapping)
        return {shard: server for shard in await store.get_all(mapping)}

    asked: set[str] = set()

    async def request(plan: RewindPlan, rewind_id: str) -> list[str]:
        await store.request_rewinds(mapping, plan.targets, rewind_id)
        asked.update(plan.targets)
        return []

    async def progress(rewind_id: str) -> list[RewindState]:
        # Applies nothing while a service serves the mapping: then the service applies. Only
        # this rewind's requests: another command's are its own to apply.
        await store.apply_rewinds_unserved(mapping, COMMAND, rewind_id)
        return await store.shard_rewinds(mapping, asked)

    return _Backend(stored, owners, request, progress)


def _leased(table: DynamoDBLeaseTable, mapping: str) -> _Backend:
    asked: dict[str, str] = {}  # shard -> rewind id, for progress

    async def stored() -> dict[str, Checkpoint | None]:
        return {lease.shard_id: lease.checkpoint for lease in await table.list_leases(mapping)}

    async def owners() -> dict[str, str | None]:
        return {lease.shard_id: lease.owner for lease in await table.list_leases(mapping)}

    async def request(plan: RewindPlan, rewind_id: str) -> list[str]:
        missing: list[str] = []
        for shard_id, target in plan.targets.items():
            # Requests first, then the notice: an owner that sees the notice finds them all.
            if await table.request_rewind(mapping, shard_id, rewind_id, target) is None:
                missing.append(shard_id)
            else:
                asked[shard_id] = rewind_id
        await table.notify_rewind(mapping, rewind_id)
        return missing

    async def progress(rewind_id: str) -> list[RewindState]:
        return await _leased_progress(table, mapping, set(asked), rewind_id)

    return _Backend(stored, owners, request, progress)


async def _leased_progress(
    table: DynamoDBLeaseTable, mapping: str, asked: set[str], rewind_id: str
) -> list[RewindState]:
    """The latest rewind state on each lease asked, whatever its id (a newer rewind's shows
    this one was replaced), after writing this rewind on those that nobody owns now (one
    consistent Scan per look, whatever the number of shards)."""
    states: list[RewindState] = []
    for lease in await table.list_leases(mapping):
        if lease.shard_id not in asked:
            continue
        if lease.owner is None and lease.pending_rewind is not None:
            lease = await _apply_unowned(table, lease, rewind_id) or lease
        if lease.rewind is not None:
            states.append(lease.rewind)
    return states


async def _apply_unowned(table: DynamoDBLeaseTable, lease: Lease, rewind_id: str) -> Lease | None:
    """Write the rewind of a lease nobody owns, fenced on the counter just read: a replica
    taking it meanwhile moves the counter (our write is refused, and the new owner applies the
    request when it starts the shard), or finds it moved by us (its take is refused, and it
    reads the new checkpoint when it takes the lease again)."""
    pending = lease.pending_rewind
    if pending is None or pending.rewind_id != rewind_id:
        return None
    # A shard read to its end meanwhile is never re-opened: the request is marked skipped.
    checkpoint = pending.target.checkpoint()
    if lease.checkpoint is not None and lease.checkpoint.is_shard_end:
        checkpoint = lease.checkpoint
    ok, seen = await table.apply_rewind(lease, None, rewind_id, checkpoint)
    return seen if ok else None


# -- the command ----------------------------------------------------------------------------


async def _rewind(
    settings: Settings,
    mapping: StreamMapping,
    target: RewindTarget | None,
    sequences: dict[str, RewindTarget],
    args: argparse.Namespace,
) -> int:
    aws = settings.aws
    factory = ClientFactory(
        region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints
    )
    store: SqliteCheckpointStore | None = None
    try:
        backend, store = await _open_backend(settings, mapping, factory)
        stored = await backend.stored()
        api = await _stream_api(settings, mapping, factory)
        listed = list(await api.list_shards())
        plan = plan_rewind(
            target=target,
            sequences=sequences,
            stored=stored,
            listed=listed,
            open_shards_only=args.open_shards_only,
            allow_skip=args.allow_skip,
        )
        await _check_sequences(api, sequences)
        if args.dry_run:
            _print_dry_run(mapping.name, plan, await backend.owners())
            return EXIT_OK
        return await _request_and_wait(backend, mapping.name, plan, args.timeout, set(sequences))
    finally:
        if store is not None:
            await store.aclose()
        await factory.aclose()


async def _open_backend(
    settings: Settings, mapping: StreamMapping, factory: ClientFactory
) -> tuple[_Backend, SqliteCheckpointStore | None]:
    cfg = settings.checkpoints
    if cfg.backend == "sqlite":
        if not cfg.path.exists():
            raise ConfigError(
                [f"no checkpoint database at {cfg.path}: the mapping has not run here"],
                source=COMMAND,
            )
        store = await SqliteCheckpointStore(cfg.path, synchronous=cfg.synchronous).open()
        return _solo(store, mapping.name), store
    if cfg.backend == "dynamodb" and cfg.table is not None:
        table = DynamoDBLeaseTable(await factory.client("dynamodb"), cfg.table)
        return _leased(table, mapping.name), None
    raise ConfigError([f"checkpoints.backend {cfg.backend!r} keeps no checkpoints"], source=COMMAND)


async def _stream_api(
    settings: Settings, mapping: StreamMapping, factory: ClientFactory
) -> StreamApi:
    """The stream, read as the service reads it (ListShards, GetShardIterator)."""
    from poller.mappings import stream_api  # the service's wiring: imported when needed

    return await stream_api(mapping, factory, settings)


async def _check_sequences(api: StreamApi, sequences: dict[str, RewindTarget]) -> None:
    """Open an iterator at each ``--to-sequence`` position, as the owner will: a sequence
    number the shard does not hold is refused here, rather than make the shard fail to start
    (and retry) in every replica that takes it."""
    for shard_id, target in sequences.items():
        position = StartPosition("AT_SEQUENCE_NUMBER", target.sequence_number)
        try:
            await api.get_iterator(shard_id, position)
        except PollerError as exc:
            asked = f"{shard_id}={target.sequence_number}"
            problem = f"--to-sequence {asked}: the stream refused it ({exc})"
            raise ConfigError([problem], source=COMMAND) from exc


async def _request_and_wait(
    backend: _Backend, mapping: str, plan: RewindPlan, wait_seconds: float, named: set[str]
) -> int:
    """Write the requests, wait for them, report each shard; the exit status."""
    rewind_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    missing = await backend.request(plan, rewind_id)
    _out(f"rewind {rewind_id} of mapping {mapping}: {len(plan.targets)} shard(s) asked")
    for shard_id in missing:
        _out(f"  {shard_id}  no lease yet (the service has not discovered it): not moved")
    expected = set(plan.targets) - set(missing)
    deadline = time.monotonic() + wait_seconds
    while True:
        states = {s.shard_id: s for s in await backend.progress(rewind_id)}
        done = {s for s in expected if _settled(states.get(s), rewind_id)}
        if done == expected or time.monotonic() >= deadline:
            break
        await anyio.sleep(POLL_SECONDS)
    owners = await backend.owners()
    for shard_id in sorted(expected):
        _out(f"  {shard_id}  {_describe(states.get(shard_id), rewind_id, owners.get(shard_id))}")
    moved = {s for s in done if _moved(states.get(s), rewind_id)}
    skipped = {s for s in done if s not in moved and _skipped(states.get(s), rewind_id)}
    pending = expected - done
    if pending:
        _err(
            f"{COMMAND}: {len(pending)} shard(s) did not apply rewind {rewind_id}"
            f" within {wait_seconds:g} s: {', '.join(sorted(pending))}; the requests stay"
            " pending: a shard's owner applies it at its next batch boundary, or its next"
            " owner when it starts it"
        )
    unmoved_named = named - moved - pending
    if unmoved_named:
        _err(f"{COMMAND}: named shard(s) not moved: {', '.join(sorted(unmoved_named))}")
    failed = pending or unmoved_named or done - moved - skipped
    return EXIT_NOT_APPLIED if failed else EXIT_OK


def _settled(state: RewindState | None, rewind_id: str) -> bool:
    """Nothing more will happen to this rewind on the shard: applied (or skipped), replaced
    by a newer rewind's request, or gone with its lease."""
    return state is None or state.rewind_id != rewind_id or state.applied


def _moved(state: RewindState | None, rewind_id: str) -> bool:
    return (
        state is not None and state.rewind_id == rewind_id and state.applied and not state.skipped
    )


def _skipped(state: RewindState | None, rewind_id: str) -> bool:
    return state is not None and state.rewind_id == rewind_id and state.skipped


def _describe(state: RewindState | None, rewind_id: str, owner: str | None) -> str:
    """One shard's outcome, for the report."""
    if state is None:
        return "NOT APPLIED: its request is gone (the lease was deleted)"
    if state.rewind_id != rewind_id:
        return f"NOT APPLIED: replaced by a newer rewind ({state.rewind_id})"
    if state.skipped:
        return f"{state.applied_to} (SHARD_END): not moved"
    if state.applied:
        return f"{state.applied_from} -> {state.applied_to}  applied by {state.applied_by}"
    who = f"owner {owner}" if owner else "no owner"
    return f"NOT APPLIED ({who}): pending"


def _print_dry_run(mapping: str, plan: RewindPlan, owners: dict[str, str | None]) -> None:
    _out(f"dry run: rewind of mapping {mapping} (nothing is changed)")
    for shard_id in sorted(plan.targets):
        current = describe_checkpoint(plan.current.get(shard_id))
        owner = owners.get(shard_id)
        who = f"  (owner {owner})" if owner else ""
        _out(f"  {shard_id}  {current} -> {plan.targets[shard_id].describe()}{who}")
    for shard_id in plan.closed:
        _out(f"  {shard_id}  SHARD_END (closed: left alone)")


def _out(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - CLI output


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - CLI output
