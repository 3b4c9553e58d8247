"""Several poller replicas as OS processes sharing one lease table, for the lease tests.

Every replica runs ``python -m poller run`` with the same configuration (the ``dynamodb``
checkpoint backend, its lease table on DynamoDB Local, ``tests/support/dynamodb_local.py``,
when the fleet is given one, else on moto's server) and its own ``replica_id``; deliveries go to one
shared JSON-lines sink (``tests/support/file_sink.py``) that records, per batch, the process,
the shard, and when the handler started and finished, which is what overlap, duplicate and loss
checks need. A writer thread puts records continuously, one shard after another (moto loses
records under concurrent puts to one shard).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio

from poller.checkpoints.dynamodb import DynamoDBLeaseTable, Lease
from poller.errors import CheckpointError
from tests.support import file_sink
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.process import ServiceProcess, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for


def fleet_mapping(stream: str, handler_timeout: float) -> dict[str, Any]:
    """The fleet's one mapping: ``stream`` delivered to the shared file sink's handler."""
    handler = {
        "type": "python",
        "handler": "tests.support.file_sink:handler",
        "timeout_seconds": handler_timeout,
    }
    return stream_mapping(
        "fleet",
        stream_arn(stream),
        handler,
        batch_size=20,
        shard_discovery_interval_seconds=5,
    )


def fleet_config(
    tmp_path: Path,
    moto_url: str,
    stream: str,
    table: str,
    endpoints: dict[str, str] | None = None,
    **checkpoints: Any,
) -> Path:
    # A short handler timeout keeps the lease takeover grace (the target's timeout by default)
    # and so the failover short; the fleet's handler takes milliseconds.
    mapping = fleet_mapping(stream, handler_timeout=3)
    return write_config(
        tmp_path / "replica.yaml",
        service_config(
            moto_url,
            mapping,
            checkpoints={"backend": "dynamodb", "table": table, **checkpoints},
            endpoints=endpoints,
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 20},
        ),
    )


class Fleet:
    """Replicas by name, started and stopped by the test."""

    def __init__(
        self,
        tmp_path: Path,
        config: Path,
        sink: Path,
        sleep: float = 0.02,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path, self.config, self.sink = tmp_path, config, sink
        self.sleep = sleep
        self.env = env or {}  # more of the sink handler's settings (file_sink.env)
        self.procs: dict[str, ServiceProcess] = {}
        self._runs = Counter[str]()

    def start(self, name: str) -> ServiceProcess:
        self._runs[name] += 1
        env = {**file_sink.env(self.sink, sleep=self.sleep), **self.env}
        env["POLLER_CHECKPOINTS__REPLICA_ID"] = name
        log = self.tmp_path / f"{name}-{self._runs[name]}.log"
        proc = ServiceProcess(self.config, log, env).start()
        self.procs[name] = proc
        return proc

    def start_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.start(name)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def batches(self) -> list[dict[str, Any]]:
        return file_sink.read(str(self.sink))

    def delivered(self) -> list[tuple[str, str]]:
        return file_sink.delivered(self.sink)

    def wait_delivered(self, writer: Writer, what: str, limit: float = 60) -> None:
        """Wait until every record ``writer`` wrote was delivered."""
        wait(lambda: set(self.delivered()) >= set(writer.written), limit, what)


class Writer:
    """Puts records round-robin over the shards from a background thread until stopped.

    Partition keys are unique (``k<n>``), or, with ``keys_per_shard``, cycle over that many keys
    per shard (``s<i>-k<j>``), so that per-key order means something to the checker.
    """

    def __init__(
        self,
        moto_url: str,
        stream: str,
        shards: list[dict[str, Any]],
        per_round: int = 5,
        *,
        pause: float = 0.2,
        keys_per_shard: int | None = None,
    ) -> None:
        self.moto_url, self.stream, self.shards, self.per_round = (
            moto_url,
            stream,
            shards,
            per_round,
        )
        self.pause, self.keys_per_shard = pause, keys_per_shard
        self.written: list[tuple[str, str]] = []
        self.keys: dict[tuple[str, str], str] = {}  # (shard, sequence) -> partition key
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: anyio.run(self._run), daemon=True)

    async def _run(self) -> None:
        async with aws_client("kinesis", self.moto_url) as kinesis:
            n = 0
            while not self._stop.is_set():
                for index, shard in enumerate(self.shards):
                    keys = [self._key(index, n + i) for i in range(self.per_round)]
                    entries = [(key, b"{}", hash_key_for(shard)) for key in keys]
                    put = await put_records(kinesis, self.stream, entries)
                    self.keys.update(zip(put, keys, strict=True))
                    self.written += put
                    n += self.per_round
                await anyio.sleep(self.pause)

    def _key(self, shard_index: int, n: int) -> str:
        if self.keys_per_shard is None:
            return f"k{n}"
        return f"s{shard_index}-k{n % self.keys_per_shard}"

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


async def make_stream(moto_url: str, stream: str, shards: int) -> list[dict[str, Any]]:
    async with aws_client("kinesis", moto_url) as kinesis:
        return await create_stream(kinesis, stream, shards)


def new_fleet(
    workdir: Path,
    moto_url: str,
    prefix: str,
    endpoints: dict[str, str] | None = None,
    *,
    lease_store: str | None = None,
) -> tuple[Fleet, str, str, list[dict[str, Any]]]:
    """A fleet (no replica started yet) on a new 8-shard stream and a new lease table (on
    ``lease_store``, a DynamoDB endpoint, else on moto); returns it with the stream's name, the
    table's name and the shards. ``endpoints`` win (a fault proxy in front of the store)."""
    stream, table = unique(prefix), unique("leases")
    shards = anyio.run(make_stream, moto_url, stream, 8)
    if lease_store is not None:
        LEASE_STORES[table] = lease_store
        endpoints = {"dynamodb": lease_store, **(endpoints or {})}
    config = fleet_config(workdir, moto_url, stream, table, endpoints=endpoints)
    return Fleet(workdir, config, workdir / "sink.jsonl"), stream, table, shards


