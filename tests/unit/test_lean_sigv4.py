"""The lean path's SigV4 equals botocore's ``SigV4Auth`` for the same request, credentials and
time: the same Authorization header, hence the same signature AWS verifies."""

from __future__ import annotations

import datetime
import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from poller.aws.sigv4 import SigV4Signer

NOW = 1_780_000_000.0  # a fixed instant, so both sides sign the same X-Amz-Date
HEADERS = (
    ("Content-Type", "application/x-amz-json-1.1"),
    ("X-Amz-Target", "Kinesis_20131202.GetRecords"),
)


def botocore_headers(
    url: str, body: bytes, credentials: ReadOnlyCredentials, region: str, service: str
) -> dict[str, str]:
    """What ``SigV4Auth.add_auth`` adds, at NOW: its steps, with the time it would take from
    the clock given instead (``request.context['timestamp']``)."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(HEADERS))
    auth = SigV4Auth(credentials, service, region)
    stamp = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    request.context["timestamp"] = stamp.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    auth._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "session/token+with=odd  chars"])
@pytest.mark.parametrize(
    ("url", "host", "region", "service"),
    [
        (
            "https://kinesis.eu-west-1.amazonaws.com",
            "kinesis.eu-west-1.amazonaws.com",
            "eu-west-1",
            "kinesis",
        ),
        ("http://127.0.0.1:4566", "127.0.0.1:4566", "us-east-1", "kinesis"),
        (
            "https://streams.dynamodb.us-east-1.amazonaws.com",
            "streams.dynamodb.us-east-1.amazonaws.com",
            "us-east-1",
            "dynamodb",
        ),
    ],
)
def test_the_signature_equals_botocores(
    url: str, host: str, region: str, service: str, token: str | None
) -> None:
    body = json.dumps({"ShardIterator": "AAAA/+==", "Limit": 100}).encode()
    credentials = ReadOnlyCredentials(
        "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token
    )
    signer = SigV4Signer(host=host, region=region, service=service, headers=HEADERS)
    ours = dict(
        signer.sign(
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            token=token,
            body=body,
            now=NOW,
        )
    )
    theirs = botocore_headers(url + "/", body, credentials, region, service)
    assert ours == theirs


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    """The cached key is not reused for another day or after a credential change."""
    signer = SigV4Signer(host="h", region="us-east-1", service="kinesis", headers=HEADERS)
    first = dict(signer.sign(access_key="A", secret_key="one", token=None, body=b"{}", now=NOW))
    same = dict(signer.sign(access_key="A", secret_key="one", token=None, body=b"{}", now=NOW))
    rotated = dict(signer.sign(access_key="A", secret_key="two", token=None, body=b"{}", now=NOW))
    tomorrow = dict(
        signer.sign(access_key="A", secret_key="one", token=None, body=b"{}", now=NOW + 86400)
    )
    assert first == same
    assert rotated["Authorization"] != first["Authorization"]
    assert (
        tomorrow["Authorization"].split("Credential=A/")[1][:8]
        != first["Authorization"].split("Credential=A/")[1][:8]
    )
