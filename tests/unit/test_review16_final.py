"""Regression tests of the last hostile review of issue 16: each failed before its fix.

A JSON template with NaN, Infinity or 1e999 was accepted and sent invalid JSON; a key twice
silently dropped a placeholder; provisioned mode jumped by 100 pollers in one tick after a
slow start; failing batches shed provisioned pollers; a generator handle's records were
reported handled though its body never ran.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from poller.batch import process_batch
from poller.core.scaling import (
    IDLE_SECONDS,
    MAX_TICK_SECONDS,
    POLLERS_PER_SECOND,
    Load,
    ProvisionedScaler,
)
from poller.core.transform import TemplateError, compile_template

BUSY = Load(in_flight=10**6, full=1, backlog=10**6)


@pytest.mark.parametrize(
    "template",
    ['{"a": NaN, "b": <$.messageId>}', "[Infinity, <$.body>]", '{"a": -Infinity}', "[1e999]"],
)
def test_a_template_with_a_number_json_does_not_have_is_refused_at_load(template: str) -> None:
    with pytest.raises(TemplateError, match="not valid JSON"):
        compile_template(template)


def test_a_template_with_a_key_twice_is_refused_at_load() -> None:
    with pytest.raises(TemplateError, match="'id' appears twice"):
        compile_template('{"id": <$.messageId>, "id": "x"}')


def test_the_first_busy_tick_after_a_long_start_adds_only_a_ticks_worth_of_pollers() -> None:
    scaler = ProvisionedScaler(2, 1_000, now=0.0)
    pollers = scaler.tick(BUSY, now=1_000.0)  # the queue took minutes to open
    assert pollers - 2 <= math.ceil(POLLERS_PER_SECOND * MAX_TICK_SECONDS)


def test_failing_batches_never_shed_a_provisioned_poller() -> None:
    scaler = ProvisionedScaler(2, 1_000, now=0.0)
    for second in range(1, 120):
        grown = scaler.tick(BUSY, now=float(second))
    failing = Load(failures=5, backlog=0, in_flight=0)
    for second in range(120, 120 + int(IDLE_SECONDS) * 3):
        assert scaler.tick(failing, now=float(second)) == grown


def sqs_event(*ids: str) -> dict[str, Any]:
    arn = "arn:aws:sqs:us-east-1:123456789012:q"
    return {
        "Records": [
            {"eventSource": "aws:sqs", "eventSourceARN": arn, "messageId": i, "body": "{}"}
            for i in ids
        ]
    }


def test_a_generator_handle_is_refused_not_reported_handled() -> None:
    ran: list[str] = []

    def handle(record: dict[str, Any]) -> Any:
        ran.append(record["messageId"])
        yield None

    with pytest.raises(TypeError, match="generator"):
        process_batch(sqs_event("a", "b"), handle)
    assert ran == []
