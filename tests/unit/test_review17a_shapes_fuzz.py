"""Hostile review of the control API's shapes (issue 17), by fuzzing: whatever a Create or
Update body holds, ``parse_create``/``parse_update`` either refuse it with an ApiError or
produce a request that ``to_mapping`` turns into a mapping (a record the API stores but the
replicas' reconciler cannot run would fail at run time, on every replica), and the stored
normal form is a fixed point (an empty Update changes nothing)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poller.control.errors import ApiError
from poller.control.shapes import parse_create, parse_update, to_mapping
from tests.unit.test_c1_shapes import DEAD_LETTERS, DYNAMODB, KINESIS, QUEUE, SETTINGS, stored

REGION = "eu-west-1"
FIFO = QUEUE + ".fifo"

_INTS = st.sampled_from([-2, -1, 0, 1, 2, 9, 10, 11, 60, 100, 300, 301, 900, 10000, 10001])
_NUMBERS = _INTS | st.sampled_from([1.0, 1.5, 1e300, -1e300, 0.0, 1_700_000_000, 4e9])
_ANY: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | _NUMBERS | st.text(max_size=5) | st.just([]) | st.just({})
)
_PATTERNS = st.sampled_from(
    ['{"body": {"a": ["x"]}}', '{"data": {"n": [{"numeric": [">", 1]}]}}', "{}", "not json", ""]
)
_MEMBERS: dict[str, st.SearchStrategy[Any]] = {
    "BatchSize": _INTS | _ANY,
    "MaximumBatchingWindowInSeconds": _INTS | _ANY,
    "ParallelizationFactor": _INTS,
    "MaximumRetryAttempts": _INTS,
    "MaximumRecordAgeInSeconds": _INTS,
    "TumblingWindowInSeconds": _INTS,
    "BisectBatchOnFunctionError": st.booleans() | _ANY,
    "Enabled": st.booleans(),
    "StartingPosition": st.sampled_from(["LATEST", "TRIM_HORIZON", "AT_TIMESTAMP", "x"]),
    "StartingPositionTimestamp": _NUMBERS,
    "FunctionResponseTypes": st.lists(st.sampled_from(["ReportBatchItemFailures", "x"])),
    "DestinationConfig": st.fixed_dictionaries(
        {},
        optional={
            "OnFailure": st.fixed_dictionaries(
                {}, optional={"Destination": st.sampled_from([DEAD_LETTERS, "", "x"])}
            ),
            "OnSuccess": st.fixed_dictionaries({}, optional={"Destination": st.just(DEAD_LETTERS)}),
        },
    ),
    "FilterCriteria": st.fixed_dictionaries(
        {},
        optional={"Filters": st.lists(st.fixed_dictionaries({}, optional={"Pattern": _PATTERNS}))},
    ),
    "ScalingConfig": st.fixed_dictionaries({}, optional={"MaximumConcurrency": _INTS}),
    "MetricsConfig": st.fixed_dictionaries(
        {}, optional={"Metrics": st.lists(st.sampled_from(["EventCount", "x"]))}
    ),
    "ProvisionedPollerConfig": st.fixed_dictionaries(
        {}, optional={"MinimumPollers": _INTS, "MaximumPollers": _INTS}
    ),
    "KMSKeyArn": st.sampled_from(["", "arn:aws:kms:eu-west-1:123456789012:key/k"]),
    "Tags": st.dictionaries(st.sampled_from(["a", "aws:x", "k" * 129]), st.text(max_size=3)),
    "FunctionName": st.sampled_from(
        [
            "f",
            "f:PROD",
            "123456789012:function:f",
            "arn:aws:lambda:eu-west-1:123456789012:function:f",
        ]
    ),
}
_BODIES = st.fixed_dictionaries(
    {
        "FunctionName": _MEMBERS["FunctionName"],
        "EventSourceArn": st.sampled_from([KINESIS, DYNAMODB, QUEUE, FIFO]),
    },
    optional={name: value for name, value in _MEMBERS.items() if name != "FunctionName"},
)
_UPDATES = st.fixed_dictionaries({}, optional=_MEMBERS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODIES, update=_UPDATES)
def test_review17a_every_accepted_request_runs_and_is_a_fixed_point(
    body: dict[str, Any], update: dict[str, Any]
) -> None:
    try:
        new = parse_create(body, settings=SETTINGS, region=REGION)
    except ApiError:
        return
    record = stored(new)
    to_mapping(record, settings=SETTINGS, region=REGION)
    to_mapping(replace(record, desired="Disabled"), settings=SETTINGS, region=REGION)
    again, enabled = parse_update(record, {}, settings=SETTINGS, region=REGION)
    assert (dict(again), enabled) == (dict(record.request), None)
    try:
        request, _ = parse_update(record, update, settings=SETTINGS, region=REGION)
    except ApiError:
        return
    updated = replace(record, request=dict(request))
    to_mapping(updated, settings=SETTINGS, region=REGION)
    again, _ = parse_update(updated, {}, settings=SETTINGS, region=REGION)
    assert dict(again) == dict(request)
