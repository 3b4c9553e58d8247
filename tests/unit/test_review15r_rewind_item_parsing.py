"""Hostile review 15r: one lease item's rewind request must not poison the mapping.

Every read of a lease (the Scan behind planning and ``poller rewind`` itself, the consistent
GetItem of a shard's start, the item returned by a take or a checkpoint write) parses the
item's ``rewindTo``. A request this version cannot read (written by a newer ``poller rewind``
with a kind added, or edited by hand) makes that parse raise, and with it every read of the
lease: the mapping's refresh fails on every cycle (no shard of the mapping is planned or
balanced), the shard's checkpoint writes raise after they were written, and the command that
could replace the request cannot list the leases. The lease must still read as a lease.
"""

from __future__ import annotations

import pytest

from poller.checkpoints.dynamodb import lease_from_item
from poller.checkpoints.dynamodb.items import new_lease_item
from poller.types import Checkpoint


def _item(rewind_to: str) -> dict[str, object]:
    item = new_lease_item("m", "s0", (), Checkpoint(sequence_number="42"))
    item["rewindId"] = {"S": "r1"}
    item["rewindTo"] = {"S": rewind_to}
    return item


@pytest.mark.parametrize("rewind_to", ['{"kind":"at_offset","offset":3}', "not json"])
def test_a_lease_with_an_unreadable_rewind_request_still_reads(rewind_to: str) -> None:
    lease = lease_from_item(_item(rewind_to))
    assert lease.checkpoint == Checkpoint(sequence_number="42")


def test_an_incomplete_rewind_request_is_not_left_for_the_owner_to_fail_on() -> None:
    """A timestamp target without its instant: either not a pending request, or one the
    owner can turn into a checkpoint (else each start of the shard raises, forever)."""
    pending = lease_from_item(_item('{"kind":"timestamp"}')).pending_rewind
    if pending is not None:
        pending.target.checkpoint(0.0)
