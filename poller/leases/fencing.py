"""Renewals and fencing: keeping held leases alive, and never acting on one that may be lost.

Data flow: the runner's renew loop calls ``renew_all`` every ``lease_duration / 3`` (fenced
renewals, concurrently); its fence loop sleeps ``fence_wait`` and stops the shards that went
``stale``; before every invocation the processor calls ``ensure_fresh``; the pipeline's
checkpoints go through ``checkpoint``, a fenced write. A replica that cannot renew a lease for
``lease_duration`` stops the shard itself, since a peer may already have taken it; a refused
fenced write (:class:`~poller.errors.LeaseLost`) stops it at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from poller.errors import CheckpointError, LeaseLost
from poller.leases.held import LeaseContext
from poller.types import Checkpoint, InvokeResult, Target

log = structlog.get_logger("poller.leases")

#: A held lease not renewed for this part of the lease duration is stale: its shard stops,
#: in-flight invocation included, before a peer can see the lease expire.
STALE_FRACTION = 0.9
#: The fence loop's shortest sleep (a lease already due is handled by the current wake).
MIN_FENCE_WAIT = 0.01


@dataclass(slots=True)
class RenewOutcome:
    """What a round of renewals found: the leases lost."""

    lost: list[str] = field(default_factory=list)


class LeaseFence:
    """Fenced renewals and checkpoint writes of one mapping's held leases, and the
    freshness checks that stop a shard before its lease can have passed to a peer."""

    def __init__(self, ctx: LeaseContext) -> None:
        self._ctx = ctx

    async def renew_all(self) -> RenewOutcome:
        """Renew every held lease, concurrently (one slow call must not age the others);
        report the lost ones. (Peers' handoff requests are answered by the balancer.)"""
        outcome = RenewOutcome()
        async with anyio.create_task_group() as tg:
            for shard_id in list(self._ctx.held.leases):
                tg.start_soon(self._renew_one, shard_id, outcome)
        return outcome

    async def _renew_one(self, shard_id: str, outcome: RenewOutcome) -> None:
        held = self._ctx.held
        async with held.lock(shard_id):
            lease = held.leases.get(shard_id)
            if lease is None:
                return
            # Freshness counts from when the write was sent: the counter moved no earlier,
            # so a slow answer never makes the lease look younger than peers see it.
            sent = self._ctx.clock()
            try:
                renewed = await self._ctx.table.renew(lease, self._ctx.owner)
            except LeaseLost:
                if held.leases.get(shard_id) is lease:
                    held.forget(shard_id, "lost")
                    outcome.lost.append(shard_id)
                return
            except CheckpointError as exc:
                self._ctx.metrics.dependency_error(self._ctx.mapping, "renew")
                if held.leases.get(shard_id) is lease and self._self_fence(shard_id, exc):
                    outcome.lost.append(shard_id)
                return
            if held.leases.get(shard_id) is not lease:
                # Fenced off (stale) while the answer was on its way: its shard was stopped as
                # lost. Putting it back would revive it with a stale send time; the table names
                # us, so the balancer re-takes it, fenced, once the old task has finished.
                return
            held.keep(shard_id, renewed, sent)

    def _self_fence(self, shard_id: str, exc: Exception) -> bool:
        """The table is unreachable: past a lease duration a peer may own the shard; stop it."""
        renewed_at = self._ctx.held.renewed_at
        silent = self._ctx.clock() - renewed_at.get(shard_id, self._ctx.clock())
        log.warning("lease.renew_failed", shard=shard_id, error=str(exc), silent_s=round(silent, 1))
        if silent < self._ctx.settings.lease_duration:
            return False
        self._ctx.held.forget(shard_id, "lost")
        return True

    def fence_wait(self, longest: float) -> float:
        """Seconds until the soonest held lease goes stale, at most ``longest`` (see
        ``LeaseCoordinator.fence_wait``)."""
        horizon = self._ctx.settings.lease_duration * STALE_FRACTION
        now = self._ctx.clock()
        renewed_at = self._ctx.held.renewed_at
        due = [renewed_at.get(s, now) + horizon - now for s in self._ctx.held.leases]
        return max(min([longest, *due]), MIN_FENCE_WAIT)

    def stale(self) -> list[str]:
        """Held leases not renewed for 90 % of the lease duration (see
        ``LeaseCoordinator.stale``)."""
        horizon = self._ctx.settings.lease_duration * STALE_FRACTION
        now = self._ctx.clock()
        renewed_at = self._ctx.held.renewed_at
        return [s for s in self._ctx.held.leases if now - renewed_at.get(s, now) >= horizon]

    def ensure_fresh(self, shard_id: str) -> None:
        """Raise LeaseLost unless the lease is held and recently renewed (see
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
                f"lease of {self._ctx.mapping}/{shard_id} not renewed for {silent:.1f} s;"
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
            sent = self._ctx.clock()
            try:
                written = await self._ctx.table.checkpoint(lease, self._ctx.owner, checkpoint)
            except LeaseLost:
                if held.leases.get(shard_id) is lease:
                    held.forget(shard_id, "lost")
                raise
            if held.leases.get(shard_id) is not lease:
                # Written, but fenced off (stale) meanwhile: the shard is being stopped as
                # lost; the lease is not revived (see _renew_one).
                raise LeaseLost(
                    f"lease of {self._ctx.mapping}/{shard_id} went stale while checkpointing"
                )
            held.keep(shard_id, written, sent)


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
