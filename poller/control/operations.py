"""The API's operations, one function each, with no HTTP in them.

Data flow::

    poller.control.server (routing, auth) --operation(ctx, ...)--> Answer (status, JSON body)
        --> shapes (validation, rendering), store (records), state (computed State)

Every function returns ``(status, body)`` (``body`` None for 204) or raises
:class:`~poller.control.errors.ApiError`; a store outage is a CheckpointError, which the server
answers 500 ServiceException.

Two kinds of mapping answer here: those created through the API (records in the store, which
the API may change) and those of the configuration file (read-only: the file is their source
of truth, so a change through the API would be undone by the next SIGHUP). Both are found by
UUID; a file mapping's UUID is its ``mapping_uuid``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any
from uuid import uuid4

from pydantic import TypeAdapter, ValidationError

from poller.config.models.mapping_base import MappingBase
from poller.control import shapes, wire
from poller.control.context import ControlContext
from poller.control.errors import (
    ApiError,
    conflict,
    in_use,
    invalid_parameter,
    not_found,
    validation,
)
from poller.control.model_rules import check_list, coral_message
from poller.control.state import mapping_state
from poller.control.store import (
    Desired,
    MappingRecord,
    PairTaken,
    TooManyMappings,
    pair_key,
    tags_only,
)

if TYPE_CHECKING:
    from poller.config import AnyMapping

#: An operation's answer: the HTTP status and the JSON body (None: no body).
Answer = tuple[int, dict[str, Any] | None]

#: AWS's pattern for a taggable Lambda resource, as its ValidationException quotes it
#: (``esm-api.json``, test_tag_exceptions): copied verbatim, so the message matches.
RESOURCE_ARN_PATTERN = (
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|layer:([a-zA-Z0-9-_]+)"
    r"|code-signing-config:csc-[a-z0-9]{17}|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}"
    r"-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|capacity-provider:[a-zA-Z0-9-_]+)"
)
_RESOURCE_ARN = re.compile(RESOURCE_ARN_PATTERN)
_MAPPING_ARN_TAIL = re.compile(r":event-source-mapping:([0-9a-fA-F-]{36})$")
#: Every mapping's UUID has this form (the API's are uuid4, the file's are checked by its
#: models); any other path parameter is a 404 before the store is asked, so a key the store
#: cannot hold (DynamoDB refuses keys over 2 KiB) is no store error, which SDKs would retry.
_UUID_FORM = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: What Java's Integer.parseInt takes: a sign, then digits (any script's, as Java's).
_INTEGER = re.compile(r"[+-]?\d{1,20}")

#: ListEventSourceMappings: at most this many mappings per page, whatever MaxItems says.
PAGE_LIMIT = 100
_MAX_ITEMS_RANGE = (1, 10000)

# The tag rules of the configuration file's mappings (count, lengths, characters, no `aws:`),
# reused so that a tag the API accepts is one the file would accept too.
_TAGS = TypeAdapter(Annotated[dict[str, str], *MappingBase.model_fields["tags"].metadata])


async def create_mapping(ctx: ControlContext, body: Any) -> Answer:
    """CreateEventSourceMapping: 202 with the mapping in ``Creating``."""
    new = shapes.parse_create(body, settings=ctx.settings, region=ctx.region)
    _refuse_file_pair(ctx, new)
    record = MappingRecord(
        uuid=str(uuid4()),
        revision=0,  # the store sets the revisions
        created_revision=0,
        written=0,
        request=dict(new.request),
        tags=dict(new.tags),
        desired="Enabled" if new.enabled else "Disabled",
        change="create",
        function_arn=new.function_arn,
        pair_key=pair_key(new.function_arn, new.event_source_arn),
        last_modified=ctx.clock(),
    )
    try:
        stored = await ctx.store.create(record, limit=ctx.settings.max_mappings)
    except PairTaken as exc:
        raise _pair_conflict(new.request, new.event_source_arn, exc.uuid) from None
    except TooManyMappings as exc:
        raise invalid_parameter(
            f"poller's control API holds its limit of {exc.limit} event source mappings "
            "(control_api.max_mappings); delete one first, or raise the limit."
        ) from None
    ctx.changed()
    return 202, await _render(ctx, stored)


async def get_mapping(ctx: ControlContext, uuid: str) -> Answer:
    """GetEventSourceMapping: 200, or 404."""
    uuid = _checked_uuid(uuid)
    # The file's mapping first: with a record of the same UUID it is the file's that runs
    # (poller.reconcile), so it is the one to show.
    mapping = _file_mapping(ctx, uuid)
    if mapping is not None:
        return 200, shapes.render_file_mapping(mapping, region=ctx.region)
    record = await ctx.store.get(uuid)
    if record is not None:
        return 200, await _render(ctx, record)
    raise not_found()


async def list_mappings(ctx: ControlContext, query: Mapping[str, str]) -> Answer:
    """ListEventSourceMappings (EventSourceArn, FunctionName, Marker, MaxItems): 200.

    The order is the UUIDs' (stable across calls), and a marker is the last UUID a page
    showed, so paging neither repeats nor skips a mapping that stayed while others came and
    went.
    """
    page_size = min(_max_items(query.get("MaxItems")), PAGE_LIMIT)
    after = wire.decode_marker(query["Marker"]) if "Marker" in query else ""
    source_arn, function = query.get("EventSourceArn"), query.get("FunctionName")
    chosen = [
        item
        for item in await _all_rendered(ctx)
        if item["UUID"] > after
        and (source_arn is None or item.get("EventSourceArn") == source_arn)
        and (function is None or _names_function(function, str(item.get("FunctionArn", ""))))
    ]
    answer: dict[str, Any] = {"EventSourceMappings": chosen[:page_size]}
    if len(chosen) > page_size:
        answer["NextMarker"] = wire.encode_marker(chosen[page_size - 1]["UUID"])
    return 200, answer


async def update_mapping(ctx: ControlContext, uuid: str, body: Any) -> Answer:
    """UpdateEventSourceMapping: 202 in ``Updating``/``Enabling``/``Disabling``.

    A toggle of ``Enabled`` names the change (``Enabling``/``Disabling``) even when other
    fields change with it, as AWS's does. An update that changes nothing writes nothing (a
    retried call is harmless) and answers the current state.
    """
    uuid = _checked_uuid(uuid)
    _refuse_file_mapping(ctx, uuid)
    # A new FunctionName may map a function that another mapping maps to this source already.
    taken = await _pairs_taken(ctx) if isinstance(body, dict) and "FunctionName" in body else {}
    wrote = False
    attempted: Mapping[str, Any] = {}

    def change(current: MappingRecord, revision: int) -> MappingRecord | None:
        nonlocal wrote, attempted
        wrote = False
        if current.desired == "Deleted":
            raise in_use("Cannot update the event source mapping because it is in use.")
        request, enabled = shapes.parse_update(
            current, body, settings=ctx.settings, region=ctx.region
        )
        attempted = request
        desired: Desired = current.desired if enabled is None else _desired(enabled)
        toggled = desired != current.desired
        if not toggled and dict(request) == dict(current.request):
            return None
        wrote = True
        function_arn = _function_arn_after(ctx, current, request)
        source_arn = str(request.get("EventSourceArn", ""))
        pair = pair_key(function_arn, source_arn)
        if taken.get(pair, current.uuid) != current.uuid:
            raise _pair_conflict(request, source_arn, taken[pair])
        return replace(
            current,
            request=dict(request),
            desired=desired,
            change=("enable" if desired == "Enabled" else "disable") if toggled else "update",
            revision=revision,
            function_arn=function_arn,
            pair_key=pair,
            last_modified=ctx.clock(),
        )

    try:
        stored = await ctx.store.update(uuid, change)
    except PairTaken as exc:  # a store that keeps pairs unique on update too, racing
        raise _pair_conflict(
            attempted, str(attempted.get("EventSourceArn", "")), exc.uuid
        ) from None
    if stored is None:
        raise not_found()
    if wrote:
        ctx.changed()
    return 202, await _render(ctx, stored)


async def delete_mapping(ctx: ControlContext, uuid: str) -> Answer:
    """DeleteEventSourceMapping: 202 in ``Deleting``. A repeated delete writes nothing and
    answers the same."""
    uuid = _checked_uuid(uuid)
    _refuse_file_mapping(ctx, uuid)
    wrote = False

    def change(current: MappingRecord, revision: int) -> MappingRecord | None:
        nonlocal wrote
        wrote = current.desired != "Deleted"
        if not wrote:
            return None
        return replace(
            current,
            desired="Deleted",
            change="delete",
            revision=revision,
            last_modified=ctx.clock(),
        )

    stored = await ctx.store.update(uuid, change)
    if stored is None:
        raise not_found()
    if wrote:
        ctx.changed()
    return 202, shapes.render_record(stored, "Deleting", region=ctx.region)


async def tag_resource(ctx: ControlContext, resource: str, body: Any) -> Answer:
    """TagResource on a mapping ARN: 204. New keys are added, existing ones overwritten."""
    uuid = _mapping_uuid_of(resource)
    new_tags = _tags_of_body(body)
    await _change_tags(ctx, resource, uuid, lambda tags: {**tags, **new_tags})
    return 204, None


async def untag_resource(ctx: ControlContext, resource: str, keys: Sequence[str]) -> Answer:
    """UntagResource: 204. Keys the mapping lacks are ignored, as AWS ignores them."""
    uuid = _mapping_uuid_of(resource)
    if not keys:
        raise validation(
            "1 validation error detected: Value null at 'tagKeys' failed to satisfy "
            "constraint: Member must not be null"
        )
    problems = check_list(list(keys), "TagKeyList", "tagKeys")
    if problems:
        raise validation(coral_message(problems))
    gone = set(keys)
    await _change_tags(
        ctx, resource, uuid, lambda tags: {k: v for k, v in tags.items() if k not in gone}
    )
    return 204, None


async def list_tags(ctx: ControlContext, resource: str) -> Answer:
    """ListTags: 200 ``{"Tags": {...}}``; a file mapping's are its YAML ``tags``."""
    uuid = _mapping_uuid_of(resource)
    record = await ctx.store.get(uuid)
    if record is not None:
        _check_resource_names(ctx, resource, record.request["EventSourceArn"], uuid)
        return 200, {"Tags": dict(record.tags)}
    mapping = _file_mapping(ctx, uuid)
    if mapping is not None:
        _check_resource_names(ctx, resource, mapping.event_source_arn, uuid)
        return 200, {"Tags": dict(mapping.tags)}
    raise _mapping_arn_not_found(resource)


