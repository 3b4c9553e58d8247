"""AWS's request and response JSON for mappings: validation, translation and rendering.

Data flow::

    a Create/Update body (AWS JSON) --parse_create / parse_update--> NewMapping / a request
        (validated through botocore's model and then through poller's MappingConfig)
    a MappingRecord --to_mapping--> AnyMapping (what poller.reconcile runs)
    a MappingRecord + its state --render_record--> the API's answer
    a file mapping (AnyMapping) --render_file_mapping--> the API's answer

A request passes three gates, in AWS's order:

1. Coral's wire rules, read from botocore's model (:mod:`poller.control.model_rules`): a
   ``ValidationException``. Members AWS does not know are ignored, as AWS ignores them.
2. What poller cannot run (Kafka, MQ, DocumentDB fields; a source other than Kinesis, DynamoDB
   Streams or SQS; a function ``control_api`` refuses): an ``InvalidParameterValueException``.
3. poller's own mapping models (:data:`~poller.config.MappingConfig`), fed the translation of
   the AWS names into the YAML names (the models' ``aws_name`` metadata): an
   ``InvalidParameterValueException`` with AWS's text where the models know it.

The stored request is the validated mapping translated back into AWS's names, with every
default filled in, so what is stored, what runs and what the API shows cannot disagree. Its
normal form (``MappingRecord.request``):

- always ``EventSourceArn``, ``FunctionName`` (as given), ``BatchSize``,
  ``MaximumBatchingWindowInSeconds``, ``FunctionResponseTypes``;
- streams also ``StartingPosition``, ``ParallelizationFactor``, ``MaximumRetryAttempts``,
  ``MaximumRecordAgeInSeconds``, ``BisectBatchOnFunctionError``, ``TumblingWindowInSeconds``,
  ``DestinationConfig`` (``{"OnFailure": {}}`` without a destination), and
  ``StartingPositionTimestamp`` (epoch seconds) with ``AT_TIMESTAMP``;
- only when set: ``FilterCriteria`` (with at least one filter), ``MetricsConfig`` (with at
  least one metric), ``ScalingConfig`` (with ``MaximumConcurrency``),
  ``ProvisionedPollerConfig`` (both bounds filled), ``KMSKeyArn`` (not empty; stored and shown,
  never used: poller does not encrypt the filter criteria it stores).

No I/O but logging: ``control.unknown_fields`` (the names of ignored members, never values)
and ``control.kms_key_arn_unused``. (botocore's model is read once, by model_rules.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import UnionType
from typing import Annotated, Any, Union, cast, get_args, get_origin

import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from poller.config import (
    AnyMapping,
    ControlApiSettings,
    DestinationConfig,
    DynamoDBStreamMapping,
    KinesisMapping,
    LambdaTargetConfig,
    MappingConfig,
    OnFailureDestination,
    SqsMapping,
    TargetConfig,
)
from poller.config.arns import arn_service
from poller.config.messages import format_error
from poller.config.paths import locate
from poller.config.wording import cut
from poller.control.errors import ApiError, invalid_parameter, validation
from poller.control.model_rules import check_request, coral_line, coral_message
from poller.control.store import MappingRecord
from poller.core.filtering import AWS_MESSAGE as FILTER_MESSAGE
from poller.errors import ConfigError

log = structlog.get_logger("poller.control")

_CREATE_SHAPE = "CreateEventSourceMappingRequest"
_UPDATE_SHAPE = "UpdateEventSourceMappingRequest"

#: The model of each source poller runs, by the service in the source ARN.
_SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "kinesis": KinesisMapping,
    "dynamodb": DynamoDBStreamMapping,
    "sqs": SqsMapping,
}
_STREAM_SOURCES = frozenset({"kinesis", "dynamodb"})

#: Members of AWS's model for sources poller does not have (Kafka, MQ, DocumentDB).
UNSUPPORTED_MEMBERS = (
    "Topics",
    "Queues",
    "SourceAccessConfigurations",
    "SelfManagedEventSource",
    "AmazonManagedKafkaEventSourceConfig",
    "SelfManagedKafkaEventSourceConfig",
    "DocumentDBEventSourceConfig",
    "LoggingConfig",
)

#: AWS names of model fields that carry no ``aws_name`` metadata of their own.
_AWS_NAME_GAPS: dict[tuple[type[BaseModel], str], str] = {
    (DestinationConfig, "on_failure"): "OnFailure",
    (OnFailureDestination, "destination_arn"): "Destination",
}
#: Handled apart from the translation: the target, identity, state and tags.
_APART = frozenset({"FunctionName", "Enabled", "Tags", "UUID", "KMSKeyArn"})

# A name and UUID to validate a Create with before the operation picks the UUID: names
# and UUIDs are checked again, for real, by to_mapping.
_PLACEHOLDER_UUID = "00000000-0000-4000-8000-000000000000"

# FunctionName's forms (botocore's NamespacedFunctionName pattern, with named groups): a name,
# a partial ARN (<account>:function:<name>) or a full ARN, each with an optional qualifier.
_FUNCTION_FORMS = re.compile(
    r"^(?:arn:(?P<partition>aws[a-zA-Z-]*)?:lambda:)?"
    r"(?:(?P<region>(?:eusc-)?[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9_.-]+)"
    r"(?::(?P<qualifier>\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]+))?$"
)

_NO_FUNCTION = "Function does not exist"
_UNRECOGNIZED = "Unrecognized event source."
_STREAM_STATE_REASON = "User action"
_SQS_STATE_REASON = "USER_INITIATED"
_NOTHING_PROCESSED = "No records processed"

_MAPPING = TypeAdapter[Any](MappingConfig)

#: How many ignored member names one log line shows, and how much of each.
_LOGGED_NAMES = 20
_LOGGED_NAME_CHARS = 100


@dataclass(frozen=True, slots=True)
class NewMapping:
    """A validated Create request.

    Attributes:
        request: the normalized parameters to store (``MappingRecord.request``).
        tags: ``Tags`` of the request.
        enabled: ``Enabled`` (default true).
        function_arn: the full ``FunctionArn``.
        event_source_arn: the source ARN.
    """

    request: Mapping[str, Any]
    tags: Mapping[str, str]
    enabled: bool
    function_arn: str
    event_source_arn: str


def parse_create(body: Any, *, settings: ControlApiSettings, region: str) -> NewMapping:
    """Validate a CreateEventSourceMapping body; raises ApiError with AWS's code and text.

    A body that is not a JSON object is a ValidationException. Coral's rules give a
    ValidationException; everything after them an InvalidParameterValueException.
    """
    given = _wire_checked(body, _CREATE_SHAPE)
    source_arn = given.get("EventSourceArn")
    service = arn_service(source_arn) if isinstance(source_arn, str) else None
    if service not in _SOURCE_MODELS or not isinstance(source_arn, str):
        raise invalid_parameter(_UNRECOGNIZED)
    if service in _STREAM_SOURCES and "StartingPosition" not in given:
        null = coral_line(None, "startingPosition", "Member must not be null.")
        raise invalid_parameter(coral_message([null]))
    _check_starting_position(service, source_arn, given)
    function_name = given["FunctionName"]
    target = _target(function_name, settings)
    enabled = bool(given.get("Enabled", True))
    mapping = _validated(
        given, target, uuid=_PLACEHOLDER_UUID, enabled=enabled, tags=given.get("Tags", {})
    )
    return NewMapping(
        request=_request_of(mapping, function_name, given.get("KMSKeyArn")),
        tags=dict(mapping.tags),
        enabled=enabled,
        function_arn=function_arn(function_name, source_arn, region),
        event_source_arn=source_arn,
    )


def parse_update(
    record: MappingRecord, body: Any, *, settings: ControlApiSettings, region: str
) -> tuple[Mapping[str, Any], bool | None]:
    """Validate an UpdateEventSourceMapping body against ``record``: the merged request to
    store, and ``Enabled`` if the body gives it. Raises ApiError.

    Only the members given change; a structure given replaces the stored one whole
    (``FilterCriteria: {"Filters": []}`` removes the filters, ``ScalingConfig: {}`` the cap).
    ``EventSourceArn``, ``StartingPosition`` and ``Tags`` are no members of AWS's Update, so
    they are ignored like any unknown member. A changed ``FunctionName`` changes the
    ``FunctionArn``: :func:`request_function_arn` gives the new one.
    """
    del region  # the request holds no region; kept for symmetry with parse_create
    given = _wire_checked(body, _UPDATE_SHAPE)
    merged = {**record.request, **{k: v for k, v in given.items() if k != "Enabled"}}
    if given.get("KMSKeyArn") == "":
        merged.pop("KMSKeyArn")
    enabled = given.get("Enabled")
    function_name = merged["FunctionName"]
    target = _target(function_name, settings)
    running = record.desired == "Enabled" if enabled is None else bool(enabled)
    mapping = _validated(merged, target, uuid=record.uuid, enabled=running, tags=record.tags)
    request = _request_of(mapping, function_name, merged.get("KMSKeyArn"))
    return request, None if enabled is None else bool(enabled)


def to_mapping(record: MappingRecord, *, settings: ControlApiSettings, region: str) -> AnyMapping:
    """The mapping poller runs for ``record``: named by its UUID, enabled unless disabled or
    deleted, its target from ``settings.functions`` or a Lambda function.

    Raises ConfigError when the record no longer validates: only when ``control_api`` changed
    since it was stored (a function no longer listed while ``unlisted_functions`` is
    ``refuse``).
    """
    del region  # every ARN the mapping needs is in the request
    try:
        target = _target(record.request["FunctionName"], settings)
        return _validated(
            record.request,
            target,
            uuid=record.uuid,
            enabled=record.desired == "Enabled",
            tags=record.tags,
        )
    except ApiError as exc:
        raise ConfigError(
            [f"mapping {record.uuid} (created through the control API): {exc.message}"],
            source="the control API's mapping store",
        ) from None


def render_record(record: MappingRecord, state: str, *, region: str) -> dict[str, Any]:
    """The API's JSON for ``record`` in ``state`` (Get, List, and the mutating calls)."""
    shown = {k: v for k, v in record.request.items() if k != "FunctionName"}
    return _with_identity(
        shown,
        uuid=record.uuid,
        function_arn=record.function_arn,
        state=state,
        last_modified=record.last_modified,
        last_processing_result=record.last_processing_result,
        region=region,
    )


