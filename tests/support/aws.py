"""AWS emulator helpers for tests: moto's server and Kinesis stream utilities.

Tests talk to moto over real HTTP through aiobotocore, exactly as the service does; nothing is
patched. Each test names its own streams (a uuid suffix), so one server serves the session.
moto loses records under concurrent puts to one shard, so every put here is sequential.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from aiobotocore.session import get_session

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}

T = TypeVar("T")


#: moto's DynamoDB writes that read, check a condition and write.
_DYNAMODB_WRITES: tuple[str, ...] = (
    "put_item",
    "update_item",
    "delete_item",
    "batch_write_item",
    "transact_write_items",
    "execute_transaction",
)


def make_moto_dynamodb_writes_atomic() -> None:
    """Give moto's DynamoDB the atomic conditional writes DynamoDB guarantees (TEST-ONLY).

    moto's server handles requests on several threads, and its DynamoDB backend checks a
    ``ConditionExpression`` and then writes without a lock: two concurrent conditional writes
    to one item can both succeed, which DynamoDB never allows and the lease table's fencing
    relies on. One re-entrant lock around each write method restores DynamoDB's rule. This
    changes the emulator's server side only; every client still talks HTTP to it. Idempotent.
    """
    import functools
    import threading

    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_poller_atomic", False):
        return
    lock = threading.RLock()

    def locked(method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return call

    for name in _DYNAMODB_WRITES:
        setattr(DynamoDBBackend, name, locked(getattr(DynamoDBBackend, name)))
    DynamoDBBackend._poller_atomic = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's threaded server on a free loopback port; yield its URL."""
    from moto.server import ThreadedMotoServer

    make_moto_dynamodb_writes_atomic()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def aws_client(service: str, endpoint_url: str, config: Any = None) -> AsyncIterator[Any]:
    """An aiobotocore client against the emulator (botocore's defaults unless ``config``)."""
    async with get_session().create_client(
        service, region_name=REGION, endpoint_url=endpoint_url, config=config, **CREDENTIALS
    ) as client:
        yield client


def unique(prefix: str) -> str:
    """A resource name unique to this test."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def stream_arn(name: str) -> str:
    return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}"


async def create_stream(kinesis: Any, name: str, shards: int) -> list[dict[str, Any]]:
    """Create a stream, wait until it is active, and return its shards in order."""
    await kinesis.create_stream(StreamName=name, ShardCount=shards)
    await kinesis.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )
    listing = await kinesis.list_shards(StreamName=name, MaxResults=1000)
    shards_found: list[dict[str, Any]] = listing["Shards"]
    return shards_found


def hash_key_for(shard: dict[str, Any]) -> str:
    """An explicit hash key that routes a record to ``shard``."""
    return str(shard["HashKeyRange"]["StartingHashKey"])


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size``, the last one possibly shorter (a batch API's limit)."""
    rest = iter(items)
    while chunk := list(itertools.islice(rest, size)):
        yield chunk


def _entry(key: str, data: bytes, hash_key: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"PartitionKey": key, "Data": data}
    if hash_key is not None:
        entry["ExplicitHashKey"] = hash_key
    return entry


async def put_records(
    kinesis: Any, stream: str, records: Iterable[tuple[str, bytes, str | None]]
) -> list[tuple[str, str]]:
    """Put (partition key, data, explicit hash key) records sequentially in batches of 500.

    Returns (shard id, sequence number) per record, in input order. Raises if any failed.
    """
    results: list[tuple[str, str]] = []
    for batch in chunked(records, 500):
        response = await kinesis.put_records(
            StreamName=stream, Records=[_entry(*record) for record in batch]
        )
        assert response["FailedRecordCount"] == 0, response
        results.extend((r["ShardId"], r["SequenceNumber"]) for r in response["Records"])
    return results


async def stream_holding(
    endpoint_url: str, name: str, per_shard: Sequence[Iterable[tuple[str, bytes]]]
) -> list[list[tuple[str, str]]]:
    """Create a stream with one shard per item of ``per_shard`` and put each item's
    (partition key, data) records into its shard (by explicit hash key), shard after shard;
    return the (shard id, sequence number) of what was written, per shard."""
    async with aws_client("kinesis", endpoint_url) as kinesis:
        shards = await create_stream(kinesis, name, len(per_shard))
        return [
            await put_records(kinesis, name, ((k, d, hash_key_for(shard)) for k, d in records))
            for shard, records in zip(shards, per_shard, strict=True)
        ]


@contextlib.contextmanager
def moto_server_process(*, speed_up_sqs: bool = False) -> Iterator[str]:
    """moto's server in a process of its own, for tests that run several service processes
    (and for the benchmarks): it then competes with neither the test process's threads nor its
    GIL. ``speed_up_sqs`` applies the test-only SQS patch of ``tests/support/sqs.py`` first."""
    import sys

    from tests.support.process import REPO, free_port, spawned

    port = free_port()
    speed_up = "from tests.support.sqs import speed_up_moto_sqs; speed_up_moto_sqs();"
    boot = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.support.aws import make_moto_dynamodb_writes_atomic;"
        "make_moto_dynamodb_writes_atomic();"
        f"{speed_up if speed_up_sqs else ''}"
        "from moto.server import main; main(['-H', '127.0.0.1', '-p', sys.argv[2]])"
    )
    command = [sys.executable, "-c", boot, str(REPO), str(port)]
    with spawned(command, port, "moto's server") as url:
        yield url
