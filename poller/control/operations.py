"""The API's operations, one function each, with no HTTP in them.

Data flow::

    poller.control.server (routing, auth) --operation(ctx, ...)--> Answer (status, JSON body)
        --> shapes (validation, rendering), store (records), state (computed State)

Every function returns ``(status, body)`` (``body`` None for 204) or raises
:class:`~poller.control.errors.ApiError`; a store outage is a CheckpointError, which the server
answers 500 ServiceException.

(Owned by helper H3; the signatures are fixed by the lead.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from poller.control.context import ControlContext

#: An operation's answer: the HTTP status and the JSON body (None: no body).
Answer = tuple[int, dict[str, Any] | None]


async def create_mapping(ctx: ControlContext, body: Any) -> Answer:
    """CreateEventSourceMapping: 202 with the mapping in ``Creating``."""
    raise NotImplementedError


async def get_mapping(ctx: ControlContext, uuid: str) -> Answer:
    """GetEventSourceMapping: 200, or 404."""
    raise NotImplementedError


async def list_mappings(ctx: ControlContext, query: Mapping[str, str]) -> Answer:
    """ListEventSourceMappings (EventSourceArn, FunctionName, Marker, MaxItems): 200."""
    raise NotImplementedError


async def update_mapping(ctx: ControlContext, uuid: str, body: Any) -> Answer:
    """UpdateEventSourceMapping: 202 in ``Updating``/``Enabling``/``Disabling``."""
    raise NotImplementedError


async def delete_mapping(ctx: ControlContext, uuid: str) -> Answer:
    """DeleteEventSourceMapping: 202 in ``Deleting``."""
    raise NotImplementedError


async def tag_resource(ctx: ControlContext, resource: str, body: Any) -> Answer:
    """TagResource on a mapping ARN: 204."""
    raise NotImplementedError


async def untag_resource(ctx: ControlContext, resource: str, keys: Sequence[str]) -> Answer:
    """UntagResource: 204."""
    raise NotImplementedError


async def list_tags(ctx: ControlContext, resource: str) -> Answer:
    """ListTags: 200 ``{"Tags": {...}}``."""
    raise NotImplementedError
