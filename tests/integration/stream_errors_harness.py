"""Helpers for the stream tests that follow records to their settlement: one-shard streams,
SQS queues on moto as failure destinations, and the checkpoint stored in SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from poller.config import Settings
from tests.support.aws import ACCOUNT, REGION, aws_client, stream_holding
from tests.support.service import run_until
from tests.support.waiting import wait_until


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
    [written] = await stream_holding(moto_url, stream, [records])
    return [seq for _, seq in written]


async def wait_for_messages(moto_url: str, url: str, limit: float = 30) -> list[dict[str, Any]]:
    """Poll the queue until it holds a message; fail at the deadline."""
    found: list[dict[str, Any]] = await wait_until(
        lambda: queue_bodies(moto_url, url), limit, f"a message in {url}", interval=0.1
    )
    return found


def checkpoint_of(db: Path, mapping: str = "m") -> str | None:
    """The stored checkpoint of the mapping's only shard, read straight from SQLite."""
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute(
                "SELECT sequence_number FROM checkpoints WHERE mapping = ?", (mapping,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # the service created the file and has not yet made its schema
            raise
    return None if row is None else str(row[0])


async def run_until_checkpoint(
    settings: Settings, db: Path, sequence: str, limit: float = 30, what: str = "the record settled"
) -> None:
    """Run the service until the checkpoint of its mapping ``m`` stored in ``db`` is
    ``sequence``, then stop it."""
    await run_until(settings, lambda: checkpoint_of(db) == sequence, limit, what)
