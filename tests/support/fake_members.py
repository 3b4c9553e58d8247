"""Lease protocol v2's member item and lease view for the unit tests' hand-written fake lease
tables (``FakeLeaseTable`` in tests/unit): mixed into a fake, it adds ``members``,
``heartbeat``, ``leave``, ``prune_member``, ``bump_generation`` and ``lease_view`` (the fake's
own consistent ``list_leases``), with DynamoDBLeaseTable's semantics.

New tests use :class:`tests.support.memory_lease_table.MemoryLeaseTable`, the full twin; this
mixin keeps the older fakes (lost answers, move counting) usable for the v2 coordinator.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from poller.checkpoints.dynamodb import Lease, Members


class FakeMemberItem:
    """The member item per mapping, in memory. A fake's ``_call(operation)`` (outage check)
    and ``calls`` counter, when it has them, see these calls too."""

    def _member_call(self, operation: str) -> None:
        check: Any = getattr(self, "_call", None)
        if callable(check):
            check(operation)
        calls: Any = getattr(self, "calls", None)
        if isinstance(calls, Counter):
            calls[operation] += 1

    def _member_items(self) -> dict[str, tuple[dict[str, int], int]]:
        items: dict[str, tuple[dict[str, int], int]] | None = self.__dict__.get("_members")
        if items is None:
            items = {}
            self.__dict__["_members"] = items
        return items

    async def members(self, mapping: str) -> Members:
        self._member_call("members")
        beats, generation = self._member_items().get(mapping, ({}, 0))
        return Members(dict(beats), generation)

    async def heartbeat(self, mapping: str, owner: str, beat: int) -> None:
        self._member_call("heartbeat")
        beats, generation = self._member_items().get(mapping, ({}, 0))
        self._member_items()[mapping] = ({**beats, owner: beat}, generation)
        lose: Any = getattr(self, "_answer", None)  # a fake that can lose answers: this one too
        if callable(lose):
            lose("heartbeat")

    async def leave(self, mapping: str, owner: str) -> None:
        self._member_call("leave")
        beats, generation = self._member_items().get(mapping, ({}, 0))
        self._member_items()[mapping] = ({k: v for k, v in beats.items() if k != owner}, generation)

    async def prune_member(self, mapping: str, owner: str, beat: int) -> bool:
        self._member_call("prune_member")
        beats, generation = self._member_items().get(mapping, ({}, 0))
        if beats.get(owner) != beat:
            return False
        self._member_items()[mapping] = ({k: v for k, v in beats.items() if k != owner}, generation)
        return True

    async def bump_generation(self, mapping: str) -> None:
        self._member_call("bump_generation")
        beats, generation = self._member_items().get(mapping, ({}, 0))
        self._member_items()[mapping] = (beats, generation + 1)

    async def lease_view(self, mapping: str) -> list[Lease]:
        leases: list[Lease] = await self.list_leases(mapping)  # type: ignore[attr-defined]
        return leases
