"""Output shapes compiled into plain functions, for the lean read path's answers.

botocore's JSON parser walks the service model for every value of every answer. The lean path
(:mod:`poller.aws.lean`) needs the same result (members the shape does not know and null members
dropped, timestamps and blobs through the client's parsers, every other value as it came) for
two operations' outputs, so the walk is compiled once per shape into closures. A structure
whose keys are all known and non-null is updated in place (the common case: only its
timestamps and nested members are touched), so an empty or plain page costs little. A list of
such structures (a page's records) is checked in bulk, a few C-level passes over the whole
list, and kept as it is when every item is already its own parse; only a list that is not is
walked item by item. An answer known to hold no null (``null_free``) skips the null checks.

A value of the wrong JSON type (an object where a list belongs, say) raises :class:`Malformed`;
the caller then reads that answer with the full client instead.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any

Parser = Callable[[Any], Any]

#: Shapes with no conversion: their value is kept as it came.
_PLAIN = frozenset({"string", "integer", "long", "boolean", "double", "float", "bigdecimal"})
#: ``dict.get`` of a member absent from an item: kept as it is (nothing to convert).
_ABSENT = type(None)
#: Checks of a whole list of one structure: True when every item is already its own parse.
AsIs = Callable[[list[Any]], bool]


class Malformed(Exception):
    """A value does not fit its shape (or the shape is not one this module compiles)."""


def compile_shape(
    shape: Any,
    timestamp: Parser,
    blob: Parser,
    *,
    null_free: bool = False,
    timestamp_keeps: frozenset[type] = frozenset(),
) -> Parser:
    """A function turning the decoded JSON of ``shape`` into what botocore's parser returns
    with ``timestamp`` and ``blob`` as its timestamp and blob parsers.

    ``null_free``: the parser is only given values that hold no null anywhere (the caller
    checked its answer), so it does not look for them. ``timestamp_keeps``: the types of
    value ``timestamp`` returns unchanged (a list of structures whose timestamps are all of
    these is kept without a call per value).
    """
    return _Compiler(timestamp, blob, null_free, timestamp_keeps).parser(shape)


class _Compiler:
    def __init__(
        self, timestamp: Parser, blob: Parser, null_free: bool, timestamp_keeps: frozenset[type]
    ) -> None:
        self._timestamp = timestamp
        self._blob = blob
        self._null_free = null_free
        self._timestamp_keeps = timestamp_keeps
        # By shape name; recursive shapes (DynamoDB's AttributeValue) resolve through a cell.
        self._done: dict[str, Parser] = {}
        self._cells: dict[str, list[Parser]] = {}
        #: The bulk check of a list of a structure (:func:`_as_is_check`), by structure name.
        self._as_is: dict[str, AsIs] = {}

    def parser(self, shape: Any) -> Parser:
        """The parser of ``shape``; None-free scalars get ``keep``."""
        name = shape.name
        if name in self._done:
            return self._done[name]
        if name in self._cells:  # being compiled: a recursive reference
            cell = self._cells[name]
            return lambda value: cell[0](value)
        self._cells[name] = cell = [keep]
        made = self._make(shape)
        cell[0] = made
        self._done[name] = made
        return made

    def _make(self, shape: Any) -> Parser:
        kind = shape.type_name
        if kind in _PLAIN:
            return keep
        if kind == "timestamp":
            return self._timestamp
        if kind == "blob":
            return self._blob
        if kind == "list":
            member = self.parser(shape.member)
            return _list_of(member, self._as_is.get(shape.member.name))
        if kind == "map":
            return _map_of(self.parser(shape.value))
        if kind == "structure" and not shape.is_document_type:
            return self._structure(shape)
        raise Malformed(f"shape {shape.name} of type {kind} is not compiled")

    def _structure(self, shape: Any) -> Parser:
        members: dict[str, Parser] = {}
        for name, member in shape.members.items():
            if member.serialization.get("name", name) != name:
                raise Malformed(f"member {name} of {shape.name} is renamed on the wire")
            members[name] = self.parser(member)
        names = frozenset(members)
        converted = tuple((n, p) for n, p in members.items() if p is not keep)
        union = bool(getattr(shape, "is_tagged_union", False))
        null_free = self._null_free
        if all(p is self._timestamp for _, p in converted) and (
            self._timestamp_keeps or not converted
        ):
            self._as_is[shape.name] = _as_is_check(
                names, tuple(n for n, _ in converted), self._timestamp_keeps, null_free
            )

        def structure(value: Any) -> Any:
            if type(value) is not dict:
                raise Malformed(f"{shape.name} is not an object")
            if value.keys() <= names and (null_free or None not in value.values()):
                for key, parse in converted:
                    if key in value:
                        value[key] = parse(value[key])
                return value
            if union and len(value) == 1:
                raise Malformed(f"unknown member of the union {shape.name}")
            return {
                key: members[key](item)
                for key, item in value.items()
                if item is not None and key in names
            }

        return structure


def _as_is_check(
    names: frozenset[str], timestamps: tuple[str, ...], keeps: frozenset[type], null_free: bool
) -> AsIs:
    """The bulk check of a list of one structure whose only converted members are the
    timestamps ``timestamps``: every item a dict of known members, none null, each timestamp
    absent or of a type the timestamp parser keeps. Each test is one pass in C over the
    list: a Kinesis page's parse fell from 1.5 to 0.7 us a record (on a slow machine; less
    again without the null checks) against checking the items one by one."""
    kept = keeps | {_ABSENT}

    def as_is(items: list[Any]) -> bool:
        if not _DICT.issuperset(map(type, items)) or not names.issuperset(set().union(*items)):
            return False
        for key in timestamps:
            if not kept.issuperset(map(type, map(dict.get, items, repeat(key)))):
                return False
        return null_free or not any(None in item.values() for item in items)

    return as_is


#: The item type of a list that :func:`_as_is_check` keeps.
_DICT = frozenset({dict})


def keep(value: Any) -> Any:
    """The parser that keeps a value as it came: pass it as ``compile_shape``'s timestamp or
    blob parser for an identity one, and no member of that type costs a call."""
    return value


def _list_of(member: Parser, as_is: AsIs | None) -> Parser:
    """The parser of a list of ``member``; ``as_is`` checks the whole list at once (a list of
    structures), which is then kept as it came."""

    def parse(value: Any) -> Any:
        if type(value) is not list:
            raise Malformed("a list is not a JSON array")
        # An empty list (every idle poll's page) is its own parse: no check to run.
        if not value or member is keep or (as_is is not None and as_is(value)):
            return value
        return [member(item) for item in value]

    return parse


def _map_of(item: Parser) -> Parser:
    def parse(value: Any) -> Any:
        if type(value) is not dict:
            raise Malformed("a map is not a JSON object")
        if item is keep:
            return value
        return {key: item(entry) for key, entry in value.items()}

    return parse