def render_file_mapping(
    mapping: AnyMapping, *, region: str, last_modified: float = 0.0
) -> dict[str, Any]:
    """The API's JSON for a mapping of the configuration file (always settled).

    ``last_modified`` is when the file was loaded (epoch seconds). The ``FunctionArn`` of a
    python or http target is ``arn:...:function:poller-<mapping name>``: no Lambda function
    stands behind it, and AWS's answer must still name one.
    """
    target = mapping.target
    if isinstance(target, LambdaTargetConfig):
        name = target.function_name
        parsed = _FUNCTION_FORMS.match(name)
        if target.qualifier and parsed is not None and parsed["qualifier"] is None:
            name = f"{name}:{target.qualifier}"
        arn = function_arn(name, mapping.event_source_arn, region)
    else:
        arn = function_arn(f"poller-{mapping.name}", mapping.event_source_arn, region)
    return _with_identity(
        _aws_request(mapping),
        uuid=mapping.mapping_uuid,
        function_arn=arn,
        state="Enabled" if mapping.enabled else "Disabled",
        last_modified=last_modified,
        last_processing_result=None,
        region=region,
    )


def function_arn(function_name: str, event_source_arn: str, region: str) -> str:
    """The full ``FunctionArn`` for a ``FunctionName`` in any of its forms:
    ``arn:<partition>:lambda:<region>:<account>:function:<name>[:<qualifier>]``.

    What the name does not say comes from the source ARN (partition, account) and
    ``region``; a full ARN keeps its own. A name that fits no form is returned as given
    (the models refuse it before it is stored).
    """
    parsed = _FUNCTION_FORMS.match(function_name)
    if parsed is None:
        return function_name
    source = event_source_arn.split(":")
    partition = parsed["partition"] or (source[1] if len(source) > 1 else "aws")
    account = parsed["account"] or (source[4] if len(source) > 4 else "")
    where = parsed["region"] or region
    arn = f"arn:{partition}:lambda:{where}:{account}:function:{parsed['name']}"
    return f"{arn}:{parsed['qualifier']}" if parsed["qualifier"] else arn


