"""Hostile review 14: enhanced fan-out holds one socket per subscribed shard for the whole
subscription (5 minutes on AWS), so a replica needs a file descriptor per shard it reads, on
top of everything else it opens. Polling never needs more than its pool (100 connections); the
subscribe client's pool is sized for 100,000 shards, but the process's soft RLIMIT_NOFILE is
often 1024 (systemd's default, containerd 2's for containers) while the hard limit allows far
more. poller never raises its soft limit, so a replica with more shards than that fails every
socket it opens past the limit: the shards beyond it are stuck retrying (`EndpointConnectionError`)
until another subscription ends, and so is every other connection the process needs (Lambda
Invoke, the lease table).

Scaled down here: the soft limit is set to the descriptors the test process already uses plus
30, the hard limit left as it is, and the service reads 48 shards through a consumer.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinesis_harness import delivered, kinesis_settings
from tests.support import recorder
from tests.support.aws import (
    aws_client,
    create_stream,
    hash_key_for,
    put_records,
    stream_arn,
    unique,
)
from tests.support.ministack import active_consumer, ministack, ministack_available
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(ministack_available() is not None, reason=str(ministack_available())),
]

SHARDS = 48
#: Descriptors left free under the soft limit: fewer than the shards' subscriptions.
HEADROOM = 30


@pytest.fixture(scope="module")
def ms_url() -> Iterator[str]:
    with ministack() as url:
        yield url


@pytest.fixture
def low_soft_fd_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    if hard != resource.RLIM_INFINITY and hard < in_use + SHARDS * 4:
        pytest.skip(f"the hard limit ({hard}) leaves no room to raise the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + HEADROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_more_shards_than_the_soft_fd_limit_all_deliver(
    ms_url: str, tmp_path: Path, low_soft_fd_limit: None
) -> None:
    stream = unique("efo")
    async with aws_client("kinesis", ms_url) as kinesis:
        shards: list[dict[str, Any]] = await create_stream(kinesis, stream, SHARDS)
        consumer = await active_consumer(kinesis, stream_arn(stream), unique("c"))
        settings = kinesis_settings(
            endpoint_url=ms_url, stream=stream, db=tmp_path / "f.db", event_source_arn=consumer
        )
        try:
            async with running(settings):
                records = (
                    (f"k-{i}", b"x", hash_key_for(shards[i % SHARDS])) for i in range(SHARDS)
                )
                written = await put_records(kinesis, stream, records)
                await wait_until(
                    lambda: len({shard for shard, _ in delivered(stream)}) == SHARDS,
                    20,
                    f"every one of the {SHARDS} shards to deliver",
                )
            assert sorted(delivered(stream)) == sorted(written)
        finally:
            recorder.clear(stream_arn(stream))
