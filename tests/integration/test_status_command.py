"""``poller status`` against moto: checkpoints and their age from SQLite (service running or
stopped) and from the lease table (with owners), iterator ages (behind and caught up), failure
records waiting in SQS and S3 destinations and in an SQS source's dead-letter queue, the JSON
document's keys, and what it shows and returns when a source, the lease table or a destination
is missing, down or silent (tests/support/fault_proxy.py)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.checkpoints.dynamodb import DynamoDBLeaseTable
from poller.checkpoints.sqlite import SqliteCheckpointStore
from poller.config import parse_settings
from poller.status import print_status
from poller.types import SHARD_END, Checkpoint
from tests.support import recorder
from tests.support.aws import (
    ACCOUNT,
    REGION,
    aws_client,
    hash_key_for,
    put_records,
    stream_arn,
    stream_holding,
    unique,
)
from tests.support.dynamodb_tables import Backend, make_table
from tests.support.fault_proxy import FaultProxy
from tests.support.process import run_cli, write_config
from tests.support.service import running
from tests.support.service_config import service_config, stream_mapping
from tests.support.sqs import create_queue
from tests.support.status_keys import FAILURE_KEYS, MAPPING_KEYS, SHARD_KEYS
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

HANDLER = "tests.support.recorder:record"
SHARD0, SHARD1 = "shardId-000000000000", "shardId-000000000001"


async def status_of(config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """Run ``poller status --json`` in this process; its exit status and parsed document."""
    capsys.readouterr()
    code = await print_status(parse_settings(config), as_json=True)
    return code, json.loads(capsys.readouterr().out)


async def text_of(config: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = await print_status(parse_settings(config))
    return code, capsys.readouterr().out


async def cli_status(config: dict[str, Any], tmp_path: Path, *flags: str) -> tuple[int, str]:
    """Run ``python -m poller status`` on ``config``; its exit status and output. Used while a
    service runs in this process: its log lines would mix with output captured here."""
    path = write_config(tmp_path / "poller.yaml", config)
    result = await anyio.to_thread.run_sync(
        lambda: run_cli("status", "--config", str(path), *flags, timeout=60)
    )
    return result.returncode, result.stdout


def mapping_of(document: Any, name: str) -> dict[str, Any]:
    (found,) = [m for m in document["mappings"] if m["name"] == name]
    return dict(found)


def shards_of(document: Any, name: str) -> dict[str, dict[str, Any]]:
    return {row["shard_id"]: row for row in mapping_of(document, name)["shards"]}


def sqlite_checkpoints(db: Path, mapping: str) -> dict[str, str]:
    """The stored checkpoints of ``mapping``, read straight from the database."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute(
                "SELECT shard_id, sequence_number FROM checkpoints WHERE mapping = ?", (mapping,)
            ).fetchall()
        except sqlite3.OperationalError:
            return {}  # the schema is not made yet
    return {str(shard): str(seq) for shard, seq in rows}


async def two_shard_stream(
    moto_url: str, name: str, per_shard: list[list[str]]
) -> list[list[tuple[str, str]]]:
    """A stream with one shard per list, each holding records with those partition keys."""
    return await stream_holding(moto_url, name, [[(k, b"{}") for k in keys] for keys in per_shard])


async def put_into(moto_url: str, name: str, shard_index: int, keys: list[str]) -> None:
    async with aws_client("kinesis", moto_url) as kinesis:
        listing = await kinesis.list_shards(StreamName=name)
        hash_key = hash_key_for(listing["Shards"][shard_index])
        await put_records(kinesis, name, [(k, b"{}", hash_key) for k in keys])


def sqlite_config(moto_url: str, db: Path, *mappings: dict[str, Any]) -> dict[str, Any]:
    config = service_config(
        moto_url,
        mappings[0],
        checkpoints={"path": str(db)},
        observability={"enabled": False},
        shutdown={"drain_timeout_seconds": 5},
    )
    config["mappings"] += list(mappings[1:])
    return config


