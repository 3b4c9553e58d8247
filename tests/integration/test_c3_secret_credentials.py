"""The control API's key pairs from Secrets Manager, over HTTP to moto's server.

Data flow::

    control_api.credentials[].secret_arn --CredentialResolver (ClientFactory's
        secretsmanager client)--> moto --> access key id -> secret

A secret that cannot be read at start is logged (never its value) and retried in the
background until it can; the service never stops over it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import structlog.testing

from poller.aws.clients import ClientFactory
from poller.config import ControlApiSettings, ControlCredentials
from poller.control.auth import CredentialResolver
from tests.support.aws import REGION, aws_client, unique
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

KEY_ID, SECRET = "AKIDC3FROMSECRET0001", "c3-secret-from-secrets-manager"
ACCOUNT = "123456789012"


def settings_for(arn: str) -> ControlApiSettings:
    return ControlApiSettings(
        enabled=True, auth="sigv4", credentials=[ControlCredentials(secret_arn=arn)]
    )


@asynccontextmanager
async def factory(moto_url: str) -> AsyncIterator[ClientFactory]:
    clients = ClientFactory(region=REGION, endpoint_url=moto_url)
    try:
        yield clients
    finally:
        await clients.aclose()


async def test_c3_a_secret_is_read_at_start(moto_url: str) -> None:
    async with aws_client("secretsmanager", moto_url) as sm:
        made = await sm.create_secret(
            Name=unique("c3-control"),
            SecretString=json.dumps({"AccessKeyId": KEY_ID, "SecretAccessKey": SECRET}),
        )
    async with factory(moto_url) as clients:
        resolver = CredentialResolver(settings_for(made["ARN"]), clients=clients)
        with structlog.testing.capture_logs() as logs:
            await resolver.load()
        assert resolver.secret_for(KEY_ID) == SECRET
        assert resolver.secret_for("AKIDSOMEONEELSE") is None
        assert [e["event"] for e in logs] == ["control.secret_read"]
        assert SECRET not in repr(logs)


async def test_c3_an_unreadable_secret_is_retried_until_it_can_be_read(moto_url: str) -> None:
    name = unique("c3-later")
    # A partial ARN (no random suffix): Secrets Manager resolves it once the secret exists.
    arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}"
    async with factory(moto_url) as clients:
        resolver = CredentialResolver(settings_for(arn), clients=clients)
        with structlog.testing.capture_logs() as logs:
            await resolver.load()  # does not raise: the service starts
        assert resolver.secret_for(KEY_ID) is None
        [unreadable] = [e for e in logs if e["event"] == "control.secret_unreadable"]
        assert unreadable["secret_arn"] == arn
        assert unreadable["detail"] == "ResourceNotFoundException"
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(resolver.run)
            async with aws_client("secretsmanager", moto_url) as sm:
                await sm.create_secret(
                    Name=name,
                    SecretString=json.dumps({"AccessKeyId": KEY_ID, "SecretAccessKey": SECRET}),
                )
            await wait_until(
                lambda: resolver.secret_for(KEY_ID) == SECRET, 60, "the secret to be re-read"
            )
            tasks.cancel_scope.cancel()


async def test_c3_a_malformed_secret_is_logged_without_its_value(moto_url: str) -> None:
    leaked = "do-not-log-this-value"
    async with aws_client("secretsmanager", moto_url) as sm:
        made = await sm.create_secret(
            Name=unique("c3-bad"), SecretString=json.dumps({"AccessKeyId": leaked})
        )
    async with factory(moto_url) as clients:
        resolver = CredentialResolver(settings_for(made["ARN"]), clients=clients)
        with structlog.testing.capture_logs() as logs:
            await resolver.load()
        assert resolver.pending_secrets == [made["ARN"]]
        assert [e["event"] for e in logs] == ["control.secret_unreadable"]
        assert leaked not in repr(logs)


async def test_c3_a_secret_that_fails_to_reload_keeps_its_keys(moto_url: str) -> None:
    async with aws_client("secretsmanager", moto_url) as sm:
        made = await sm.create_secret(
            Name=unique("c3-reload"),
            SecretString=json.dumps({"AccessKeyId": KEY_ID, "SecretAccessKey": SECRET}),
        )
        async with factory(moto_url) as clients:
            resolver = CredentialResolver(settings_for(made["ARN"]), clients=clients)
            await resolver.load()
            await sm.delete_secret(SecretId=made["ARN"], ForceDeleteWithoutRecovery=True)
            with structlog.testing.capture_logs() as logs:
                await resolver.reload(settings_for(made["ARN"]))
            assert [e["event"] for e in logs] == ["control.secret_unreadable"]
            assert resolver.secret_for(KEY_ID) == SECRET, "a failed re-read locks nobody out"
            assert resolver.pending_secrets == [made["ARN"]], "and it is retried"
            # A reload that drops the secret drops its keys.
            await resolver.reload(ControlApiSettings(enabled=True))
            assert resolver.secret_for(KEY_ID) is None
