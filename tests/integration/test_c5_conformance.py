"""The scenarios recorded on real AWS (``tests/fixtures/aws-recorded/esm-api.json``) replayed
with AWS's Lambda client against a live ``poller run``, each answer checked for the recorded
shape with :func:`~tests.support.conformance.assert_matches`.

The recordings were made with boto3 by LocalStack's snapshot tests: timestamps are kept as
``"datetime"`` and ``ResponseMetadata`` as its status alone, which :func:`wire_shape` does to
our answers too. The sources they name (a DynamoDB table's stream, an SQS queue, a Kinesis
stream) are made on moto's server, so the mappings created here really run. The Kafka scenario
does not apply: poller has no Kafka.
"""

from __future__ import annotations

import json
import uuid as uuids
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from tests.support.aws import ACCOUNT, CREDENTIALS, REGION, stream_arn, unique
from tests.support.conformance import assert_matches, recorded
from tests.support.control_api import (
    ControlService,
    control_config,
    control_section,
    failure,
    python_function,
    start_control_service,
    wait_gone,
    wait_state,
    wire_shape,
)
from tests.support.process import ServiceProcess
from tests.support.sqs import queue_arn

pytestmark = pytest.mark.slow

RECORDING = "esm-api.json"
#: The one function the recorded scenarios map; a do-nothing Python handler.
FUNCTION = "esm-fn"


def _service(
    tmp: Path, moto_url: str, started: list[ServiceProcess], **control: Any
) -> ControlService:
    def launch(config: Path, log: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(config, tmp / log, env).start()
        started.append(proc)
        return proc

    functions = {FUNCTION: python_function("examples.handlers:noop")}
    return start_control_service(
        launch,
        tmp / "poller.yaml",
        lambda port: control_config(
            moto_url,
            control_section(port, functions=functions, **control),
            checkpoints={"path": str(tmp / "c.db")},
        ),
        "run.log",
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, moto_url: str) -> Iterator[Any]:
    """A Lambda client on a live service (unlisted function names are Lambda functions)."""
    started: list[ServiceProcess] = []
    try:
        yield _service(tmp_path_factory.mktemp("api"), moto_url, started).client()
    finally:
        for proc in started:
            proc.stop()


def _client(service: str, moto_url: str) -> Any:
    return botocore.session.get_session().create_client(
        service, region_name=REGION, endpoint_url=moto_url, **CREDENTIALS
    )


@pytest.fixture(scope="module")
def sources(moto_url: str) -> dict[str, str]:
    """The scenarios' sources on moto: a table's stream, a queue, a Kinesis stream."""
    table, queue, stream = unique("c5-table"), unique("c5-queue"), unique("c5-stream")
    created = _client("dynamodb", moto_url).create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    _client("sqs", moto_url).create_queue(QueueName=queue)
    kinesis = _client("kinesis", moto_url)
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName=stream)
    return {
        "table_stream": created["TableDescription"]["LatestStreamArn"],
        "queue": queue_arn(queue),
        "stream": stream_arn(stream),
    }


@pytest.fixture(autouse=True)
def no_mapping_left(api: Any) -> Iterator[None]:
    """Deletes what a test left (it failed half-way): AWS allows one mapping per function and
    source, and the scenarios share both."""
    yield
    left = [m["UUID"] for m in api.list_event_source_mappings()["EventSourceMappings"]]
    for uuid in left:
        api.delete_event_source_mapping(UUID=uuid)
    for uuid in left:
        wait_gone(api, uuid, limit=120)


