"""Fixtures of the nemesis tests: moto's server in its own process (three replica processes and
the writer hammer it), and DynamoDB Local as the lease store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.aws import moto_server_process
from tests.support.dynamodb_local import require_dynamodb_local


@pytest.fixture(scope="module")
def moto_process_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


@pytest.fixture(scope="session")
def lease_store() -> str:
    """DynamoDB Local's URL on the host's loopback (skips, saying why, where it cannot run)."""
    return require_dynamodb_local()