def request_function_arn(request: Mapping[str, Any], region: str) -> str:
    """The ``FunctionArn`` of a stored request (after an Update changed ``FunctionName``)."""
    return function_arn(request["FunctionName"], request["EventSourceArn"], region)


def mapping_arn(event_source_arn: str, uuid: str, region: str) -> str:
    """``EventSourceMappingArn``: ``arn:<p>:lambda:<region>:<account>:event-source-mapping:
    <uuid>``, partition and account from the source ARN."""
    source = event_source_arn.split(":")
    return f"arn:{source[1]}:lambda:{region}:{source[4]}:event-source-mapping:{uuid}"


# --- step 1 and 2: the wire rules, and what poller cannot run -------------------------------


def _wire_checked(body: Any, shape: str) -> dict[str, Any]:
    """The body's known members once Coral's rules pass; unknown ones are logged, by name."""
    if not isinstance(body, dict):
        raise validation("The request body must be a JSON object.")
    checked = check_request(body, shape)
    if checked.unknown:
        # Bounded: a 256 KiB body could name thousands of members, each very long.
        shown = [cut(name, _LOGGED_NAME_CHARS) for name in checked.unknown[:_LOGGED_NAMES]]
        log.warning(
            "control.unknown_fields", fields=shown, count=len(checked.unknown), operation=shape
        )
    if checked.problems:
        raise validation(coral_message(checked.problems))
    for member in UNSUPPORTED_MEMBERS:
        if member in checked.known:
            raise invalid_parameter(f"{member} is not supported by poller")
    if checked.known.get("KMSKeyArn"):
        log.warning("control.kms_key_arn_unused", kms_key_arn=checked.known["KMSKeyArn"])
    return checked.known