# --- helpers -------------------------------------------------------------------------------


async def _render(ctx: ControlContext, record: MappingRecord) -> dict[str, Any]:
    """The record as the API shows it, with its state computed from the replicas' acks."""
    state = mapping_state(record, await ctx.store.acks(), ctx.clock())
    return shapes.render_record(record, state, region=ctx.region)


async def _all_rendered(ctx: ControlContext) -> list[dict[str, Any]]:
    """Every mapping, file and API, rendered, in UUID order."""
    records = await ctx.store.records()
    acks, now = await ctx.store.acks(), ctx.clock()
    files = ctx.file_mappings()
    in_file = {m.mapping_uuid for m in files}
    # A record shadowed by a file mapping of its UUID does not run (poller.reconcile).
    rendered = [
        shapes.render_record(r, mapping_state(r, acks, now), region=ctx.region)
        for r in records.values()
        if r.uuid not in in_file
    ]
    rendered += [shapes.render_file_mapping(m, region=ctx.region) for m in files]
    return sorted(rendered, key=lambda item: str(item["UUID"]))


def _checked_uuid(uuid: str) -> str:
    """The path's UUID, lower-cased; 404 when no mapping can have it."""
    uuid = uuid.lower()
    if not _UUID_FORM.fullmatch(uuid):
        raise not_found()
    return uuid


