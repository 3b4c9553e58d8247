"""The lean GetRecords path against moto, and against botocore's own parser on the same data.

Every page is read twice with the same iterator (moto's iterators are positions, so reading
one again returns the same records): once by the source client (botocore's handler chain and
parser, the full path) and once by :class:`poller.aws.lean.LeanCall`; the two must be equal.
Errors come from the fault proxy or from a scripted server that answers canned bodies and
forwards everything else to moto; nothing is patched.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aws_kinesis_agg.aggregator import RecordAggregator

from poller.aws.clients import ClientFactory
from poller.aws.lean import LeanCall
from poller.errors import (
    IteratorExpired,
    PositionTrimmed,
    SourceError,
    SourceUnavailable,
    StreamNotFound,
    Throttled,
)
from poller.sources import dynamodb_streams, kinesis
from tests.support.aws import CREDENTIALS, REGION, aws_client, create_stream, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.http_server import ThreadedServer
from tests.support.kinesis_local import kinesis_local
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"


@pytest.fixture
async def clients(moto_url: str) -> AsyncIterator[ClientFactory]:
    """The service's own client factory, pointed at moto."""
    factory = ClientFactory(region=REGION, endpoint_url=moto_url, credentials=CREDENTIALS)
    yield factory
    await factory.aclose()


async def both(
    client: Any, required: frozenset[str], args: dict[str, Any], *, fresh_iterators: bool = False
) -> dict[str, Any]:
    """The page read by the lean path, after checking it equals the full client's.
    ``fresh_iterators``: the service makes a new NextShardIterator per call (moto's DynamoDB
    Streams), so only its presence is compared."""
    lean = LeanCall.for_client(client, "GetRecords", required)
    assert lean is not None
    full = await client.get_records(**args)
    full.pop("ResponseMetadata")
    page = await lean.call(args)
    assert lean.fallbacks == 0
    if fresh_iterators:
        assert ("NextShardIterator" in page) == ("NextShardIterator" in full)
        assert {**page, "NextShardIterator": None} == {**full, "NextShardIterator": None}
    else:
        assert page == full
    return page


async def kinesis_iterator(url: str, stream: str, kind: str = "TRIM_HORIZON") -> str:
    async with aws_client("kinesis", url) as client:
        response = await client.get_shard_iterator(
            StreamName=stream, ShardId=SHARD, ShardIteratorType=kind
        )
    return str(response["ShardIterator"])


def aggregate(count: int) -> tuple[str, bytes]:
    """A KPL aggregate of ``count`` user records, built by aws-kinesis-agg."""
    aggregator = RecordAggregator()
    for n in range(count):
        assert aggregator.add_user_record(f"user-{n}", f"record-{n}".encode()) is None
    key, _, blob = aggregator.clear_and_get().get_contents()
    return key, blob


async def test_kinesis_pages_equal_botocores(moto_url: str, clients: ClientFactory) -> None:
    """Binary data, unicode keys, a KPL aggregate and an empty page parse as botocore does."""
    stream = unique("lean")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
        entries = [
            {"PartitionKey": "plain", "Data": b"hello"},
            {"PartitionKey": "bytes", "Data": bytes(range(256))},
            {"PartitionKey": "ключ-键-🔑", "Data": "данные 数据".encode()},
            {"PartitionKey": 'quote"\\slash', "Data": b"\x00"},
        ]
        key, blob = aggregate(20)
        entries.append({"PartitionKey": key, "Data": blob})
        await client.put_records(StreamName=stream, Records=entries)
    source = await clients.client("kinesis", purpose="source")
    args = {"ShardIterator": await kinesis_iterator(moto_url, stream), "Limit": 100}
    page = await both(source, kinesis.RECORD_FIELDS, {**args, "StreamARN": stream_arn(stream)})
    assert [r["PartitionKey"] for r in page["Records"]][:3] == ["plain", "bytes", "ключ-键-🔑"]
    assert base64.b64decode(page["Records"][1]["Data"]) == bytes(range(256))
    assert isinstance(page["Records"][0]["ApproximateArrivalTimestamp"], float)
    empty = await both(
        source,
        kinesis.RECORD_FIELDS,
        {"ShardIterator": await kinesis_iterator(moto_url, stream, "LATEST"), "Limit": 10},
    )
    assert empty["Records"] == []
    assert "NextShardIterator" in empty


