"""Hostile review 15r: ``poller rewind --to-sequence`` naming a shard that has no lease yet.

The shard exists in the stream (the command opened an iterator at the sequence number), but
no replica has discovered it, so there is no lease to write the request on. The command says
"not moved", and yet exits 0, the status of "applied everywhere": a script that checks the
status believes the named shard was rewound. Nothing was moved, so the exit must say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.types import Checkpoint
from tests.integration.test_rewind import put, rewind
from tests.support.aws import aws_client, moto_server_process
from tests.support.replicas import leases, new_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server_process() as url:
        yield url


def test_a_named_shard_without_a_lease_is_not_reported_as_rewound(
    tmp_path: Path, moto_url: str
) -> None:
    fleet, stream, table_name, shards = new_fleet(tmp_path, moto_url, "nolease")
    leased, unleased = shards[0]["ShardId"], shards[1]["ShardId"]

    async def one_lease() -> None:
        async with aws_client("dynamodb", moto_url) as client:
            table = DynamoDBLeaseTable(client, table_name)
            await table.ensure_table()
            await table.create("fleet", leased, checkpoint=Checkpoint(sequence_number="1"))

    anyio.run(one_lease)
    ((_, sequence),) = put(moto_url, stream, [shards[1]], 1)
    result = rewind(fleet.config, "--mapping", "fleet", "--to-sequence", f"{unleased}={sequence}")
    assert "not moved" in result.stdout, result.stdout + result.stderr
    assert [lease.shard_id for lease in leases(moto_url, table_name)] == [leased]
    assert result.returncode != 0, result.stdout + result.stderr
