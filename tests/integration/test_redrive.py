"""``poller redrive`` end to end on moto: the service sends poison records to an SQS or S3
on-failure destination, the handler is fixed (its fail-flag file removed), and the command
re-delivers exactly those records, in order, then removes the failure records.

The service runs in the test's event loop with the file-sink handler (``tests/support/file_sink``),
which fails a batch holding a ``poison`` key while its flag file exists; ``poller redrive`` runs
as the operator runs it, ``python -m poller``, against the same config file. Expired records
get failure records written as the SQS destination writes them (records cannot be aged on moto).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.config import KinesisMapping, Settings, parse_settings
from poller.core.failure_record import failure_record
from poller.sources.kinesis import make_record_factory
from tests.integration.stream_errors_harness import (
    make_queue,
    queue_bodies,
    run_until_checkpoint,
    stream_with,
)
from tests.support import file_sink
from tests.support.aws import ACCOUNT, REGION, aws_client, stream_arn, unique
from tests.support.dynamodb_tables import Backend, make_table
from tests.support.process import run_cli, write_config
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"
#: Partition keys written, one record each; batches of 2 put each poison with its neighbour.
KEYS = ["k1", "poison", "k2", "k3", "k4", "poison"]


@pytest.fixture
def sink_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The file sink's environment, in this process (the service) and for the command."""
    env = file_sink.env(tmp_path / "sink.jsonl", fail_flag=tmp_path / "broken")
    (tmp_path / "broken").touch()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@dataclass
class Scenario:
    moto_url: str
    tmp: Path
    stream: str
    written: list[str]
    destination: str
    config_path: Path
    settings: Settings

    @property
    def sink(self) -> Path:
        return self.tmp / "sink.jsonl"

    def fix_handler(self) -> None:
        (self.tmp / "broken").unlink()

    def delivered_keys(self) -> list[tuple[str, str]]:
        return [(seq, key) for b in file_sink.read(str(self.sink)) for _, seq, key in b["records"]]

    async def poison(self) -> None:
        """Run the service, handler broken, until every record settled: each batch of 2
        holding a poison key failed and went to the destination, the others were delivered."""
        await run_until_checkpoint(self.settings, self.tmp / "c.db", self.written[-1])

    async def redrive(self, *args: str) -> tuple[int, str, str]:
        done = await anyio.to_thread.run_sync(
            lambda: run_cli("redrive", "--config", str(self.config_path), "--mapping", "m", *args)
        )
        return done.returncode, done.stdout, done.stderr


def config(
    moto_url: str, stream: str, tmp: Path, destination: str, **mapping: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "batch_size": 2,
        "maximum_retry_attempts": 0,
        "destination_config": {"on_failure": {"destination_arn": destination}},
        **mapping,
    }
    return service_config(
        moto_url,
        stream_mapping("m", stream_arn(stream), "tests.support.file_sink:handler", **fields),
        checkpoints={"path": str(tmp / "c.db")},
        logging={"level": "WARNING"},
    )


async def scenario(
    moto_url: str, tmp: Path, destination: str, keys: list[str] = KEYS, **mapping: Any
) -> Scenario:
    stream = unique("redrive")
    written = await stream_with(
        moto_url, stream, [(k, f"{k}-{i}".encode()) for i, k in enumerate(keys)]
    )
    raw = config(moto_url, stream, tmp, destination, **mapping)
    path = write_config(tmp / "poller.yaml", raw)
    return Scenario(moto_url, tmp, stream, written, destination, path, parse_settings(raw))


