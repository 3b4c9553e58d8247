"""A fake-clock simulation of the lease protocol, up to 10,000 shards x 50 replicas.

In-process replicas are real :class:`~poller.leases.LeaseCoordinator` objects, each on one
shared fake monotonic clock, over one in-memory lease table with conditional writes and call
counters (``tests/support/memory_lease_table.py``), each by its own road to it, which a
partition cuts (``tests/support/scale_fleet.py``). A discrete-event loop plays the stream
runner's loops for each replica on that clock, as ``poller/streams/ownership.py`` drives them:

* refresh: every watch interval (1 s; at least every balance interval; just after a peer's
  lease expires): discovery (``sync``) every 30 s, then ``watch`` and, when due, ``balance``;
  the held leases are then run, lost ones stopped, granted ones drained and released;
* heartbeat every ``lease_duration / 3``; the fence loop stops ``stale`` leases.

(With the protocol-v1 coordinator, which has no ``watch``, refresh balances every balance
interval and ``renew_all`` replaces the heartbeat.)

Events: all replicas start together; one joins; one leaves cleanly (releases everything, then
leaves the member map); replicas are killed (they stop calling anything) at a random phase,
each replaced once the fleet resettled;
the whole table goes down for a while, and one replica is cut off from it for a while.

After every step of a replica the simulation checks that no shard has two live owners that
both hold it and would pass ``ensure_fresh`` (both would invoke it), and stops with an error if
one does. Reports time to full assignment, lease moves on join and leave, failover time, and
the table's calls per minute at rest by operation (with on-demand capacity units).

Run: ``.venv/bin/python -m benchmarks.lease_sim [--shards 10000] [--replicas 50]``
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import logging
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

import anyio
import structlog

from poller.core.lineage import ShardInfo
from poller.errors import CheckpointError
from poller.leases import LeaseCoordinator, LeaseSettings
from tests.support.memory_lease_table import MemoryLeaseTable
from tests.support.scale_fleet import TableRoad, coordinator_on

MAPPING = "sim"
#: The runner's constants (poller/streams/ownership.py), on the fake clock.
HANDOFF_POLL_SECONDS = 1.0
FENCE_CHECK_SECONDS = 0.5
EXPIRY_MARGIN_SECONDS = 0.2
DISCOVERY_SECONDS = 30.0
#: A granted shard drains its batch in flight before its lease is released.
DRAIN_SECONDS = 0.2


class ProtocolViolation(AssertionError):
    """Two live replicas both hold one shard and both believe their lease fresh."""


class FakeClock:
    """Monotonic seconds that move only when the event loop says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """One simulated replica: its coordinator and what its runner would be running."""

    def __init__(
        self, name: str, table: MemoryLeaseTable, settings: LeaseSettings, clock: FakeClock
    ):
        self.name = name
        self.link = TableRoad(table)
        self.coord = coordinator_on(
            self.link, mapping=MAPPING, owner=name, settings=settings, clock=clock
        )
        self.v2 = hasattr(self.coord, "watch")
        self.running: set[str] = set()
        self.alive = True
        self.next_discovery = 0.0
        self.draining: set[str] = set()

    def fresh(self, shard_id: str, now: float) -> bool:
        """Whether ``ensure_fresh`` would pass now (read without its side effect)."""
        renewed = self.coord._holdings.renewed_at.get(shard_id)
        settings = self.coord.settings
        return (
            shard_id in self.coord.held
            and renewed is not None
            and now - renewed <= settings.lease_duration - settings.renew_interval
        )


