"""What a finalized delete removes: the mapping's checkpoints, leases and start pin.

Data flow::

    poller.reconcile (a delete drained on every replica, control_api.delete_checkpoints)
        --forget_checkpoints--> the checkpoint backend (lease table items or SQLite rows)

(Owned by helper H2; the signature is fixed by the lead.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from poller.checkpoints import Checkpoints


async def forget_checkpoints(checkpoints: Checkpoints, mapping: str) -> None:
    """Remove every checkpoint, lease and start pin of ``mapping`` (a deleted mapping's
    name, its UUID; no new mapping ever has it)."""
    raise NotImplementedError
