"""Compares what poller produces with payloads recorded against real AWS.

The recordings (``tests/fixtures/aws-recorded``, copied from the shared reference) replace
run-specific values with placeholders such as ``<uuid:1>`` or ``<sequence-number:2>``; the
same placeholder means the same value within one scenario. :func:`assert_matches` checks
that a payload has the same keys, nesting and types as the recording, that literal values
are equal, and that every placeholder is bound to one consistent value. The recordings'
anonymised account ``111111111111`` matches any 12-digit account.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from tests.support.process import REPO

RECORDED = REPO / "tests" / "fixtures" / "aws-recorded"
_PLACEHOLDER = re.compile(r"<([a-z0-9-]+)(?::(\d+))?(?::[^>]*)?>")
_ACCOUNT = "111111111111"


def recorded(file: str, scenario_suffix: str, key: str) -> Any:
    """The recorded content ``key`` of the scenario whose name ends with ``scenario_suffix``."""
    data = json.loads((RECORDED / file).read_text())
    matches = [v for k, v in data.items() if k.endswith(scenario_suffix)]
    assert len(matches) == 1, f"{len(matches)} scenarios end with {scenario_suffix}"
    return matches[0]["recorded-content"][key]


def recorded_message(file: str, scenario_suffix: str, key: str) -> Any:
    """The body of the only message of a recorded SQS queue: a failure record AWS sent to an
    on-failure destination (the recordings parse it from JSON)."""
    (message,) = recorded(file, scenario_suffix, key)["Messages"]
    return message["Body"]


def assert_matches(
    actual: Any, expected: Any, bindings: dict[str, Any] | None = None, path: str = "$"
) -> None:
    """Assert ``actual`` has the recorded shape; placeholders bind across the whole call."""
    bindings = {} if bindings is None else bindings
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), (
            f"{path}: keys {sorted(actual)} != recorded {sorted(expected)}"
        )
        for key, value in expected.items():
            assert_matches(actual[key], value, bindings, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected an array, got {actual!r}"
        assert len(actual) == len(expected), (
            f"{path}: {len(actual)} items, recorded {len(expected)}"
        )
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_matches(a, e, bindings, f"{path}[{i}]")
    elif isinstance(expected, str):
        _match_string(actual, expected, bindings, path)
    elif isinstance(expected, bool) or expected is None:
        assert actual is expected, f"{path}: {actual!r} != recorded {expected!r}"
    else:
        is_number = isinstance(actual, int | float) and not isinstance(actual, bool)
        assert is_number, f"{path}: {actual!r} is not a number"
        assert actual == expected, f"{path}: {actual!r} != recorded {expected!r}"


#: How the recordings spell a timestamp boto3 parsed.
_RECORDED_DATETIME = "datetime"


def _match_string(actual: Any, expected: str, bindings: dict[str, Any], path: str) -> None:
    if expected == _RECORDED_DATETIME:
        # The recorder wrote timestamps that boto3 had parsed as the word "datetime": on the
        # wire they are epoch seconds, and boto3 gives them back as datetimes.
        is_time = isinstance(actual, datetime | int | float) and not isinstance(actual, bool)
        assert is_time, f"{path}: expected a timestamp, got {actual!r}"
        return
    whole = _PLACEHOLDER.fullmatch(expected)
    if whole:
        # A placeholder standing alone matches any scalar (timestamps are numbers on the wire).
        is_scalar = not isinstance(actual, dict | list) and actual is not None
        assert is_scalar, f"{path}: {actual!r} for {expected}"
        _bind(whole, actual, bindings, path)
        return
    assert isinstance(actual, str), f"{path}: expected a string like {expected!r}, got {actual!r}"
    pattern, groups = _to_regex(expected)
    found = re.fullmatch(pattern, actual)
    assert found, f"{path}: {actual!r} does not match recorded {expected!r}"
    for name, placeholder in groups.items():
        _bind(placeholder, found.group(name), bindings, path)


def _to_regex(expected: str) -> tuple[str, dict[str, re.Match[str]]]:
    parts, groups, last = [], {}, 0
    for i, m in enumerate(_PLACEHOLDER.finditer(expected)):
        parts.append(re.escape(expected[last : m.start()]).replace(_ACCOUNT, r"\d{12}"))
        parts.append(f"(?P<g{i}>.+?)")
        groups[f"g{i}"] = m
        last = m.end()
    parts.append(re.escape(expected[last:]).replace(_ACCOUNT, r"\d{12}"))
    return "".join(parts), groups


def _bind(placeholder: re.Match[str], value: Any, bindings: dict[str, Any], path: str) -> None:
    if placeholder.group(2) is None:
        return  # unnumbered placeholders such as <region> only need to be present
    key = f"{placeholder.group(1)}:{placeholder.group(2)}"
    if key in bindings:
        assert bindings[key] == value, (
            f"{path}: <{key}> is {value!r} here but {bindings[key]!r} elsewhere"
        )
    else:
        bindings[key] = value
