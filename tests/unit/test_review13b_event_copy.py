"""Review 13b: the handler's private copy of an event treats values that are not JSON exactly
as the marshal-then-JSON copy did: a dict key neither marshal nor JSON accept is refused, not
handed to the handler shared with the pipeline's own event; a key of a ``str`` subclass comes
out a ``str`` (JSON's rules), as before."""

from __future__ import annotations

import json
import marshal
from typing import Any

import pytest

from poller.targets.python.runs import _private_copy


def marshal_then_json(event: dict[str, Any]) -> Any:
    """The copy before fe3cabc."""
    try:
        return marshal.loads(marshal.dumps(event))
    except ValueError:
        return json.loads(json.dumps(event))


class Tag:
    """A mutable, hashable object: neither marshal nor JSON knows it."""

    def __init__(self) -> None:
        self.state = ["original"]

    def __hash__(self) -> int:
        return 1


class Name(str):
    pass


def test_a_key_neither_marshal_nor_json_accepts_is_refused_as_before() -> None:
    event: dict[str, Any] = {"Records": [{Tag(): 1}]}
    with pytest.raises(TypeError):
        marshal_then_json(event)
    with pytest.raises(TypeError):  # was: the copy shares the key object with the event
        _private_copy(event)


def test_a_mutable_key_is_never_shared_with_the_handler() -> None:
    tag = Tag()
    event: dict[str, Any] = {"Records": [{tag: 1}]}
    try:
        copied = _private_copy(event)
    except TypeError:
        return  # refused: nothing shared
    (key,) = copied["Records"][0]
    key.state.append("changed by the handler")
    assert tag.state == ["original"]


def test_a_str_subclass_key_comes_out_a_str_as_before() -> None:
    event: dict[str, Any] = {"Records": [{Name("a"): 1}]}
    (before,) = marshal_then_json(event)["Records"][0]
    (after,) = _private_copy(event)["Records"][0]
    assert type(before) is str
    assert type(after) is type(before)
