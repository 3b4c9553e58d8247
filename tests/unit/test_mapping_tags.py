"""Mapping tags and ``observability.metric_tag_labels`` at load: AWS's limits and pattern for
Lambda resource tags, the reserved ``aws:`` prefix, and label names that must not collide.
Every error names the field and the tag."""

from __future__ import annotations

from typing import Any

import pytest

from poller.config import Settings, parse_settings
from poller.config.models.service import tag_label_name
from poller.errors import ConfigError

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:jobs"
TAGS = "mappings[0] (orders).tags"
LABELS = "observability.metric_tag_labels"
ALLOWED = "allowed Unicode letters, numbers and spaces, and _ . : / = + - @"


def mapping(**fields: Any) -> dict[str, Any]:
    return {
        "name": "orders",
        "event_source_arn": ARN,
        "starting_position": "TRIM_HORIZON",
        "target": {"type": "python", "handler": "json:loads"},
        **fields,
    }


def load(**sections: Any) -> Settings:
    return parse_settings({"mappings": [mapping()], **sections})


def load_tags(tags: Any, **fields: Any) -> Settings:
    return parse_settings({"mappings": [mapping(tags=tags, **fields)]})


def problem(**document: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(document)
    [only] = caught.value.problems
    return only


def tag_problem(tags: Any) -> str:
    return problem(mappings=[mapping(tags=tags)])


def test_no_tags_by_default() -> None:
    assert load().mappings[0].tags == {}


def test_tags_are_kept_as_written() -> None:
    tags = {"team": "payments", "cost-center": "4711", "Équipe ": "été @ 1+1=2 /:_.-", "e": ""}
    assert load_tags(tags).mappings[0].tags == tags


def test_sqs_mappings_take_tags_too() -> None:
    queue = {
        "name": "jobs",
        "event_source_arn": QUEUE,
        "target": {"type": "python", "handler": "json:loads"},
    }
    settings = parse_settings({"mappings": [{**queue, "tags": {"team": "jobs"}}]})
    assert settings.mappings[0].tags == {"team": "jobs"}


def test_at_most_50_tags() -> None:
    fifty = {f"k{i}": "v" for i in range(50)}
    assert len(load_tags(fifty).mappings[0].tags) == 50
    assert (
        tag_problem({**fifty, "one-more": "v"})
        == f"{TAGS}: 51 tags; allowed at most 50 per mapping"
    )


def test_key_length_1_to_128() -> None:
    assert load_tags({"k" * 128: "v"}).mappings[0].tags
    assert tag_problem({"k" * 129: "v"}) == (
        f"{TAGS}: tag '{'k' * 129}': the key is 129 characters long; allowed at most 128"
    )
    assert tag_problem({"": "v"}) == f"{TAGS}: a tag key is empty; keys are 1 to 128 characters"


def test_value_length_0_to_256() -> None:
    assert load_tags({"k": "v" * 256, "e": ""}).mappings[0].tags["k"] == "v" * 256
    assert tag_problem({"k": "v" * 257}) == (
        f"{TAGS}: tag 'k': the value is 257 characters long; allowed at most 256"
    )


def test_lengths_count_characters_not_bytes() -> None:
    assert load_tags({"é" * 128: "ü" * 256}).mappings[0].tags


@pytest.mark.parametrize(
    ("tags", "what", "char"),
    [
        ({"a!": "v"}, "'a!': the key", "'!'"),
        ({"a#b": "v"}, "'a#b': the key", "'#'"),
        ({"k": "semi;colon"}, "'k': the value", "';'"),
        ({"k": "bell\x07"}, "'k': the value", "'\\x07'"),
        ({"k": "tab\there"}, "'k': the value", "'\\t'"),
        ({"k": "smile \U0001f600"}, "'k': the value", "'\\U0001f600'"),
        ({"k": "quote'"}, "'k': the value", '"\'"'),
    ],
)
def test_characters_outside_aws_pattern_are_refused(tags: Any, what: str, char: str) -> None:
    assert tag_problem(tags) == (
        f"{TAGS}: tag {what} holds {char}, which AWS refuses in tags; {ALLOWED}"
    )


@pytest.mark.parametrize(
    "text",
    [
        "letters ÀÉÎõü Ωλ Жж 中文 日本語",  # \p{L}
        "numbers 0123 ٣ ½ Ⅻ",  # \p{N}: decimal, other and letter numbers
        "spaces\u00a0\u2003\u3000",  # \p{Z}: no-break, em and ideographic spaces
        "punct _.:/=+-@",
    ],
)
def test_aws_pattern_classes_are_accepted(text: str) -> None:
    assert load_tags({text: text}).mappings[0].tags == {text: text}


@pytest.mark.parametrize("key", ["aws:team", "AWS:team", "Aws:x", "aws:"])
def test_aws_prefix_is_reserved_in_keys(key: str) -> None:
    assert tag_problem({key: "v"}) == (
        f"{TAGS}: tag {key!r}: keys starting with 'aws:' (in any case) are reserved for AWS"
    )


def test_aws_prefix_is_fine_inside_a_key_and_in_values() -> None:
    tags = {"team:aws": "aws:thing", "awsome": "v"}
    assert load_tags(tags).mappings[0].tags == tags


def test_non_string_values_and_shapes_are_refused() -> None:
    assert tag_problem({"version": 2}).startswith(f"{TAGS}.version: 2 is not a string")
    assert tag_problem(["team"]).startswith(f"{TAGS}: ['team'] is not a mapping")


def test_the_error_names_the_mapping_it_is_in() -> None:
    other = mapping(name="second", tags={"aws:x": "v"})
    text = problem(mappings=[mapping(), other])
    assert text.startswith("mappings[1] (second).tags: tag 'aws:x'")


# -- observability.metric_tag_labels ----------------------------------------------------------


def test_no_tag_labels_by_default() -> None:
    assert load().observability.metric_tag_labels == []
    assert load().observability.tag_label_names == {}


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("team", "tag_team"),
        ("cost-center", "tag_cost_center"),
        ("app.kubernetes.io/name", "tag_app_kubernetes_io_name"),
        ("Équipe 1", "tag__quipe_1"),
        ("a:b=c+d@e", "tag_a_b_c_d_e"),
        ("9lives", "tag_9lives"),
    ],
)
def test_label_names_are_tag_prefixed_and_sanitised(key: str, label: str) -> None:
    assert tag_label_name(key) == label
    settings = load(observability={"metric_tag_labels": [key]})
    assert settings.observability.tag_label_names == {key: label}