# -- checkpoints and iterator ages ------------------------------------------------------------


async def test_sqlite_backend_while_the_service_runs_and_after_it_stops(
    moto_url: str, tmp_path: Path, recorded_streams: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Read-only from the running service's WAL database: owners ``-``, checkpoints at the last
    records, ages known, both shards caught up (0). With the service stopped and two records
    added to shard 0, that shard's iterator age is the age of its first unread record."""
    name, db = unique("status"), tmp_path / "c.db"
    arn = stream_arn(name)
    recorded_streams.append(arn)
    written = await two_shard_stream(moto_url, name, [["a", "b"], ["c"]])
    last = {shard: seq for per_shard in written for shard, seq in per_shard}
    config = sqlite_config(moto_url, db, stream_mapping("m", arn, HANDLER))

    async with running(parse_settings(config)):
        await wait_until(lambda: sqlite_checkpoints(db, "m") == last, 30, "both shards settled")
        code, output = await cli_status(config, tmp_path, "--json")
        _, text = await cli_status(config, tmp_path)

    assert code == 0
    document = json.loads(output)
    assert document["backend"] == "sqlite"
    assert mapping_of(document, "m")["state"] == "up"
    shards = shards_of(document, "m")
    assert set(shards) == {SHARD0, SHARD1}
    for shard_id, row in shards.items():
        assert row["owner"] is None
        assert row["checkpoint"] == last[shard_id]
        assert 0 <= row["checkpoint_age_seconds"] < 60
        assert row["iterator_age_seconds"] == 0
        assert row["unread_record_age_seconds"] is None
        assert row["iterator_error"] is None
    shard_lines = [line.split() for line in text.splitlines() if "shardId-" in line]
    assert [line[:4] for line in shard_lines] == [
        ["m", SHARD0, "-", last[SHARD0]],
        ["m", SHARD1, "-", last[SHARD1]],
    ]
    assert "COUNTER" not in text  # no leases with SQLite

    await put_into(moto_url, name, 0, ["d", "e"])
    code, document = await status_of(config, capsys)
    assert code == 0
    shards = shards_of(document, "m")
    assert shards[SHARD0]["checkpoint"] == last[SHARD0]  # status never moves a checkpoint
    assert shards[SHARD0]["iterator_age_seconds"] > 0
    assert shards[SHARD0]["unread_record_age_seconds"] == shards[SHARD0]["iterator_age_seconds"]
    assert shards[SHARD1]["iterator_age_seconds"] == 0
    assert sqlite_checkpoints(db, "m") == last


async def test_lease_backend_shows_owners_and_a_blocked_shard_behind(
    moto_url: str, tmp_path: Path, recorded_streams: list[str]
) -> None:
    """A running replica owns both shards; shard 0 is stuck retrying a poison record (its
    checkpoint before it), so its iterator age is positive; shard 1 has caught up (0)."""
    name, table_name = unique("status"), unique("leases")
    arn = stream_arn(name)
    recorded_streams.append(arn)
    written = await two_shard_stream(moto_url, name, [["ok", "poison"], ["fine"]])
    attempts = recorder.fail_poison(arn)
    config = service_config(
        moto_url,
        stream_mapping("m", arn, HANDLER, batch_size=1),
        checkpoints={"backend": "dynamodb", "table": table_name},
        observability={"enabled": False},
        shutdown={"drain_timeout_seconds": 5},
    )
    expected = {SHARD0: written[0][0][1], SHARD1: written[1][0][1]}

    async with aws_client("dynamodb", moto_url) as dynamodb:
        table = DynamoDBLeaseTable(dynamodb, table_name)

        async def settled() -> bool:
            leases = await table.list_leases("m")
            found = {
                lease.shard_id: lease.checkpoint.sequence_number
                for lease in leases
                if lease.checkpoint is not None
            }
            return found == expected and len(attempts) >= 2

        async with running(parse_settings(config)):
            await wait_until(settled, 30, "shard 1 settled, shard 0 stuck on the poison")
            code, output = await cli_status(config, tmp_path, "--json")
            _, text = await cli_status(config, tmp_path)
            recorder.BEHAVIOUR.pop(arn)  # let the retry succeed, so that shutdown is quick
            owners = {lease.shard_id: lease.owner for lease in await table.list_leases("m")}

    assert code == 0
    document = json.loads(output)
    assert document["backend"] == "dynamodb"
    shards = shards_of(document, "m")
    for shard_id, row in shards.items():
        assert row["owner"] is not None
        assert row["owner"] == owners[shard_id]
        assert row["checkpoint"] == expected[shard_id]
        assert isinstance(row["counter"], int)
        assert row["checkpoint_age_seconds"] is not None
    assert shards[SHARD0]["iterator_age_seconds"] > 0
    assert shards[SHARD1]["iterator_age_seconds"] == 0
    header = text.split("\n\n")[2].splitlines()[0].split()
    assert header[:3] == ["MAPPING", "SHARD", "OWNER"]
    assert "COUNTER" in header
    for line in text.splitlines():
        if SHARD0 in line:
            assert owners[SHARD0] in line.split()


async def test_dynamodb_stream_iterator_age_behind_then_caught_up(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DynamoDB stream: with no checkpoint (TRIM_HORIZON) the first change is unread and the
    age grows above 0; once the service has read everything, the age is 0."""
    table, arn = await make_table(Backend.moto(moto_url), "NEW_IMAGE")
    db = tmp_path / "c.db"
    async with aws_client("dynamodb", moto_url) as ddb:
        await ddb.put_item(TableName=table, Item={"id": {"S": "a"}})
    config = sqlite_config(moto_url, db, stream_mapping("t", arn, HANDLER))

    async def behind() -> Any:
        code, document = await status_of(config, capsys)
        rows = mapping_of(document, "t")["shards"]
        return (code, rows) if rows and rows[0]["iterator_age_seconds"] > 0 else None

    code, rows = await wait_until(behind, 10, "an iterator age above 0", interval=0.2)
    assert code == 0
    assert rows[0]["checkpoint"] is None
    assert rows[0]["millis_behind_latest"] is None

    try:
        async with running(parse_settings(config)):
            await wait_until(lambda: sqlite_checkpoints(db, "t"), 30, "the change settled")
    finally:
        recorder.clear(arn)
    code, document = await status_of(config, capsys)
    assert code == 0
    assert [row["iterator_age_seconds"] for row in mapping_of(document, "t")["shards"]] == [0]


# -- failure records waiting --------------------------------------------------------------------


async def test_failures_waiting_in_sqs_and_s3_destinations(
    moto_url: str, tmp_path: Path, recorded_streams: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A poison record is given up on by four mappings of one stream: its failure record waits
    in the SQS queue (1) and in the bucket under the mapping's own prefix (1, not counting other
    prefixes); SNS keeps nothing to count; a mapping without a destination says so."""
    name, db = unique("status"), tmp_path / "c.db"
    arn = stream_arn(name)
    recorded_streams.append(arn)
    [written] = await two_shard_stream(moto_url, name, [["ok", "poison", "fine"]])
    recorder.fail_poison(arn)
    queue, bucket, topic = unique("failures"), unique("failures"), unique("failures")
    async with (
        aws_client("sqs", moto_url) as sqs,
        aws_client("s3", moto_url) as s3,
        aws_client("sns", moto_url) as sns,
    ):
        await create_queue(sqs, queue)
        await s3.create_bucket(Bucket=bucket)
        topic_arn = (await sns.create_topic(Name=topic))["TopicArn"]
        for key in ("aws/lambda/another-mapping/x", "redriven/aws/lambda/y"):
            await s3.put_object(Bucket=bucket, Key=key, Body=b"{}")

    def routed(mapping: str, destination: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"batch_size": 1, "maximum_retry_attempts": 0}
        if destination is not None:
            fields["destination_config"] = {"on_failure": {"destination_arn": destination}}
        return stream_mapping(mapping, arn, HANDLER, **fields)

    config = sqlite_config(
        moto_url,
        db,
        routed("to-sqs", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"),
        routed("to-s3", f"arn:aws:s3:::{bucket}"),
        routed("to-sns", topic_arn),
        routed("plain", None),
    )
    last = {SHARD0: written[-1][1]}
    names = ("to-sqs", "to-s3", "to-sns", "plain")

    def all_settled() -> bool:
        return all(sqlite_checkpoints(db, m) == last for m in names)

    async with running(parse_settings(config)):
        await wait_until(all_settled, 30, "every mapping past the poison record")
    code, document = await status_of(config, capsys)
    _, text = await text_of(config, capsys)

    assert code == 0
    to_sqs = mapping_of(document, "to-sqs")["failures_waiting"]
    assert (to_sqs["kind"], to_sqs["count"], to_sqs["in_flight"]) == ("sqs", 1, 0)
    to_s3 = mapping_of(document, "to-s3")["failures_waiting"]
    assert (to_s3["kind"], to_s3["count"], to_s3["capped"]) == ("s3", 1, False)
    to_sns = mapping_of(document, "to-sns")["failures_waiting"]
    assert (to_sns["kind"], to_sns["count"]) == ("sns", None)
    assert "SNS keeps nothing" in to_sns["note"]
    plain = mapping_of(document, "plain")["failures_waiting"]
    assert (plain["destination"], plain["count"], plain["error"]) == (None, None, None)
    failures_table = text.split("\n\n")[1].splitlines()
    assert failures_table[0].split()[:3] == ["MAPPING", "FAILURES", "WAITING"]
    waiting = {line.split()[0]: line.split()[1] for line in failures_table[1:]}
    assert waiting == {"to-sqs": "1", "to-s3": "1", "to-sns": "n/a", "plain": "-"}


async def test_sqs_source_shows_its_dead_letter_queue(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SQS mapping's failures are its queue's dead-letter queue (RedrivePolicy); a queue
    without one says so. SQS mappings have no shards."""
    dlq, with_dlq, without = unique("dlq"), unique("jobs"), unique("jobs")
    async with aws_client("sqs", moto_url) as sqs:
        dlq_url = await create_queue(sqs, dlq)
        dlq_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{dlq}"
        await create_queue(sqs, with_dlq, dlq_arn=dlq_arn)
        await create_queue(sqs, without)
        for body in ("1", "2"):
            await sqs.send_message(QueueUrl=dlq_url, MessageBody=body)

    def sqs_mapping(mapping: str, queue: str) -> dict[str, Any]:
        return {
            "name": mapping,
            "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
            "target": {"type": "python", "handler": "tests.support.sqs:handler"},
        }

    config = sqlite_config(
        moto_url, tmp_path / "c.db", sqs_mapping("dlq", with_dlq), sqs_mapping("bare", without)
    )
    code, document = await status_of(config, capsys)

    assert code == 0
    with_dead_letters = mapping_of(document, "dlq")
    assert with_dead_letters["failures_waiting"]["destination"] == dlq_arn
    assert with_dead_letters["failures_waiting"]["kind"] == "sqs-dlq"
    assert with_dead_letters["failures_waiting"]["count"] == 2
    assert with_dead_letters["shards"] == []
    bare = mapping_of(document, "bare")["failures_waiting"]
    assert (bare["destination"], bare["count"]) == (None, None)
    assert "dead-letter" in bare["note"]


# -- the JSON document, from the command line -----------------------------------------------------


async def test_cli_json_document_has_the_documented_keys(moto_url: str, tmp_path: Path) -> None:
    """``python -m poller status --config F --json``: one JSON document, every documented key
    present for a mapping, its failures and each shard; a shard at SHARD_END is finished and
    shows no iterator age."""
    name, db = unique("status"), tmp_path / "c.db"
    arn = stream_arn(name)
    written = await two_shard_stream(moto_url, name, [["a", "b"], ["c"]])
    queue = unique("failures")
    async with aws_client("sqs", moto_url) as sqs:
        await create_queue(sqs, queue)
    store = await SqliteCheckpointStore(db).open()
    try:
        await store.put("m", SHARD0, Checkpoint(written[0][0][1]))
        await store.put("m", SHARD1, Checkpoint(SHARD_END))
    finally:
        await store.aclose()
    mapping = stream_mapping(
        "m",
        arn,
        HANDLER,
        destination_config={
            "on_failure": {"destination_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"}
        },
    )
    path = write_config(tmp_path / "poller.yaml", sqlite_config(moto_url, db, mapping))

    result = await anyio.to_thread.run_sync(
        lambda: run_cli("status", "--config", str(path), "--json", timeout=60)
    )

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"backend", "mappings"}
    [found] = document["mappings"]
    assert set(found) == MAPPING_KEYS
    assert set(found["failures_waiting"]) == FAILURE_KEYS
    assert found["failures_waiting"]["count"] == 0
    rows = {row["shard_id"]: row for row in found["shards"]}
    for row in rows.values():
        assert set(row) == SHARD_KEYS
    assert rows[SHARD0]["iterator_age_seconds"] > 0  # record "b" is unread
    assert rows[SHARD1]["finished"] is True
    assert rows[SHARD1]["checkpoint"] == SHARD_END
    assert rows[SHARD1]["iterator_age_seconds"] is None
    assert rows[SHARD1]["iterator_error"] is None


# -- what is down ---------------------------------------------------------------------------------


async def test_missing_destinations_are_errors_in_their_place(
    moto_url: str, tmp_path: Path
) -> None:
    """A queue and a bucket that do not exist: ``unknown`` with the error, the shards still
    shown, and exit status 1 (the command line, text form)."""
    name, db = unique("status"), tmp_path / "c.db"
    arn = stream_arn(name)
    await two_shard_stream(moto_url, name, [["a"]])
    queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{unique('absent')}"
    bucket_arn = f"arn:aws:s3:::{unique('absent')}"

    def routed(mapping: str, destination: str) -> dict[str, Any]:
        config = {"on_failure": {"destination_arn": destination}}
        return stream_mapping(mapping, arn, HANDLER, destination_config=config)

    config = sqlite_config(moto_url, db, routed("q", queue_arn), routed("b", bucket_arn))
    path = write_config(tmp_path / "poller.yaml", config)

    result = await anyio.to_thread.run_sync(
        lambda: run_cli("status", "--config", str(path), timeout=60)
    )
    as_json = await anyio.to_thread.run_sync(
        lambda: run_cli("status", "--config", str(path), "--json", timeout=60)
    )

    assert result.returncode == 1, result.stderr
    failures = {line.split()[0]: line for line in result.stdout.split("\n\n")[1].splitlines()[1:]}
    assert failures["q"].split()[1] == "unknown"
    assert "NonExistentQueue" in failures["q"] or "QueueDoesNotExist" in failures["q"]
    assert failures["b"].split()[1] == "unknown"
    assert "NoSuchBucket" in failures["b"]
    assert sum(SHARD0 in line for line in result.stdout.splitlines()) == 2
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    for mapping in ("q", "b"):
        found = mapping_of(document, mapping)
        assert found["state"] == "up"
        assert found["failures_waiting"]["error"]
        assert found["failures_waiting"]["count"] is None
        [row] = found["shards"]
        assert row["iterator_error"] is None
        assert row["iterator_age_seconds"] > 0  # TRIM_HORIZON: record "a" is unread


async def test_a_source_down_shows_unknown_and_the_rest(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kinesis answers every call with 503: the mapping is down with the error, its stored
    shard shows its checkpoint and an ``unknown`` iterator age, the SQS mapping beside it is
    still examined, and the command returns 1 within seconds."""
    name, db = unique("status"), tmp_path / "c.db"
    [written] = await two_shard_stream(moto_url, name, [["a"]])
    store = await SqliteCheckpointStore(db).open()
    try:
        await store.put("down", SHARD0, Checkpoint(written[0][1]))
    finally:
        await store.aclose()
    queue = unique("jobs")
    async with aws_client("sqs", moto_url) as sqs:
        await create_queue(sqs, queue)
    with FaultProxy(moto_url) as proxy:
        proxy.outage(600, ["Kinesis_20131202.*"])
        config = sqlite_config(
            moto_url,
            db,
            stream_mapping("down", stream_arn(name), HANDLER),
            {
                "name": "jobs",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
                "target": {"type": "python", "handler": "tests.support.sqs:handler"},
            },
        )
        config["aws"]["endpoints"] = {"kinesis": proxy.url}
        started = time.monotonic()
        with anyio.fail_after(30):
            code, document = await status_of(config, capsys)
            text_code, text = await text_of(config, capsys)
        took = time.monotonic() - started

    assert (code, text_code) == (1, 1)
    down = mapping_of(document, "down")
    assert down["state"] == "down"
    assert "ServiceUnavailable" in down["error"]
    [row] = down["shards"]
    assert row["checkpoint"] == written[0][1]
    assert row["iterator_age_seconds"] is None
    assert "ServiceUnavailable" in row["iterator_error"]
    assert mapping_of(document, "jobs")["state"] == "up"
    [shard_line] = [line.split() for line in text.splitlines() if SHARD0 in line]
    assert shard_line[:4] == ["down", SHARD0, "-", written[0][1]]
    assert "unknown" in shard_line
    assert took < 2 * 12


async def test_a_silent_read_is_cut_short(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stream answers its description but GetRecords never answers: the shard's iterator
    age is unknown after the probe's time limit, not after botocore's minutes; exit 1."""
    name, db = unique("status"), tmp_path / "c.db"
    await two_shard_stream(moto_url, name, [["a"], ["b"]])
    with FaultProxy(moto_url) as proxy:
        proxy.latency(12, ["GetRecords"])
        config = sqlite_config(moto_url, db, stream_mapping("slow", stream_arn(name), HANDLER))
        config["aws"]["endpoints"] = {"kinesis": proxy.url}
        started = time.monotonic()
        with anyio.fail_after(30):
            code, document = await status_of(config, capsys)
        took = time.monotonic() - started

    assert code == 1
    found = mapping_of(document, "slow")
    assert found["state"] == "up"
    assert [row["iterator_error"] for row in found["shards"]] == ["no answer within 5 s"] * 2
    assert took < 15


async def test_an_unreachable_lease_table_is_an_error_in_its_place(
    moto_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """DynamoDB answers 503: the checkpoints are an error, the stream's shards are still
    listed (their iterator ages unknown), and the command returns 1."""
    name = unique("status")
    await two_shard_stream(moto_url, name, [["a"]])
    with FaultProxy(moto_url) as proxy:
        proxy.outage(600, ["DynamoDB_20120810.*"])
        config = service_config(
            moto_url,
            stream_mapping("m", stream_arn(name), HANDLER),
            checkpoints={"backend": "dynamodb", "table": unique("leases")},
            endpoints={"dynamodb": proxy.url},
        )
        with anyio.fail_after(30):
            code, document = await status_of(config, capsys)
            _, text = await text_of(config, capsys)

    assert code == 1
    found = mapping_of(document, "m")
    assert "ServiceUnavailable" in found["checkpoints_error"]
    assert found["state"] == "up"
    [row] = found["shards"]
    assert (row["shard_id"], row["checkpoint"], row["owner"]) == (SHARD0, None, None)
    # Without its checkpoint, how far behind the shard is cannot be known.
    assert row["iterator_age_seconds"] is None
    assert row["iterator_error"].startswith("checkpoint unknown: ")
    assert "m: checkpoints: " in text
