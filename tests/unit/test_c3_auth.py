"""The control API's SigV4 check: requests botocore signs verify; tampered ones do not.

Each request is signed by botocore's own signer, as the AWS CLI and boto3 sign (the path as
botocore's REST serializer sends it: a tag ARN percent-encoded, ``%3A``), and then checked by
:func:`poller.control.auth.authenticate` from what would arrive over the wire: the raw path and
query, the headers, the body.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from poller.config import ControlApiSettings, ControlCredentials
from poller.control.auth import CredentialResolver, RequestToVerify, access_key_of, authenticate
from poller.control.errors import ApiError
from poller.errors import ConfigError

REGION = "us-east-1"
KEY_ID, SECRET = "AKIDC3TESTKEY0000001", "c3-secret-never-logged"
HOST = "127.0.0.1:10028"
ESM_ARN = "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:" + (
    "14e0db71-5d35-4eb5-b481-8945cf9d10c2"
)
ENCODED_ARN = ESM_ARN.replace(":", "%3A")
ENV = {"C3_KEY": KEY_ID, "C3_SECRET": SECRET}

pytestmark = pytest.mark.anyio


def sigv4_settings() -> ControlApiSettings:
    return ControlApiSettings(
        enabled=True,
        auth="sigv4",
        credentials=[
            ControlCredentials(access_key_id_env="C3_KEY", secret_access_key_env="C3_SECRET")
        ],
    )


async def loaded_resolver(environ: dict[str, str] | None = None) -> CredentialResolver:
    resolver = CredentialResolver(sigv4_settings(), environ=ENV if environ is None else environ)
    await resolver.load()
    return resolver


def signed(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    key: tuple[str, str] = (KEY_ID, SECRET),
    token: str | None = None,
    region: str = REGION,
    service: str = "lambda",
    headers: dict[str, str] | None = None,
) -> RequestToVerify:
    """``target`` signed by botocore, as the request would arrive at the server."""
    request = AWSRequest(
        method=method,
        url=f"http://{HOST}{target}",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(Credentials(key[0], key[1], token), service, region).add_auth(request)
    return arrived(request, target, body)


def arrived(request: AWSRequest, target: str, body: bytes) -> RequestToVerify:
    headers = {name.lower(): str(value) for name, value in request.headers.items()}
    headers["host"] = urlsplit(request.url).netloc  # the HTTP client adds Host
    return RequestToVerify(method=request.method, target=target, headers=headers, body=body)


def with_changes(request: RequestToVerify, **changes: Any) -> RequestToVerify:
    fields = {
        "method": request.method,
        "target": request.target,
        "headers": dict(request.headers),
        "body": request.body,
    }
    return RequestToVerify(**{**fields, **changes})


def refused(request: RequestToVerify, resolver: CredentialResolver, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        authenticate(request, resolver=resolver, region=REGION, **kwargs)
    assert caught.value.status == 403
    return caught.value


CREATE_BODY = json.dumps(
    {
        "FunctionName": "orders-handler",
        "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
        "StartingPosition": "TRIM_HORIZON",
    }
).encode()

SIGNED_CALLS = [
    ("POST", "/2015-03-31/event-source-mappings/", CREATE_BODY),
    (
        "GET",
        "/2015-03-31/event-source-mappings/?EventSourceArn=arn%3Aaws%3Akinesis%3Aus-east-1"
        "%3A123456789012%3Astream%2Forders&MaxItems=5",
        b"",
    ),
    ("GET", "/2015-03-31/event-source-mappings/?Marker=MTRlMGRiNzE%3D&MaxItems=1", b""),
    ("PUT", "/2015-03-31/event-source-mappings/14e0db71-5d35", b'{"BatchSize": 10}'),
    ("DELETE", "/2015-03-31/event-source-mappings/14e0db71-5d35", b""),
    ("POST", f"/2017-03-31/tags/{ENCODED_ARN}", b'{"Tags": {"team": "payments"}}'),
    ("GET", f"/2017-03-31/tags/{ENCODED_ARN}", b""),
    ("DELETE", f"/2017-03-31/tags/{ENCODED_ARN}?tagKeys=b&tagKeys=a%20b&tagKeys=a", b""),
]


@pytest.mark.parametrize(("method", "target", "body"), SIGNED_CALLS)
async def test_c3_botocore_signed_requests_verify(method: str, target: str, body: bytes) -> None:
    resolver = await loaded_resolver()
    request = signed(method, target, body)
    assert authenticate(request, resolver=resolver, region=REGION) == KEY_ID


async def test_c3_a_session_token_is_just_another_signed_header() -> None:
    resolver = await loaded_resolver()
    request = signed("GET", f"/2017-03-31/tags/{ENCODED_ARN}", token="session-token")
    assert "x-amz-security-token" in request.headers
    assert authenticate(request, resolver=resolver, region=REGION) == KEY_ID


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param({"body": b'{"BatchSize": 10000}'}, id="body"),
        pytest.param({"method": "DELETE"}, id="method"),
        pytest.param({"target": "/2015-03-31/event-source-mappings/14e0db71-5d36"}, id="path"),
        pytest.param(
            {"target": "/2015-03-31/event-source-mappings/14e0db71%2D5d35"}, id="path-encoding"
        ),
        pytest.param(
            {"target": "/2015-03-31/event-source-mappings/14e0db71-5d35?MaxItems=1"}, id="query"
        ),
    ],
)
async def test_c3_a_tampered_request_fails(tamper: dict[str, Any]) -> None:
    resolver = await loaded_resolver()
    request = signed("PUT", "/2015-03-31/event-source-mappings/14e0db71-5d35", b'{"BatchSize": 1}')
    error = refused(with_changes(request, **tamper), resolver)
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith("The request signature we calculated does not match")


async def test_c3_a_tampered_signed_header_fails() -> None:
    resolver = await loaded_resolver()
    request = signed("GET", f"/2017-03-31/tags/{ENCODED_ARN}")
    headers = {**request.headers, "content-type": "text/plain"}
    assert refused(with_changes(request, headers=headers), resolver).code == (
        "InvalidSignatureException"
    )
    # An unsigned header may change: proxies add them.
    headers = {**request.headers, "x-forwarded-for": "10.0.0.1"}
    assert authenticate(with_changes(request, headers=headers), resolver=resolver, region=REGION)


async def test_c3_a_false_payload_hash_does_not_cover_another_body() -> None:
    resolver = await loaded_resolver()
    honest = b'{"BatchSize": 1}'
    claimed = {"X-Amz-Content-SHA256": "0" * 64}
    request = signed("PUT", "/2015-03-31/event-source-mappings/x", honest, headers=claimed)
    assert refused(request, resolver).code == "InvalidSignatureException"


async def test_c3_wrong_secret_unknown_key_and_unsigned_are_refused() -> None:
    resolver = await loaded_resolver()
    target = "/2015-03-31/event-source-mappings/"
    wrong_secret = signed("GET", target, key=(KEY_ID, "not-the-secret"))
    assert refused(wrong_secret, resolver).code == "InvalidSignatureException"
    unknown = refused(signed("GET", target, key=("AKIDUNKNOWN", SECRET)), resolver)
    assert (unknown.code, unknown.message) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )
    unsigned = RequestToVerify("GET", target, {"host": HOST}, b"")
    missing = refused(unsigned, resolver)
    assert (missing.code, missing.message) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )
    assert missing.body() == {"message": "Missing Authentication Token"}


async def test_c3_a_stale_or_future_date_is_refused() -> None:
    resolver = await loaded_resolver()
    request = signed("GET", "/2015-03-31/event-source-mappings/")
    stale = refused(request, resolver, now=time.time() + 20 * 60)
    assert stale.code == "InvalidSignatureException"
    assert stale.message.startswith(f"Signature expired: {request.headers['x-amz-date']} is now")
    future = refused(request, resolver, now=time.time() - 20 * 60)
    assert future.message.startswith("Signature not yet current:")
    # Within five minutes either way is fine (clocks drift).
    assert authenticate(request, resolver=resolver, region=REGION, now=time.time() + 240)


async def test_c3_the_scope_must_be_lambda_in_our_region() -> None:
    resolver = await loaded_resolver()
    target = "/2015-03-31/event-source-mappings/"
    other_region = refused(signed("GET", target, region="eu-west-1"), resolver)
    assert other_region.message == "Credential should be scoped to a valid region. "
    other_service = refused(signed("GET", target, service="sqs"), resolver)
    assert other_service.message == "Credential should be scoped to correct service: 'lambda'. "


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic dXNlcjpwYXNz",
        "AWS4-HMAC-SHA256 Credential=AKID/20261205/us-east-1/lambda/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKID, SignedHeaders=host, Signature=00",
    ],
)
async def test_c3_a_malformed_authorization_is_an_incomplete_signature(authorization: str) -> None:
    resolver = await loaded_resolver()
    request = RequestToVerify("GET", "/", {"authorization": authorization, "host": HOST}, b"")
    assert refused(request, resolver).code == "IncompleteSignatureException"


async def test_c3_a_missing_or_bad_date_is_an_incomplete_signature() -> None:
    resolver = await loaded_resolver()
    request = signed("GET", "/2015-03-31/event-source-mappings/")
    headers = {**request.headers, "x-amz-date": "yesterday"}
    assert refused(with_changes(request, headers=headers), resolver).code == (
        "IncompleteSignatureException"
    )


def test_c3_auth_none_accepts_and_names_the_caller_for_the_log() -> None:
    request = signed("GET", "/2015-03-31/event-source-mappings/", key=("AKIDANYONE", "x"))
    assert authenticate(request, resolver=None, region=REGION) == "AKIDANYONE"
    unsigned = RequestToVerify("GET", "/", {}, b"")
    assert authenticate(unsigned, resolver=None, region=REGION) is None
    assert access_key_of("garbage") is None


async def test_c3_a_missing_environment_variable_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        await loaded_resolver({"C3_KEY": KEY_ID})
    assert "C3_SECRET is not set" in str(caught.value)


async def test_c3_reload_rereads_the_environment_and_keeps_old_keys_on_error() -> None:
    environ = dict(ENV)
    resolver = await loaded_resolver(environ)
    environ["C3_KEY"] = "AKIDROTATED000000001"
    await resolver.reload(sigv4_settings())
    assert resolver.secret_for("AKIDROTATED000000001") == SECRET
    assert resolver.secret_for(KEY_ID) is None
    del environ["C3_SECRET"]
    with pytest.raises(ConfigError):
        await resolver.reload(sigv4_settings())
    assert resolver.secret_for("AKIDROTATED000000001") == SECRET