def _file_mapping(ctx: ControlContext, uuid: str) -> AnyMapping | None:
    return next((m for m in ctx.file_mappings() if m.mapping_uuid == uuid), None)


def _refuse_file_mapping(ctx: ControlContext, uuid: str) -> None:
    """409 for a change of a file mapping: the file is its source of truth. (Not
    ResourceInUseException, which Terraform's delete retries for five minutes.)"""
    mapping = _file_mapping(ctx, uuid)
    if mapping is not None:
        raise conflict(
            f"The event source mapping {uuid} is defined in poller's configuration file "
            f"(mapping '{mapping.name}') and is read-only through the API; change the file "
            "and send SIGHUP."
        )


def _refuse_file_pair(ctx: ControlContext, new: shapes.NewMapping) -> None:
    """AWS's 409 when the configuration file maps this function to this source already."""
    owner = _file_pairs(ctx).get(pair_key(new.function_arn, new.event_source_arn))
    if owner is not None:
        raise _pair_conflict(new.request, new.event_source_arn, owner)


def _file_pairs(ctx: ControlContext) -> dict[str, str]:
    """The file's mappings by pair key (function ARN and source ARN)."""
    pairs: dict[str, str] = {}
    for mapping in ctx.file_mappings():
        shown = shapes.render_file_mapping(mapping, region=ctx.region)
        pairs[pair_key(str(shown["FunctionArn"]), mapping.event_source_arn)] = mapping.mapping_uuid
    return pairs


async def _pairs_taken(ctx: ControlContext) -> dict[str, str]:
    """Every mapping's pair key, the file's and the store's, with its UUID. (A check before
    the write: two updates racing to one pair can both pass it; creates are exact, as the
    store keeps pairs unique.)"""
    records = await ctx.store.records()
    return {**_file_pairs(ctx), **{r.pair_key: r.uuid for r in records.values()}}


def _pair_conflict(request: Mapping[str, Any], source_arn: str, uuid: str) -> ApiError:
    """AWS's text for a second mapping of one function to one source (aws-esm.md §1.1),
    spaces inside the quotes included."""
    function = request.get("FunctionName", "")
    if source_arn.split(":")[2:3] == ["sqs"]:
        return conflict(
            f'An event source mapping with SQS arn (" {source_arn} ") and function '
            f'(" {function} ") already exists. Please update or delete the existing mapping '
            f"with UUID {uuid}"
        )
    return conflict(
        f'The event source arn (" {source_arn} ") and function (" {function} ") provided '
        f"mapping already exists. Please update or delete the existing mapping with UUID {uuid}"
    )