class Scenario:
    """One recorded scenario: its answers are matched in order, with one set of bindings (a
    placeholder such as ``<resource:4>`` is one value throughout the scenario)."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.bindings: dict[str, Any] = {}

    def match(self, key: str, answer: Any) -> Any:
        assert_matches(wire_shape(answer), recorded(RECORDING, self.suffix, key), self.bindings)
        return answer

    def fails(self, key: str, call: Callable[[], Any]) -> None:
        self.match(key, failure(call))


def _unknown_uuid() -> str:
    return str(uuids.uuid4())


def test_c5_exceptions(api: Any, sources: dict[str, str], tmp_path: Path, moto_url: str) -> None:
    """Unknown UUIDs (404), no event source, an unknown function with unknown parameters, and
    a DestinationConfig on SQS (400 InvalidParameterValueException)."""
    scenario = Scenario("test_event_source_mapping_exceptions")
    scenario.fails("get_unknown_uuid", lambda: api.get_event_source_mapping(UUID=_unknown_uuid()))
    scenario.fails(
        "delete_unknown_uuid", lambda: api.delete_event_source_mapping(UUID=_unknown_uuid())
    )
    scenario.fails(
        "update_unknown_uuid",
        lambda: api.update_event_source_mapping(UUID=_unknown_uuid(), BatchSize=1),
    )
    scenario.fails(
        "create_no_event_source_arn", lambda: api.create_event_source_mapping(FunctionName=FUNCTION)
    )
    scenario.fails(
        "destination_config_failure",
        lambda: api.create_event_source_mapping(
            FunctionName=FUNCTION,
            EventSourceArn=sources["queue"],
            DestinationConfig={"OnFailure": {"Destination": sources["queue"]}},
        ),
    )
    # "Function does not exist" needs a service that refuses names it does not list; the
    # unknown parameter is added to the signed body (botocore drops unmodelled ones itself):
    # AWS ignores it and fails on the function, and so must we.
    started: list[ServiceProcess] = []
    try:
        strict = _service(tmp_path, moto_url, started, unlisted_functions="refuse").client()
        strict.meta.events.register(
            "before-sign.lambda.CreateEventSourceMapping", _add_unknown_parameter
        )
        scenario.fails(
            "create_unknown_params",
            lambda: strict.create_event_source_mapping(
                FunctionName="no-such-function",
                EventSourceArn=sources["stream"],
                StartingPosition="LATEST",
            ),
        )
    finally:
        for proc in started:
            proc.stop()


def _add_unknown_parameter(request: Any, **_: Any) -> None:
    body = json.loads(request.data)
    request.data = json.dumps({**body, "UnknownParameter": "ignored by AWS"}).encode()


@pytest.mark.parametrize(
    "suffix",
    ["test_event_source_mapping_lifecycle", "test_event_source_mapping_lifecycle_delete_function"],
)
def test_c5_dynamodb_lifecycle(api: Any, sources: dict[str, str], suffix: str) -> None:
    """A DynamoDB stream mapping with an SQS on-failure destination: Create (202 Creating),
    Get once settled (200 Enabled), Delete (202 Deleting), then 404. (The second recording
    also deletes the function in between; poller has none to delete, so Get is matched again.)"""
    scenario = Scenario(suffix)
    created = scenario.match(
        "create_response",
        api.create_event_source_mapping(
            FunctionName=FUNCTION,
            EventSourceArn=sources["table_stream"],
            StartingPosition="TRIM_HORIZON",
            BatchSize=1,
            MaximumBatchingWindowInSeconds=1,
            MaximumRetryAttempts=1,
            DestinationConfig={"OnFailure": {"Destination": sources["queue"]}},
        ),
    )
    uuid = created["UUID"]
    scenario.match("get_response", wait_state(api, uuid, "Enabled"))
    if suffix.endswith("delete_function"):
        scenario.match("get_response_post_delete", api.get_event_source_mapping(UUID=uuid))
    scenario.match("delete_response", api.delete_event_source_mapping(UUID=uuid))
    wait_gone(api, uuid)


def test_c5_dynamodb_starting_position_validation(api: Any, sources: dict[str, str]) -> None:
    """DynamoDB: no StartingPosition (InvalidParameterValueException with Coral's text), an
    invalid one (ValidationException), AT_TIMESTAMP (unsupported for this source)."""
    scenario = Scenario("test_create_event_source_validation")
    arn = sources["table_stream"]
    create = api.create_event_source_mapping
    scenario.fails(
        "no_starting_position", lambda: create(FunctionName=FUNCTION, EventSourceArn=arn)
    )
    scenario.fails(
        "invalid_starting_position",
        lambda: create(FunctionName=FUNCTION, EventSourceArn=arn, StartingPosition="invalid"),
    )
    scenario.fails(
        "incompatible_starting_position",
        lambda: create(
            FunctionName=FUNCTION,
            EventSourceArn=arn,
            StartingPosition="AT_TIMESTAMP",
        ),
    )


def test_c5_kinesis_starting_position_validation(api: Any, sources: dict[str, str]) -> None:
    """Kinesis: no StartingPosition, and an invalid one."""
    scenario = Scenario("test_create_event_source_validation_kinesis")
    arn = sources["stream"]
    create = api.create_event_source_mapping
    scenario.fails(
        "no_starting_position", lambda: create(FunctionName=FUNCTION, EventSourceArn=arn)
    )
    scenario.fails(
        "invalid_starting_position",
        lambda: create(FunctionName=FUNCTION, EventSourceArn=arn, StartingPosition="invalid"),
    )


def test_c5_function_name_variations(api: Any, sources: dict[str, str]) -> None:
    """SQS mappings created with the seven forms of FunctionName: a name, a partial or full ARN,
    each as $LATEST, a version or an alias; FunctionArn keeps the qualifier. AWS allows one
    mapping per function and source, and the plain name and the unqualified ARN are one
    function, so the first four are deleted before the last three are created."""
    scenario = Scenario("test_function_name_variations")
    partial = f"{ACCOUNT}:function:{FUNCTION}"
    full = f"arn:aws:lambda:{REGION}:{partial}"
    rounds = [
        {
            "name_only_create_esm": FUNCTION,
            "partial_arn_latest_create_esm": f"{partial}:$LATEST",
            "partial_arn_version_create_esm": f"{partial}:1",
            "partial_arn_alias_create_esm": f"{partial}:myalias",
        },
        {
            "full_arn_latest_create_esm": full,
            "full_arn_version_create_esm": f"{full}:1",
            "full_arn_alias_create_esm": f"{full}:myalias",
        },
    ]
    for forms in rounds:
        made = [
            scenario.match(
                key,
                api.create_event_source_mapping(FunctionName=name, EventSourceArn=sources["queue"]),
            )["UUID"]
            for key, name in forms.items()
        ]
        for uuid in made:
            api.delete_event_source_mapping(UUID=uuid)
        for uuid in made:
            wait_gone(api, uuid, limit=120)  # an SQS drain may wait out a 20 s long poll


def test_c5_tag_lifecycle(api: Any, sources: dict[str, str]) -> None:
    """TagResource (204), ListTags, overlapping keys overwritten, UntagResource of present,
    missing and mixed keys."""
    scenario = Scenario("test_tag_lifecycle[event_source_mapping]")
    mapping = api.create_event_source_mapping(
        FunctionName=FUNCTION, EventSourceArn=sources["stream"], StartingPosition="LATEST"
    )
    arn = mapping["EventSourceMappingArn"]
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("tag_single_response", lambda: api.tag_resource(Resource=arn, Tags={"A": "tag-a"})),
        (
            "tag_multiple_response",
            lambda: api.tag_resource(Resource=arn, Tags={"B": "tag-b", "C": "tag-c"}),
        ),
        (
            "tag_overlap_response",
            lambda: api.tag_resource(Resource=arn, Tags={"C": "tag-c-newsuffix", "D": "tag-d"}),
        ),
        ("untag_single_response", lambda: api.untag_resource(Resource=arn, TagKeys=["A"])),
        ("untag_multiple_response", lambda: api.untag_resource(Resource=arn, TagKeys=["B", "C"])),
        ("untag_nonexisting_response", lambda: api.untag_resource(Resource=arn, TagKeys=["F"])),
        (
            "untag_existing_and_nonexisting_response",
            lambda: api.untag_resource(Resource=arn, TagKeys=["D", "F"]),
        ),
    ]
    for key, call in steps:
        scenario.match(key, call())
        scenario.match(f"{key}_listtags", api.list_tags(Resource=arn))
    api.delete_event_source_mapping(UUID=mapping["UUID"])
    wait_gone(api, mapping["UUID"])


def test_c5_tag_exceptions(api: Any) -> None:
    """Tags of an unknown mapping ARN (404, for Tag, Untag and ListTags); an ARN with a
    qualifier, or of another resource type (400 ValidationException with AWS's pattern)."""
    scenario = Scenario("test_tag_exceptions[event_source_mapping]")
    unknown = f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:{_unknown_uuid()}"
    scenario.fails(
        "not_found_exception_tag", lambda: api.tag_resource(Resource=unknown, Tags={"A": "a"})
    )
    scenario.fails(
        "not_found_exception_untag", lambda: api.untag_resource(Resource=unknown, TagKeys=["A"])
    )
    scenario.fails("not_found_exception_list", lambda: api.list_tags(Resource=unknown))
    scenario.fails(
        "aliased_arn_exception",
        lambda: api.tag_resource(Resource=f"{unknown}:alias", Tags={"A": "a"}),
    )
    foobar = f"arn:aws:lambda:{REGION}:{ACCOUNT}:foobar:{_unknown_uuid()}"
    scenario.fails(
        "invalid_arn_exception", lambda: api.tag_resource(Resource=foobar, Tags={"A": "a"})
    )


def test_c5_empty_filter_criteria(api: Any, sources: dict[str, str]) -> None:
    """A DynamoDB mapping with ``FilterCriteria: {"Filters": []}``: created with the defaults
    and no FilterCriteria in the answer."""
    scenario = Scenario("test_create_event_filter_criteria_validation")
    created = scenario.match(
        "response-with-empty-filters",
        api.create_event_source_mapping(
            FunctionName=FUNCTION,
            EventSourceArn=sources["table_stream"],
            StartingPosition="LATEST",
            FilterCriteria={"Filters": []},
        ),
    )
    api.delete_event_source_mapping(UUID=created["UUID"])
    wait_gone(api, created["UUID"])


def test_c5_self_managed_kafka() -> None:
    """The recorded self-managed Kafka scenario."""
    pytest.skip(
        "not applicable: poller has no Kafka source (self-managed or MSK); such a create is "
        "answered InvalidParameterValueException: 'Unrecognized event source.', or "
        "'Topics is not supported by poller' (and so for Kafka's other fields)"
    )