def _check_starting_position(service: str, source_arn: str, given: Mapping[str, Any]) -> None:
    """AWS's own texts for a starting position the source cannot take, checked before the
    translation (which would name another member first). Sources of the texts: the
    recordings (DynamoDB), boto/boto3#1613 (SQS), and Lambda's answer through CloudFormation
    in awsdocs/aws-cloudformation-user-guide#334 (Kinesis without a timestamp)."""
    position = given.get("StartingPosition")
    if service == "sqs":
        for member in ("StartingPosition", "StartingPositionTimestamp"):
            if member in given:
                raise invalid_parameter(f"{member} is not valid for SQS event sources.")
    elif position == "AT_TIMESTAMP" and service == "dynamodb":
        raise invalid_parameter(f"Unsupported starting position for arn type: {source_arn}")
    elif position == "AT_TIMESTAMP" and "StartingPositionTimestamp" not in given:
        raise invalid_parameter("Need to specify a timestamp")


def _target(function_name: str, settings: ControlApiSettings) -> TargetConfig | dict[str, str]:
    """The target of ``function_name``: the one ``control_api.functions`` lists under its
    bare name, else a Lambda function of that name (unless unlisted ones are refused)."""
    parsed = _FUNCTION_FORMS.match(function_name)
    listed = settings.functions.get(parsed["name"]) if parsed is not None else None
    if listed is not None:
        return listed
    if settings.unlisted_functions == "refuse":
        raise invalid_parameter(_NO_FUNCTION)
    return {"type": "lambda", "function_name": function_name}


# --- step 3: AWS names <-> the models' names -----------------------------------------------


def _validated(
    aws: Mapping[str, Any],
    target: TargetConfig | dict[str, Any],
    *,
    uuid: str,
    enabled: bool,
    tags: Mapping[str, str],
) -> AnyMapping:
    """The mapping ``aws`` describes, validated by poller's models; IPVE if it is invalid."""
    model = _SOURCE_MODELS[arn_service(aws["EventSourceArn"]) or ""]
    data = _to_fields(_without_empty_destination(aws), model)
    data.update(name=uuid, uuid=uuid, enabled=enabled, tags=dict(tags), target=target)
    try:
        return cast("AnyMapping", _MAPPING.validate_python(data))
    except ValidationError as exc:
        raise invalid_parameter(_problem_text(exc, data)) from None


