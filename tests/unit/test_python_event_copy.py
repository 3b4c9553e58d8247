"""The Python target hands each handler a private copy of the event: equal to it, sharing no
container with it, whatever JSON-like values it holds."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from poller.targets.python.runs import _private_copy

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def containers(value: Any) -> list[Any]:
    """Every dict and list inside ``value``, itself included."""
    if isinstance(value, dict):
        return [value, *(c for item in value.values() for c in containers(item))]
    if isinstance(value, list):
        return [value, *(c for item in value for c in containers(item))]
    return []


@given(st.lists(st.dictionaries(st.text(), _json, max_size=6), max_size=5))
def test_the_copy_is_equal_and_shares_no_container(records: list[dict[str, Any]]) -> None:
    event = {"Records": records}
    copied = _private_copy(event)
    assert copied == event
    originals = {id(c) for c in containers(event)}
    assert not originals & {id(c) for c in containers(copied)}


def test_a_handler_mutating_its_copy_leaves_the_event_as_it_was() -> None:
    event = {"Records": [{"kinesis": {"data": "eA==", "tags": ["a"]}, "eventID": "1"}]}
    copied = _private_copy(event)
    copied["Records"][0]["kinesis"]["data"] = "changed"
    copied["Records"][0]["kinesis"]["tags"].append("b")
    copied["Records"].append({})
    assert event == {"Records": [{"kinesis": {"data": "eA==", "tags": ["a"]}, "eventID": "1"}]}


def test_other_values_are_copied_as_marshal_or_json_copy_them() -> None:
    tupled: dict[str, Any] = {"Records": [{"pair": (1, [2])}], "raw": b"\x00"}
    copied = _private_copy(tupled)
    assert copied == tupled
    assert copied["Records"][0]["pair"][1] is not tupled["Records"][0]["pair"][1]
    ordered = {"Records": [OrderedDict(a=1)]}  # marshal refuses dict subclasses: JSON's rules
    assert _private_copy(ordered) == {"Records": [{"a": 1}]}
    assert type(_private_copy(ordered)["Records"][0]) is dict


def test_an_event_nested_past_the_recursion_limit_is_still_copied() -> None:
    event: dict[str, Any] = {"Records": [{}]}
    deep = event["Records"][0]
    for _ in range(1500):
        deep["d"] = deep = {}
    original, copied = event["Records"][0], _private_copy(event)["Records"][0]
    depth = 0
    while original:  # walked, not compared with ==, which has the recursion limit too
        assert copied is not original
        assert list(copied) == ["d"]
        original, copied, depth = original["d"], copied["d"], depth + 1
    assert (depth, copied) == (1500, {})
