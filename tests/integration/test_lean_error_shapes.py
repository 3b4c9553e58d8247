"""Error answers in the shapes AWS and the load balancers in front of it really send (review
R2), against the lean path and the full client on the same canned answer: a namespaced
``__type``, a ``__type`` with a URL suffix, an error named only by the ``x-amzn-ErrorType``
header, an empty body, and an HTML 503. A known error is the full path's SourceError with no
second call; anything else falls back, and the page read through the fallback is right."""

from __future__ import annotations

import base64

import pytest

from poller.aws.clients import ClientFactory
from poller.aws.lean import LeanCall
from poller.errors import SourceError, Throttled
from poller.sources import kinesis
from tests.integration.test_lean_reads import Scripted, kinesis_iterator
from tests.support.aws import CREDENTIALS, REGION, aws_client, create_stream, unique
from tests.support.http_server import ThreadedServer

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/x-amz-json-1.1"}
THROTTLE = b"Rate exceeded for shard shardId-000000000000"


@pytest.mark.parametrize(
    "body",
    [
        b'{"__type": "com.amazonaws.kinesis.v20131202#ProvisionedThroughputExceededException",'
        b' "message": "' + THROTTLE + b'"}',
        b'{"__type": "ProvisionedThroughputExceededException:http://internal.amazon.com/'
        b'coral/com.amazon.coral.service/", "Message": "' + THROTTLE + b'"}',
    ],
    ids=["namespaced", "url-suffix"],
)
async def test_throttling_in_every_type_spelling_is_throttled_without_a_second_call(
    moto_url: str, body: bytes
) -> None:
    stream = unique("lean-throttle")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
    scripted = Scripted(moto_url)
    with ThreadedServer(scripted.app) as server:
        factory = ClientFactory(region=REGION, endpoint_url=server.url, credentials=CREDENTIALS)
        try:
            source = await factory.client("kinesis", purpose="source")
            lean = LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS)
            assert lean is not None
            iterator = await kinesis_iterator(moto_url, stream)
            full = kinesis.KinesisStreamApi(
                source, stream_arn="arn:x", region=REGION, identity_arn="arn:x"
            )
            full._lean = None  # the full client, as with POLLER_LEAN_READS=0
            scripted.answers.append((400, JSON, body))
            with pytest.raises(SourceError) as through_lean:
                await lean.call({"ShardIterator": iterator})
            scripted.answers.append((400, JSON, body))
            with pytest.raises(SourceError) as through_full:
                await full.get_records(iterator)
            errors = [through_lean.value, through_full.value]
        finally:
            await factory.aclose()
    assert all(isinstance(error, Throttled) for error in errors)
    assert str(errors[0]) == str(errors[1])
    assert THROTTLE.decode() in str(errors[0])
    assert lean.fallbacks == 0
    assert scripted.answers == []


@pytest.mark.parametrize(
    "answer",
    [
        (400, {"x-amzn-ErrorType": "ProvisionedThroughputExceededException:"}, b""),
        (400, {**JSON, "x-amzn-ErrorType": "ProvisionedThroughputExceededException"}, b"{}"),
        (500, {}, b""),
        (503, {"Content-Type": "text/html"}, b"<html><body>503 Service Unavailable</body></html>"),
    ],
    ids=["header-only-empty", "header-only-object", "500-empty", "503-html"],
)
async def test_an_error_without_a_json_type_falls_back_and_no_page_is_lost(
    moto_url: str, answer: tuple[int, dict[str, str], bytes]
) -> None:
    stream = unique("lean-odd-error")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
        await client.put_record(StreamName=stream, PartitionKey="k", Data=b"kept")
    scripted = Scripted(moto_url)
    with ThreadedServer(scripted.app) as server:
        factory = ClientFactory(region=REGION, endpoint_url=server.url, credentials=CREDENTIALS)
        try:
            source = await factory.client("kinesis", purpose="source")
            lean = LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS)
            assert lean is not None
            scripted.answers.append(answer)
            page = await lean.call({"ShardIterator": await kinesis_iterator(moto_url, stream)})
        finally:
            await factory.aclose()
    assert [base64.b64decode(r["Data"]) for r in page["Records"]] == [b"kept"]
    assert lean.fallbacks == 1
