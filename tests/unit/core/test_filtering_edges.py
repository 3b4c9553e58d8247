"""Edges of poller.core.filtering that the recordings and the main cases do not reach: numbers
too large for a float or too long to print, exact values beside numeric ranges, and records
whose shape is not the one Lambda delivers (matching never raises on them)."""

from __future__ import annotations

from typing import Any

import pytest

from poller.core.filtering import FilterError, compile_filters
from tests.unit.core.test_filtering import kinesis, matches, pattern_text, sqs

#: An integer JSON reads exactly but a float cannot hold (float() overflows past ~1.8e308).
PAST_FLOAT = "1" + "0" * 400
#: More digits than Python prints by default (4300): repr() of it raises ValueError.
PAST_PRINTING = 10**5000


def test_a_numeric_operand_past_a_float_is_refused_as_out_of_range() -> None:
    """An integer operand too large for a float cannot be compared as event-ruler compares
    (doubles): it is refused at compile time, naming the operand's first digits."""
    with pytest.raises(FilterError, match="is out of range") as caught:
        compile_filters([f'{{"a": [{{"numeric": [">", {PAST_FLOAT}]}}]}}'], source="sqs")
    assert f"numeric operand {PAST_FLOAT[:40]} is out of range" in caught.value.detail


def test_an_event_number_too_long_to_print_matches_no_exact_number() -> None:
    """Exact numbers compare by their JSON text. A record handed over as a Python object may
    hold an integer too long to print; it equals no pattern number, and matching does not
    raise."""
    record: dict[str, Any] = {"dynamodb": {"SizeBytes": PAST_PRINTING}}
    assert not matches({"dynamodb": {"SizeBytes": [1]}}, record)
    assert matches({"dynamodb": {"SizeBytes": [{"exists": True}]}}, record)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(300, True), (2000, True), (500, False), (1000, False), ("300", False), (300.0, False)],
)
def test_exact_numbers_and_a_numeric_range_in_one_leaf_are_ored(value: Any, expected: bool) -> None:
    """A leaf listing an exact number and a numeric range matches either: 300 by its text,
    anything above 1000 by value; 300.0 has another text and the string "300" is no number."""
    pattern = {"body": {"n": [300, {"numeric": [">", 1000]}]}}
    assert matches(pattern, sqs({"n": value}), source="sqs") is expected


def test_kinesis_metadata_patterns_survive_a_record_without_its_kinesis_object() -> None:
    """A Kinesis pattern on metadata sees the record's top-level fields even when the
    ``kinesis`` object is missing or not an object; the fields it would have given are absent."""
    for odd in (None, "not-an-object"):
        record = {**kinesis({"a": 1}), "kinesis": odd}
        assert matches({"eventSource": ["aws:kinesis"]}, record, source="kinesis")
        assert not matches({"partitionKey": ["pk-1"]}, record, source="kinesis")
    assert matches({"partitionKey": ["pk-1"]}, kinesis({"a": 1}), source="kinesis")


@pytest.mark.parametrize("body", [None, 42, {"a": 1}], ids=["null", "number", "object"])
def test_an_sqs_record_without_a_string_body_matches_no_body_pattern(body: Any) -> None:
    """SQS bodies are strings; a record whose ``body`` is anything else (or missing) is taken
    as a non-JSON body: no body pattern matches it, while a pattern on other fields still
    can."""
    record = {**sqs("ignored"), "body": body}
    without_body = {k: v for k, v in sqs("ignored").items() if k != "body"}
    patterns = [pattern_text({"body": {"a": [1]}}), pattern_text({"body": ["x"]})]
    body_filters = compile_filters(patterns, source="sqs")
    for odd in (record, without_body):
        assert not body_filters.matches(odd)
    either = compile_filters([*patterns, pattern_text({"awsRegion": ["us-east-2"]})], source="sqs")
    assert either.matches(record)
    assert either.matches(without_body)
