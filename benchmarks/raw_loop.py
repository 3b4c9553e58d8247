"""The baseline of the Kinesis benchmark: a plain aiobotocore GetRecords loop, nothing else.

Usage: raw_loop.py ENDPOINT STREAM RECORDS. Reads every shard from TRIM_HORIZON with
GetRecords(Limit=10000), one task per shard, until RECORDS records were read, and prints JSON
with its wall time, its own CPU time and its peak RSS, measured from just before its client is
created (the window the service is measured over: its clock starts before its clients exist).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session


async def read_shard(client: Any, stream: str, shard_id: str, counts: dict[str, int]) -> None:
    start = await client.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )
    it = start["ShardIterator"]
    while it:
        response = await client.get_records(ShardIterator=it, Limit=10_000)
        counts[shard_id] += len(response["Records"])
        if not response["Records"] and not response.get("MillisBehindLatest"):
            return
        it = response.get("NextShardIterator")


async def main(url: str, stream: str, expected: int) -> None:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=100)
    async with get_session().create_client(
        "kinesis",
        region_name="us-east-1",
        endpoint_url=url,
        config=config,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ) as client:
        shards = (await client.list_shards(StreamName=stream))["Shards"]
        counts = {s["ShardId"]: 0 for s in shards}
        await asyncio.gather(*(read_shard(client, stream, s["ShardId"], counts) for s in shards))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    total = sum(counts.values())
    assert total == expected, f"read {total} records, expected {expected}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "records": total, "max_rss_mb": rss}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