#: Where each fleet's lease table lives (table name -> DynamoDB endpoint), when not on moto.
LEASE_STORES: dict[str, str] = {}


def leases(moto_url: str, table: str, mapping: str = "fleet") -> list[Lease]:
    """The table's leases, read from the fleet's lease store (``moto_url`` if it has none)."""
    endpoint = LEASE_STORES.get(table, moto_url)

    async def read() -> list[Lease]:
        async with aws_client("dynamodb", endpoint) as client:
            try:
                return await DynamoDBLeaseTable(client, table).list_leases(mapping)
            except CheckpointError:
                return []  # the replicas have not created the table yet

    return anyio.run(read)


def owner_counts(moto_url: str, table: str) -> dict[str | None, int]:
    return dict(Counter(lease.owner for lease in leases(moto_url, table)))


def overlaps(batches: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Pairs of batches of one shard, from different processes, whose handler runs overlapped."""
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in batches:
        by_shard[batch["records"][0][0]].append(batch)
    found = []
    for shard, runs in by_shard.items():
        runs.sort(key=lambda b: b["started"])
        for earlier, later in itertools.pairwise(runs):
            if earlier["pid"] != later["pid"] and later["started"] < earlier["finished"]:
                found.append((shard, earlier, later))
    return found


def duplicates(delivered: list[tuple[str, str]]) -> int:
    return sum(n - 1 for n in Counter(delivered).values())


def wait(condition: Any, limit: float, what: str) -> Any:
    """:func:`~tests.support.waiting.wait_for` every 0.2 s: each poll reads the lease table or
    the sink, and the replicas need the shared moto server more than the test does."""
    return wait_for(condition, limit, what, interval=0.2)
