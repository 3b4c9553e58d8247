"""Shared pytest fixtures: the anyio backend, AWS isolation, plain log tracebacks, and the moto
server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

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

# Tests that do not configure logging use structlog's default console renderer, whose default
# traceback formatter (rich, installed with import-linter) renders every frame's locals: about
# a second per logged crash under CI's load, which timed out the crash-loop tests. The service
# itself formats tracebacks as plain text (``format_exc_info``); so do the tests.
structlog.configure(
    processors=[
        *structlog.get_config()["processors"][:-1],
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
    ]
)


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the backend aiobotocore needs."""
    return "asyncio"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on a free loopback port, shared by the session."""
    with moto_server() as url:
        yield url
