"""Enhanced fan-out across OS processes: a service killed mid-stream and restarted; leases
moving between replicas (one joins, one stops or is killed, one is paused past its leases) and
the shards' subscriptions following them; every shard read through SubscribeToShard on
ministack.

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
import math
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import file_sink
from tests.support.aws import aws_client, create_stream, stream_arn, unique
from tests.support.dynamodb_local import require_dynamodb_local
from tests.support.fault_proxy import FaultProxy
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


#: A process's renewed tenure of a shard: (pid, shard) -> the wall time it took the lease again.
Retaken = dict[tuple[int, str], float]


def runs(
    batches: list[dict[str, Any]], retaken: Retaken | None = None
) -> dict[tuple[int, str, bool], list[int]]:
    """The sequence numbers each process delivered of each shard, in delivery order; split in
    two where the process took the shard's lease again (``retaken``): from then on it reads
    from the checkpoint again, so it may repeat what it delivered before losing the lease."""
    again = retaken or {}
    found: dict[tuple[int, str, bool], list[int]] = defaultdict(list)
    for batch in sorted(batches, key=lambda b: b["started"]):
        for shard, sequence, _ in batch["records"]:
            pid = batch["pid"]
            later = batch["started"] > again.get((pid, shard), math.inf)
            found[(pid, shard, later)].append(int(sequence))
    return found


def out_of_order(
    batches: list[dict[str, Any]], retaken: Retaken | None = None
) -> list[tuple[int, str, int, int]]:
    """(pid, shard, earlier, later) wherever a process delivered a shard's record at or below
    one it had delivered before in the same tenure of its lease (see :func:`runs`)."""
    return [
        (pid, shard, earlier, later)
        for (pid, shard, _), sequences in runs(batches, retaken).items()
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
    """The process id of a started service (the sink names batches by it)."""
    assert proc.proc is not None
    return proc.proc.pid


def sqlite_checkpoints(db: Path) -> dict[str, int]:
    """Each shard's checkpointed sequence number in the sqlite store."""
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
    resumed_after: dict[str, float] = {}
    for shard in shard_ids:
        resumed = first_delivery(batches, second_pid, shard)
        assert resumed is not None
        resumed_after[shard] = round(resumed["started"] - killed_at, 2)
        checkpoint = checkpoints.get(shard)
        expected = next(s for s in sorted(by_shard[shard]) if checkpoint is None or s > checkpoint)
        assert int(resumed["records"][0][1]) == expected, (shard, checkpoint, resumed)
        past_checkpoint = [
            s
            for s in runs(batches)[(first_pid, shard, False)]
            if checkpoint is None or s > checkpoint
        ]
        assert len(past_checkpoint) <= BATCH, (shard, checkpoint, past_checkpoint)
        repeated = {int(s) for (sh, s), n in Counter(delivered).items() if sh == shard and n > 1}
        assert repeated == set(past_checkpoint), (shard, repeated, past_checkpoint)
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