@pytest.fixture(scope="module")
def kl_url() -> Iterator[str]:
    """kinesis-local: unlike moto, it closes a split parent and returns ChildShards."""
    with kinesis_local() as url:
        yield url


async def test_closed_kinesis_shard_page_equals_botocores(kl_url: str) -> None:
    """The last page of a split parent: no next iterator, ChildShards (on kinesis-local)."""
    stream = unique("lean-split")
    async with aws_client("kinesis", kl_url) as client:
        shards = await create_stream(client, stream, 1)
        await client.put_record(StreamName=stream, PartitionKey="k", Data=b"before")
        hashes = shards[0]["HashKeyRange"]
        middle = (int(hashes["StartingHashKey"]) + int(hashes["EndingHashKey"])) // 2
        await client.split_shard(
            StreamName=stream, ShardToSplit=SHARD, NewStartingHashKey=str(middle)
        )

        async def active() -> bool:
            summary = await client.describe_stream_summary(StreamName=stream)
            return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

        await wait_until(active, 15, "the split to finish")
    factory = ClientFactory(region=REGION, endpoint_url=kl_url, credentials=CREDENTIALS)
    try:
        source = await factory.client("kinesis", purpose="source")
        args = {"ShardIterator": await kinesis_iterator(kl_url, stream), "Limit": 100}
        page = await both(source, kinesis.RECORD_FIELDS, args)
        assert [base64.b64decode(r["Data"]) for r in page["Records"]] == [b"before"]
        for _ in range(5):
            if "NextShardIterator" not in page:
                break
            page = await both(
                source, kinesis.RECORD_FIELDS, {**args, "ShardIterator": page["NextShardIterator"]}
            )
    finally:
        await factory.aclose()
    assert "NextShardIterator" not in page
    assert len(page["ChildShards"]) == 2
    assert all(child["ParentShards"] == [SHARD] for child in page["ChildShards"])


async def ddb_changes(moto_url: str) -> str:
    """A stream with an INSERT, a MODIFY and a REMOVE of an item holding every attribute type."""
    table = unique("lean")
    item = {
        "id": {"S": "ключ"},
        "n": {"N": "-12.5e3"},
        "b": {"B": bytes(range(256))},
        "ss": {"SS": ["a", "\u0431"]},
        "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": [b"\x00\x01", b"\xff"]},
        "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "1"}, {"NULL": True}]}}},
        "l": {"L": [{"BOOL": False}, {"M": {}}]},
        "null": {"NULL": True},
        "bool": {"BOOL": True},
    }
    async with aws_client("dynamodb", moto_url) as ddb:
        created = await ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        await ddb.put_item(TableName=table, Item=item)
        await ddb.put_item(TableName=table, Item={**item, "n": {"N": "7"}})
        await ddb.delete_item(TableName=table, Key={"id": item["id"]})
    return str(created["TableDescription"]["LatestStreamArn"])


