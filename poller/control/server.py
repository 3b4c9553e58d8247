"""The control API's HTTP server (aiohttp): routing, limits, authentication, error bodies.

Data flow::

    HTTP request --route--> auth (SigV4 or none) --> poller.control.operations --> JSON reply

(Owned by helper H3; the signature is fixed by the lead.)
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from poller.control.context import ControlContext


@dataclass(frozen=True, slots=True)
class ControlServer:
    """A running control API: where it listens."""

    url: str


async def serve_control_api(
    ctx: ControlContext,
    *,
    task_status: TaskStatus[ControlServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``ctx.settings.host``/``port`` until cancelled, then close (requests
    in flight get a short grace). ``task_status.started`` gets the bound URL."""
    raise NotImplementedError
