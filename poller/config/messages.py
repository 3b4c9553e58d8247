"""Error wording: one readable line for each pydantic validation error.

Where it sits in the data flow::

    ValidationError.errors() --format_error()--> "path: value is ...; allowed ..." lines
        --> ConfigError.problems (poller.config.loading) --> the CLI's one-line errors

Each line names the field path, the bad value and what is allowed, for example
``mappings[0] (orders).batch_size: 20000 is out of range; allowed 1 to 10000 (AWS BatchSize)``.
Where a field mirrors an AWS parameter the line also names it, and for a missing value or an
enum says what AWS itself would say. A problem under a value set by a ``POLLER_*`` variable
names that variable. The field metadata it reads is written with
:func:`poller.config.models.base.meta`; errors raised with
:func:`poller.config.wording.own_error` are already complete and pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from poller.config.arns import arn_service
from poller.config.models.settings import MappingConfig
from poller.config.paths import Where, locate, strip_annotated, tagged_members
from poller.config.wording import OWN_ERROR, UNSUPPORTED_SOURCE, show, suggestion


def format_error(error: ErrorDetails, data: Any, origins: Mapping[str, str]) -> str:
    """One readable line for one pydantic error: path, bad value, what is allowed."""
    where = locate(error["loc"], data)
    path = where.path + _path_suffix(error)
    line = f"{path}: {_detail(error, where)}"
    covering = [p for p in origins if path == p or path.startswith((p + ".", p + "["))]
    return f"{line} (set by {origins[max(covering, key=len)]})" if covering else line


def _path_suffix(error: ErrorDetails) -> str:
    """The field a union-level error is really about."""
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return "." + str(error.get("ctx", {}).get("discriminator", "type")).strip("'")
    if error["type"] == UNSUPPORTED_SOURCE and isinstance(error["input"], Mapping):
        return ".event_source_arn"
    return ""


_PLAIN: dict[str, str] = {
    "int_type": "is not a whole number",
    "int_parsing": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_type": "is not a number",
    "float_parsing": "is not a number",
    "finite_number": "is not a finite number",
    "bool_type": "is not true or false",
    "bool_parsing": "is not true or false",
    "string_type": "is not a string (quote it in YAML)",
    "path_type": "is not a file path",
    "dict_type": "is not a mapping of key: value pairs",
    "model_type": "is not a mapping of key: value pairs",
    "model_attributes_type": "is not a mapping of key: value pairs",
    "list_type": "is not a list",
}


def _detail(error: ErrorDetails, where: Where) -> str:
    kind = error["type"]
    if kind.startswith(OWN_ERROR) and kind != UNSUPPORTED_SOURCE:
        return error["msg"]
    special = _DETAILS.get(kind)
    if special is not None:
        return special(error, where)
    plain = _PLAIN.get(kind)
    if plain is not None:
        return f"{show(error['input'])} {plain}"
    return f"{show(error['input'])} is not valid: {error['msg']}"


def _missing(error: ErrorDetails, where: Where) -> str:
    allowed = _allowed(where.field)
    expected = _extra(where.field, "expected")
    text = "required field is missing"
    if allowed or expected:
        text += f"; allowed {allowed}" if allowed else f"; expected {expected}"
    aws = _aws_name(where.field)
    if aws:
        text += (
            f". AWS says: 1 validation error detected: Value null at '{_camel(aws)}' "
            "failed to satisfy constraint: Member must not be null."
        )
    return text


def _unknown_field(error: ErrorDetails, where: Where) -> str:
    key = str(error["loc"][-1])
    fields = list(where.owner.model_fields) if where.owner else []
    hint = suggestion(key, fields)
    return "unknown field" + (hint or f"; allowed fields: {', '.join(fields)}")


def _not_allowed(error: ErrorDetails, where: Where) -> str:
    value = error.get("ctx", {}).get("tag", error["input"])
    choices = _choices(where.field.annotation if where.field else where.annotation)
    if where.field is None and where.container is not None:  # an item of a list field
        aws = _aws_name(where.container)
        return f"{show(value)} is not allowed; allowed items [{', '.join(choices)}]" + (
            f" (AWS {aws})" if aws else ""
        )
    text = f"{show(value)} is not allowed; allowed {', '.join(choices)}"
    aws = _aws_name(where.field)
    if aws and error["type"] == "literal_error":
        text += (
            f". AWS says: 1 validation error detected: Value '{value}' at '{_camel(aws)}' "
            f"failed to satisfy constraint: Member must satisfy enum value set: "
            f"[{', '.join(choices)}]"
        )
    return text


def _tag_missing(error: ErrorDetails, where: Where) -> str:
    return f"required field is missing; allowed {_allowed(where.field)}"


def _out_of_range(error: ErrorDetails, where: Where) -> str:
    bounds = _extra(where.field, "allowed") or _range(
        where.field.metadata if where.field else [], error.get("ctx", {})
    )
    aws = _aws_name(where.field)
    return f"{show(error['input'])} is out of range; allowed {bounds}" + (
        f" (AWS {aws})" if aws else ""
    )


def _bad_length(error: ErrorDetails, where: Where) -> str:
    value = error["input"]
    size = len(value) if isinstance(value, str | list | dict) else 0
    bounds = _length_range(where.field.metadata if where.field else [], error.get("ctx", {}))
    if isinstance(value, str):
        return f"{show(value)} has {size} characters; allowed {bounds} characters"
    aws = _aws_name(where.field)
    return f"{show(value)} has {size} items; allowed {bounds}" + (f" (AWS {aws})" if aws else "")


def _bad_pattern(error: ErrorDetails, where: Where) -> str:
    expected = _extra(where.field, "expected")
    if expected is None:
        expected = "text matching " + str(error.get("ctx", {}).get("pattern", "the pattern"))
    return f"{show(error['input'])} is not valid; expected {expected}"


def _unsupported_source(error: ErrorDetails, where: Where) -> str:
    value = error["input"]
    if not isinstance(value, Mapping):
        return f"{show(value)} {_PLAIN['model_type']}"
    arn = value.get("event_source_arn")
    service = arn_service(arn) if isinstance(arn, str) else None
    if arn is None:
        head = "required field is missing"
    elif service is None:
        head = f"{show(arn)} is not an ARN"
    else:
        label = _SERVICE_LABELS.get(service, f"an ARN of service {service!r}")
        head = f"{show(arn)} is {label}, a source poller does not support yet"
    return f"{head}. Unrecognized event source. Supported source types: {_supported_sources()}"


_SERVICE_LABELS = {"dynamodb": "a DynamoDB ARN", "sqs": "an SQS queue ARN"}

_DETAILS: dict[str, Callable[[ErrorDetails, Where], str]] = {
    "missing": _missing,
    "extra_forbidden": _unknown_field,
    "literal_error": _not_allowed,
    "union_tag_invalid": _not_allowed,
    "union_tag_not_found": _tag_missing,
    "greater_than": _out_of_range,
    "greater_than_equal": _out_of_range,
    "less_than": _out_of_range,
    "less_than_equal": _out_of_range,
    "string_too_short": _bad_length,
    "string_too_long": _bad_length,
    "too_short": _bad_length,
    "too_long": _bad_length,
    "string_pattern_mismatch": _bad_pattern,
    UNSUPPORTED_SOURCE: _unsupported_source,
}


def _supported_sources() -> str:
    kinds = []
    for tag, model in tagged_members(MappingConfig).items():
        expected = _extra(model.model_fields["event_source_arn"], "expected")
        kinds.append(f"{tag} ({expected})" if expected else tag)
    return ", ".join(kinds)


def _choices(annotation: Any) -> list[str]:
    """The values a Literal (or the tags a tagged union) allows."""
    tp = strip_annotated(annotation)
    if get_origin(tp) is Literal:
        return [str(arg) for arg in get_args(tp)]
    return list(tagged_members(tp))


def _allowed(field: FieldInfo | None) -> str | None:
    if field is None:
        return None
    choices = _choices(field.annotation)
    return ", ".join(choices) if choices else None


def _range(metadata: list[Any], ctx: Mapping[str, Any]) -> str:
    """``1 to 10000``, ``more than 0 up to 900``: both bounds, from the field metadata."""
    lower = upper = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            lower = _number(item.ge)
        elif isinstance(item, annotated_types.Gt):
            lower = f"more than {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            upper = _number(item.le)
        elif isinstance(item, annotated_types.Lt):
            upper = f"less than {_number(item.lt)}"
    if lower is None and upper is None:
        return ", ".join(f"{key} {_number(value)}" for key, value in ctx.items())
    if lower is None:
        return f"up to {upper}"
    if upper is None:
        return f"{lower} or more"
    return f"{lower} {'up ' if lower.startswith('more') else ''}to {upper}"


def _length_range(metadata: list[Any], ctx: Mapping[str, Any]) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    low = ctx.get("min_length", low) if low is None else low
    high = ctx.get("max_length", high) if high is None else high
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _extra(field: FieldInfo | None, key: str) -> str | None:
    extra = field.json_schema_extra if field else None
    value = extra.get(key) if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


def _aws_name(field: FieldInfo | None) -> str | None:
    return _extra(field, "aws_name")


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]