def live_checkpoints(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT * FROM checkpoints ORDER BY shard_id"))


def poison_batches(written: list[str]) -> list[tuple[str, str]]:
    """The records of the batches holding a poison key (batches of 2, in order)."""
    pairs = [list(zip(written[i : i + 2], KEYS[i : i + 2], strict=True)) for i in range(0, 6, 2)]
    return [r for pair in pairs if any(k == "poison" for _, k in pair) for r in pair]


async def queue_destination(moto_url: str) -> tuple[str, str]:
    return await make_queue(moto_url, unique("dlq"))


async def test_sqs_redrive_delivers_exactly_the_failed_records_in_order_then_nothing(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    url, arn = await queue_destination(moto_url)
    case = await scenario(moto_url, tmp_path, arn)
    await case.poison()
    assert len(await queue_bodies(moto_url, url)) == 2
    live = case.delivered_keys()
    assert [k for _, k in live] == ["k2", "k3"]
    checkpoints = live_checkpoints(tmp_path / "c.db")
    case.fix_handler()

    code, out, err = await case.redrive()

    assert code == 0, out + err
    assert live_checkpoints(tmp_path / "c.db") == checkpoints
    assert case.delivered_keys()[len(live) :] == poison_batches(case.written)
    assert await queue_bodies(moto_url, url) == []
    assert "failure records read: 2 (redriven 2, left in place 0" in out
    assert "records re-read: 4" in out
    assert "delivered: 4" in out
    # A second redrive finds nothing to do.
    code, out, err = await case.redrive()
    assert code == 0, out + err
    assert "failure records read: 0" in out
    assert len(case.delivered_keys()) == len(live) + 4


async def test_redrive_that_fails_again_leaves_the_failure_record(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    url, arn = await queue_destination(moto_url)
    case = await scenario(moto_url, tmp_path, arn)
    await case.poison()
    before = sorted(json.dumps(b, sort_keys=True) for b in await queue_bodies(moto_url, url))

    code, out, err = await case.redrive("--max-retries", "0")  # the handler is still broken

    assert code == 1, out + err
    assert "failed again 2" in out
    assert "failed: 4" in out
    after = sorted(json.dumps(b, sort_keys=True) for b in await queue_bodies(moto_url, url))
    assert after == before  # the same failure records, visible again at once


async def test_dry_run_changes_nothing(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    url, arn = await queue_destination(moto_url)
    case = await scenario(moto_url, tmp_path, arn)
    await case.poison()
    case.fix_handler()
    delivered = case.delivered_keys()

    code, out, err = await case.redrive("--dry-run")

    assert code == 0, out + err
    assert out.count("would deliver") == 2
    code, out, err = await case.redrive("--dry-run", "--limit", "1")
    assert code == 0, out + err
    assert out.count("would deliver") == 1
    assert case.delivered_keys() == delivered
    assert len(await queue_bodies(moto_url, url)) == 2


async def test_s3_redrive_uses_the_payload_and_moves_the_object(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    bucket = unique("failures")
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)
    case = await scenario(moto_url, tmp_path, f"arn:aws:s3:::{bucket}")
    await case.poison()
    live = case.delivered_keys()
    case.fix_handler()

    code, out, err = await case.redrive()

    assert code == 0, out + err
    assert case.delivered_keys()[len(live) :] == poison_batches(case.written)
    assert "(from S3 payloads: 4)" in out
    async with aws_client("s3", moto_url) as s3:
        keys = [o["Key"] for o in (await s3.list_objects_v2(Bucket=bucket)).get("Contents", [])]
    mapping = case.settings.mappings[0]
    assert isinstance(mapping, KinesisMapping)
    assert len(keys) == 2
    assert all(k.startswith(f"redriven/aws/lambda/{mapping.mapping_uuid}/") for k in keys)
    code, out, err = await case.redrive()
    assert (code, "failure records read: 0" in out) == (0, True), out + err


async def test_expired_and_malformed_records_are_reported_and_left_in_place(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    """A failure record older than the retention, one pointing at a shard that is gone, and a
    message that is not a failure record: each is reported and stays; --discard-expired then
    removes the expired ones only."""
    url, arn = await queue_destination(moto_url)
    case = await scenario(moto_url, tmp_path, arn, keys=["k1", "k2"])
    stream = stream_arn(case.stream)
    old = failure_body(stream, "shardId-000000000000", case.written, age=3 * 86400)
    gone = failure_body(stream, "shardId-000000000009", case.written, age=60)
    async with aws_client("sqs", moto_url) as sqs:
        for body in (old, gone, "not a failure record"):
            await sqs.send_message(QueueUrl=url, MessageBody=body)

    code, out, err = await case.redrive()

    assert code == 1, out + err
    assert re.search(
        r"EXPIRED .*first record arrived 3d 00h ago; the stream keeps records 1d 00h", out
    ), out
    assert re.search(r"EXPIRED   shardId-000000000009 .*no longer in the stream", out), out
    assert "MALFORMED" in out
    assert "not JSON" in out
    assert "expired: 2 failure record(s), 4 record(s)" in out
    assert len(await queue_bodies_raw(moto_url, url)) == 3
    assert file_sink.read(str(case.sink)) == []

    code, out, err = await case.redrive("--discard-expired")

    assert code == 1, out + err  # the malformed one stays
    assert "expired and discarded 2" in out
    bodies = await queue_bodies_raw(moto_url, url)
    assert bodies == ["not a failure record"]


def failure_body(stream: str, shard: str, written: list[str], *, age: float) -> str:
    """A failure record as the SQS destination writes it, for records ``age`` seconds old."""
    convert = make_record_factory(
        shard_id=shard,
        stream_arn=stream,
        region=REGION,
        identity_arn=f"arn:aws:iam::{ACCOUNT}:role/x",
    )
    arrival = time.time() - age
    records = [
        convert(
            {
                "SequenceNumber": s,
                "PartitionKey": "k",
                "Data": "",
                "ApproximateArrivalTimestamp": arrival,
            }
        )
        for s in written
    ]
    return json.dumps(
        failure_record(
            kind="kinesis",
            condition="RetryAttemptsExhausted",
            approximate_invoke_count=1,
            request_id="r",
            function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn",
            last_result=None,
            shard_id=shard,
            stream_arn=stream,
            records=records,
            now=arrival + 1,
        )
    )


async def queue_bodies_raw(moto_url: str, url: str) -> list[str]:
    async with aws_client("sqs", moto_url) as sqs:
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
    return [m["Body"] for m in response.get("Messages", [])]


async def test_bad_input_gets_one_clear_line(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    _, arn = await queue_destination(moto_url)
    case = await scenario(moto_url, tmp_path, arn, keys=["k1"])
    unknown = await anyio.to_thread.run_sync(
        lambda: run_cli("redrive", "--config", str(case.config_path), "--mapping", "nope")
    )
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "poller redrive: no mapping named 'nope' in the configuration (mappings: m)"
    )
    missing = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{unique('absent')}"
    code, _, err = await case.redrive("--source", missing)
    assert code == 2
    assert err.strip().startswith(f"poller redrive: cannot read failure records from '{missing}'")
    bucket = f"arn:aws:s3:::{unique('absent')}"
    code, _, err = await case.redrive("--source", bucket)
    assert code == 2
    assert f"'{bucket}'" in err
    code, _, err = await case.redrive("--target-override", "not a target!")
    assert code == 2
    assert "--target-override 'not a target!'" in err


def ddb_sink(event: dict[str, Any], context: Any) -> None:
    """The file sink for DynamoDB Streams events: fails a batch changing the item ``poison``
    while the fail flag exists, else appends (sequence number, item id) per record."""
    flag = os.environ["POLLER_TEST_FAIL_FLAG"]
    ids = [r["dynamodb"]["Keys"]["id"]["S"] for r in event["Records"]]
    if os.path.exists(flag) and "poison" in ids:
        raise RuntimeError("poison record")
    records = [
        [r["dynamodb"]["SequenceNumber"], i] for r, i in zip(event["Records"], ids, strict=True)
    ]
    with open(os.environ["POLLER_TEST_SINK"], "a", encoding="utf-8") as out:
        out.write(json.dumps({"records": records}) + "\n")


async def test_dynamodb_streams_redrive_reads_the_pointed_records_again(
    moto_url: str, tmp_path: Path, sink_env: dict[str, str]
) -> None:
    url, arn = await queue_destination(moto_url)
    table, stream = await make_table(Backend.moto(moto_url), "NEW_AND_OLD_IMAGES")
    async with aws_client("dynamodb", moto_url) as ddb:
        for item in ("a", "poison", "b", "c"):
            await ddb.put_item(TableName=table, Item={"id": {"S": item}})
    raw = service_config(
        moto_url,
        stream_mapping(
            "m",
            stream,
            "tests.integration.test_redrive:ddb_sink",
            batch_size=2,
            maximum_retry_attempts=0,
            destination_config={"on_failure": {"destination_arn": arn}},
        ),
        checkpoints={"path": str(tmp_path / "c.db")},
        logging={"level": "WARNING"},
    )
    path = write_config(tmp_path / "poller.yaml", raw)
    sink = tmp_path / "sink.jsonl"

    def delivered() -> list[str]:
        return [i for b in file_sink.read(str(sink)) for _, i in b["records"]]

    async with running(parse_settings(raw)):
        await wait_until(lambda: delivered() == ["b", "c"], 30, "b and c delivered")
        await wait_until(lambda: queue_bodies(moto_url, url), 30, "the failure record")
    (failure,) = await queue_bodies(moto_url, url)
    assert failure["DDBStreamBatchInfo"]["batchSize"] == 2
    (tmp_path / "broken").unlink()

    done = await anyio.to_thread.run_sync(
        lambda: run_cli("redrive", "--config", str(path), "--mapping", "m")
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert delivered() == ["b", "c", "a", "poison"]
    assert await queue_bodies(moto_url, url) == []
