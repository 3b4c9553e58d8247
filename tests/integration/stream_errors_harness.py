"""Helpers for the stream error-handling tests: destinations on moto, functions, checkpoints."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio

from tests.support.aws import ACCOUNT, REGION, aws_client, create_stream, put_records


async def make_queue(moto_url: str, name: str) -> tuple[str, str]:
    """Create an SQS queue; return (url, arn)."""
    async with aws_client("sqs", moto_url) as sqs:
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
    return url, f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


async def queue_bodies(moto_url: str, url: str) -> list[dict[str, Any]]:
    """Every message now in the queue, parsed, without deleting (short visibility)."""
    async with aws_client("sqs", moto_url) as sqs:
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
    return [json.loads(m["Body"]) for m in response.get("Messages", [])]


async def stream_with(moto_url: str, stream: str, records: list[tuple[str, bytes]]) -> list[str]:
    """A one-shard stream holding ``records`` (partition key, data); returns sequence numbers."""
    async with aws_client("kinesis", moto_url) as kinesis:
        await create_stream(kinesis, stream, 1)
        written = await put_records(kinesis, stream, ((k, d, None) for k, d in records))
    return [seq for _, seq in written]


async def wait_for_messages(moto_url: str, url: str, limit: float = 30) -> list[dict[str, Any]]:
    """Poll the queue until it holds a message; fail at the deadline."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = await queue_bodies(moto_url, url)
        if found:
            return found
        await anyio.sleep(0.1)
    raise AssertionError(f"no message arrived in {url} within {limit}s")


def checkpoint_of(db: Path, mapping: str = "m") -> str | None:
    """The stored checkpoint of the mapping's only shard, read straight from SQLite."""
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT sequence_number FROM checkpoints WHERE mapping = ?", (mapping,)
        ).fetchone()
    return None if row is None else str(row[0])
