"""The ``control_api`` section: the Lambda-compatible HTTP API that manages mappings.

Where it sits in the data flow::

    control_api: (YAML) --ControlApiSettings--> Settings --> poller.control (the HTTP server,
        its SigV4 check, the mapping store) and poller.reconcile (how often replicas look for
        changes, what a delete removes)

The API is off by default. It binds to loopback unless told otherwise, and without
authentication (``auth: none``) it may bind to nothing else: an open control plane on a network
would let anyone start, stop or redirect mappings. With ``auth: sigv4`` the credentials are
named, never written here: environment variables, or a Secrets Manager secret.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, model_validator

from poller.config.arns import REGION
from poller.config.models.base import Float, FrozenModel, Int, meta
from poller.config.models.targets import TargetConfig
from poller.config.wording import own_error, show

#: The API's default port: next to the metrics port (10027), unused by anything well known.
DEFAULT_CONTROL_PORT = 10028

# An environment variable name, as POSIX shells accept them.
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
_SECRET_ARN_PATTERN = (
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"  # noqa: S105 (a pattern, not a secret)
)
# A key of `functions`: a bare function name, as FunctionName gives it.
_FUNCTION_KEY = r"^[A-Za-z0-9_-]{1,64}$"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ControlCredentials(FrozenModel):
    """One key pair the API accepts signatures from, named, never inline.

    Either both ``access_key_id_env`` and ``secret_access_key_env`` (the names of environment
    variables holding them), or ``secret_arn`` (a Secrets Manager secret whose JSON has
    ``AccessKeyId`` and ``SecretAccessKey``).
    """

    access_key_id_env: str | None = Field(
        default=None,
        pattern=_ENV_NAME,
        json_schema_extra=meta(expected="an environment variable name"),
    )
    secret_access_key_env: str | None = Field(
        default=None,
        pattern=_ENV_NAME,
        json_schema_extra=meta(expected="an environment variable name"),
    )
    secret_arn: str | None = Field(
        default=None,
        pattern=_SECRET_ARN_PATTERN,
        json_schema_extra=meta(expected="a Secrets Manager secret ARN"),
    )

    @model_validator(mode="after")
    def _one_source(self) -> ControlCredentials:
        envs = (self.access_key_id_env, self.secret_access_key_env)
        if self.secret_arn is not None and any(envs):
            raise own_error(
                "credential_source",
                "give either secret_arn or access_key_id_env and secret_access_key_env, not both",
            )
        if self.secret_arn is None and not all(envs):
            raise own_error(
                "credential_source",
                "give both access_key_id_env and secret_access_key_env (the names of the "
                "environment variables holding the key pair), or secret_arn",
            )
        return self


class ControlApiSettings(FrozenModel):
    """The Lambda-compatible control API (``CreateEventSourceMapping`` and the rest).

    Attributes:
        enabled: serve the API; mappings may then also be created through it, and a
            configuration with no mappings at all is valid.
        host: the address to bind; loopback by default.
        port: the port; 0 picks a free one (tests).
        auth: ``none`` (loopback only) or ``sigv4`` (requests signed with ``credentials``).
        credentials: the key pairs ``sigv4`` accepts.
        region: the region requests are signed for and ARNs are formed in; default
            ``aws.region``.
        poll_interval_seconds: how often every replica looks for changes in the mapping store.
        functions: FunctionName -> the target it runs (a python handler, an HTTP endpoint, a
            Lambda function). A name not listed is a Lambda function of that name, unless
            ``unlisted_functions`` is ``refuse``.
        unlisted_functions: ``lambda`` (invoke it through the Lambda API) or ``refuse``
            (``Function does not exist``).
        delete_checkpoints: a delete also removes the mapping's checkpoints and leases.
        max_mappings: how many mappings the API may hold.
    """

    enabled: bool = False
    host: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    port: Int = Field(default=DEFAULT_CONTROL_PORT, ge=0, le=65535)
    auth: Literal["none", "sigv4"] = "none"
    credentials: list[ControlCredentials] = Field(default_factory=list, max_length=20)
    region: Annotated[str, Field(pattern=f"^{REGION}$")] | None = None
    poll_interval_seconds: Float = Field(default=1.0, ge=0.1, le=60)
    functions: dict[Annotated[str, Field(pattern=_FUNCTION_KEY)], TargetConfig] = Field(
        default_factory=dict
    )
    unlisted_functions: Literal["lambda", "refuse"] = "lambda"
    delete_checkpoints: bool = True
    max_mappings: Int = Field(default=1000, ge=1, le=5000)

    @model_validator(mode="after")
    def _auth_fits_the_bind(self) -> ControlApiSettings:
        if self.auth == "none" and not is_loopback(self.host):
            raise own_error(
                "control_api_open",
                "auth none is allowed only on loopback, and host is {host}; set auth: sigv4 "
                "with credentials, or bind to 127.0.0.1",
                host=show(self.host),
            )
        if self.auth == "sigv4" and not self.credentials:
            raise own_error(
                "control_api_credentials",
                "auth sigv4 needs at least one entry in credentials (environment variable "
                "names or a secret_arn)",
            )
        return self