def _to_fields(
    aws: Mapping[str, Any], model: type[BaseModel], *, within: str | None = None
) -> dict[str, Any]:
    """Translate AWS names into ``model``'s field names, recursively; IPVE for a member
    poller's model of this source does not have (AWS's words for a parameter of another
    source type, naming the top-level member)."""
    fields = _fields_by_aws_name(model)
    data: dict[str, Any] = {}
    for key, value in aws.items():
        if within is None and key in _APART:
            continue
        if key not in fields:
            raise invalid_parameter(_unsupported_for_source(within or key))
        name, nested = fields[key]
        data[name] = _value_to_fields(value, nested, within or key)
    return data


def _unsupported_for_source(member: str) -> str:
    """AWS's refusal of a member another source type has. DestinationConfig's text is as
    recorded; the others as AWS answered for MSK (pulumi/pulumi-aws#1418): the member in
    camel case, quoted."""
    if member == "DestinationConfig":
        return "Unsupported DestinationConfig parameter for given event source mapping type."
    camel = member[:1].lower() + member[1:]
    return f"Unsupported '{camel}' parameter for given event source mapping type."


def _value_to_fields(value: Any, nested: type[BaseModel] | None, within: str) -> Any:
    """A member's value in the field names: translated inside a structure or a list of
    structures (Coral checked the types), as it is otherwise."""
    if nested is None:
        return value
    if isinstance(value, list):
        return [_to_fields(item, nested, within=within) for item in value]
    return _to_fields(value, nested, within=within)


def _without_empty_destination(aws: Mapping[str, Any]) -> Mapping[str, Any]:
    """``OnFailure: {}`` or an empty ``Destination`` means no destination (AWS shows
    ``{"OnFailure": {}}`` for a stream without one, and clients send it back)."""
    config = aws.get("DestinationConfig")
    if not isinstance(config, Mapping) or not isinstance(config.get("OnFailure"), Mapping):
        return aws
    if config["OnFailure"].get("Destination"):
        return aws
    kept = {key: value for key, value in config.items() if key != "OnFailure"}
    return {**aws, "DestinationConfig": kept}


@cache
def _fields_by_aws_name(model: type[BaseModel]) -> dict[str, tuple[str, type[BaseModel] | None]]:
    """AWS name -> (field name, the nested model of a structure or list of structures)."""
    fields: dict[str, tuple[str, type[BaseModel] | None]] = {}
    for name, info in model.model_fields.items():
        aws = _aws_name(model, name, info)
        if aws is not None:
            fields[aws] = (name, _nested_model(info.annotation))
    return fields


def _aws_name(model: type[BaseModel], name: str, info: FieldInfo) -> str | None:
    extra = info.json_schema_extra
    aws = extra.get("aws_name") if isinstance(extra, dict) else None
    return aws if isinstance(aws, str) else _AWS_NAME_GAPS.get((model, name))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``X | None``, ``list[X]`` or ``Annotated[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, UnionType, list, Annotated):
        for arg in get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _request_of(mapping: AnyMapping, function_name: str, kms_key_arn: Any) -> dict[str, Any]:
    """The stored request: the mapping in AWS's names, the function as given, the key."""
    request = _aws_request(mapping)
    request["FunctionName"] = function_name
    if kms_key_arn:
        request["KMSKeyArn"] = kms_key_arn
    return request


def _aws_request(mapping: AnyMapping) -> dict[str, Any]:
    """A mapping's parameters in AWS's names, defaults included, in the normal form."""
    request = _to_aws(mapping)
    filters = request.get("FilterCriteria", {}).get("Filters")
    if not filters:
        request.pop("FilterCriteria", None)
    if not request.get("MetricsConfig", {}).get("Metrics"):
        request.pop("MetricsConfig", None)
    if not request.get("ScalingConfig"):
        request.pop("ScalingConfig", None)
    if mapping.source in _STREAM_SOURCES:
        on_failure = request.get("DestinationConfig", {}).get("OnFailure", {})
        request["DestinationConfig"] = {"OnFailure": on_failure}
    return request


def _to_aws(model: BaseModel) -> dict[str, Any]:
    aws: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        aws_name = _aws_name(type(model), name, info)
        value = getattr(model, name)
        if aws_name is None or aws_name in _APART or value is None:
            continue
        aws[aws_name] = _value_to_aws(value)
    return aws


