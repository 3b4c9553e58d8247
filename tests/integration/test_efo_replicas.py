"""Enhanced fan-out across OS processes: a service killed mid-stream and restarted, and leases
moving between replicas, every shard read through SubscribeToShard on ministack.

The service runs as ``python -m poller run`` (``tests/support/process.py``); deliveries go to
the shared JSON-lines file sink (``tests/support/file_sink.py``), one line per batch naming the
process, so loss, order and duplicate checks read one file. A writer thread puts records into
every shard throughout (``tests/support/replicas.py``).

For the replicas, subscriptions pass two proxies (``tests/support/fault_proxy.py``)::

    replica a --> proxy of a --\
                                >--> shared proxy (exclusive_subscriptions) --> ministack
    replica b --> proxy of b --/

The shared proxy refuses a second open subscription to a (consumer, shard), as AWS does
(``ResourceInUseException``, counted in ``injected["resource_in_use"]``); each replica's own
proxy tells the test whose subscription is whose and how it ended (a replica that leaves one
closes its connection: ``client_closed``, passed on to the shared proxy within 50 ms). The lease
table is on DynamoDB Local (``tests/support/dynamodb_local.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import aws_client, create_stream, stream_arn, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.fault_proxy import FaultProxy, Subscription
from tests.support.ministack import active_consumer, ministack, ministack_available
from tests.support.process import Launch, ServiceProcess, write_config
from tests.support.replicas import Writer, leases, overlaps
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ministack_available() is not None, reason=str(ministack_available())),
]

#: Figures (refusals, repeats, failover times) go to the log: ``--log-cli-level=INFO``.
log = logging.getLogger(__name__)

BATCH = 20
MAPPING = "efo"
#: Short leases keep a SIGKILLed replica's failover (lease expiry plus the takeover grace) to
#: seconds; a heartbeat every third of it still leaves a loaded machine room.
LEASE_SECONDS = 5.0
BALANCE_SECONDS = 1.0


@pytest.fixture(scope="module")
def ms_url() -> Iterator[str]:
    with ministack() as url:
        yield url


def stream_with_consumer(url: str, shards: int) -> tuple[str, list[dict[str, Any]], str]:
    """A new stream of ``shards`` shards with an ACTIVE consumer: its name, shards, consumer
    ARN."""
    name = unique("efo")

    async def make() -> tuple[list[dict[str, Any]], str]:
        async with aws_client("kinesis", url) as kinesis:
            made = await create_stream(kinesis, name, shards)
            return made, await active_consumer(kinesis, stream_arn(name), unique("c"))

    made, consumer = anyio.run(make)
    return name, made, consumer


def efo_mapping(consumer_arn: str) -> dict[str, Any]:
    """The mapping: the consumer's shards, pushed, into the file sink's handler. A short
    handler timeout keeps the takeover grace (derived from it) short; batches take ms."""
    handler = {"type": "python", "handler": "tests.support.file_sink:handler", "timeout_seconds": 3}
    return stream_mapping(
        MAPPING, consumer_arn, handler, batch_size=BATCH, shard_discovery_interval_seconds=5
    )


# -- what the sink says ---------------------------------------------------------------------


def runs(batches: list[dict[str, Any]]) -> dict[tuple[int, str], list[int]]:
    """The sequence numbers each process delivered of each shard, in delivery order."""
    found: dict[tuple[int, str], list[int]] = defaultdict(list)
    for batch in sorted(batches, key=lambda b: b["started"]):
        for shard, sequence, _ in batch["records"]:
            found[(batch["pid"], shard)].append(int(sequence))
    return found


def out_of_order(batches: list[dict[str, Any]]) -> list[tuple[int, str, int, int]]:
    """(pid, shard, earlier, later) wherever a process delivered a shard's record at or below
    one it had delivered before."""
    return [
        (pid, shard, earlier, later)
        for (pid, shard), sequences in runs(batches).items()
        for earlier, later in itertools.pairwise(sequences)
        if later <= earlier
    ]


def first_delivery(batches: list[dict[str, Any]], pid: int, shard: str) -> dict[str, Any] | None:
    """The first batch process ``pid`` delivered of ``shard``."""
    mine = [b for b in batches if b["pid"] == pid and b["shard"] == shard]
    return min(mine, key=lambda b: b["started"], default=None)


def delivers_every_shard(sink: Path, pid: int, shards: set[str], after: float = 0.0) -> bool:
    """Whether process ``pid`` delivered a batch of each of ``shards`` that started after
    ``after`` (wall clock)."""
    batches = file_sink.read(str(sink))
    return shards <= {b["shard"] for b in batches if b["pid"] == pid and b["started"] > after}


def repeats(delivered: list[tuple[str, str]]) -> Counter[str]:
    """Per shard, how many deliveries repeated a record delivered before."""
    counts: Counter[str] = Counter()
    for (shard, _), n in Counter(delivered).items():
        counts[shard] += n - 1
    return +counts


# -- 1. one process, killed and restarted ---------------------------------------------------


def pid_of(proc: ServiceProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def sqlite_checkpoints(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT shard_id, sequence_number FROM checkpoints WHERE mapping = ?", (MAPPING,)
        ).fetchall()
    return {shard: int(sequence) for shard, sequence in rows if str(sequence).isdigit()}


def test_sigkill_mid_stream_then_restart_resumes_after_the_checkpoint(
    tmp_path: Path, ms_url: str, launch: Launch
) -> None:
    """One service on a 2-shard stream through a consumer ARN, SIGKILLed while a writer puts
    records, then started again: nothing is lost; each process delivers each shard in sequence
    order; the restarted one starts each shard right after the checkpoint the killed one left,
    so the only repeats are what the killed one delivered past it (at most a batch a shard)."""
    stream, shards, consumer = stream_with_consumer(ms_url, 2)
    shard_ids = {s["ShardId"] for s in shards}
    sink, db = tmp_path / "sink.jsonl", tmp_path / "checkpoints.db"
    config = write_config(
        tmp_path / "poller.yaml",
        service_config(
            ms_url,
            efo_mapping(consumer),
            checkpoints={"path": str(db)},
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 10},
        ),
    )
    env = file_sink.env(sink, sleep=0.02)
    with Writer(ms_url, stream, shards, per_round=5, pause=0.1) as writer:
        first = launch(config, "run1.log", env)
        first_pid = pid_of(first)
        wait_for(
            lambda: (
                len(file_sink.delivered(sink)) >= 150
                and delivers_every_shard(sink, first_pid, shard_ids)
            ),
            30,
            "150 records delivered from both shards before the kill",
        )
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        killed_at = time.time()
        written_at_kill = len(writer.written)
        checkpoints = sqlite_checkpoints(db)

        second = launch(config, "run2.log", env)
        second_pid = pid_of(second)
        wait_for(
            lambda: (
                delivers_every_shard(sink, second_pid, shard_ids)
                and len(writer.written) > written_at_kill + 100
            ),
            30,
            "the restarted service delivering both shards, the writer still writing",
        )
    wait_for(
        lambda: set(file_sink.delivered(sink)) >= set(writer.written),
        30,
        "every written record delivered",
    )
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0

    batches, delivered = file_sink.read(str(sink)), file_sink.delivered(sink)
    assert set(delivered) == set(writer.written), "lost (or unknown) records"
    assert out_of_order(batches) == []
    by_shard: dict[str, list[int]] = defaultdict(list)
    for shard, sequence in writer.written:
        by_shard[shard].append(int(sequence))
    for shard in shard_ids:
        resumed = first_delivery(batches, second_pid, shard)
        assert resumed is not None
        checkpoint = checkpoints.get(shard)
        expected = next(s for s in sorted(by_shard[shard]) if checkpoint is None or s > checkpoint)
        assert int(resumed["records"][0][1]) == expected, (shard, checkpoint, resumed)
        past_checkpoint = [
            s for s in runs(batches)[(first_pid, shard)] if checkpoint is None or s > checkpoint
        ]
        assert len(past_checkpoint) <= BATCH, (shard, checkpoint, past_checkpoint)
        repeated = {int(s) for (sh, s), n in Counter(delivered).items() if sh == shard and n > 1}
        assert repeated == set(past_checkpoint), (shard, repeated, past_checkpoint)
    resumed_after = {
        shard: first_delivery(batches, second_pid, shard)["started"] - killed_at  # type: ignore[index]
        for shard in shard_ids
    }
    busy = len(second.events("shard.subscription_busy"))
    log.info(
        "kill/restart: %d written, repeats %s, first delivery after the kill %s,"
        " subscription_busy %d",
        len(writer.written),
        dict(repeats(delivered)),
        resumed_after,
        busy,
    )


# -- 2. leases moving between replicas ------------------------------------------------------


class EfoReplicas:
    """Replicas by name, sharing one lease table, each reaching Kinesis through a proxy of its
    own (made on first start, kept across restarts) in front of the shared proxy."""

    def __init__(
        self,
        tmp_path: Path,
        stack: contextlib.ExitStack,
        shared: FaultProxy,
        config: dict[str, Any],
    ) -> None:
        self.tmp_path, self.stack, self.shared, self.config = tmp_path, stack, shared, config
        self.sink = tmp_path / "sink.jsonl"
        self.proxies: dict[str, FaultProxy] = {}
        self.procs: dict[str, ServiceProcess] = {}

    def start(self, name: str) -> ServiceProcess:
        if name not in self.proxies:
            self.proxies[name] = self.stack.enter_context(FaultProxy(self.shared.url))
        config = {**self.config, "aws": {**self.config["aws"]}}
        config["aws"]["endpoints"] = {
            **config["aws"]["endpoints"],
            "kinesis": self.proxies[name].url,
        }
        path = write_config(self.tmp_path / f"{name}.yaml", config)
        env = {**file_sink.env(self.sink, sleep=0.02), "POLLER_CHECKPOINTS__REPLICA_ID": name}
        proc = ServiceProcess(path, self.tmp_path / f"{name}.log", env).start()
        self.stack.callback(proc.stop)
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return pid_of(self.procs[name])

    def open_shards(self, name: str) -> set[str]:
        """The shards ``name`` holds an open subscription to."""
        return {s.shard_id for s in self.proxies[name].subscriptions() if s.open}


def owners(lease_store: str, table: str) -> dict[str, str | None]:
    return {lease.shard_id: lease.owner for lease in leases(lease_store, table, MAPPING)}


def subscribed_since(subscriptions: list[Subscription], since: float) -> bool:
    """Whether one of ``subscriptions`` opened after ``since`` (monotonic) and is still open."""
    return any(s.open and s.started > since for s in subscriptions)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_leases_move_between_replicas_and_their_subscriptions_follow(
    tmp_path: Path, ms_url: str, stop: signal.Signals
) -> None:
    """Replica a reads all 4 shards; b joins and is handed half of them; then a is stopped
    (``stop``) and b takes the rest; a writer runs throughout. Every record is delivered, each
    replica delivers each shard in order, no shard runs in two replicas at once, a handed-over
    shard's old subscription was closed by its owner before the new owner subscribed (the
    exclusive proxy refused at most a few attempts), and every shard ends subscribed by b."""
    lease_store = require_dynamodb_local()
    stream, shards, consumer = stream_with_consumer(ms_url, 4)
    shard_ids = {s["ShardId"] for s in shards}
    table = unique("leases")
    checkpoints = {
        "backend": "dynamodb",
        "table": table,
        "lease_duration_seconds": LEASE_SECONDS,
        "balance_interval_seconds": BALANCE_SECONDS,
    }
    config = service_config(
        ms_url,
        efo_mapping(consumer),
        checkpoints=checkpoints,
        endpoints={"dynamodb": lease_store},
        logging={"format": "json"},
        shutdown={"drain_timeout_seconds": 10},
    )
    with (
        contextlib.ExitStack() as stack,
        FaultProxy(ms_url, exclusive_subscriptions=True) as shared,
    ):
        writer = stack.enter_context(Writer(ms_url, stream, shards, per_round=3, pause=0.1))
        fleet = EfoReplicas(tmp_path, stack, shared, config)
        fleet.start("a")
        wait_for(
            lambda: (
                set(owners(lease_store, table).values()) == {"a"}
                and len(owners(lease_store, table)) == 4
                and fleet.open_shards("a") == shard_ids
                and delivers_every_shard(fleet.sink, fleet.pid("a"), shard_ids)
            ),
            40,
            "a holding, subscribed to and delivering all 4 shards",
        )

        # b joins: a hands two shards over gracefully.
        joined = time.monotonic()
        fleet.start("b")
        moved: set[str] = wait_for(
            lambda: (
                {s for s, o in owners(lease_store, table).items() if o == "b"}
                if sorted(Counter(owners(lease_store, table).values()).values()) == [2, 2]
                else set()
            ),
            40,
            "a 2/2 split after b joined",
        )
        wait_for(
            lambda: (
                fleet.open_shards("b") == moved
                and fleet.open_shards("a") == shard_ids - moved
                and delivers_every_shard(fleet.sink, fleet.pid("b"), moved)
            ),
            20,
            "b subscribed to and delivering the shards it was handed, a no longer subscribed",
        )
        refused_at_handoff = shared.injected["resource_in_use"]
        handoff = {shard: handoff_of(fleet, shard, joined) for shard in sorted(moved)}

        # a stops (gracefully or not): b takes the rest.
        orphans = shard_ids - moved
        refused_before_stop = shared.injected["resource_in_use"]
        stopped, stopped_wall = time.monotonic(), time.time()
        fleet.procs["a"].signal(stop)
        exit_code = fleet.procs["a"].wait(30)
        wait_for(
            lambda: (
                set(owners(lease_store, table).values()) == {"b"}
                and all(
                    subscribed_since(fleet.proxies["b"].subscriptions(s), stopped) for s in orphans
                )
                and delivers_every_shard(fleet.sink, fleet.pid("b"), orphans, after=stopped_wall)
            ),
            40,
            "b holding, subscribed to and delivering every shard after a stopped",
        )
        takeover = {
            shard: handoff_of(fleet, shard, stopped, old="a", new="b") for shard in sorted(orphans)
        }
        refused_at_takeover = shared.injected["resource_in_use"] - refused_before_stop
        written_then = len(writer.written)
        wait_for(lambda: len(writer.written) > written_then + 60, 20, "more writes")
        writer.stop()
        wait_for(
            lambda: set(file_sink.delivered(fleet.sink)) >= set(writer.written),
            30,
            "every written record delivered",
        )
        final_open = {name: fleet.open_shards(name) for name in ("a", "b")}
    batches, delivered = file_sink.read(str(fleet.sink)), file_sink.delivered(fleet.sink)
    log.info(
        "%s: %d written; handoff %s (refusals %d); takeover %s (refusals %d); repeats %s;"
        " a exited %d",
        stop.name,
        len(writer.written),
        handoff,
        refused_at_handoff,
        takeover,
        refused_at_takeover,
        dict(repeats(delivered)),
        exit_code,
    )

    assert set(delivered) == set(writer.written), "lost (or unknown) records"
    assert out_of_order(batches) == []
    assert overlaps(batches) == []
    # The graceful handoff: a left each moved shard's subscription itself (closed its
    # connection), before b's first subscription to it opened.
    for shard, seen in handoff.items():
        assert seen["old_endings"] == ["client_closed"], (shard, seen)
        assert seen["closed_before_new"], (shard, seen)
    assert refused_at_handoff <= len(moved), f"{refused_at_handoff} refusals at the handoff"
    # Every shard ends subscribed by b, through a subscription opened after it got the shard;
    # a holds none open.
    assert final_open == {"a": set(), "b": shard_ids}
    for shard, seen in takeover.items():
        assert seen["closed_before_new"], (shard, seen)
    if stop == signal.SIGTERM:
        assert exit_code == 0
        for shard, seen in takeover.items():
            assert seen["old_endings"] == ["client_closed"], (shard, seen)
        assert refused_at_takeover <= len(orphans)
        assert repeats(delivered) == Counter(), "graceful handoffs repeat nothing"
    else:
        assert exit_code == -signal.SIGKILL
        # The kernel closes a killed process's connections: seen as the client leaving.
        for shard, seen in takeover.items():
            assert set(seen["old_endings"]) == {"client_closed"}, (shard, seen)
        assert all(n <= BATCH for n in repeats(delivered).values()), repeats(delivered)
        assert set(repeats(delivered)) <= orphans


def handoff_of(
    fleet: EfoReplicas, shard: str, since: float, old: str = "a", new: str = "b"
) -> dict[str, Any]:
    """How ``shard`` moved from ``old`` to ``new`` after ``since`` (monotonic): how ``old``'s
    subscriptions to it ended, whether the last ended before ``new``'s first one (after
    ``since``) opened, and how long after ``since`` that was (seconds)."""
    before = fleet.proxies[old].subscriptions(shard)
    after = [s for s in fleet.proxies[new].subscriptions(shard) if s.started > since]
    first_new = min(s.started for s in after)
    last_old_end = max((s.ended or float("inf") for s in before), default=float("-inf"))
    return {
        "old_endings": sorted({str(s.ending) for s in before}),
        "closed_before_new": last_old_end <= first_new,
        "new_after_s": round(first_new - since, 2),
        "gap_s": round(first_new - last_old_end, 2),
    }
