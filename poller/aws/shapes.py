"""Output shapes compiled into plain functions, for the lean read path's answers.

botocore's JSON parser walks the service model for every value of every answer. The lean path
(:mod:`poller.aws.lean`) needs the same result (members the shape does not know and null members
dropped, timestamps and blobs through the client's parsers, every other value as it came) for
two operations' outputs, so the walk is compiled once per shape into closures. A structure
whose keys are all known and non-null is updated in place (the common case: only its
timestamps and nested members are touched), so an empty or plain page costs little.

A value of the wrong JSON type (an object where a list belongs, say) raises :class:`Malformed`;
the caller then reads that answer with the full client instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Parser = Callable[[Any], Any]

#: Shapes with no conversion: their value is kept as it came.
_PLAIN = frozenset({"string", "integer", "long", "boolean", "double", "float", "bigdecimal"})


class Malformed(Exception):
    """A value does not fit its shape (or the shape is not one this module compiles)."""


def compile_shape(shape: Any, timestamp: Parser, blob: Parser) -> Parser:
    """A function turning the decoded JSON of ``shape`` into what botocore's parser returns
    with ``timestamp`` and ``blob`` as its timestamp and blob parsers."""
    return _Compiler(timestamp, blob).parser(shape)


class _Compiler:
    def __init__(self, timestamp: Parser, blob: Parser) -> None:
        self._timestamp = timestamp
        self._blob = blob
        # By shape name; recursive shapes (DynamoDB's AttributeValue) resolve through a cell.
        self._done: dict[str, Parser] = {}
        self._cells: dict[str, list[Parser]] = {}

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
            return _list_of(self.parser(shape.member))
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

        def structure(value: Any) -> Any:
            if type(value) is not dict:
                raise Malformed(f"{shape.name} is not an object")
            if value.keys() <= names and None not in value.values():
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


def keep(value: Any) -> Any:
    """The parser that keeps a value as it came: pass it as ``compile_shape``'s timestamp or
    blob parser for an identity one, and no member of that type costs a call."""
    return value


def _list_of(member: Parser) -> Parser:
    def parse(value: Any) -> Any:
        if type(value) is not list:
            raise Malformed("a list is not a JSON array")
        if member is keep:
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
