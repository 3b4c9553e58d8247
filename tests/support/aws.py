"""AWS emulator helpers for tests: moto's server and Kinesis stream utilities.

Tests talk to moto over real HTTP through aiobotocore, exactly as the service does; nothing is
patched. Each test names its own streams (a uuid suffix), so one server serves the session.
moto loses records under concurrent puts to one shard, so every put here is sequential.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from aiobotocore.session import get_session

REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's threaded server on a free loopback port; yield its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def aws_client(service: str, endpoint_url: str) -> AsyncIterator[Any]:
    """A plain aiobotocore client against the emulator."""
    async with get_session().create_client(
        service, region_name=REGION, endpoint_url=endpoint_url, **CREDENTIALS
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
    return shard["HashKeyRange"]["StartingHashKey"]


async def put_records(
    kinesis: Any, stream: str, records: Iterable[tuple[str, bytes, str | None]]
) -> list[tuple[str, str]]:
    """Put (partition key, data, explicit hash key) records sequentially in batches of 500.

    Returns (shard id, sequence number) per record, in input order. Raises if any failed.
    """
    batch: list[dict[str, Any]] = []
    results: list[tuple[str, str]] = []

    async def flush() -> None:
        response = await kinesis.put_records(StreamName=stream, Records=batch)
        assert response["FailedRecordCount"] == 0, response
        results.extend((r["ShardId"], r["SequenceNumber"]) for r in response["Records"])
        batch.clear()

    for key, data, hash_key in records:
        entry: dict[str, Any] = {"PartitionKey": key, "Data": data}
        if hash_key is not None:
            entry["ExplicitHashKey"] = hash_key
        batch.append(entry)
        if len(batch) == 500:
            await flush()
    if batch:
        await flush()
    return results


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    """moto's server in a process of its own, for tests that run several service processes:
    it then competes with neither the test process's threads nor its GIL."""
    import subprocess
    import sys

    from tests.support.process import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "moto's server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