class EfoFleet:
    """Replicas by name on a 4-shard stream, sharing one lease table, each reaching Kinesis
    through a proxy of its own (made on first start) in front of the shared exclusive proxy;
    a writer puts records into every shard from the start."""

    def __init__(
        self, tmp_path: Path, stack: contextlib.ExitStack, ms_url: str, lease_store: str
    ) -> None:
        self.tmp_path, self.stack, self.lease_store = tmp_path, stack, lease_store
        self.stream, shards, consumer = stream_with_consumer(ms_url, 4)
        self.shard_ids = {s["ShardId"] for s in shards}
        self.table = unique("leases")
        self.shared = stack.enter_context(FaultProxy(ms_url, exclusive_subscriptions=True))
        checkpoints = {
            "backend": "dynamodb",
            "table": self.table,
            "lease_duration_seconds": LEASE_SECONDS,
            "balance_interval_seconds": BALANCE_SECONDS,
        }
        self.config = service_config(
            ms_url,
            efo_mapping(consumer),
            checkpoints=checkpoints,
            endpoints={"dynamodb": lease_store},
            logging={"format": "json"},
            shutdown={"drain_timeout_seconds": 10},
        )
        self.sink = tmp_path / "sink.jsonl"
        self.proxies: dict[str, FaultProxy] = {}
        self.procs: dict[str, ServiceProcess] = {}
        self.writer = stack.enter_context(Writer(ms_url, self.stream, shards, 3, pause=0.1))

    def start(self, name: str) -> ServiceProcess:
        if name not in self.proxies:
            self.proxies[name] = self.stack.enter_context(FaultProxy(self.shared.url))
        aws = self.config["aws"]
        endpoints = {**aws["endpoints"], "kinesis": self.proxies[name].url}
        config = {**self.config, "aws": {**aws, "endpoints": endpoints}}
        path = write_config(self.tmp_path / f"{name}.yaml", config)
        env = {**file_sink.env(self.sink, sleep=0.02), "POLLER_CHECKPOINTS__REPLICA_ID": name}
        proc = ServiceProcess(path, self.tmp_path / f"{name}.log", env).start()
        self.stack.callback(proc.stop)
        self.procs[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return pid_of(self.procs[name])

    def owners(self) -> dict[str, str | None]:
        """Each shard's lease owner, from the lease table."""
        found = leases(self.lease_store, self.table, MAPPING)
        return {lease.shard_id: lease.owner for lease in found}

    def held_by(self, name: str) -> set[str]:
        return {shard for shard, owner in self.owners().items() if owner == name}

    def share(self, name: str, count: int) -> set[str]:
        """The shards ``name`` holds once it holds ``count`` of them, else nothing."""
        held = self.held_by(name)
        return held if len(held) == count else set()

    def open_shards(self, name: str) -> set[str]:
        """The shards ``name`` holds an open subscription to."""
        return {s.shard_id for s in self.proxies[name].subscriptions() if s.open}

    def serving(self, name: str, shards: set[str], after: float = 0.0) -> bool:
        """Whether ``name`` holds the leases of exactly ``shards``, is subscribed to exactly
        them, and delivered a batch of each that started after ``after`` (wall clock)."""
        return (
            self.held_by(name) == shards
            and self.open_shards(name) == shards
            and delivers_every_shard(self.sink, self.pid(name), shards, after)
        )

    def refusals(self) -> int:
        """Subscribes the shared proxy refused: another subscription to the shard was open."""
        return self.shared.injected["resource_in_use"]

    def drain(self) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Stop the writer once it wrote more; wait until every record was delivered; the
        batches and the deliveries."""
        written = len(self.writer.written)
        wait_for(lambda: len(self.writer.written) > written + 60, 20, "more writes")
        self.writer.stop()
        wait_for(
            lambda: set(file_sink.delivered(self.sink)) >= set(self.writer.written),
            30,
            "every written record delivered",
        )
        return file_sink.read(str(self.sink)), file_sink.delivered(self.sink)


@pytest.fixture
def fleet(tmp_path: Path, ms_url: str) -> Iterator[EfoFleet]:
    lease_store = require_dynamodb_local()  # the lease table on DynamoDB Local
    with contextlib.ExitStack() as stack:
        yield EfoFleet(tmp_path, stack, ms_url, lease_store)


def moved(fleet: EfoFleet, shard: str, since: float, old: str, new: str) -> dict[str, Any]:
    """How ``shard`` moved from ``old`` to ``new`` after ``since`` (monotonic): how ``old``'s
    subscriptions to it ended, whether the last ended before ``new``'s first one (after
    ``since``) opened, and when ``new``'s opened (seconds after ``since``, and after ``old``'s
    last closed)."""
    before = fleet.proxies[old].subscriptions(shard)
    after = [s for s in fleet.proxies[new].subscriptions(shard) if s.started > since]
    first_new = min(s.started for s in after)
    last_old_end = max((s.ended or math.inf for s in before), default=-math.inf)
    return {
        "old_endings": sorted({str(s.ending) for s in before}),
        "closed_before_new": last_old_end <= first_new,
        "new_after_s": round(first_new - since, 2),
        "gap_s": round(first_new - last_old_end, 2),
    }


def assert_complete_and_ordered(
    batches: list[dict[str, Any]],
    delivered: list[tuple[str, str]],
    written: list[Any],
    retaken: Retaken | None = None,
) -> None:
    assert set(delivered) == set(written), "lost (or unknown) records"
    assert out_of_order(batches, retaken) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_leases_move_between_replicas_and_their_subscriptions_follow(
    fleet: EfoFleet, stop: signal.Signals
) -> None:
    """Replica a reads all 4 shards; b joins and is handed half of them; then a is stopped
    (``stop``) and b takes the rest; a writer runs throughout. Every record is delivered, each
    replica delivers each shard in order, no shard runs in two replicas at once, a handed-over
    shard's old subscription was closed by its owner (not left open) before the new owner
    subscribed, the exclusive proxy refused at most a few subscribes, and every shard ends
    subscribed by b."""
    every = fleet.shard_ids
    fleet.start("a")
    wait_for(lambda: fleet.serving("a", every), 40, "a holding, reading, delivering 4 shards")

    # b joins: a hands two shards over gracefully.
    joined = time.monotonic()
    fleet.start("b")
    handed: set[str] = wait_for(lambda: fleet.share("b", 2), 40, "a 2/2 split")
    wait_for(
        lambda: fleet.serving("b", handed) and fleet.serving("a", every - handed),
        20,
        "b reading and delivering the shards it was handed, a the others only",
    )
    handoff = {shard: moved(fleet, shard, joined, "a", "b") for shard in sorted(handed)}
    refused_at_handoff = fleet.refusals()

    # a stops (gracefully or not): b takes the rest.
    stopped, stopped_wall = time.monotonic(), time.time()
    fleet.procs["a"].signal(stop)
    exit_code = fleet.procs["a"].wait(30)
    wait_for(lambda: fleet.serving("b", every, after=stopped_wall), 40, "b serving every shard")
    orphans = every - handed
    takeover = {shard: moved(fleet, shard, stopped, "a", "b") for shard in sorted(orphans)}
    refused_at_takeover = fleet.refusals() - refused_at_handoff
    batches, delivered = fleet.drain()
    final_open = {name: fleet.open_shards(name) for name in ("a", "b")}
    log.info(
        "%s: %d written; handoff %s (refusals %d); takeover %s (refusals %d); repeats %s;"
        " a exited %d",
        stop.name,
        len(fleet.writer.written),
        handoff,
        refused_at_handoff,
        takeover,
        refused_at_takeover,
        dict(repeats(delivered)),
        exit_code,
    )

    assert_complete_and_ordered(batches, delivered, fleet.writer.written)
    assert overlaps(batches) == []
    # The graceful handoff: a left each moved shard's subscription itself (closed its
    # connection), before b's first subscription to it opened.
    for shard, seen in handoff.items():
        assert seen["old_endings"] == ["client_closed"], (shard, seen)
        assert seen["closed_before_new"], (shard, seen)
    assert refused_at_handoff <= len(handed), f"{refused_at_handoff} refusals at the handoff"
    # Every shard ends subscribed by b (through a subscription opened after a stopped, for
    # a's shards); a holds none open.
    assert final_open == {"a": set(), "b": every}
    for shard, seen in takeover.items():
        # A killed process's connections are closed by the kernel: the client left too.
        assert seen["old_endings"] == ["client_closed"], (shard, seen)
        assert seen["closed_before_new"], (shard, seen)
    assert refused_at_takeover <= len(orphans), f"{refused_at_takeover} refusals at takeover"
    if stop == signal.SIGTERM:
        assert exit_code == 0
        assert repeats(delivered) == Counter(), "graceful handoffs repeat nothing"
    else:
        assert exit_code == -signal.SIGKILL
        assert set(repeats(delivered)) <= orphans, "only a's shards in flight at the kill"
        assert all(n <= BATCH for n in repeats(delivered).values()), repeats(delivered)


def test_a_paused_replica_leaves_its_subscriptions_once_it_learns_it_lost_its_leases(
    fleet: EfoFleet,
) -> None:
    """SIGSTOP replica a past its leases: b takes them, but a's subscriptions stay open (its
    connections are alive, as on AWS), so the exclusive proxy refuses b. After SIGCONT, a
    learns it lost the leases and leaves those subscriptions within seconds, starts no batch
    on those shards until it is given their leases again (the fleet rebalances), and every
    shard ends read by its lease's owner. Nothing is lost, nothing reordered, and no shard runs
    in two replicas at once after the resume."""
    every = fleet.shard_ids
    fleet.start("a")
    fleet.start("b")
    wait_for(
        lambda: (
            (mine := fleet.share("a", 2))
            and fleet.serving("a", mine)
            and fleet.serving("b", every - mine)
        ),
        40,
        "a 2/2 split, each replica reading and delivering its shards",
    )
    lost = fleet.held_by("a")
    paused = fleet.procs["a"]
    paused.signal(signal.SIGSTOP)
    wait_for(lambda: fleet.held_by("b") == every, 30, "b taking a's leases")
    wait_for(lambda: fleet.refusals() > 0, 20, "b refused: a's subscriptions still open")
    left_open = [s for s in fleet.proxies["a"].subscriptions() if s.open]
    assert {s.shard_id for s in left_open} == lost
    refused_while_paused = fleet.refusals()
    resumed, resumed_wall = time.monotonic(), time.time()
    paused.signal(signal.SIGCONT)
    wait_for(lambda: all(not s.open for s in left_open), 15, "a leaving the subscriptions it lost")
    left_after = {s.shard_id: round((s.ended or math.inf) - resumed, 2) for s in left_open}
    wait_for(
        lambda: (
            (mine := fleet.share("a", 2))
            and fleet.serving("a", mine, after=resumed_wall)
            and fleet.serving("b", every - mine, after=resumed_wall)
        ),
        30,
        "balanced again, each replica reading and delivering its shards",
    )
    batches, delivered = fleet.drain()
    final = {name: (fleet.held_by(name), fleet.open_shards(name)) for name in ("a", "b")}
    regained = {
        str(e["shard"]): stamp(e)
        for e in paused.events("lease.acquired")
        if stamp(e) > resumed_wall and e["shard"] in lost
    }
    log.info(
        "SIGSTOP: refusals while paused %d, after SIGCONT %d; a left its subscriptions %s s"
        " after SIGCONT; regained %s; repeats %s",
        refused_while_paused,
        fleet.refusals() - refused_while_paused,
        left_after,
        {shard: round(at - resumed_wall, 2) for shard, at in regained.items()},
        dict(repeats(delivered)),
    )

    # A batch a delivered just before the pause, never checkpointed, is read again from the
    # checkpoint once a regains the shard: a repeat in a new tenure (at least once), not a
    # reorder; within each tenure the order holds.
    retaken = {(fleet.pid("a"), shard): at for shard, at in regained.items()}
    assert_complete_and_ordered(batches, delivered, fleet.writer.written, retaken)
    assert all(s.ending == "client_closed" for s in left_open), left_open
    assert max(left_after.values()) <= 5, left_after
    late = [
        b
        for b in batches
        if b["pid"] == fleet.pid("a")
        and b["shard"] in lost
        and resumed_wall < b["started"] < regained.get(b["shard"], math.inf)
    ]
    assert late == [], "the fenced replica started batches on shards it no longer owned"
    assert overlaps([b for b in batches if b["started"] > resumed_wall]) == []
    # Repeated: what a delivered of its lost shards while paused, unable to checkpoint it.
    assert set(repeats(delivered)) <= lost, repeats(delivered)
    assert all(n <= BATCH for n in repeats(delivered).values()), repeats(delivered)
    for held, subscribed in final.values():
        assert held == subscribed


def stamp(event: dict[str, Any]) -> float:
    """A log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