class Simulation:
    """The event loop, the replicas, the exclusivity check and the counters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clock = FakeClock()
        self.table = MemoryLeaseTable(
            "sim-leases",
            clock=self.clock,
            wall_clock=lambda: 1.8e9 + self.clock.now,
            view_lag_seconds=args.view_lag,
        )
        self.settings = LeaseSettings(takeover_grace=args.takeover_grace)
        self.shards = [ShardInfo(f"shardId-{i:012d}") for i in range(args.shards)]
        self.replicas: dict[str, Replica] = {}
        self.random = random.Random(args.seed)
        self._events: list[tuple[float, int, str, str, str]] = []
        self._seq = itertools.count()
        self.holders: defaultdict[str, set[str]] = defaultdict(set)  # shard -> replicas
        self.acquired = 0  # leases newly held by some replica, ever
        self.steps = 0

    # -- the event loop -------------------------------------------------------------------

    def schedule(self, at: float, name: str, kind: str, shard: str = "") -> None:
        heapq.heappush(self._events, (at, next(self._seq), name, kind, shard))

    def start(self, name: str, offset: float = 0.0) -> Replica:
        replica = Replica(name, self.table, self.settings, self.clock)
        self.replicas[name] = replica
        now = self.clock.now + offset
        replica.next_discovery = now
        for kind in ("heartbeat", "refresh", "fence"):
            self.schedule(now, name, kind)
        return replica

    async def run_until(self, done: Callable[[], bool], limit: float, what: str) -> float:
        """Process events until ``done()``; return the fake time then."""
        deadline = self.clock.now + limit
        while not done():
            if not self._events or self._events[0][0] > deadline:
                raise AssertionError(f"{what}: not reached within {limit:.0f} simulated s")
            await self.step()
        return self.clock.now

    async def run_for(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while self._events and self._events[0][0] <= end:
            await self.step()
        self.clock.now = end

    async def step(self) -> None:
        at, _, name, kind, shard = heapq.heappop(self._events)
        self.clock.now = max(self.clock.now, at)
        replica = self.replicas[name]
        if not replica.alive:
            return
        before, beat = set(replica.coord.held), replica.coord._holdings.beat_sent
        await getattr(self, f"_{kind}")(replica, shard)
        self.steps += 1
        # Without a heartbeat in the step (a refresh may send one), only new leases got fresh.
        self._check(replica, before, every=beat != replica.coord._holdings.beat_sent)

    # -- one replica's loops ----------------------------------------------------------------

    async def _refresh(self, replica: Replica, _: str) -> None:
        coord, now = replica.coord, self.clock.now
        try:
            if now >= replica.next_discovery:
                replica.next_discovery = now + DISCOVERY_SECONDS
                await coord.sync(self.shards, lambda shard: None)
            due = await coord.watch() if replica.v2 else True
            if due:
                outcome = await coord.balance(busy=frozenset(replica.running))
                for shard_id in outcome.handoffs:
                    replica.draining.add(shard_id)
                    self.schedule(now + DRAIN_SECONDS, replica.name, "release", shard_id)
        except CheckpointError:
            pass  # the runner logs it and retries at the next refresh
        held = coord.held
        replica.running = {s for s in replica.running if s in held} | set(held)
        self.schedule(now + self._refresh_due_in(replica), replica.name, "refresh")

    def _refresh_due_in(self, replica: Replica) -> float:
        coord, settings = replica.coord, self.settings
        interval = settings.watch_interval if replica.v2 else settings.balance_interval
        if coord.awaiting_handoff:
            interval = min(interval, HANDOFF_POLL_SECONDS)
        due = min(interval, settings.balance_interval)
        expiry = coord.next_expiry()
        if expiry is not None:
            due = min(due, max(expiry - self.clock.now + EXPIRY_MARGIN_SECONDS, 0.1))
        return due

    async def _heartbeat(self, replica: Replica, _: str) -> None:
        coord = replica.coord
        beat = coord.heartbeat if replica.v2 else coord.renew_all
        outcome = await beat()
        replica.running -= set(outcome.lost)
        self.schedule(self.clock.now + self.settings.renew_interval, replica.name, "heartbeat")

    async def _fence(self, replica: Replica, _: str) -> None:
        for shard_id in replica.coord.stale():
            replica.coord.forget(shard_id)
            replica.running.discard(shard_id)
        wait = replica.coord.fence_wait(FENCE_CHECK_SECONDS)
        self.schedule(self.clock.now + wait, replica.name, "fence")

    async def _release(self, replica: Replica, shard_id: str) -> None:
        replica.draining.discard(shard_id)
        replica.running.discard(shard_id)
        # A failed release leaves the lease ours in the table: it expires, or is re-taken.
        with contextlib.suppress(CheckpointError):
            await replica.coord.release(shard_id)

    # -- events -----------------------------------------------------------------------------

    async def leave(self, name: str) -> None:
        """A clean shutdown: drain and release every lease, then leave the member map."""
        replica = self.replicas[name]
        for shard_id in list(replica.coord.held):
            await self._release(replica, shard_id)
        if replica.v2 and not replica.coord.held:
            await replica.coord.leave()
        self._check(replica, set())
        self.kill(name)

    def kill(self, name: str) -> None:
        replica = self.replicas[name]
        replica.alive = False
        for shard_id in replica.coord.held:
            self.holders[shard_id].discard(name)

    # -- checks and figures -----------------------------------------------------------------

    def _check(self, replica: Replica, before: set[str], *, every: bool = True) -> None:
        """No shard held and fresh on two live replicas. Only this replica's step can have made
        a lease fresh (a take, a heartbeat), and a lease only grows staler with time, so
        checking this replica's leases against every other holder after each of its steps
        checks every pair. ``every``: check every held lease (the step sent a heartbeat),
        else only those acquired in the step (a take makes only the lease taken fresh)."""
        held = set(replica.coord.held)
        acquired = held - before
        for shard_id in acquired:
            self.holders[shard_id].add(replica.name)
            self.acquired += 1
        for shard_id in before - held:
            self.holders[shard_id].discard(replica.name)
        now = self.clock.now
        for shard_id in held if every else acquired:
            holders = self.holders[shard_id]
            if len(holders) < 2 or not replica.fresh(shard_id, now):
                continue  # alone (the usual case: no set built per lease and step)
            for other in holders - {replica.name}:
                if self.replicas[other].alive and self.replicas[other].fresh(shard_id, now):
                    raise ProtocolViolation(
                        f"t={now:.2f}: {shard_id} held and fresh on {replica.name} and {other}"
                    )

    def check_all(self) -> None:
        for replica in self.live():
            self._check(replica, set(replica.coord.held))

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.alive]

    def settled(self) -> bool:
        """Every shard held by one live replica, running, and shares at most one apart."""
        counts = [len(r.coord.held) for r in self.live()]
        if sum(counts) != len(self.shards) or max(counts) - min(counts) > 1:
            return False
        return all(len(r.running) == len(r.coord.held) for r in self.live())


async def assignment(sim: Simulation) -> None:
    for i in range(sim.args.replicas):
        sim.start(f"r{i:02d}", offset=sim.random.uniform(0, 1))
    done = await sim.run_until(sim.settled, 600, "full assignment")
    print(
        f"time to full assignment ({len(sim.shards)} shards x {sim.args.replicas} replicas,"
        f" started within 1 s): {done:.1f} s (simulated)"
    )


async def at_rest(sim: Simulation) -> None:
    table = sim.table
    await sim.run_for(30)  # the last generation bumps and their balances pass
    calls, by_call = Counter(table.calls), Counter(table.by_call)
    units = (table.read_units, table.write_units)
    minutes = sim.args.rest_seconds / 60
    await sim.run_for(sim.args.rest_seconds)
    rate = {op: round(n / minutes) for op, n in sorted((table.calls - calls).items())}
    finer = {op: round(n / minutes) for op, n in sorted((table.by_call - by_call).items())}
    reads = sum(rate.get(op, 0) for op in ("GetItem", "Query", "Scan"))
    writes = sum(rate.get(op, 0) for op in ("PutItem", "UpdateItem", "DeleteItem"))
    rru = (table.read_units - units[0]) / minutes
    wru = (table.write_units - units[1]) / minutes
    print(
        f"calls per minute at rest ({len(sim.live())} replicas x {len(sim.shards)} shards):"
        f" {reads} reads, {writes} writes {rate}; {rru:.0f} RRU, {wru:.0f} WRU per minute"
    )
    print(f"  by call: {finer}")


async def moves(sim: Simulation, event: str, change: Callable[[], Awaitable[None]]) -> None:
    acquired, since = sim.acquired, sim.clock.now
    await change()
    done = await sim.run_until(sim.settled, 600, f"rebalance after {event}")
    print(
        f"lease moves on {event}: {sim.acquired - acquired} leases acquired"
        f" (ideal {len(sim.shards) // (len(sim.live()) + (0 if 'joins' in event else 1))}),"
        f" settled in {done - since:.1f} s"
    )


async def failover(sim: Simulation, victim: str) -> float:
    await sim.run_for(sim.random.uniform(0, sim.settings.renew_interval))  # a random phase
    orphans = set(sim.replicas[victim].coord.held)
    sim.kill(victim)
    killed = sim.clock.now

    def resumed() -> bool:
        now = sim.clock.now
        return all(
            any(
                sim.replicas[h].fresh(s, now) and s in sim.replicas[h].running
                for h in sim.holders[s]
            )
            for s in orphans
        )

    back = await sim.run_until(resumed, 600, "failover")
    await sim.run_until(sim.settled, 600, "rebalance after failover")
    # A replacement starts, as an orchestrator restarts a killed process: every run then
    # kills one of the same number of replicas, and runs may outnumber the replicas.
    sim.start(f"{victim}-restarted")
    await sim.run_until(sim.settled, 600, "rebalance after the replacement joined")
    return back - killed


async def outages(sim: Simulation) -> None:
    owners = await lease_owners(sim)
    sim.table.down = True
    await sim.run_for(sim.args.outage_seconds)
    sim.table.down = False
    since = sim.clock.now
    done = await sim.run_until(sim.settled, 600, "resettle after outage")
    after = await lease_owners(sim)
    moved = sum(1 for shard, owner in after.items() if owners.get(shard) != owner)
    print(
        f"whole-table outage of {sim.args.outage_seconds:.0f} s: resettled"
        f" {done - since:.1f} s after it ended, {moved} leases changed owner"
    )
    cut = sim.live()[0]
    cut.link.cut = True
    await sim.run_for(sim.args.outage_seconds)
    cut.link.cut = False
    since = sim.clock.now
    done = await sim.run_until(sim.settled, 600, "resettle after a partition")
    print(
        f"one replica cut off for {sim.args.outage_seconds:.0f} s: resettled"
        f" {done - since:.1f} s after it ended"
    )


async def lease_owners(sim: Simulation) -> dict[str, str | None]:
    """Each lease's owner in the table (read outside the call counters' interest)."""
    return {lease.shard_id: lease.owner for lease in await sim.table.list_leases(MAPPING)}


async def simulate(args: argparse.Namespace) -> None:
    sim = Simulation(args)
    wall = time.perf_counter()
    version = "v2 (heartbeats)" if hasattr(LeaseCoordinator, "watch") else "v1 (renewals)"
    print(
        f"protocol {version}; lease 10 s, takeover grace {args.takeover_grace:.0f} s,"
        f" view lag {args.view_lag} s, seed {args.seed}"
    )
    await assignment(sim)
    await at_rest(sim)
    if not args.skip_moves:
        joiner = f"r{args.replicas:02d}"

        async def join() -> None:
            sim.start(joiner)

        await moves(sim, "a replica joins", join)
        await moves(sim, "a replica leaves (clean)", lambda: sim.leave(joiner))
    # The oldest live replica each time (the one that left is gone; replacements come last).
    times = [await failover(sim, sim.live()[0].name) for _ in range(args.failover_runs)]
    if times:
        median = statistics.median(times)
        print(
            f"failover (kill 1, {len(sim.shards)} shards): median {median:.1f} s,"
            f" min {min(times):.1f} s, max {max(times):.1f} s over {len(times)} runs:"
            f" {[round(t, 1) for t in times]}"
        )
    if args.outage_seconds:
        await outages(sim)
    sim.check_all()
    print(
        f"no shard ever had two fresh owners ({sim.steps} steps checked,"
        f" {sim.clock.now:.0f} s simulated in {time.perf_counter() - wall:.0f} s)"
    )


def main() -> None:
    # Thousands of replicas' lease logs would drown the figures (and cost more than the run).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures as measured
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--rest-seconds", type=float, default=120.0)
    parser.add_argument("--failover-runs", type=int, default=5)
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--takeover-grace", type=float, default=3.0)
    parser.add_argument("--view-lag", type=float, default=0.5, help="the view index's lag, s")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--skip-moves", action="store_true")
    anyio.run(simulate, parser.parse_args())


if __name__ == "__main__":
    main()