async def test_dynamodb_stream_pages_equal_botocores(moto_url: str, clients: ClientFactory) -> None:
    """INSERT, MODIFY and REMOVE with every attribute type parse as botocore does."""
    arn = await ddb_changes(moto_url)
    source = await clients.client("dynamodbstreams", purpose="source")
    shard = (await source.describe_stream(StreamArn=arn))["StreamDescription"]["Shards"][0]
    iterator = await source.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )
    args = {"ShardIterator": iterator["ShardIterator"], "Limit": 100}
    page = await both(source, dynamodb_streams.RECORD_FIELDS, args, fresh_iterators=True)
    assert [r["eventName"] for r in page["Records"]] == ["INSERT", "MODIFY", "REMOVE"]
    change = page["Records"][0]["dynamodb"]
    assert isinstance(change["ApproximateCreationDateTime"], float)
    assert base64.b64decode(change["NewImage"]["b"]["B"]) == bytes(range(256))
    rest = {**args, "ShardIterator": page["NextShardIterator"]}
    last = await both(source, dynamodb_streams.RECORD_FIELDS, rest, fresh_iterators=True)
    assert last["Records"] == []


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as fault_proxy:
        yield fault_proxy


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ExpiredIteratorException", 400, IteratorExpired),
        ("ProvisionedThroughputExceededException", 400, Throttled),
        ("LimitExceededException", 400, Throttled),
        ("TrimmedDataAccessException", 400, PositionTrimmed),
        ("ResourceNotFoundException", 400, StreamNotFound),
        ("AccessDeniedException", 400, SourceUnavailable),
        ("InternalFailure", 500, SourceUnavailable),
        ("ServiceUnavailable", 503, SourceUnavailable),
    ],
)
async def test_errors_map_as_on_the_full_path(
    moto_url: str, proxy: FaultProxy, code: str, status: int, expected: type[SourceError]
) -> None:
    """A known error becomes the full path's SourceError, with no second call."""
    stream = unique("lean-err")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
    factory = ClientFactory(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)
    try:
        source = await factory.client("kinesis", purpose="source")
        api = kinesis.KinesisStreamApi(
            source, stream_arn=stream_arn(stream), region=REGION, identity_arn="arn:x"
        )
        assert api._lean is not None
        iterator = await kinesis_iterator(moto_url, stream)
        errors = []
        for lean in (True, False):  # the same fault, lean then full
            api._lean = api._lean if lean else None
            proxy.fail("GetRecords", code=code, status=status)
            with pytest.raises(SourceError) as raised:
                await api.get_records(iterator)
            errors.append(raised.value)
        assert [type(e) for e in errors] == [expected, expected]
        assert str(errors[0]) == str(errors[1])
        assert proxy.calls("Kinesis_20131202.GetRecords") == []  # nothing forwarded
    finally:
        await factory.aclose()


async def test_a_dropped_connection_is_source_unavailable(moto_url: str, proxy: FaultProxy) -> None:
    stream = unique("lean-drop")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
    factory = ClientFactory(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)
    try:
        source = await factory.client("kinesis", purpose="source")
        lean = LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS)
        assert lean is not None
        proxy.drop(operations="GetRecords", times=2)  # a fresh connection is tried once
        with pytest.raises(SourceUnavailable):
            await lean.call({"ShardIterator": await kinesis_iterator(moto_url, stream)})
        assert lean.fallbacks == 0
    finally:
        await factory.aclose()


async def test_an_unknown_error_code_falls_back_to_the_full_client(
    moto_url: str, proxy: FaultProxy
) -> None:
    stream = unique("lean-unknown")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
        await client.put_record(StreamName=stream, PartitionKey="k", Data=b"kept")
    factory = ClientFactory(region=REGION, endpoint_url=proxy.url, credentials=CREDENTIALS)
    try:
        source = await factory.client("kinesis", purpose="source")
        lean = LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS)
        assert lean is not None
        proxy.fail("GetRecords", code="BrandNewException", status=400)
        page = await lean.call({"ShardIterator": await kinesis_iterator(moto_url, stream)})
        assert [base64.b64decode(r["Data"]) for r in page["Records"]] == [b"kept"]
        assert lean.fallbacks == 1
        assert len(proxy.calls("Kinesis_20131202.GetRecords")) == 1  # the full client's
    finally:
        await factory.aclose()


