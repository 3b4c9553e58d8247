"""Coral's wire rules read from botocore's Lambda model (poller.control.model_rules): the
constraints, their wording, and what is kept of a body."""

from __future__ import annotations

from typing import Any

import pytest

from poller.control.model_rules import check_request, coral_line, coral_message, java_text

CREATE = "CreateEventSourceMappingRequest"
UPDATE = "UpdateEventSourceMappingRequest"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"


def problems(body: dict[str, Any], shape: str = CREATE) -> list[str]:
    return check_request(body, shape).problems


def test_a_valid_body_has_no_problems_and_is_kept_whole() -> None:
    body = {
        "FunctionName": "f",
        "EventSourceArn": QUEUE,
        "BatchSize": 10,
        "Enabled": True,
        "FilterCriteria": {"Filters": [{"Pattern": "{}"}]},
        "Tags": {"team": "orders"},
        "StartingPositionTimestamp": 1_700_000_000.5,
    }
    checked = check_request(body, CREATE)
    assert (checked.problems, checked.known, checked.unknown) == ([], body, [])


def test_unknown_members_are_named_and_dropped_at_every_level() -> None:
    checked = check_request(
        {
            "FunctionName": "f",
            "Other": 1,
            "FilterCriteria": {"Filters": [{"Pattern": "{}", "Kind": "x"}], "Mode": "y"},
        },
        CREATE,
    )
    assert checked.unknown == ["Other", "FilterCriteria.Mode", "FilterCriteria.Filters.Kind"]
    assert checked.known == {
        "FunctionName": "f",
        "FilterCriteria": {"Filters": [{"Pattern": "{}"}]},
    }


def test_the_update_shape_has_no_create_only_members_and_no_uuid_in_the_body() -> None:
    checked = check_request(
        {
            "UUID": "x",
            "EventSourceArn": QUEUE,
            "StartingPosition": "LATEST",
            "Tags": {},
            "BatchSize": 5,
        },
        UPDATE,
    )
    assert checked.problems == []  # UUID is required, but in the URI, not the body
    assert checked.known == {"BatchSize": 5}
    assert checked.unknown == ["UUID", "EventSourceArn", "StartingPosition", "Tags"]


def test_the_starting_position_enum_is_listed_in_the_order_aws_lists_it() -> None:
    assert problems({"FunctionName": "f", "StartingPosition": "EARLIEST"}) == [
        "Value 'EARLIEST' at 'startingPosition' failed to satisfy constraint: Member must "
        "satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]"
    ]


def test_other_enums_are_listed_in_the_models_order() -> None:
    assert problems({"FunctionName": "f", "MetricsConfig": {"Metrics": ["All"]}}) == [
        "Value '[All]' at 'metricsConfig.metrics' failed to satisfy constraint: Member must "
        "satisfy constraint: [Member must satisfy enum value set: [EventCount, ErrorCount, "
        "KafkaMetrics]]"
    ]


def test_each_broken_constraint_of_list_items_is_named_once() -> None:
    assert problems({"FunctionName": "f", "FunctionResponseTypes": ["a", "b", 3]}) == [
        "Value '[a, b, 3]' at 'functionResponseTypes' failed to satisfy constraint: Member "
        "must have length less than or equal to 1",
        "Value '[a, b, 3]' at 'functionResponseTypes' failed to satisfy constraint: Member "
        "must satisfy constraint: [Member must satisfy enum value set: "
        "[ReportBatchItemFailures], Member must be of type string]",
    ]


def test_a_structure_of_the_wrong_type_is_reported_and_not_kept() -> None:
    checked = check_request({"FunctionName": "f", "ScalingConfig": [1]}, CREATE)
    assert checked.problems == [
        "Value '[1]' at 'scalingConfig' failed to satisfy constraint: Member must be of type "
        "structure"
    ]
    assert "ScalingConfig" not in checked.known
    items = check_request({"FunctionName": "f", "FilterCriteria": {"Filters": ["x"]}}, CREATE)
    assert items.problems == [
        "Value 'x' at 'filterCriteria.filters.1.member' failed to satisfy constraint: Member "
        "must be of type structure"
    ]
    assert items.known["FilterCriteria"] == {"Filters": []}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (1_700_000_000, True),
        (1.5, True),
        ("2024-01-01T00:00:00Z", False),
        (True, False),
    ],
)
def test_timestamps_are_epoch_seconds(value: Any, valid: bool) -> None:
    found = problems({"FunctionName": "f", "StartingPositionTimestamp": value})
    assert (found == []) is valid
    if not valid:
        assert found[0].endswith("Member must be of type timestamp (epoch seconds)")


@pytest.mark.parametrize(
    ("value", "valid"), [(5, True), (5.0, True), (5.5, False), (True, False), ("5", False)]
)
def test_integers_are_whole_numbers(value: Any, valid: bool) -> None:
    checked = check_request({"FunctionName": "f", "BatchSize": value}, CREATE)
    assert (checked.problems == []) is valid
    if valid:
        assert checked.known["BatchSize"] == 5
        assert isinstance(checked.known["BatchSize"], int)


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("équipe", True),
        ("チーム 1", True),
        ("٣", True),
        ("a:b/c=d+e-f@g.h_i", True),
        ("emoji 🙂", False),
        ("tab\tkey", False),
        ("ünïcødé!", False),
    ],
)
def test_tag_keys_follow_javas_unicode_classes(key: str, valid: bool) -> None:
    found = problems({"FunctionName": "f", "Tags": {key: "v"}})
    assert (found == []) is valid


def test_a_map_of_the_wrong_size_is_reported() -> None:
    found = problems(
        {"FunctionName": "f", "SelfManagedEventSource": {"Endpoints": {}}},
    )
    assert found == [
        "Value '{}' at 'selfManagedEventSource.endpoints' failed to satisfy constraint: Member "
        "must have length greater than or equal to 1"
    ]


def test_coral_lines_show_values_as_java_does() -> None:
    assert java_text(None) == "null"
    assert java_text(False) == "false"
    assert java_text([1, "a", True]) == "[1, a, true]"
    assert java_text({"k": [None], "n": {}}) == "{k=[null], n={}}"
    assert coral_line(None, "m", "Member must not be null") == (
        "Value null at 'm' failed to satisfy constraint: Member must not be null"
    )
    assert coral_line({"a": 1}, "m", "c") == "Value '{a=1}' at 'm' failed to satisfy constraint: c"


def test_coral_counts_its_problems() -> None:
    assert coral_message(["a"]) == "1 validation error detected: a"
    assert coral_message(["a", "b"]) == "2 validation errors detected: a; b"
