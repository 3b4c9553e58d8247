"""Replica identity: the name this replica writes as ``leaseOwner`` in the lease table.

Computed once at start-up by the app and handed to every mapping's lease coordinator.
"""

from __future__ import annotations

import os
import socket
import uuid

import aiohttp
import structlog

log = structlog.get_logger("poller.leases")


async def replica_identity() -> str:
    """The ECS task id when running on ECS, else host, process and a random suffix."""
    metadata = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if metadata:
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{metadata}/task") as response,
            ):
                task = await response.json(content_type=None)
            return str(task["TaskARN"]).rsplit("/", 1)[-1]
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("replica.ecs_metadata_unavailable", error=str(exc))
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
