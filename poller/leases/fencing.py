"""Heartbeats and fencing: keeping held leases alive, and never acting on one that may be lost.

Data flow: the runner's heartbeat loop calls ``heartbeat`` every ``lease_duration / 3`` (one
write to the mapping's member item, whatever the number of leases held); its fence loop
sleeps ``fence_wait`` and stops the shards that went ``stale``; before every invocation the
processor calls ``ensure_fresh``; the pipeline's checkpoints go through ``checkpoint``, a
fenced write. A lease is fresh from the send time of the latest heartbeat that proves it alive
to peers (see ``HeldLeases.refresh``): peers judge a member's leases by its beat alone. A
replica that cannot heartbeat stops its shards itself before a peer
may take them; a refused fenced write (:class:`~poller.errors.LeaseLost`) stops one at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from poller.errors import CheckpointError, LeaseLost
from poller.leases.held import LeaseContext
from poller.types import Checkpoint, InvokeResult, Target

log = structlog.get_logger("poller.leases")

#: A held lease not proven alive for this part of the lease duration is stale: its shard
#: stops, in-flight invocation included, before a peer can see the lease expire.
STALE_FRACTION = 0.9
#: The fence loop's shortest sleep (a lease already due is handled by the current wake).
MIN_FENCE_WAIT = 0.01


@dataclass(slots=True)
class RenewOutcome:
    """What a heartbeat found: the leases it fenced off (the table unreachable too long)."""

    lost: list[str] = field(default_factory=list)


class LeaseFence:
    """This replica's heartbeats, fenced checkpoint writes of one mapping's held leases, and
    the freshness checks that stop a shard before its lease can have passed to a peer."""

    def __init__(self, ctx: LeaseContext) -> None:
        self._ctx = ctx
        #: The beat: a number that changes at every heartbeat, from the wall clock so that a
        #: restart under the same replica id moves it too.
        self._beat = 0

    @property
    def beat_recently(self) -> bool:
        """Whether the latest successful heartbeat is at most a heartbeat interval old: a lease
        taken now (fresh from that beat) has most of its lease ahead."""
        sent = self._ctx.held.beat_sent
        return sent is not None and self._ctx.clock() - sent < self._ctx.settings.renew_interval

    @property
    def beating(self) -> bool:
        """Whether the latest successful heartbeat is recent enough to take leases on."""
        sent = self._ctx.held.beat_sent
        horizon = self._ctx.settings.lease_duration * STALE_FRACTION
        return sent is not None and self._ctx.clock() - sent < horizon

    async def heartbeat(self) -> RenewOutcome:
        """One heartbeat; on success every held lease still fresh is fresh from its send time.
        On failure (an outage) nothing moves, and leases silent for a lease duration are
        fenced off (the fence loop stops their shards earlier, at ``STALE_FRACTION``)."""
        outcome = RenewOutcome()
        try:
            await self.beat()
        except CheckpointError as exc:
            self._ctx.metrics.dependency_error(self._ctx.mapping, "renew")
            outcome.lost = self._self_fence(exc)
        return outcome

    async def beat(self) -> None:
        """Send one heartbeat; on success refresh the held leases (see ``heartbeat``).
        Raises CheckpointError when the table fails (nothing is fenced off for it here)."""
        ctx = self._ctx
        self._beat = max(time.time_ns(), self._beat + 1)
        sent = ctx.clock()
        await ctx.table.heartbeat(ctx.mapping, ctx.owner, self._beat)
        ctx.held.refresh(sent, ctx.clock(), ctx.settings.lease_duration * STALE_FRACTION)

    def _self_fence(self, exc: Exception) -> list[str]:
        """The table is unreachable: past a lease duration a peer may own a shard; stop it."""
        now, held = self._ctx.clock(), self._ctx.held
        silent = {s: now - held.renewed_at.get(s, now) for s in held.leases}
        log.warning(
            "lease.heartbeat_failed",
            error=str(exc),
            silent_s=round(max(silent.values(), default=0.0), 1),
        )
        lost = [s for s, quiet in silent.items() if quiet >= self._ctx.settings.lease_duration]
        for shard_id in lost:
            held.forget(shard_id, "lost")
        return lost

    def fence_wait(self, longest: float) -> float:
        """Seconds until the soonest held lease goes stale, at most ``longest`` (see
        ``LeaseCoordinator.fence_wait``)."""
        horizon = self._ctx.settings.lease_duration * STALE_FRACTION
        now = self._ctx.clock()
        renewed_at = self._ctx.held.renewed_at
        due = [renewed_at.get(s, now) + horizon - now for s in self._ctx.held.leases]
        return max(min([longest, *due]), MIN_FENCE_WAIT)

    def stale(self) -> list[str]:
        """Held leases not proven alive for 90 % of the lease duration (see
        ``LeaseCoordinator.stale``)."""
        horizon = self._ctx.settings.lease_duration * STALE_FRACTION
        now = self._ctx.clock()
        renewed_at = self._ctx.held.renewed_at
        return [s for s in self._ctx.held.leases if now - renewed_at.get(s, now) >= horizon]

    def ensure_fresh(self, shard_id: str) -> None:
        """Raise LeaseLost unless the lease is held and recently proven alive (see
        ``LeaseCoordinator.ensure_fresh``)."""
        renewed = self._ctx.held.renewed_at.get(shard_id)
        if shard_id not in self._ctx.held.leases or renewed is None:
            raise LeaseLost(
                f"lease of {self._ctx.mapping}/{shard_id} is not held by {self._ctx.owner}"
            )
        silent = self._ctx.clock() - renewed
        if silent > self._ctx.settings.lease_duration - self._ctx.settings.renew_interval:
            self._ctx.held.forget(shard_id, "lost")
            raise LeaseLost(
                f"lease of {self._ctx.mapping}/{shard_id} not proven alive for {silent:.1f} s;"
                " a peer may own it"
            )

    async def checkpoint(self, shard_id: str, checkpoint: Checkpoint) -> None:
        """A fenced checkpoint write. Raises LeaseLost if the lease is no longer ours."""
        held = self._ctx.held
        async with held.lock(shard_id):
            lease = held.leases.get(shard_id)
            if lease is None:
                raise LeaseLost(
                    f"lease of {self._ctx.mapping}/{shard_id} is not held by {self._ctx.owner}"
                )
            try:
                written = await self._ctx.table.checkpoint(lease, self._ctx.owner, checkpoint)
            except LeaseLost:
                if held.leases.get(shard_id) is lease:
                    held.forget(shard_id, "lost")
                raise
            if held.leases.get(shard_id) is not lease:
                # Written, but fenced off (stale) meanwhile: the shard is being stopped as
                # lost. Putting it back would revive it with a stale send time; the table names
                # us, so the balancer re-takes it, fenced, once the old task has finished.
                raise LeaseLost(
                    f"lease of {self._ctx.mapping}/{shard_id} went stale while checkpointing"
                )
            held.keep(shard_id, written)

    async def apply_rewind(self, shard_id: str, rewind_id: str, checkpoint: Checkpoint) -> bool:
        """Write a rewind's checkpoint, fenced exactly like :meth:`checkpoint` (same lock, same
        counter), marking rewind ``rewind_id`` applied. False when the request changed since
        it was read (a newer rewind: read it again); LeaseLost when the lease is not ours."""
        held = self._ctx.held
        async with held.lock(shard_id):
            lease = held.leases.get(shard_id)
            if lease is None:
                raise LeaseLost(
                    f"lease of {self._ctx.mapping}/{shard_id} is not held by {self._ctx.owner}"
                )
            ok, seen = await self._ctx.table.apply_rewind(
                lease, self._ctx.owner, rewind_id, checkpoint
            )
            if ok and seen is not None and held.leases.get(shard_id) is lease:
                held.keep(shard_id, seen)
                return True
            if seen is not None and seen.owner == self._ctx.owner and seen.counter == lease.counter:
                return False  # only the request changed
            if held.leases.get(shard_id) is lease:
                held.forget(shard_id, "lost")
            raise LeaseLost(f"lease of {self._ctx.mapping}/{shard_id} lost while rewinding")


class TrackedTarget:
    """A target that reports an invocation cancelled before it returned (see
    ``LeaseCoordinator.tracked``)."""

    def __init__(self, target: Target, on_abandoned: Callable[[], None]) -> None:
        self.target = target
        self.on_abandoned = on_abandoned
        self.function_arn = target.function_arn

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        try:
            return await self.target.invoke(event)
        except BaseException:  # a cancellation: targets turn failures into outcomes
            self.on_abandoned()
            raise

    async def aclose(self) -> None:
        await self.target.aclose()