def _desired(enabled: bool) -> Desired:
    return "Enabled" if enabled else "Disabled"


def _function_arn_after(
    ctx: ControlContext, current: MappingRecord, request: Mapping[str, Any]
) -> str:
    """The FunctionArn after an update: unchanged unless FunctionName changed."""
    if request.get("FunctionName") == current.request.get("FunctionName"):
        return current.function_arn
    return shapes.request_function_arn(request, ctx.region)


def _names_function(query: str, function_arn: str) -> bool:
    """Whether ListEventSourceMappings' FunctionName ``query`` names ``function_arn``: the
    full ARN, a partial ARN (``<account>:function:<name>``), or the name, each with the
    qualifier the mapping has (if any)."""
    if not function_arn:
        return False
    parts = function_arn.split(":")
    name = ":".join(parts[6:])  # <name> or <name>:<qualifier>
    partial = ":".join(parts[4:])
    return query in (function_arn, name, partial)


def _max_items(given: str | None) -> int:
    if given is None:
        return PAGE_LIMIT
    low, high = _MAX_ITEMS_RANGE
    # Python's int() also takes "1_0" and " 5 "; Java's parseInt neither.
    if not _INTEGER.fullmatch(given):
        raise validation(
            f"1 validation error detected: Value '{given}' at 'maxItems' failed to satisfy "
            "constraint: Member must be an integer"
        )
    value = int(given)
    if value < low:
        raise validation(
            f"1 validation error detected: Value '{value}' at 'maxItems' failed to satisfy "
            f"constraint: Member must have value greater than or equal to {low}"
        )
    if value > high:
        raise validation(
            f"1 validation error detected: Value '{value}' at 'maxItems' failed to satisfy "
            f"constraint: Member must have value less than or equal to {high}"
        )
    return value


def _mapping_uuid_of(resource: str) -> str:
    """The UUID a tag call's resource ARN names; ValidationException (AWS's text and
    pattern) for a malformed ARN, 404 for another kind of Lambda resource."""
    if not _RESOURCE_ARN.fullmatch(resource):
        raise validation(
            f"1 validation error detected: Value '{resource}' at 'resource' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {RESOURCE_ARN_PATTERN}"
        )
    found = _MAPPING_ARN_TAIL.search(resource)
    if found is None:
        raise not_found(
            f"Resource not found: {resource}; poller's control API tags only event source mappings."
        )
    return found.group(1).lower()


def _check_resource_names(ctx: ControlContext, resource: str, source_arn: str, uuid: str) -> None:
    """404 unless ``resource`` is the mapping's own ARN (its UUID in any case): an ARN of
    another partition, region or account names another mapping, even with this UUID."""
    own = shapes.mapping_arn(source_arn, uuid, ctx.region)
    prefix, _, given_uuid = resource.rpartition(":")
    if f"{prefix}:{given_uuid.lower()}" != own:
        raise _mapping_arn_not_found(resource)


def _mapping_arn_not_found(resource: str) -> ApiError:
    return not_found(f"Event source mapping not found: {resource}")


def _tags_of_body(body: Any) -> dict[str, str]:
    """The ``Tags`` of a TagResource body, checked as the configuration file's are."""
    tags = body.get("Tags") if isinstance(body, dict) else None
    if tags is None:
        raise validation(
            "1 validation error detected: Value null at 'tags' failed to satisfy constraint: "
            "Member must not be null"
        )
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise invalid_parameter("Tags must be a map of string keys to string values.")
    return _checked_tags(tags)


def _checked_tags(tags: dict[str, str]) -> dict[str, str]:
    try:
        return _TAGS.validate_python(tags)
    except ValidationError as exc:
        raise invalid_parameter(str(exc.errors()[0]["msg"])) from None


async def _change_tags(
    ctx: ControlContext,
    resource: str,
    uuid: str,
    edit: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """Apply ``edit`` (tags -> tags) to the mapping's tags; a tag write moves neither the
    revision nor the state. File mappings' tags live in the file: 409."""
    _refuse_file_mapping(ctx, uuid)

    def change(current: MappingRecord, revision: int) -> MappingRecord | None:
        del revision  # tags are no configuration change
        _check_resource_names(ctx, resource, current.request["EventSourceArn"], uuid)
        tags = edit(dict(current.tags))
        if tags == dict(current.tags):
            return None
        return tags_only(current, _checked_tags(tags))

    if await ctx.store.update(uuid, change) is None:
        raise _mapping_arn_not_found(resource)
