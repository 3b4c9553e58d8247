"""The control API's shapes: AWS's request JSON validated and translated into poller's mapping
models, and the models rendered back as AWS answers (poller.control.shapes)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from poller.config import (
    ControlApiSettings,
    DynamoDBStreamMapping,
    KinesisMapping,
    LambdaTargetConfig,
    PythonTargetConfig,
    SqsMapping,
)
from poller.control.errors import ApiError
from poller.control.shapes import (
    UNSUPPORTED_MEMBERS,
    NewMapping,
    function_arn,
    mapping_arn,
    parse_create,
    parse_update,
    render_file_mapping,
    render_record,
    request_function_arn,
    to_mapping,
)
from poller.control.store import MappingRecord, pair_key
from poller.errors import ConfigError
from tests.support.conformance import assert_matches, recorded

REGION = "eu-west-1"
ACCOUNT = "123456789012"
UUID = "14e0db71-5d35-4eb5-b481-8945cf9d10c2"
KINESIS = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/orders"
DYNAMODB = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/orders/stream/2024-05-01T00:00:00.000"
QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:orders"
DEAD_LETTERS = f"arn:aws:sqs:us-east-1:{ACCOUNT}:dead-letters"
FILE = "esm-api.json"
SETTINGS = ControlApiSettings()


def create(body: dict[str, Any], settings: ControlApiSettings = SETTINGS) -> NewMapping:
    return parse_create(body, settings=settings, region=REGION)


def refused(body: Any, settings: ControlApiSettings = SETTINGS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_create(body, settings=settings, region=REGION)
    return caught.value


def stored(new: NewMapping, **changes: Any) -> MappingRecord:
    record = MappingRecord(
        uuid=UUID,
        revision=1,
        created_revision=1,
        written=1,
        request=new.request,
        tags=new.tags,
        desired="Enabled" if new.enabled else "Disabled",
        change="create",
        function_arn=new.function_arn,
        pair_key=pair_key(new.function_arn, new.event_source_arn),
        last_modified=1_764_000_000.25,
    )
    return replace(record, **changes)


def recorded_shape(scenario: str, key: str) -> dict[str, Any]:
    """A recorded answer without its metadata. boto3 parsed ``LastModified`` into a datetime,
    which the recording shows as the literal ``datetime``: on the wire it is epoch seconds,
    so it stands as a placeholder here (any number)."""
    shape = dict(recorded(FILE, scenario, key))
    del shape["ResponseMetadata"]
    assert shape["LastModified"] == "datetime"
    shape["LastModified"] = "<last-modified>"
    return shape


def recorded_error(scenario: str, key: str) -> tuple[str, str]:
    error = recorded(FILE, scenario, key)["Error"]
    return error["Code"], error["Message"]


# --- the recorded shapes -------------------------------------------------------------------


def test_a_dynamodb_mapping_renders_the_recorded_lifecycle_shapes() -> None:
    new = create(
        {
            "FunctionName": "orders-fn",
            "EventSourceArn": DYNAMODB,
            "StartingPosition": "TRIM_HORIZON",
            "BatchSize": 1,
            "MaximumBatchingWindowInSeconds": 1,
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {"OnFailure": {"Destination": DEAD_LETTERS}},
        }
    )
    record = stored(new)
    bindings: dict[str, Any] = {}
    for state, key in (
        ("Creating", "create_response"),
        ("Enabled", "get_response"),
        ("Deleting", "delete_response"),
    ):
        answer = render_record(record, state, region=REGION)
        assert_matches(answer, recorded_shape("_mapping_lifecycle", key), bindings)
    assert bindings["resource:4"] == UUID
    assert bindings["resource:3"] == "dead-letters"


def test_empty_filters_are_not_shown_as_recorded() -> None:
    new = create(
        {
            "FunctionName": "orders-fn",
            "EventSourceArn": DYNAMODB,
            "StartingPosition": "LATEST",
            "FilterCriteria": {"Filters": []},
        }
    )
    answer = render_record(stored(new), "Creating", region=REGION)
    assert_matches(
        answer, recorded_shape("filter_criteria_validation", "response-with-empty-filters")
    )


def account_forms(name: str) -> list[tuple[str, str]]:
    partial = f"{ACCOUNT}:function:{name}"
    full = f"arn:aws:lambda:{REGION}:{partial}"
    return [
        ("name_only_create_esm", name),
        ("partial_arn_latest_create_esm", f"{partial}:$LATEST"),
        ("partial_arn_version_create_esm", f"{partial}:1"),
        ("partial_arn_alias_create_esm", f"{partial}:myalias"),
        ("full_arn_latest_create_esm", full),
        ("full_arn_version_create_esm", f"{full}:1"),
        ("full_arn_alias_create_esm", f"{full}:myalias"),
    ]


def test_the_seven_function_name_forms_render_as_recorded() -> None:
    bindings: dict[str, Any] = {}
    for number, (key, name) in enumerate(account_forms("my-function")):
        new = create({"FunctionName": name, "EventSourceArn": QUEUE})
        uuid = f"14e0db71-5d35-4eb5-b481-8945cf9d10c{number}"
        answer = render_record(stored(new, uuid=uuid), "Creating", region=REGION)
        assert_matches(answer, recorded_shape("function_name_variations", key), bindings)
        assert new.request["FunctionName"] == name  # stored as given
    assert bindings["resource:3"] == "my-function"


def test_function_arn_takes_what_the_name_leaves_out_from_the_source_and_region() -> None:
    gov_queue = "arn:aws-us-gov:sqs:us-gov-west-1:210987654321:q"
    assert function_arn("f", gov_queue, "us-gov-east-1") == (
        "arn:aws-us-gov:lambda:us-gov-east-1:210987654321:function:f"
    )
    assert function_arn(f"{ACCOUNT}:function:f:live", gov_queue, "us-gov-east-1") == (
        f"arn:aws-us-gov:lambda:us-gov-east-1:{ACCOUNT}:function:f:live"
    )
    own = f"arn:aws:lambda:ap-south-1:{ACCOUNT}:function:f"
    assert function_arn(own, QUEUE, REGION) == own
    assert function_arn("not a name!", QUEUE, REGION) == "not a name!"


def test_the_mapping_arn_is_in_the_api_region_with_the_source_account() -> None:
    assert mapping_arn(KINESIS, UUID, REGION) == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:{UUID}"
    )


# --- the recorded errors -------------------------------------------------------------------


def test_no_event_source_arn_is_unrecognized_as_recorded() -> None:
    error = refused({"FunctionName": "f"})
    assert (error.code, error.message) == recorded_error(
        "_mapping_exceptions", "create_no_event_source_arn"
    )


def test_an_sqs_destination_is_refused_as_recorded() -> None:
    body = {
        "FunctionName": "f",
        "EventSourceArn": QUEUE,
        "DestinationConfig": {"OnFailure": {"Destination": DEAD_LETTERS}},
    }
    error = refused(body)
    assert (error.code, error.message) == recorded_error(
        "_mapping_exceptions", "destination_config_failure"
    )


def test_a_refused_unlisted_function_does_not_exist_as_recorded() -> None:
    settings = ControlApiSettings(unlisted_functions="refuse")
    error = refused({"FunctionName": "nope", "EventSourceArn": QUEUE, "Unknown": 1}, settings)
    assert (error.code, error.message) == recorded_error(
        "_mapping_exceptions", "create_unknown_params"
    )


@pytest.mark.parametrize(
    ("scenario", "source"),
    [("test_create_event_source_validation", DYNAMODB), ("_validation_kinesis", KINESIS)],
)
def test_starting_position_errors_as_recorded(scenario: str, source: str) -> None:
    missing = refused({"FunctionName": "f", "EventSourceArn": source})
    assert (missing.code, missing.message) == recorded_error(scenario, "no_starting_position")
    invalid = refused(
        {"FunctionName": "f", "EventSourceArn": source, "StartingPosition": "invalid"}
    )
    assert (invalid.code, invalid.message) == recorded_error(scenario, "invalid_starting_position")
    assert invalid.body() == {"message": invalid.message}  # Coral's: no Type


def test_at_timestamp_on_dynamodb_is_refused_as_recorded() -> None:
    error = refused(
        {"FunctionName": "f", "EventSourceArn": DYNAMODB, "StartingPosition": "AT_TIMESTAMP"}
    )
    code, message = recorded_error(
        "test_create_event_source_validation", "incompatible_starting_position"
    )
    assert error.code == code
    assert_matches(error.message, message)
    assert error.message.endswith(DYNAMODB)
    with_time = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": DYNAMODB,
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": 1_700_000_000,
        }
    )
    assert with_time.message == error.message


# --- Coral's rules, from botocore's model ----------------------------------------------------


def coral(body: dict[str, Any]) -> str:
    error = refused(body)
    assert error.code == "ValidationException"
    return error.message


def test_coral_reports_a_missing_required_member() -> None:
    assert coral({"EventSourceArn": QUEUE}) == (
        "1 validation error detected: Value null at 'functionName' failed to satisfy "
        "constraint: Member must not be null"
    )


def test_coral_reports_ranges_lengths_and_patterns_together() -> None:
    message = coral(
        {
            "FunctionName": "",
            "EventSourceArn": QUEUE,
            "BatchSize": 10001,
            "ScalingConfig": {"MaximumConcurrency": 1},
            "KMSKeyArn": "key",
        }
    )
    assert message.startswith("5 validation errors detected: ")
    lines = message.removeprefix("5 validation errors detected: ").split("; ")
    assert lines == [
        "Value '' at 'functionName' failed to satisfy constraint: Member must have length "
        "greater than or equal to 1",
        "Value '' at 'functionName' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso("
        "[a-z]?)))?-[a-z]+-\\d{1}:)?(\\d{12}:)?(function:)?([a-zA-Z0-9-_\\.]+)(:(\\$LATEST("
        "\\.PUBLISHED)?|[a-zA-Z0-9-_]+))?",
        "Value '10001' at 'batchSize' failed to satisfy constraint: Member must have value "
        "less than or equal to 10000",
        "Value 'key' at 'kMSKeyArn' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: (arn:(aws[a-zA-Z-]*)?:[a-z0-9-.]+:.*)|()",
        "Value '1' at 'scalingConfig.maximumConcurrency' failed to satisfy constraint: Member "
        "must have value greater than or equal to 2",
    ]


def test_coral_reports_list_items_and_nested_structures_by_path() -> None:
    message = coral(
        {
            "FunctionName": "f",
            "EventSourceArn": QUEUE,
            "FunctionResponseTypes": ["ReportBatchItemFailures", "Everything"],
            "FilterCriteria": {"Filters": [{"Pattern": "{}"}, {"Pattern": "x" * 4097}]},
        }
    )
    assert f"Value '{'x' * 4097}' at 'filterCriteria.filters.2.member.pattern' failed" in message
    assert (
        "Value '[ReportBatchItemFailures, Everything]' at 'functionResponseTypes' failed to "
        "satisfy constraint: Member must have length less than or equal to 1; Value "
        "'[ReportBatchItemFailures, Everything]' at 'functionResponseTypes' failed to satisfy "
        "constraint: Member must satisfy constraint: [Member must satisfy enum value set: "
        "[ReportBatchItemFailures]]"
    ) in message


def test_coral_reports_tag_keys_and_values() -> None:
    message = coral(
        {"FunctionName": "f", "EventSourceArn": QUEUE, "Tags": {"": "ok", "k": "bad\x00"}}
    )
    assert message == (
        "2 validation errors detected: Value '{=ok, k=bad\x00}' at 'tags' failed to satisfy "
        "constraint: Map keys must satisfy constraint: [Member must have length greater than "
        "or equal to 1]; Value '{=ok, k=bad\x00}' at 'tags' failed to satisfy constraint: Map "
        "value must satisfy constraint: [Member must satisfy regular expression pattern: "
        "([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)]"
    )


def test_unicode_letters_numbers_and_spaces_are_tag_characters() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "Tags": {"équipe ٣": "Ωmega"}})
    assert new.tags == {"équipe ٣": "Ωmega"}


def test_values_of_the_wrong_type_are_refused_in_corals_frame() -> None:
    message = coral(
        {
            "FunctionName": 7,
            "EventSourceArn": QUEUE,
            "Enabled": "yes",
            "BatchSize": "5",
            "FunctionResponseTypes": "ReportBatchItemFailures",
            "Tags": {"k": 1},
        }
    )
    assert message.split("; ") == [
        "5 validation errors detected: Value '7' at 'functionName' failed to satisfy "
        "constraint: Member must be of type string",
        "Value 'yes' at 'enabled' failed to satisfy constraint: Member must be of type boolean",
        "Value '5' at 'batchSize' failed to satisfy constraint: Member must be of type integer",
        "Value '{k=1}' at 'tags' failed to satisfy constraint: Map value must satisfy "
        "constraint: [Member must be of type string]",
        "Value 'ReportBatchItemFailures' at 'functionResponseTypes' failed to satisfy "
        "constraint: Member must be of type list",
    ]


def test_a_body_that_is_not_an_object_is_a_validation_exception() -> None:
    bodies: list[Any] = [[], "text", None, 3]
    for body in bodies:
        error = refused(body)
        assert (error.code, error.message) == (
            "ValidationException",
            "The request body must be a JSON object.",
        )


def test_a_null_member_is_not_given() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "BatchSize": None})
    assert new.request["BatchSize"] == 10


def test_a_whole_float_is_an_integer() -> None:
    assert (
        create({"FunctionName": "f", "EventSourceArn": QUEUE, "BatchSize": 5.0}).request[
            "BatchSize"
        ]
        == 5
    )


def test_unknown_members_are_ignored_and_logged_by_name_only() -> None:
    with capture_logs() as logs:
        new = create(
            {
                "FunctionName": "f",
                "EventSourceArn": QUEUE,
                "Surprise": {"secret": "value"},
                "ScalingConfig": {"MaximumConcurrency": 5, "Extra": 1},
            }
        )
    assert new.request["ScalingConfig"] == {"MaximumConcurrency": 5}
    (entry,) = [e for e in logs if e["event"] == "control.unknown_fields"]
    assert entry["fields"] == ["Surprise", "ScalingConfig.Extra"]
    assert "value" not in repr(entry)


def test_the_log_of_unknown_members_is_bounded() -> None:
    body: dict[str, Any] = {"FunctionName": "f", "EventSourceArn": QUEUE}
    body.update({f"{n:03d}" + "x" * 500: n for n in range(1000)})
    with capture_logs() as logs:
        create(body)
    (entry,) = [e for e in logs if e["event"] == "control.unknown_fields"]
    assert entry["count"] == 1000
    assert len(entry["fields"]) == 20
    assert all(len(name) == 100 and name.endswith("...") for name in entry["fields"])


# --- what poller does not run --------------------------------------------------------------


@pytest.mark.parametrize("member", UNSUPPORTED_MEMBERS)
def test_kafka_mq_and_documentdb_members_are_refused(member: str) -> None:
    values: dict[str, Any] = {
        "Topics": ["orders"],
        "Queues": ["orders"],
        "SourceAccessConfigurations": [],
        "SelfManagedEventSource": {"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["k:9092"]}},
        "AmazonManagedKafkaEventSourceConfig": {"ConsumerGroupId": "g"},
        "SelfManagedKafkaEventSourceConfig": {"ConsumerGroupId": "g"},
        "DocumentDBEventSourceConfig": {"DatabaseName": "db"},
        "LoggingConfig": {"SystemLogLevel": "INFO"},
    }
    error = refused({"FunctionName": "f", "EventSourceArn": QUEUE, member: values[member]})
    assert (error.code, error.message) == (
        "InvalidParameterValueException",
        f"{member} is not supported by poller",
    )


@pytest.mark.parametrize(
    "source",
    [
        f"arn:aws:kafka:us-east-1:{ACCOUNT}:cluster/c/abc",
        f"arn:aws:mq:us-east-1:{ACCOUNT}:broker:b:id",
        "arn:aws:rds:us-east-1:123456789012:cluster:docs",
    ],
)
def test_other_sources_are_unrecognized(source: str) -> None:
    error = refused({"FunctionName": "f", "EventSourceArn": source})
    assert (error.code, error.message) == (
        "InvalidParameterValueException",
        "Unrecognized event source.",
    )


@pytest.mark.parametrize(
    ("source", "member", "value"),
    [
        (QUEUE, "ParallelizationFactor", 2),
        (QUEUE, "MaximumRetryAttempts", 2),
        (KINESIS, "ScalingConfig", {"MaximumConcurrency": 5}),
        (KINESIS, "ProvisionedPollerConfig", {"MinimumPollers": 2}),
    ],
)
def test_members_of_other_source_types_are_refused(source: str, member: str, value: Any) -> None:
    body: dict[str, Any] = {"FunctionName": "f", "EventSourceArn": source, member: value}
    if source == KINESIS:
        body["StartingPosition"] = "LATEST"
    error = refused(body)
    camel = member[:1].lower() + member[1:]
    assert error.message == f"Unsupported '{camel}' parameter for given event source mapping type."


@pytest.mark.parametrize(
    ("member", "value"), [("StartingPosition", "LATEST"), ("StartingPositionTimestamp", 1.0)]
)
def test_a_queue_has_no_starting_position(member: str, value: Any) -> None:
    error = refused({"FunctionName": "f", "EventSourceArn": QUEUE, member: value})
    assert error.message == f"{member} is not valid for SQS event sources."


def test_at_timestamp_needs_a_timestamp() -> None:
    error = refused(
        {"FunctionName": "f", "EventSourceArn": KINESIS, "StartingPosition": "AT_TIMESTAMP"}
    )
    assert error.message == "Need to specify a timestamp"


def test_a_timestamp_without_at_timestamp_is_refused_by_the_models() -> None:
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": KINESIS,
            "StartingPosition": "LATEST",
            "StartingPositionTimestamp": 1_700_000_000,
        }
    )
    assert error.message.startswith(
        "StartingPositionTimestamp: 1700000000.0 is set but StartingPosition is LATEST; allowed "
        "only with StartingPosition AT_TIMESTAMP"
    )


def test_a_future_timestamp_is_refused_by_the_models() -> None:
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": KINESIS,
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": 4_000_000_000,
        }
    )
    assert "is in the future" in error.message


def test_on_success_is_refused_for_streams() -> None:
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": KINESIS,
            "StartingPosition": "LATEST",
            "DestinationConfig": {"OnSuccess": {"Destination": DEAD_LETTERS}},
        }
    )
    assert error.message == (
        "Unsupported DestinationConfig parameter for given event source mapping type."
    )


# --- poller's models, in AWS's words --------------------------------------------------------


def test_the_sqs_batch_window_rule_uses_aws_text() -> None:
    error = refused({"FunctionName": "f", "EventSourceArn": QUEUE, "BatchSize": 100})
    assert (error.code, error.message) == (
        "InvalidParameterValueException",
        "Maximum batch window in seconds must be greater than 0 if maximum batch size is "
        "greater than 10",
    )


def test_a_bad_filter_pattern_uses_aws_text_alone() -> None:
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": QUEUE,
            "FilterCriteria": {"Filters": [{"Pattern": '{"body": "not a list"}'}]},
        }
    )
    assert error.message == "Invalid filter pattern definition."


def test_poller_problems_name_the_aws_members() -> None:
    body: dict[str, Any] = {
        "FunctionName": "f",
        "EventSourceArn": KINESIS,
        "StartingPosition": "LATEST",
        "MaximumRecordAgeInSeconds": 30,
        "ParallelizationFactor": 2,
        "TumblingWindowInSeconds": 60,
        "DestinationConfig": {"OnFailure": {"Destination": f"{DEAD_LETTERS}.fifo"}},
    }
    error = refused(body)
    assert error.code == "InvalidParameterValueException"
    assert error.message == (
        "MaximumRecordAgeInSeconds: 30 is out of range; allowed -1 or 60 to 604800 (AWS "
        "MaximumRecordAgeInSeconds: the minimum valid value is 60 seconds; values less than 60 "
        "and greater than -1 fall within the parameter's absolute range but are not allowed)"
    )
    body["MaximumRecordAgeInSeconds"] = 60
    assert refused(body).message.startswith(
        f"DestinationConfig.OnFailure.Destination: '{DEAD_LETTERS}.fifo' is a FIFO queue;"
    )
    body["DestinationConfig"] = {"OnFailure": {"Destination": DEAD_LETTERS}}
    assert refused(body).message.startswith(
        "TumblingWindowInSeconds: 60 is not allowed with ParallelizationFactor 2; poller keeps "
        "one window state per shard, so tumbling windows need ParallelizationFactor 1"
    )


def test_a_function_name_poller_cannot_invoke_is_refused_with_the_aws_member() -> None:
    error = refused({"FunctionName": "my.function", "EventSourceArn": QUEUE})
    assert error.message.startswith("FunctionName: 'my.function' is not valid; expected")


def test_provisioned_pollers_below_polers_minimum_are_refused() -> None:
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": QUEUE,
            "ProvisionedPollerConfig": {"MinimumPollers": 1},
        }
    )
    assert error.message == (
        "ProvisionedPollerConfig.MinimumPollers: 1 is out of range; allowed 2 to 200 "
        "(AWS MinimumPollers)"
    )


def test_reserved_tags_are_refused_by_the_models() -> None:
    error = refused({"FunctionName": "f", "EventSourceArn": QUEUE, "Tags": {"aws:x": "1"}})
    assert error.message.startswith("Tags: tag 'aws:x': keys starting with 'aws:'")


# --- the normal form, and round trips ------------------------------------------------------

STREAM_DEFAULTS = {
    "BatchSize": 100,
    "MaximumBatchingWindowInSeconds": 0,
    "MaximumRetryAttempts": -1,
    "MaximumRecordAgeInSeconds": -1,
    "ParallelizationFactor": 1,
    "BisectBatchOnFunctionError": False,
    "TumblingWindowInSeconds": 0,
    "FunctionResponseTypes": [],
    "DestinationConfig": {"OnFailure": {}},
}


@pytest.mark.parametrize("source", [KINESIS, DYNAMODB])
def test_stream_defaults_are_aws_defaults(source: str) -> None:
    new = create({"FunctionName": "f", "EventSourceArn": source, "StartingPosition": "LATEST"})
    assert dict(new.request) == {
        "EventSourceArn": source,
        "FunctionName": "f",
        "StartingPosition": "LATEST",
        **STREAM_DEFAULTS,
    }
    assert (new.enabled, dict(new.tags), new.event_source_arn) == (True, {}, source)


def test_sqs_defaults_are_aws_defaults() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "Enabled": False})
    assert dict(new.request) == {
        "EventSourceArn": QUEUE,
        "FunctionName": "f",
        "BatchSize": 10,
        "MaximumBatchingWindowInSeconds": 0,
        "FunctionResponseTypes": [],
    }
    assert new.enabled is False


FILTERS = {"Filters": [{"Pattern": '{"data": {"kind": ["order"]}}'}]}
PAST = 1_700_000_000.5

ROUND_TRIPS: list[tuple[str, dict[str, Any], str, Any]] = [
    (KINESIS, {"BatchSize": 500}, "batch_size", 500),
    (KINESIS, {"MaximumBatchingWindowInSeconds": 7}, "maximum_batching_window_in_seconds", 7),
    (KINESIS, {"MaximumRetryAttempts": 3}, "maximum_retry_attempts", 3),
    (KINESIS, {"MaximumRecordAgeInSeconds": 3600}, "maximum_record_age_in_seconds", 3600),
    (KINESIS, {"ParallelizationFactor": 4}, "parallelization_factor", 4),
    (KINESIS, {"BisectBatchOnFunctionError": True}, "bisect_batch_on_function_error", True),
    (KINESIS, {"TumblingWindowInSeconds": 120}, "tumbling_window_in_seconds", 120),
    (
        DYNAMODB,
        {"FunctionResponseTypes": ["ReportBatchItemFailures"]},
        "report_batch_item_failures",
        True,
    ),
    (
        DYNAMODB,
        {"DestinationConfig": {"OnFailure": {"Destination": DEAD_LETTERS}}},
        "on_failure_arn",
        DEAD_LETTERS,
    ),
    (
        KINESIS,
        {"StartingPosition": "AT_TIMESTAMP", "StartingPositionTimestamp": PAST},
        "starting_position_timestamp",
        PAST,
    ),
    (KINESIS, {"FilterCriteria": FILTERS}, "filter_criteria", "filters"),
    (KINESIS, {"MetricsConfig": {"Metrics": ["EventCount"]}}, "metrics_config", "metrics"),
    (QUEUE, {"BatchSize": 1000, "MaximumBatchingWindowInSeconds": 5}, "batch_size", 1000),
    (QUEUE, {"ScalingConfig": {"MaximumConcurrency": 50}}, "maximum_concurrency", 50),
    (
        QUEUE,
        {"ProvisionedPollerConfig": {"MinimumPollers": 3, "MaximumPollers": 30}},
        "provisioned_poller_config",
        "pollers",
    ),
    (QUEUE, {"FilterCriteria": {"Filters": [{"Pattern": '{"body": {"a": [1]}}'}]}}, "filters", "x"),
]


def model_value(mapping: Any, attribute: str, expected: Any) -> Any:
    if attribute == "filter_criteria":
        return [f.pattern for f in mapping.filter_criteria.filters]
    if attribute == "metrics_config":
        return mapping.metrics_config.metrics
    if attribute == "provisioned_poller_config":
        config = mapping.provisioned_poller_config
        return (config.minimum_pollers, config.maximum_pollers)
    if attribute == "filters":
        return mapping.filters is not None
    return getattr(mapping, attribute)


@pytest.mark.parametrize(("source", "given", "attribute", "expected"), ROUND_TRIPS)
def test_each_field_round_trips(
    source: str, given: dict[str, Any], attribute: str, expected: Any
) -> None:
    body: dict[str, Any] = {"FunctionName": "f", "EventSourceArn": source, **given}
    if source != QUEUE:
        body.setdefault("StartingPosition", "TRIM_HORIZON")
    new = create(body)
    for key, value in given.items():
        assert new.request[key] == value  # stored in AWS's names, as given
    record = stored(new)
    mapping = to_mapping(record, settings=SETTINGS, region=REGION)
    wanted = {
        "filter_criteria": [f["Pattern"] for f in FILTERS["Filters"]],
        "metrics_config": ["EventCount"],
        "provisioned_poller_config": (3, 30),
        "filters": True,
    }.get(attribute, expected)
    assert model_value(mapping, attribute, expected) == wanted
    answer = render_record(record, "Enabled", region=REGION)
    for key, value in given.items():
        assert answer[key] == value
    # The file renderer, fed the same mapping, gives the same answer.
    assert {**render_file_mapping(mapping, region=REGION), "LastModified": 1.0} == {
        **answer,
        "LastModified": 1.0,
    }
    # And validating the stored request again changes nothing.
    assert parse_update(record, {}, settings=SETTINGS, region=REGION) == (new.request, None)


def test_to_mapping_names_the_mapping_by_its_uuid_and_follows_desired() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "Tags": {"team": "a"}})
    for desired, enabled in (("Enabled", True), ("Disabled", False), ("Deleted", False)):
        mapping = to_mapping(stored(new, desired=desired), settings=SETTINGS, region=REGION)
        assert isinstance(mapping, SqsMapping)
        assert (mapping.name, mapping.mapping_uuid, mapping.enabled) == (UUID, UUID, enabled)
        assert mapping.tags == {"team": "a"}
        assert mapping.target == LambdaTargetConfig(type="lambda", function_name="f")


def test_each_source_gets_its_model() -> None:
    for source, model in ((KINESIS, KinesisMapping), (DYNAMODB, DynamoDBStreamMapping)):
        new = create({"FunctionName": "f", "EventSourceArn": source, "StartingPosition": "LATEST"})
        assert isinstance(to_mapping(stored(new), settings=SETTINGS, region=REGION), model)


def test_a_kms_key_is_stored_and_shown_but_an_empty_one_is_not() -> None:
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234"
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "KMSKeyArn": key})
    record = stored(new)
    assert render_record(record, "Enabled", region=REGION)["KMSKeyArn"] == key
    to_mapping(record, settings=SETTINGS, region=REGION)
    request, _ = parse_update(record, {"KMSKeyArn": ""}, settings=SETTINGS, region=REGION)
    assert "KMSKeyArn" not in request
    assert (
        "KMSKeyArn"
        not in create({"FunctionName": "f", "EventSourceArn": QUEUE, "KMSKeyArn": ""}).request
    )


def test_an_empty_on_failure_sent_back_means_no_destination() -> None:
    body = {
        "FunctionName": "f",
        "EventSourceArn": KINESIS,
        "StartingPosition": "LATEST",
        "DestinationConfig": {"OnFailure": {}},
    }
    new = create(body)
    assert new.request["DestinationConfig"] == {"OnFailure": {}}
    mapping = to_mapping(stored(new), settings=SETTINGS, region=REGION)
    assert isinstance(mapping, KinesisMapping)
    assert mapping.on_failure_arn is None


# --- functions -----------------------------------------------------------------------------

LOCAL = ControlApiSettings.model_validate(
    {"functions": {"local-fn": {"type": "python", "handler": "examples.handlers:log_batch"}}}
)


def test_a_listed_function_gets_its_target_in_any_name_form() -> None:
    for _, name in account_forms("local-fn"):
        new = create({"FunctionName": name, "EventSourceArn": QUEUE}, LOCAL)
        mapping = to_mapping(stored(new), settings=LOCAL, region=REGION)
        assert isinstance(mapping.target, PythonTargetConfig)


def test_a_function_no_longer_listed_is_a_config_error_for_the_reconciler() -> None:
    new = create({"FunctionName": "local-fn", "EventSourceArn": QUEUE}, LOCAL)
    refusing = ControlApiSettings(unlisted_functions="refuse")
    with pytest.raises(ConfigError) as caught:
        to_mapping(stored(new), settings=refusing, region=REGION)
    assert caught.value.problems == [
        f"mapping {UUID} (created through the control API): Function does not exist"
    ]
    # With unlisted functions allowed it becomes a Lambda function of that name.
    mapping = to_mapping(stored(new), settings=SETTINGS, region=REGION)
    assert mapping.target == LambdaTargetConfig(type="lambda", function_name="local-fn")


def test_file_mappings_render_with_their_own_function() -> None:
    python = SqsMapping.model_validate(
        {
            "name": "local.orders",
            "event_source_arn": QUEUE,
            "enabled": False,
            "tags": {"team": "a"},
            "target": {"type": "python", "handler": "examples.handlers:log_batch"},
        }
    )
    answer = render_file_mapping(python, region=REGION, last_modified=5.0)
    assert_matches(
        {**answer, "State": "Creating"},
        recorded_shape("function_name_variations", "name_only_create_esm"),
    )
    assert answer["FunctionArn"] == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:poller-local.orders"
    )
    assert (answer["UUID"], answer["State"], answer["LastModified"]) == (
        python.mapping_uuid,
        "Disabled",
        5.0,
    )
    qualified = KinesisMapping.model_validate(
        {
            "name": "orders",
            "event_source_arn": KINESIS,
            "starting_position": "LATEST",
            "target": {"type": "lambda", "function_name": "fn", "qualifier": "live"},
        }
    )
    shown = render_file_mapping(qualified, region=REGION)
    assert shown["FunctionArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn:live"
    assert (shown["State"], shown["StateTransitionReason"]) == ("Enabled", "User action")


def test_last_processing_result_is_shown_for_streams_once_set() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": KINESIS, "StartingPosition": "LATEST"})
    answer = render_record(stored(new, last_processing_result="OK"), "Enabled", region=REGION)
    assert answer["LastProcessingResult"] == "OK"
    assert "Tags" not in answer


# --- updates -------------------------------------------------------------------------------


def update(record: MappingRecord, body: Any, settings: ControlApiSettings = SETTINGS) -> Any:
    return parse_update(record, body, settings=settings, region=REGION)


def test_an_update_changes_only_what_it_gives() -> None:
    new = create(
        {
            "FunctionName": "f",
            "EventSourceArn": KINESIS,
            "StartingPosition": "LATEST",
            "MaximumRetryAttempts": 5,
        }
    )
    record = stored(new)
    request, enabled = update(record, {"BatchSize": 7, "BisectBatchOnFunctionError": True})
    assert enabled is None
    assert dict(request) == {
        **new.request,
        "BatchSize": 7,
        "BisectBatchOnFunctionError": True,
    }


def test_an_update_ignores_create_only_members() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": KINESIS, "StartingPosition": "LATEST"})
    record = stored(new, tags={"a": "1"})
    with capture_logs() as logs:
        request, enabled = update(
            record,
            {
                "EventSourceArn": QUEUE,
                "StartingPosition": "TRIM_HORIZON",
                "Tags": {"b": "2"},
                "Enabled": False,
            },
        )
    assert (dict(request), enabled) == (dict(new.request), False)
    (entry,) = [e for e in logs if e["event"] == "control.unknown_fields"]
    assert entry["fields"] == ["EventSourceArn", "StartingPosition", "Tags"]


def test_an_update_replaces_structures_whole_and_empty_ones_remove_them() -> None:
    new = create(
        {
            "FunctionName": "f",
            "EventSourceArn": QUEUE,
            "FilterCriteria": {"Filters": [{"Pattern": '{"body": {"a": [1]}}'}]},
            "ScalingConfig": {"MaximumConcurrency": 10},
        }
    )
    record = stored(new)
    request, _ = update(record, {"FilterCriteria": {"Filters": []}, "ScalingConfig": {}})
    assert "FilterCriteria" not in request
    assert "ScalingConfig" not in request


def test_an_update_is_validated_against_the_update_shape_and_the_models() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE})
    record = stored(new)
    with pytest.raises(ApiError) as coral_error:
        update(record, {"BatchSize": 0})
    assert coral_error.value.message == (
        "1 validation error detected: Value '0' at 'batchSize' failed to satisfy constraint: "
        "Member must have value greater than or equal to 1"
    )
    with pytest.raises(ApiError) as model_error:
        update(record, {"BatchSize": 50})
    assert model_error.value.message.startswith("Maximum batch window in seconds")
    with pytest.raises(ApiError) as kafka_error:
        update(record, {"SourceAccessConfigurations": []})
    assert kafka_error.value.message == "SourceAccessConfigurations is not supported by poller"
    with pytest.raises(ApiError) as not_object:
        update(record, ["BatchSize"])
    assert not_object.value.code == "ValidationException"


def test_an_update_may_change_the_function() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE})
    request, _ = update(stored(new), {"FunctionName": f"{ACCOUNT}:function:g:2"})
    assert request["FunctionName"] == f"{ACCOUNT}:function:g:2"
    assert request_function_arn(request, REGION) == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:g:2"
    )
    refusing = ControlApiSettings(unlisted_functions="refuse")
    with pytest.raises(ApiError) as caught:
        update(stored(new), {"FunctionName": "g"}, refusing)
    assert caught.value.message == "Function does not exist"


def test_an_update_of_a_disabled_mapping_keeps_it_disabled() -> None:
    new = create({"FunctionName": "f", "EventSourceArn": QUEUE, "Enabled": False})
    request, enabled = update(stored(new), {"Enabled": True})
    assert (enabled, dict(request)) == (True, dict(new.request))


def test_problems_inside_lists_name_the_item() -> None:
    empty_pattern = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": QUEUE,
            "FilterCriteria": {"Filters": [{"Pattern": ""}]},
        }
    )
    assert empty_pattern.message == (
        "FilterCriteria.Filters[0].Pattern: '' has 0 characters; allowed 1 to 4096 characters"
    )
    kafka_metric = refused(
        {"FunctionName": "f", "EventSourceArn": QUEUE, "MetricsConfig": {"Metrics": ["ErrorCount"]}}
    )
    assert kafka_metric.message.startswith(
        "MetricsConfig.Metrics[0]: 'ErrorCount' is Kafka-only (AWS accepts it for Amazon MSK"
    )
    six = {"Filters": [{"Pattern": f'{{"body": {{"n": [{n}]}}}}'} for n in range(6)]}
    too_many = refused({"FunctionName": "f", "EventSourceArn": QUEUE, "FilterCriteria": six})
    assert too_many.message.startswith("FilterCriteria.Filters: [")
    assert too_many.message.endswith("has 6 items; allowed at most 5 (AWS Filters)")


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_timestamp_that_is_no_finite_number_is_refused(value: float) -> None:
    # JSON parsers read 1e999 as infinity; Coral's type check lets any number through.
    error = refused(
        {
            "FunctionName": "f",
            "EventSourceArn": KINESIS,
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": value,
        }
    )
    assert error.message == f"StartingPositionTimestamp: {value} is not a finite number"
