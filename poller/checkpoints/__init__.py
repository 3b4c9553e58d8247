"""Checkpoint backends: where shard positions are kept, and the registry that opens them.

Data flow::

    config (checkpoints section) --open_checkpoints--> SoloCheckpoints | SharedCheckpoints
    poller.streams.ownership.ownership_for(that, mapping) --> the mapping's ShardOwnership
    StreamMappingRunner --checkpoints through ShardOwnership.store--> the backend

* ``sqlite`` (:mod:`.sqlite`): one replica owns every shard; :class:`SoloCheckpoints` holds
  the open store (``memory`` is the same shape, for tests).
* ``dynamodb`` (:mod:`.dynamodb`): replicas share the shards through the lease table;
  :class:`SharedCheckpoints` holds the table, this replica's identity and the lease timing.
  Opening it waits out an outage of DynamoDB (alive, not ready meanwhile); only a definitive
  configuration problem (a wrong key schema, ``create_table: false`` and no table, no AWS
  credentials at all) raises.

A backend is one opener here and one entry in ``_OPENERS``, keyed by ``checkpoints.backend``;
what a mapping does with it (solo or leased ownership) is decided in
:mod:`poller.streams.ownership`, the one place that tells the two apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog
from botocore.exceptions import NoCredentialsError, PartialCredentialsError

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.errors import CheckpointError, ConfigError
from poller.retry import Backoff

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.config import CheckpointSettings
    from poller.types import CheckpointStore

__all__ = [
    "LEASE_TABLE_BACKOFF",
    "Checkpoints",
    "SharedCheckpoints",
    "SoloCheckpoints",
    "open_checkpoints",
]

#: The service's logger: these lines are part of its start-up story (``lease_table.unavailable``).
log = structlog.get_logger("poller.app")

#: Between attempts to reach the lease table at start-up.
LEASE_TABLE_BACKOFF = Backoff(initial=0.5, maximum=30.0)


@dataclass(frozen=True, slots=True)
class SoloCheckpoints:
    """One replica owns every shard: checkpoints go straight to ``store``."""

    store: CheckpointStore

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


@dataclass(frozen=True, slots=True)
class SharedCheckpoints:
    """Replicas share the shards through the lease table ``table``, as ``replica``."""

    table: DynamoDBLeaseTable
    replica: str
    settings: CheckpointSettings

    async def aclose(self) -> None:
        """Nothing to close: the table's client belongs to the service's client factory."""


Checkpoints = SoloCheckpoints | SharedCheckpoints


@dataclass(frozen=True, slots=True)
class _Environment:
    """What openers need besides the checkpoints section."""

    clients: ClientFactory
    #: This replica's name when the config gives none (the ECS task id, else host-pid-random).
    replica_identity: Callable[[], Awaitable[str]]
    #: The service's stop signal: a wait on an outage is abandoned on it.
    stopping: anyio.Event


async def _open_sqlite(cfg: CheckpointSettings, env: _Environment) -> Checkpoints | None:
    """The SQLite file, created with its schema when missing."""
    store = await SqliteCheckpointStore(cfg.path, synchronous=cfg.synchronous).open()
    return SoloCheckpoints(store)


async def _open_lease_table(cfg: CheckpointSettings, env: _Environment) -> Checkpoints | None:
    """The lease table (made sure of, for as long as DynamoDB does not answer), and this
    replica's identity; None when a stop was requested before the table answered (start-up
    has nothing in flight that a drain would wait for)."""
    assert cfg.table is not None  # the config requires it with this backend
    table = DynamoDBLeaseTable(await env.clients.client("dynamodb"), cfg.table)
    with anyio.CancelScope() as wait:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_set, env.stopping, wait)
            await _ensure_lease_table(table, create=cfg.create_table)
            tg.cancel_scope.cancel()
    if wait.cancelled_caught:
        return None
    replica = cfg.replica_id or await env.replica_identity()
    log.info("replica.identity", replica=replica, lease_table=cfg.table)
    return SharedCheckpoints(table, replica, cfg)


async def _ensure_lease_table(table: DynamoDBLeaseTable, *, create: bool) -> None:
    """Make sure the lease table exists, retrying for as long as DynamoDB does not answer.

    An outage is waited out, logged at every attempt (``/readyz`` is not ready meanwhile).
    A ConfigError (a wrong key schema; no table while creating it is disabled) and missing
    AWS credentials are definitive: waiting cannot fix them, so they propagate and the
    process exits with one clear line.
    """
    # Not ``poller.retry.retrying``: this wait is unbounded and logs ``lease_table.unavailable``
    # with its hint (what operators watch at start-up), not a generic ``retry.scheduled``.
    attempt = 0
    while True:
        try:
            await table.ensure_table(create=create)
        except CheckpointError as exc:
            if isinstance(exc.__cause__, NoCredentialsError | PartialCredentialsError):
                raise
            attempt += 1
            wait = LEASE_TABLE_BACKOFF.delay(attempt)
            log.warning(
                "lease_table.unavailable",
                error=str(exc),
                attempt=attempt,
                wait_s=round(wait, 2),
                hint="retrying; the mappings start once the lease table answers",
            )
            await anyio.sleep(wait)
        else:
            return


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


#: Openers by ``checkpoints.backend``; None when a stop was requested while opening.
_OPENERS: dict[str, Callable[[CheckpointSettings, _Environment], Awaitable[Checkpoints | None]]] = {
    "sqlite": _open_sqlite,
    "dynamodb": _open_lease_table,
}


async def open_checkpoints(
    cfg: CheckpointSettings,
    *,
    clients: ClientFactory,
    replica_identity: Callable[[], Awaitable[str]],
    stopping: anyio.Event,
) -> Checkpoints | None:
    """Open the checkpoint backend the config names; the caller closes it with ``aclose``.
    None when ``stopping`` was set while the lease table did not answer yet.

    Args:
        cfg: the checkpoints section of the settings.
        clients: the service's client factory; the lease table takes its DynamoDB client.
        replica_identity: names this replica when ``checkpoints.replica_id`` is not set.
        stopping: the service's stop signal; waiting for the lease table ends on it.

    Raises:
        ConfigError: the backend has no opener, or the lease table cannot be used as it is.
        CheckpointError: the SQLite file cannot be opened; no AWS credentials for the table.
    """
    opener = _OPENERS.get(cfg.backend)
    if opener is None:
        known = ", ".join(sorted(_OPENERS))
        raise ConfigError(
            [f"checkpoints.backend: unknown backend {cfg.backend!r} (known: {known})"]
        )
    env = _Environment(clients=clients, replica_identity=replica_identity, stopping=stopping)
    return await opener(cfg, env)
