"""Field paths: where a location in the configuration points, in words and in the models.

Where it sits in the data flow::

    a pydantic error loc, or the loc of a ${VAR} or POLLER_* problem
        --locate()--> Where: ``mappings[0] (orders).batch_size`` and the model field there
        --> poller.config.messages, poller.config.expansion, poller.config.overrides

A loc is followed through the :class:`~poller.config.models.Settings` types and the raw data
together: union tags that pydantic inserts (``kinesis``, ``python``) are skipped, and a list
item with a ``name`` is shown with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, TypeAlias, Union, get_args, get_origin

from pydantic import BaseModel, Tag
from pydantic.fields import FieldInfo

from poller.config.models.settings import Settings
from poller.config.wording import cut

Loc: TypeAlias = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class Where:
    """Where a loc points: its readable path, and the model field there, if any.

    ``annotation`` is the type expected there, also inside a list or dict, where ``field`` is
    None and ``container`` is the model field holding the list or dict.
    """

    path: str
    owner: type[BaseModel] | None
    field: FieldInfo | None
    annotation: Any = None
    container: FieldInfo | None = None


def locate(loc: Loc, data: Any) -> Where:
    """Follow a pydantic loc through the Settings types and the raw data.

    Union tags that pydantic inserts (``kinesis``, ``python``) are skipped, and list items
    that have a ``name`` are shown with it: ``mappings[0] (orders).batch_size``.
    """
    path, raw = "", data
    node: Any = Settings
    owner: type[BaseModel] | None = None
    field: FieldInfo | None = None
    container: FieldInfo | None = None
    for part in loc:
        members = tagged_members(node)
        if isinstance(part, str) and part in members:
            node = members[part]
            continue
        if part == "[key]":
            continue
        owner, field = _field(node, part)
        container = field or container
        path += _segment(part, raw)
        node = field.annotation if field else _item_type(node, part)
        raw = _child(raw, part)
    where = path.removeprefix(".") or "(top level)"
    return Where(where, owner, field, node, None if field else container)


def strip_annotated(tp: Any) -> Any:
    """The type without ``Annotated`` wrappers and, for ``X | None``, without the ``None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, UnionType):
            members = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def tagged_members(tp: Any) -> dict[str, Any]:
    """The members of a tagged union by tag; empty for any other type."""
    if get_origin(tp) is Annotated and get_origin(get_args(tp)[0]) in (Union, UnionType):
        tp = get_args(tp)[0]  # Annotated[A | B, Discriminator(...)]: the union inside
    args = get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)
    members: dict[str, Any] = {}
    for arg in args:
        if get_origin(arg) is Annotated:
            base, *metadata = get_args(arg)
            members.update({m.tag: base for m in metadata if isinstance(m, Tag)})
    return members


def _field(tp: Any, part: int | str) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    model = strip_annotated(tp)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None, None
    return model, model.model_fields.get(str(part))


def _item_type(tp: Any, part: int | str) -> Any:
    tp = strip_annotated(tp)
    args = get_args(tp)
    if get_origin(tp) is list and isinstance(part, int):
        return args[0]
    if get_origin(tp) is dict:
        return args[1]
    return None


def _segment(part: int | str, raw: Any) -> str:
    if not isinstance(part, int):
        return f".{cut(str(part), _LOC_PART_CHARS)}"
    item = _child(raw, part)
    name = item.get("name") if isinstance(item, dict) else None
    shown = cut(name, _LOC_PART_CHARS) if isinstance(name, str) else None
    return f"[{part}] ({shown})" if shown else f"[{part}]"


#: The longest key or mapping name shown in a field path: a hostile 1 MB key or name would
#: otherwise be repeated whole in every problem line about that mapping.
_LOC_PART_CHARS = 80


def _child(raw: Any, part: int | str) -> Any:
    if isinstance(raw, dict):
        return raw.get(part)
    if isinstance(raw, list) and isinstance(part, int) and -len(raw) <= part < len(raw):
        return raw[part]
