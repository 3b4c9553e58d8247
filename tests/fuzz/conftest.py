"""Hypothesis profiles for the fuzz tests of the parsers (config, responses, KPL, filters).

``ci`` (the default) keeps the whole directory well under 30 s: a modest number of examples
per test, no deadline (a slow machine is not a bug) and no example database, so nothing is
written into the work tree. ``long`` is for a fuzzing session by hand::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/fuzz -p no:randomly

A failure prints the falsifying example and a ``@reproduce_failure`` blob to replay it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    parent=settings.get_profile("ci"),
    max_examples=20_000,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The per-test timeouts (a hang is a failure) fit the ``ci`` profile; a long session
    gets an hour per test instead."""
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci":
        for item in items:
            item.add_marker(pytest.mark.timeout(3600), append=False)
