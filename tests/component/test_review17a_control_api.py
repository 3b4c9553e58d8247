"""Hostile review of the control API (issue 17): each test is a break found by review, over
real HTTP against the aiohttp server on the in-memory store (the harness of
``test_c3_server``: boto3 or aiohttp's client, signed by botocore's signer, nothing patched).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import structlog.testing
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from poller.errors import CheckpointError
from tests.component.test_c3_server import (
    KEY_ID,
    REGION,
    SECRET,
    Api,
    FlakyStore,
    kinesis_create,
    running_api,
    still_answers,
)

pytestmark = pytest.mark.anyio

MAPPINGS = "/2015-03-31/event-source-mappings/"


def _create_body_with(member: str, raw_value: bytes) -> bytes:
    """A valid Create body with ``member`` set to raw JSON ``raw_value``."""
    return (
        json.dumps(kinesis_create()).encode()[:-1] + f', "{member}": '.encode() + raw_value + b"}"
    )


@pytest.mark.parametrize(
    ("member", "depth"),
    [
        ("FunctionResponseTypes", 400),  # deep enough for Coral's message text to recurse
        ("FunctionResponseTypes", 5000),  # deep enough for the JSON parser to recurse
        ("SomethingUnknown", 400),
    ],
)
async def test_review17a_deeply_nested_bodies_are_a_400_not_a_500(member: str, depth: int) -> None:
    """A body nested a few hundred levels deep was a 500 with a traceback as deep as the body
    (RecursionError in Coral's message text or in the parser); rendering that traceback cost
    tens of seconds of CPU per request."""
    body = _create_body_with(member, b"[" * depth + b"]" * depth)
    async with running_api() as api:
        with structlog.testing.capture_logs() as logs:
            status, headers, answer = await api.raw("POST", MAPPINGS, body)
        assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestContentException")
        assert "nested deeper" in answer["message"]
        assert not [e for e in logs if e["event"] == "control.request_failed"]
        await still_answers(api)


async def test_review17a_ordinary_nesting_still_passes() -> None:
    """The depth limit leaves room for every shape AWS's model has."""
    pattern = json.dumps({"data": {"a": {"b": {"c": [{"numeric": [">", 1]}]}}}})
    body = json.dumps(kinesis_create(FilterCriteria={"Filters": [{"Pattern": pattern}]}))
    async with running_api() as api:
        status, _, answer = await api.raw("POST", MAPPINGS, body.encode())
        assert status == 202, answer


class _SignsWithoutHost(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """A signer that leaves ``host`` out of the signed headers (botocore always signs it)."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name, value in super().headers_to_sign(request).items():
            if name != "host":
                chosen[name] = value
        return chosen


async def _send_signed_without_host(api: Api, host: str) -> tuple[int, dict[str, str]]:
    request = AWSRequest(method="GET", url=api.url + MAPPINGS, data=b"")
    _SignsWithoutHost(Credentials(KEY_ID, SECRET), "lambda", REGION).add_auth(request)
    headers = {k: str(v) for k, v in request.headers.items()}
    headers["Host"] = host
    async with (
        aiohttp.ClientSession() as session,
        session.get(yarl.URL(api.url + MAPPINGS, encoded=True), headers=headers) as answer,
    ):
        await answer.read()
        return answer.status, dict(answer.headers)


async def test_review17a_a_signature_must_cover_the_host() -> None:
    """A signature that leaves out ``host`` was accepted, under any Host header (a request
    signed for one endpoint could be replayed to another); AWS refuses it."""
    async with running_api() as api:
        for host in (api.url.removeprefix("http://"), "elsewhere.example:443"):
            status, headers = await _send_signed_without_host(api, host)
            assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
        await still_answers(api)


async def test_review17a_a_tag_arn_of_another_region_account_or_partition_is_not_found() -> None:
    """Only the UUID of a tag call's ARN was read: TagResource on
    ``arn:aws:lambda:eu-west-1:999999999999:event-source-mapping:<our uuid>`` changed the
    tags of our us-east-1 mapping. Another region, account or partition names another
    resource: 404, and nothing changes. (The UUID's case still does not matter.)"""
    async with running_api() as api:
        created = await api.ok("create_event_source_mapping", **kinesis_create(Tags={"k": "v"}))
        arn = created["EventSourceMappingArn"]
        assert arn.startswith(f"arn:aws:lambda:{REGION}:123456789012:")
        others = [
            arn.replace(f":{REGION}:", ":eu-west-1:"),
            arn.replace(":123456789012:", ":999999999999:"),
            arn.replace("arn:aws:", "arn:aws-cn:"),
        ]
        for other in others:
            tagged = await api.call("tag_resource", Resource=other, Tags={"x": "y"})
            assert tagged["Error"]["Code"] == "ResourceNotFoundException", other
            untagged = await api.call("untag_resource", Resource=other, TagKeys=["k"])
            assert untagged["Error"]["Code"] == "ResourceNotFoundException", other
            listed = await api.call("list_tags", Resource=other)
            assert listed["Error"]["Code"] == "ResourceNotFoundException", other
        assert (await api.ok("list_tags", Resource=arn))["Tags"] == {"k": "v"}
        upper = arn.rpartition(":")[0] + ":" + created["UUID"].upper()
        await api.ok("tag_resource", Resource=upper, Tags={"x": "y"})
        assert (await api.ok("list_tags", Resource=upper))["Tags"] == {"k": "v", "x": "y"}


class _KeyLimitedStore(FlakyStore):
    """The memory store with DynamoDB's limit on a key's size: a longer key is a store
    error, as the DynamoDB store reports DynamoDB's ValidationException."""

    async def get(self, uuid: str) -> Any:
        if len(uuid.encode()) > 2048:
            raise CheckpointError("GetItem: the key is over 2048 bytes (test)")
        return await super().get(uuid)

    async def update(self, uuid: str, change: Any) -> Any:
        if len(uuid.encode()) > 2048:
            raise CheckpointError("UpdateItem: the key is over 2048 bytes (test)")
        return await super().update(uuid, change)


async def test_review17a_a_path_uuid_no_mapping_can_have_is_404_not_a_store_error() -> None:
    """A 3000-character UUID in the path reached the store, whose refusal (DynamoDB's key
    limit) was answered 500 ServiceException, which every SDK retries; no mapping can have
    such a UUID, so the answer is AWS's 404 at once."""
    async with running_api() as api:
        api.store.__class__ = _KeyLimitedStore  # the harness builds a FlakyStore; same state
        long_uuid = "a" * 3000
        for method in ("GET", "PUT", "DELETE"):
            status, headers, _ = await api.raw(method, MAPPINGS + long_uuid, b"{}")
            assert (status, headers["x-amzn-ErrorType"]) == (404, "ResourceNotFoundException")
        await still_answers(api)


@pytest.mark.parametrize("max_items", ["1_0", "%205"])
async def test_review17a_max_items_is_a_plain_integer(max_items: str) -> None:
    """MaxItems went through Python's int(), which takes "1_0" and " 5"; Java's
    Integer.parseInt (Coral's) takes neither: 400 ValidationException."""
    async with running_api() as api:
        status, headers, _ = await api.raw("GET", f"{MAPPINGS}?MaxItems={max_items}")
        assert (status, headers["x-amzn-ErrorType"]) == (400, "ValidationException")
        status, _, _ = await api.raw("GET", f"{MAPPINGS}?MaxItems=5")
        assert status == 200


async def test_review17a_untag_keys_are_checked_as_aws_checks_them() -> None:
    """UntagResource's ``tagKeys`` went unchecked (an empty key, a 200-character key, a key
    with ``#`` were a silent 204); AWS's model gives them Coral's ValidationException, as it
    does to the same keys in TagResource."""
    async with running_api() as api:
        created = await api.ok("create_event_source_mapping", **kinesis_create(Tags={"k": "v"}))
        tags = "/2017-03-31/tags/" + created["EventSourceMappingArn"].replace(":", "%3A")
        for bad in ("", "k" * 200, "a%23b"):
            status, headers, answer = await api.raw("DELETE", f"{tags}?tagKeys=k&tagKeys={bad}")
            assert (status, headers["x-amzn-ErrorType"]) == (400, "ValidationException"), bad
            assert answer["message"].startswith("1 validation error detected: Value '[k, ")
            assert (
                "at 'tagKeys' failed to satisfy constraint: Member must satisfy"
                in (answer["message"])
            )
        assert (await api.ok("list_tags", Resource=created["EventSourceMappingArn"]))["Tags"] == {
            "k": "v"
        }
        status, _, _ = await api.raw("DELETE", f"{tags}?tagKeys=k")
        assert status == 204
