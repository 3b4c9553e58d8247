"""Fuzzing the function-response parser: any value a function can return has a defined verdict.

The payload is what the targets hand over: a JSON-decoded value (NaN and infinities included,
as Python's json module reads them), or the raw text/bytes of a body that was not JSON. Item
identifiers are drawn partly from the batch, so partial responses are reached as well as
malformed ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.core.responses import (
    MAX_VALUE_CHARS,
    QueueResponse,
    StreamResponse,
    parse_queue_response,
    parse_stream_response,
)

pytestmark = pytest.mark.timeout(60)

#: A reason names an item and a value cut to MAX_VALUE_CHARS; it never grows with the input.
MAX_REASON_CHARS = 3 * MAX_VALUE_CHARS + 200

batch_ids = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


def json_values(ids: list[str]) -> st.SearchStrategy[Any]:
    """JSON-ish values, with batchItemFailures items that are often nearly right."""
    identifier = st.sampled_from(ids) | json_scalars
    item = st.fixed_dictionaries(
        {}, optional={"itemIdentifier": identifier, "foo": json_scalars}
    ) | st.just({"itemIdentifier": ids[0]})
    leaves = json_scalars | item
    tree = st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
    failures = st.lists(item | tree, max_size=5) | tree
    responses = st.fixed_dictionaries({"batchItemFailures": failures}) | st.dictionaries(
        st.sampled_from(["batchItemFailures", "x"]), tree, max_size=2
    )
    return responses | tree


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[str], Any, bool]:
    ids = draw(batch_ids)
    if draw(st.booleans()):
        return ids, draw(json_values(ids)), True
    return ids, draw(st.text(max_size=40) | st.binary(max_size=40)), False


def check_reason(reason: str | None) -> None:
    assert isinstance(reason, str)
    assert reason
    assert len(reason) <= MAX_REASON_CHARS, reason
    assert "\n" not in reason


@given(batches())
def test_stream_response_always_has_a_defined_verdict(batch: tuple[list[str], Any, bool]) -> None:
    ids, payload, is_json = batch
    verdict = parse_stream_response(payload, payload_is_json=is_json, item_ids=ids)
    assert isinstance(verdict, StreamResponse)
    if verdict.kind == "partial":
        assert verdict.failed_from is not None
        assert 0 <= verdict.failed_from < len(ids)
    elif verdict.kind == "invalid":
        check_reason(verdict.reason)
    else:
        assert verdict.kind == "success"


@given(batches())
def test_queue_response_always_has_a_defined_verdict(batch: tuple[list[str], Any, bool]) -> None:
    ids, payload, is_json = batch
    verdict = parse_queue_response(payload, payload_is_json=is_json, item_ids=ids)
    assert isinstance(verdict, QueueResponse)
    if verdict.kind == "partial":
        assert verdict.failed_ids
        assert verdict.failed_ids <= set(ids)
    elif verdict.kind == "invalid":
        check_reason(verdict.reason)
    else:
        assert verdict.kind == "success"