class Scripted:
    """Answers GetRecords with canned (status, headers, body) answers while it has any, then
    forwards every request to moto."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.headers.append(dict(request.headers))
        if self.answers and request.headers.get("X-Amz-Target", "").endswith(".GetRecords"):
            status, headers, canned = self.answers.pop(0)
            if headers.get("Transfer-Encoding") == "chunked":
                response = web.StreamResponse(status=status)
                response.enable_chunked_encoding()
                await response.prepare(request)
                await response.write(canned)
                await response.write_eof()
                return response
            return web.Response(status=status, body=canned, headers=headers)
        forwarded = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.upstream + "/", data=body, headers=forwarded) as upstream,
        ):
            data = await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/json")
            return web.Response(status=upstream.status, body=data, headers={"Content-Type": kind})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"Content-Type": "text/html"}, b"<html>not json</html>"),
        (200, {"Content-Type": "application/x-amz-json-1.1"}, b'{"NextShardIterator": "x"}'),
        (200, {"Content-Type": "application/x-amz-json-1.1"}, b'{"Records": [{"Data": "eA=="}]}'),
        (200, {"Content-Type": "application/x-amz-json-1.1"}, b'{"Records": {"not": "a list"}}'),
        (200, {"Transfer-Encoding": "chunked"}, b'{"Records": []}'),
        (502, {"Content-Type": "text/plain"}, b"Bad Gateway"),
        (302, {"Location": "http://example.invalid/"}, b""),
    ],
    ids=["html", "no-records", "missing-fields", "wrong-type", "chunked", "502-text", "redirect"],
)
async def test_an_unknown_answer_falls_back_and_the_page_is_right(
    moto_url: str, answer: tuple[int, dict[str, str], bytes]
) -> None:
    stream = unique("lean-canned")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
        await client.put_record(StreamName=stream, PartitionKey="k", Data=b"right")
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
    assert [base64.b64decode(r["Data"]) for r in page["Records"]] == [b"right"]
    assert lean.fallbacks == 1


async def test_the_lean_request_is_signed_with_the_clients_current_credentials(
    moto_url: str,
) -> None:
    """Each call freezes the credentials botocore holds at that moment (a refresh is seen)."""
    from aiobotocore.credentials import AioRefreshableCredentials

    stream = unique("lean-creds")
    async with aws_client("kinesis", moto_url) as client:
        await create_stream(client, stream, 1)
    keys = (f"AKIDKEY{n}" for n in itertools.count())

    async def refresh() -> dict[str, Any]:
        # Inside botocore's advisory window (15 min): refreshed before every use.
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 720))
        return {"access_key": next(keys), "secret_key": "s", "token": "tok", "expiry_time": expiry}

    scripted = Scripted(moto_url)
    with ThreadedServer(scripted.app) as server:
        factory = ClientFactory(region=REGION, endpoint_url=server.url)
        factory._source_session._credentials = AioRefreshableCredentials.create_from_metadata(
            await refresh(), refresh, "test"
        )
        try:
            source = await factory.client("kinesis", purpose="source")
            lean = LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS)
            assert lean is not None
            iterator = await kinesis_iterator(moto_url, stream)
            for _ in range(2):
                await lean.call({"ShardIterator": iterator})
        finally:
            await factory.aclose()
    sent = [h["Authorization"].split("Credential=")[1].split("/")[0] for h in scripted.headers]
    assert len(sent) == 2
    assert sent[0] != sent[1]  # refreshed between the two calls, and each call saw it
    assert all(h["X-Amz-Security-Token"] == "tok" for h in scripted.headers)
    assert lean.fallbacks == 0


def test_off_switch_values() -> None:
    """POLLER_LEAN_READS=0 turns it off; a client that is not a source client never uses it."""
    from poller.aws.lean import lean_enabled

    assert lean_enabled({})
    assert not lean_enabled({"POLLER_LEAN_READS": "0"})
    assert not lean_enabled({"POLLER_LEAN_READS": "off"})
    assert lean_enabled({"POLLER_LEAN_READS": "1"})


async def test_lean_is_off_for_a_plain_client_and_with_the_switch(
    moto_url: str, clients: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aws_client("kinesis", moto_url) as plain:
        assert LeanCall.for_client(plain, "GetRecords", kinesis.RECORD_FIELDS) is None
    source = await clients.client("kinesis", purpose="source")
    assert LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS) is not None
    monkeypatch.setenv("POLLER_LEAN_READS", "0")
    assert LeanCall.for_client(source, "GetRecords", kinesis.RECORD_FIELDS) is None
