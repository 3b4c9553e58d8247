"""Who may call the control API: SigV4 verified with botocore's own signing code.

Data flow::

    control_api.credentials (env var names | Secrets Manager ARNs) --CredentialResolver-->
        access key id -> secret (read at start, again on SIGHUP; secrets retried until read)
    an HTTP request (method, raw path + query, headers, body) --authenticate-->
        the caller's access key id, or a 403 ApiError --> poller.control.server

The check rebuilds the request the client signed, from the raw path and query, only the headers
the client listed as signed, and the body, and runs it through ``botocore.auth.SigV4Auth``
(canonical request, string to sign, signature), so every client that signs as botocore does
(the AWS CLI, boto3, the Go SDK under Terraform) is understood without a second implementation
of the canonicalization. The raw path matters: SDKs sign a non-S3 path percent-encoded once more
(``%3A`` in a tag ARN becomes ``%253A`` in the canonical URI), which only the path as sent
reproduces.

With ``auth: none`` every request is accepted; an Authorization header, if any, still names
the caller's access key id for the audit log.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from poller.control.errors import ApiError
from poller.errors import ConfigError
from poller.retry import Backoff

if TYPE_CHECKING:
    from poller.aws.clients import ClientFactory
    from poller.config import ControlApiSettings, ControlCredentials

log = structlog.get_logger("poller.control")

#: How far a request's X-Amz-Date may be from our clock, as AWS allows.
MAX_SKEW_SECONDS = 300
#: Between attempts to read a Secrets Manager secret that could not be read.
SECRET_BACKOFF = Backoff(initial=1.0, maximum=60.0)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_ALGORITHM = "AWS4-HMAC-SHA256"
_SERVICE = "lambda"
_FIELD = re.compile(r"(Credential|SignedHeaders|Signature)=([^,\s]*)")
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details."
)


@dataclass(frozen=True, slots=True)
class RequestToVerify:
    """An HTTP request as it came over the wire.

    Attributes:
        method: the HTTP method.
        target: the raw request target: path and query exactly as sent (still encoded).
        headers: lower-cased names; repeated headers joined with ``,``.
        body: the body's bytes.
    """

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes


def forbidden(code: str, message: str) -> ApiError:
    """403 with an authentication code (bodies without ``Type``, as AWS's front door sends)."""
    return ApiError(403, code, message)


class CredentialResolver:
    """The key pairs ``auth: sigv4`` accepts, read from where the configuration names them.

    Environment variables are read by :meth:`load` (at start) and :meth:`reload` (SIGHUP); a
    missing one is a ConfigError then. Secrets Manager secrets are read by :meth:`load` too,
    but a secret that cannot be read (network, permissions, a malformed value) is logged and
    retried by :meth:`run` with backoff: requests signed with its key are refused until it is
    read, and the service keeps running. A secret that was read once and cannot be read again
    after a SIGHUP keeps its previous keys until it can.

    Args:
        settings: the ``control_api`` section.
        clients: where the Secrets Manager client comes from (needed with ``secret_arn``).
        environ: the environment (a parameter for tests).
    """

    def __init__(
        self,
        settings: ControlApiSettings,
        *,
        clients: ClientFactory | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._sources: Sequence[ControlCredentials] = list(settings.credentials)
        self._clients = clients
        self._environ = os.environ if environ is None else environ
        self._from_env: dict[str, str] = {}
        self._from_secrets: dict[str, dict[str, str]] = {}  # secret ARN -> {akid: secret}
        # What a secret held before a SIGHUP, until it is read again: a transient failure to
        # re-read must not lock out the callers of a key that was good a moment ago.
        self._before_reload: dict[str, dict[str, str]] = {}
        self._wake: anyio.Event | None = None
        if any(s.secret_arn for s in self._sources) and clients is None:
            raise ValueError("credentials with secret_arn need a ClientFactory")

    def secret_for(self, access_key_id: str) -> str | None:
        """The secret of ``access_key_id``, or None for a key we do not know."""
        if access_key_id in self._from_env:
            return self._from_env[access_key_id]
        for keys in [*self._from_secrets.values(), *self._before_reload.values()]:
            if access_key_id in keys:
                return keys[access_key_id]
        return None

    @property
    def pending_secrets(self) -> list[str]:
        """The secret ARNs not read yet."""
        arns = [s.secret_arn for s in self._sources if s.secret_arn]
        return [arn for arn in arns if arn not in self._from_secrets]

    async def load(self) -> None:
        """Read every source once. Raises ConfigError for a missing environment variable;
        secrets that cannot be read are left to :meth:`run`."""
        self._from_env = self._read_environment(self._sources)
        await self._read_pending_secrets()

    async def reload(self, settings: ControlApiSettings) -> None:
        """SIGHUP: take the sources of the reloaded file and read them all again. Raises
        ConfigError (and keeps the old keys) when an environment variable is missing."""
        sources = list(settings.credentials)
        from_env = self._read_environment(sources)
        if any(s.secret_arn for s in sources) and self._clients is None:
            raise ConfigError(["control_api.credentials: secret_arn needs AWS clients"])
        arns = {s.secret_arn for s in sources if s.secret_arn}
        self._before_reload = {
            arn: keys
            for arn, keys in {**self._before_reload, **self._from_secrets}.items()
            if arn in arns
        }
        self._sources, self._from_env, self._from_secrets = sources, from_env, {}
        await self._read_pending_secrets()
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Retry unread secrets, with backoff, until cancelled (the server runs this)."""
        attempt = 0
        while True:
            if not self.pending_secrets:
                attempt = 0
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            attempt += 1
            await anyio.sleep(SECRET_BACKOFF.delay(attempt))
            await self._read_pending_secrets()

    def _read_environment(self, sources: Sequence[ControlCredentials]) -> dict[str, str]:
        keys: dict[str, str] = {}
        missing: list[str] = []
        for i, source in enumerate(sources):
            if source.access_key_id_env is None or source.secret_access_key_env is None:
                continue
            names = (source.access_key_id_env, source.secret_access_key_env)
            values = [self._environ.get(name, "") for name in names]
            missing += [
                f"control_api.credentials[{i}]: the environment variable {name} is not set "
                "(or is empty)"
                for name, value in zip(names, values, strict=True)
                if not value
            ]
            if all(values):
                keys[values[0]] = values[1]
        if missing:
            raise ConfigError(missing)
        return keys

    async def _read_pending_secrets(self) -> None:
        for arn in self.pending_secrets:
            try:
                self._from_secrets[arn] = await self._read_secret(arn)
                self._before_reload.pop(arn, None)
            except (BotoCoreError, ClientError, ValueError, KeyError, TypeError) as exc:
                # Never the secret's value: only where it failed and why.
                log.warning(
                    "control.secret_unreadable",
                    secret_arn=arn,
                    error=type(exc).__name__,
                    detail=_error_detail(exc),
                )
            else:
                log.info("control.secret_read", secret_arn=arn)

    async def _read_secret(self, arn: str) -> dict[str, str]:
        assert self._clients is not None
        client = await self._clients.client("secretsmanager", region=arn.split(":")[3])
        answer = await client.get_secret_value(SecretId=arn)
        value = json.loads(answer["SecretString"])
        akid, secret = value["AccessKeyId"], value["SecretAccessKey"]
        if not (isinstance(akid, str) and isinstance(secret, str) and akid and secret):
            raise ValueError("AccessKeyId and SecretAccessKey must be non-empty strings")
        return {akid: secret}


def _error_detail(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    if isinstance(exc, KeyError):
        return f"the secret's JSON lacks {exc}"
    if isinstance(exc, ValueError | TypeError):
        return "the secret is not JSON with AccessKeyId and SecretAccessKey strings"
    return str(exc)


def access_key_of(authorization: str | None) -> str | None:
    """The access key id an Authorization header names, if it names one (for the log)."""
    if not authorization:
        return None
    fields = dict(_FIELD.findall(authorization))
    credential = fields.get("Credential", "")
    return credential.split("/", 1)[0] or None


def authenticate(
    request: RequestToVerify,
    *,
    resolver: CredentialResolver | None,
    region: str,
    now: float | None = None,
) -> str | None:
    """Check ``request``'s signature; the caller's access key id (None when unsigned and no
    check is asked: ``resolver`` None is ``auth: none``). Raises a 403 ApiError."""
    authorization = request.headers.get("authorization")
    if resolver is None:
        return access_key_of(authorization)
    if not authorization:
        raise forbidden("MissingAuthenticationTokenException", "Missing Authentication Token")
    credential, signed_headers, signature = _parse_authorization(authorization)
    access_key, scope_date, scope_region, service = _parse_scope(credential)
    secret = resolver.secret_for(access_key)
    if secret is None:
        raise forbidden(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if service != _SERVICE:
        raise forbidden(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{_SERVICE}'. ",
        )
    if scope_region != region:
        raise forbidden(
            "InvalidSignatureException", "Credential should be scoped to a valid region. "
        )
    amz_date = _checked_date(request, time.time() if now is None else now)
    if scope_date != amz_date[:8]:
        raise forbidden(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    expected = _signature(request, access_key, secret, region, amz_date, signed_headers)
    if not hmac.compare_digest(expected, signature):
        raise forbidden("InvalidSignatureException", _MISMATCH)
    return access_key


def _parse_authorization(header: str) -> tuple[str, list[str], str]:
    if not header.startswith(_ALGORITHM + " "):
        raise forbidden(
            "IncompleteSignatureException",
            f"Authorization header requires the {_ALGORITHM} algorithm (Signature Version 4).",
        )
    fields = dict(_FIELD.findall(header))
    missing = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not fields.get(name)
    ]
    if missing:
        raise forbidden(
            "IncompleteSignatureException", " ".join(missing) + f" Authorization={header}"
        )
    signed = fields["SignedHeaders"].lower().split(";")
    if "host" not in signed:
        # Else the signature binds no endpoint: one made for another server would do here.
        raise forbidden(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    return fields["Credential"], signed, fields["Signature"]


def _parse_scope(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise forbidden(
            "IncompleteSignatureException",
            f"Credential should be of the form <access key>/<date>/<region>/<service>/"
            f"aws4_request, got '{credential}'",
        )
    return parts[0], parts[1], parts[2], parts[3]


def _checked_date(request: RequestToVerify, now: float) -> str:
    """The request's X-Amz-Date, checked to be within MAX_SKEW_SECONDS of ``now``."""
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, _AMZ_DATE))
    except ValueError:
        raise forbidden(
            "IncompleteSignatureException",
            "Authorization header requires existence of a valid 'X-Amz-Date' header (ISO 8601 "
            f"basic format, for example 20261205T153000Z); got '{amz_date}'.",
        ) from None
    shown_now = time.strftime(_AMZ_DATE, time.gmtime(now))
    if signed_at < now - MAX_SKEW_SECONDS:
        earliest = time.strftime(_AMZ_DATE, time.gmtime(now - MAX_SKEW_SECONDS))
        raise forbidden(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {earliest} ({shown_now} - 5 min.)",
        )
    if signed_at > now + MAX_SKEW_SECONDS:
        latest = time.strftime(_AMZ_DATE, time.gmtime(now + MAX_SKEW_SECONDS))
        raise forbidden(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than {latest} ({shown_now} "
            "+ 5 min.)",
        )
    return amz_date


def _signature(
    request: RequestToVerify,
    access_key: str,
    secret: str,
    region: str,
    amz_date: str,
    signed_headers: list[str],
) -> str:
    """The signature botocore computes for the request the client says it signed."""
    if any(name not in request.headers for name in signed_headers):
        raise forbidden("InvalidSignatureException", _MISMATCH)
    # botocore signs a claimed X-Amz-Content-SHA256 instead of the body: check the claim, or
    # a changed body would pass under a signature made for another one.
    claimed_hash = request.headers.get("x-amz-content-sha256", "")
    body_hash = hashlib.sha256(request.body).hexdigest()
    if "x-amz-content-sha256" in signed_headers and not hmac.compare_digest(
        claimed_hash, body_hash
    ):
        raise forbidden("InvalidSignatureException", _MISMATCH)
    headers: dict[str, Any] = {name: request.headers[name] for name in signed_headers}
    # The URL's host is a constant: the signed Host header is verified among the headers, and
    # a Host value spliced into the URL ("h/other/path#") could change the path botocore reads.
    rebuilt = AWSRequest(
        method=request.method,
        url=f"http://localhost{request.target}",
        headers=headers,
        data=request.body,
    )
    rebuilt.context["timestamp"] = amz_date
    signer = _SignedHeadersOnly(Credentials(access_key, secret), region, signed_headers)
    canonical = signer.canonical_request(rebuilt)
    return str(signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt))


class _SignedHeadersOnly(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's SigV4 over exactly the headers the client listed as signed.

    botocore, signing, leaves out some headers (``Connection``, ``User-Agent``, ...); another
    SDK may sign one of them. The client's list is what its signature covers, so it is the
    list to verify with; everything else is botocore's own code.
    """

    def __init__(self, credentials: Credentials, region: str, signed: list[str]) -> None:
        super().__init__(credentials, _SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self._signed:
            chosen[name] = request.headers[name]
        return chosen