def test_label_names_keep_the_configured_order() -> None:
    keys = ["team", "env", "cost-center"]
    names = load(observability={"metric_tag_labels": keys}).observability.tag_label_names
    assert list(names) == keys


def test_at_most_5_tag_labels() -> None:
    five = ["a", "b", "c", "d", "e"]
    assert load(observability={"metric_tag_labels": five}).observability.metric_tag_labels == five
    text = problem(mappings=[mapping()], observability={"metric_tag_labels": [*five, "f"]})
    assert text == f"{LABELS}: {[*five, 'f']!r} has 6 items; allowed at most 5"


@pytest.mark.parametrize(
    ("keys", "first", "second", "label"),
    [
        (["team-a", "team.a"], "team-a", "team.a", "tag_team_a"),
        (["x", "cost/center", "cost center"], "cost/center", "cost center", "tag_cost_center"),
        (["é", "ü"], "é", "ü", "tag__"),
    ],
)
def test_colliding_label_names_are_refused(
    keys: list[str], first: str, second: str, label: str
) -> None:
    text = problem(mappings=[mapping()], observability={"metric_tag_labels": keys})
    assert text == (
        f"{LABELS}: tags {first!r} and {second!r} would both be exported as label {label}; "
        "keep one, or rename a tag"
    )


def test_a_key_listed_twice_is_refused() -> None:
    text = problem(mappings=[mapping()], observability={"metric_tag_labels": ["team", "team"]})
    assert text == f"{LABELS}: tag 'team' is listed twice"


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        (
            "aws:team",
            "tag 'aws:team': keys starting with 'aws:' (in any case) are reserved for AWS",
        ),
        ("", "a tag key is empty; keys are 1 to 128 characters"),
        ("a!", f"tag 'a!': the key holds '!', which AWS refuses in tags; {ALLOWED}"),
    ],
)
def test_tag_label_keys_must_be_valid_tag_keys(key: str, detail: str) -> None:
    text = problem(mappings=[mapping()], observability={"metric_tag_labels": [key]})
    assert text == f"{LABELS}: {detail}"


def test_a_label_for_a_tag_no_mapping_has_is_allowed() -> None:
    settings = load(observability={"metric_tag_labels": ["nobody-sets-this"]})
    assert settings.mappings[0].tags.get("nobody-sets-this") is None
