"""Fuzzing input templates: rendering never raises, and what it returns is strict JSON.

Records are Lambda event records of each source with random contents (SQS bodies JSON, text
or NaN-ish; Kinesis data base64 of JSON, of text, of bytes, or not base64 at all), and random
JSON values. Templates are drawn from every shape (lone placeholder, JSON object or array,
JSON string, free text) over paths that often exist and variables of every kind. Any text
either compiles or is refused with a TemplateError, never another exception.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poller.core.transform import VARIABLES, PipeVariables, TemplateError, compile_template

pytestmark = pytest.mark.timeout(120)

NAMES = ["body", "kinesis", "data", "a", "b-c", "d_e", "f/g", "0", "Records", "messageId"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(NAMES), inner),
    max_leaves=10,
)
payload_texts = (
    json_values.map(json.dumps)
    | st.text(max_size=30)
    | st.sampled_from(["NaN", "[Infinity]", "1e999", "[" * 3000, "9" * 5000, '{"a":'])
)
kinesis_data = (
    payload_texts.map(lambda t: base64.b64encode(t.encode()).decode())
    | st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())
    | st.text(max_size=20)
)
sqs_records = st.fixed_dictionaries({"messageId": st.text(max_size=8), "body": payload_texts})
kinesis_records = st.fixed_dictionaries(
    {"kinesis": st.fixed_dictionaries({"data": kinesis_data, "sequenceNumber": st.text()})}
)
records = sqs_records | kinesis_records | json_values

steps = st.lists(
    st.sampled_from(NAMES).map(lambda n: f".{n}") | st.integers(0, 3).map(lambda i: f"[{i}]"),
    max_size=4,
)
placeholders = steps.map(lambda s: "<$" + "".join(s) + ">") | st.sampled_from(
    [f"<{name}>" for name in VARIABLES]
)


@st.composite
def templates(draw: st.DrawFn) -> str:
    """A template of any shape, mostly valid."""
    values = draw(st.lists(placeholders, min_size=1, max_size=5))
    texts = [v for v in values if v != "<aws.pipes.event.json>"] or ["<$.a>"]
    shape = draw(st.sampled_from(["lone", "object", "array", "string", "free"]))
    if shape == "lone":
        return values[0]
    if shape == "object":
        fields = [f'"k{i}": {v}' for i, v in enumerate(values)]
        fields.append(f'"t": "x {" ".join(texts)} y"')
        return "{" + ", ".join(fields) + "}"
    if shape == "array":
        return "[" + ", ".join(values) + ', "' + "".join(texts) + '"]'
    if shape == "string":
        return '"' + " ".join(texts) + '"'
    return "text " + " ".join(texts)


def is_strict_json(value: Any) -> bool:
    return bool(json.loads(json.dumps(value, allow_nan=False)) == value)


variables = st.builds(
    PipeVariables,
    pipe_arn=st.text(max_size=10),
    pipe_name=st.text(max_size=10),
    target_arn=st.text(max_size=10),
    ingestion_time=st.text(max_size=10),
)


@given(template=templates(), record=records, pipe=variables)
def test_render_never_raises_and_returns_strict_json(
    template: str, record: Any, pipe: PipeVariables
) -> None:
    rendered = compile_template(template).render(record, pipe)
    assert is_strict_json(rendered)


@given(text=st.text(max_size=200) | templates().map(lambda t: t[: len(t) // 2]))
def test_any_text_compiles_or_is_refused_with_a_template_error(text: str) -> None:
    try:
        template = compile_template(text)
    except TemplateError as exc:
        refusal = str(exc)
    else:
        refusal = ""
        assert is_strict_json(template.render({"a": 1}, PipeVariables()))
    assert refusal or template.text == text