def _value_to_aws(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _to_aws(value)
    if isinstance(value, list):
        return [_value_to_aws(item) for item in value]
    return value


# --- rendering ------------------------------------------------------------------------------


def _with_identity(
    shown: dict[str, Any],
    *,
    uuid: str,
    function_arn: str,
    state: str,
    last_modified: float,
    last_processing_result: str | None,
    region: str,
) -> dict[str, Any]:
    """A request's answer: the parameters plus UUID, ARNs, State and their companions."""
    source_arn = shown["EventSourceArn"]
    answer = dict(shown)
    answer.update(
        UUID=uuid,
        EventSourceMappingArn=mapping_arn(source_arn, uuid, region),
        FunctionArn=function_arn,
        LastModified=float(last_modified),
        State=state,
    )
    if arn_service(source_arn) in _STREAM_SOURCES:
        answer["StateTransitionReason"] = _STREAM_STATE_REASON
        answer["LastProcessingResult"] = last_processing_result or _NOTHING_PROCESSED
    else:
        answer["StateTransitionReason"] = _SQS_STATE_REASON
    return dict(sorted(answer.items()))


# --- the models' problems in AWS's words ----------------------------------------------------

_AWS_SAYS = "AWS says: "


def _problem_text(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """The IPVE message for the models' problems: AWS's own text when the models know it,
    else poller's line for the first problem, naming the AWS member. One problem per answer,
    as AWS answers: the next shows once this one is fixed."""
    lines = [_problem_line(error, data) for error in exc.errors()]
    aws_texts = [text for text in map(_aws_text, lines) if text is not None]
    return aws_texts[0] if aws_texts else lines[0]


def _aws_text(line: str) -> str | None:
    """The text AWS answers for this problem, when the models know it."""
    if FILTER_MESSAGE in line:
        return FILTER_MESSAGE  # AWS gives no detail for a bad pattern
    return line.split(_AWS_SAYS, 1)[1] if _AWS_SAYS in line else None


def _problem_line(error: ErrorDetails, data: Mapping[str, Any]) -> str:
    loc = ("mappings", 0, *error["loc"])
    wrapped = {"mappings": [data]}
    line = format_error(cast("ErrorDetails", {**error, "loc": loc}), wrapped, {})
    where = locate(loc, wrapped).path
    detail = line[len(where) :].split(": ", 1)[-1] if line.startswith(where) else line
    path = _aws_path(error["loc"], data)
    return f"{path}: {_aws_words(detail)}" if path else _aws_words(detail)


def _aws_path(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """The AWS member a problem's loc points at (``DestinationConfig.OnFailure.Destination``,
    ``FilterCriteria.Filters[0].Pattern``); empty for a problem of the whole mapping."""
    current: type[BaseModel] | None = _SOURCE_MODELS[arn_service(data["event_source_arn"]) or ""]
    parts: list[str] = []
    for part in loc[1:]:  # loc[0] is the union's tag
        if isinstance(part, int):
            parts[-1:] = [f"{last}[{part}]" for last in parts[-1:]]
            continue
        if part == "target":
            return "FunctionName"  # the target is what FunctionName resolved to
        info = current.model_fields.get(part) if current is not None else None
        if current is None or info is None:
            continue  # a tag pydantic inserts inside a union, or an item of a plain list
        parts.append(_aws_name(current, part, info) or part)
        current = _nested_model(info.annotation)
    return ".".join(parts)


@cache
def _field_words() -> dict[str, str]:
    """Field name -> AWS name, for every translated field with an underscore in its name."""
    words: dict[str, str] = {}
    pending: list[type[BaseModel]] = list(_SOURCE_MODELS.values())
    while pending:
        model = pending.pop()
        for aws, (name, nested) in _fields_by_aws_name(model).items():
            if "_" in name:
                words[name] = aws
            if nested is not None:
                pending.append(nested)
    return words


def _aws_words(text: str) -> str:
    """Our message with the YAML field names replaced by AWS's (``batch_size`` ->
    ``BatchSize``), so an API user reads the names they sent."""
    words = _field_words()
    return _field_word_pattern().sub(lambda found: words[found.group(1)], text)


@cache
def _field_word_pattern() -> re.Pattern[str]:
    longest_first = sorted(map(re.escape, _field_words()), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(longest_first) + r")\b")
