"""Shared pytest fixtures: the anyio backend, AWS isolation, and the moto server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.aws import moto_server

# No test may reach real AWS: dummy credentials, no profiles, a fixed region.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the backend aiobotocore needs."""
    return "asyncio"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on a free loopback port, shared by the session."""
    with moto_server() as url:
        yield url
