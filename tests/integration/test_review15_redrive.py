"""Hostile review of ``poller redrive`` (issue 15): failure records as a hostile environment
hands them over, on moto.

* an SQS queue subscribed to an SNS on-failure destination (what the command itself advises
  when the destination is a topic) holds SNS envelopes, not bare failure records;
* an S3 failure record whose ``payload`` is empty must not be moved away as "redriven" when
  none of the records it names was delivered;
* more failure records than one page (:data:`~poller.operations.failure_sources.PAGE_SIZE`),
  received in reverse order, must still be delivered in shard and sequence order.

``poller redrive`` runs as the operator runs it (``python -m poller``); the target is the file
sink handler, which appends every batch to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from poller.config import KinesisMapping, parse_settings
from poller.operations import failure_sources
from poller.operations import redrive as redrive_command
from poller.operations.failure_sources import PAGE_SIZE
from tests.integration.stream_errors_harness import make_queue, queue_bodies, stream_with
from tests.integration.test_redrive import config, failure_body
from tests.support import file_sink
from tests.support.aws import ACCOUNT, REGION, aws_client, stream_arn, unique
from tests.support.fault_proxy import FaultProxy
from tests.support.process import REPO, run_cli, write_config
from tests.support.service_config import service_config, stream_mapping
from tests.support.waiting import wait_for, wait_until

pytestmark = pytest.mark.anyio

SHARD = "shardId-000000000000"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Path]:
    """The file sink's output, named in this process's environment (the command inherits it)."""
    path = tmp_path / "sink.jsonl"
    env = file_sink.env(path)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield path
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def delivered(sink: Path) -> list[str]:
    """Sequence numbers delivered, in delivery order."""
    return [seq for batch in file_sink.read(str(sink)) for _, seq, _ in batch["records"]]


async def redrive(config_path: Path, *args: str) -> tuple[int, str, str]:
    done = await anyio.to_thread.run_sync(
        lambda: run_cli("redrive", "--config", str(config_path), "--mapping", "m", *args)
    )
    return done.returncode, done.stdout, done.stderr


def sns_envelope(message: str, topic: str) -> str:
    """The body SNS gives an SQS subscriber without raw message delivery (SNS's default)."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "5a6f3b0c-0000-4000-8000-000000000001",
            "TopicArn": topic,
            "Message": message,
            "Timestamp": "2026-12-05T09:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "c2lnbmF0dXJl",
            "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/cert.pem",
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


async def test_failure_record_in_an_sns_envelope_is_redriven(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """The command answers an SNS destination with "subscribe an SQS queue to it and pass that
    queue with --source"; the messages of that queue are SNS envelopes around the failure
    record. Following the command's own advice must work: the records are delivered and the
    message deleted."""
    stream = unique("review15sns")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b")])
    url, queue_arn = await make_queue(moto_url, unique("subscribed"))
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:{unique('failures')}"
    raw = config(moto_url, stream, tmp_path, topic)
    path = write_config(tmp_path / "poller.yaml", raw)
    body = sns_envelope(failure_body(stream_arn(stream), SHARD, written, age=60), topic)
    async with aws_client("sqs", moto_url) as sqs:
        await sqs.send_message(QueueUrl=url, MessageBody=body)

    code, out, err = await redrive(path, "--source", queue_arn)

    assert delivered(sink) == written, out + err
    assert code == 0, out + err
    assert await queue_bodies(moto_url, url) == []


async def test_s3_failure_record_with_an_empty_payload_is_not_moved_as_redriven(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """An S3 failure record naming 2 records but carrying ``{"Records": []}``: nothing is
    delivered, so it must not be moved under ``redriven/`` (it would vanish from the listing
    with its records never reprocessed)."""
    stream = unique("review15s3")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b")])
    bucket = unique("failures")
    raw = config(moto_url, stream, tmp_path, f"arn:aws:s3:::{bucket}")
    path = write_config(tmp_path / "poller.yaml", raw)
    mapping = parse_settings(raw).mappings[0]
    assert isinstance(mapping, KinesisMapping)
    document = json.loads(failure_body(stream_arn(stream), SHARD, written, age=60))
    document["payload"] = {"Records": []}
    key = f"aws/lambda/{mapping.mapping_uuid}/{SHARD}/2026/12/05/2026-12-05T09.00.00-x"
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())

    _, out, err = await redrive(path)

    async with aws_client("s3", moto_url) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
    keys = [o["Key"] for o in listing.get("Contents", [])]
    records_delivered = delivered(sink) == written
    assert records_delivered or keys == [key], (keys, out + err)


async def test_failure_records_beyond_one_page_are_delivered_in_sequence_order(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """More failure records for one shard than a page holds, sent to the queue newest first
    (a standard queue keeps no order): redrive promises shard and sequence order, so the
    records must reach the target in sequence order across pages, not page by page."""
    count = PAGE_SIZE + 5
    stream = unique("review15order")
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(count)])
    url, arn = await make_queue(moto_url, unique("failures"))
    raw = config(moto_url, stream, tmp_path, arn, batch_size=10)
    path = write_config(tmp_path / "poller.yaml", raw)
    bodies = [failure_body(stream_arn(stream), SHARD, [seq], age=60) for seq in written]
    await send_all(moto_url, url, list(reversed(bodies)))

    code, out, err = await redrive(path)

    assert code == 0, out[-2000:] + err
    order = delivered(sink)
    assert sorted(order, key=int) == written, "every record delivered once"
    assert order == written, "delivered in sequence order"


async def send_all(moto_url: str, url: str, bodies: list[str]) -> None:
    """Send ``bodies`` in order, ten at a time."""
    async with aws_client("sqs", moto_url) as sqs:
        for start in range(0, len(bodies), 10):
            entries: list[dict[str, Any]] = [
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(bodies[start : start + 10])
            ]
            response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
            assert not response.get("Failed"), response


async def test_one_odd_sequence_number_does_not_stop_the_other_failure_records(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """A failure record whose sequence numbers are superscript digits (``str.isdigit`` says
    yes, ``int`` says no) beside a good one: the odd one is reported malformed and left, the
    good one is redriven, and the command ends with its summary, not a traceback."""
    stream = unique("review15odd")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b")])
    url, arn = await make_queue(moto_url, unique("failures"))
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))
    good = failure_body(stream_arn(stream), SHARD, written, age=60)
    odd = json.loads(good)
    odd["KinesisBatchInfo"]["startSequenceNumber"] = "\u00b2"
    odd["KinesisBatchInfo"]["endSequenceNumber"] = "\u00b3"
    await send_all(moto_url, url, [json.dumps(odd), good])

    code, out, err = await redrive(path)

    assert "Traceback" not in err, err[-1500:]
    assert "MALFORMED" in out, out + err
    assert code == 1, out + err
    assert delivered(sink) == written
    assert len(await queue_bodies(moto_url, url)) == 1


async def test_a_delete_outage_is_reported_not_a_crash(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """SQS refuses DeleteMessage for 15 s (longer than botocore's retries) while two failure
    records are redriven: the records are delivered (at least once is allowed), the failure
    records stay, and the command ends with its summary and exit 1, not a traceback that
    abandons the rest of the run."""
    stream = unique("review15outage")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b")])
    url, arn = await make_queue(moto_url, unique("failures"))
    bodies = [failure_body(stream_arn(stream), SHARD, [seq], age=60) for seq in written]
    await send_all(moto_url, url, bodies)
    with FaultProxy(moto_url) as proxy:
        mapping = stream_mapping(
            "m",
            stream_arn(stream),
            "tests.support.file_sink:handler",
            batch_size=2,
            maximum_retry_attempts=0,
            destination_config={"on_failure": {"destination_arn": arn}},
        )
        raw = service_config(
            moto_url,
            mapping,
            checkpoints={"path": str(tmp_path / "c.db")},
            endpoints={"sqs": proxy.url},
        )
        path = write_config(tmp_path / "poller.yaml", raw)
        proxy.outage(15, ["DeleteMessage"])

        code, out, err = await redrive(path)

    assert "Traceback" not in err, err[-1500:]
    assert code == 1, out + err
    assert sorted(delivered(sink), key=int) == written
    assert "failure records read: 2" in out, out + err


async def test_a_dry_run_does_not_spend_a_receive_of_the_failure_queue(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """The failure queue has its own dead-letter queue after one receive (``maxReceiveCount``
    1, a common guard). ``--dry-run`` promises to change nothing, yet it receives every failure
    record (and hides it for the visibility timeout until its release); the real redrive that
    follows must still find and deliver the records, not lose them to the queue's DLQ."""
    stream = unique("review15dry")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b")])
    _, dlq_arn = await make_queue(moto_url, unique("failures-dlq"))
    name = unique("failures")
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})
    async with aws_client("sqs", moto_url) as sqs:
        url = (await sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy}))[
            "QueueUrl"
        ]
        await sqs.send_message(
            QueueUrl=url, MessageBody=failure_body(stream_arn(stream), SHARD, written, age=60)
        )
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))

    code, out, err = await redrive(path, "--dry-run")
    assert (code, out.count("would deliver")) == (0, 1), out + err
    code, out, err = await redrive(path)

    assert delivered(sink) == written, out + err
    assert code == 0, out + err


def hang(event: dict[str, Any], context: Any) -> None:
    """A handler that never returns (in the command's process)."""
    time.sleep(3600)


async def test_a_hanging_handler_ends_in_its_timeout_and_leaves_the_record(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Guard: a handler that never returns is cut off at the target's timeout; the redrive
    ends (its daemon worker does not hold the process), exit 1, the failure record stays."""
    stream = unique("review15hang")
    written = await stream_with(moto_url, stream, [("k1", b"a")])
    url, arn = await make_queue(moto_url, unique("failures"))
    await send_all(moto_url, url, [failure_body(stream_arn(stream), SHARD, written, age=60)])
    target = {"type": "python", "handler": f"{__name__}:hang", "timeout_seconds": 1}
    mapping = stream_mapping(
        "m",
        stream_arn(stream),
        target,
        maximum_retry_attempts=0,
        destination_config={"on_failure": {"destination_arn": arn}},
    )
    raw = service_config(moto_url, mapping, checkpoints={"path": str(tmp_path / "c.db")})
    path = write_config(tmp_path / "poller.yaml", raw)

    with anyio.fail_after(20):
        code, out, err = await redrive(path)

    assert code == 1, out + err
    assert "failed again 1" in out, out + err
    assert len(await queue_bodies(moto_url, url)) == 1


async def test_failure_records_stay_invisible_while_the_redrive_works_through_its_page(
    moto_url: str, tmp_path: Path, sink: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of failure records is received at once with one visibility timeout (15 minutes)
    and then redriven one by one; a slow target (retries, bisection, big batches) can take
    longer than that. The timeout is shortened here to 2 s so that the test fits in seconds
    (the redrive runs in this process): a second receiver, such as a second operator's
    redrive, must not be handed a failure record this redrive still holds, or both deliver it."""
    monkeypatch.setattr(failure_sources, "VISIBILITY_SECONDS", 2)
    monkeypatch.setenv("POLLER_TEST_SLEEP", "1.0")
    stream = unique("review15visible")
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(4)])
    url, arn = await make_queue(moto_url, unique("failures"))
    bodies = [failure_body(stream_arn(stream), SHARD, [seq], age=60) for seq in written]
    await send_all(moto_url, url, bodies)
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))
    parser = argparse.ArgumentParser()
    redrive_command.add_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--mapping", "m"])
    stolen: list[str] = []

    async def second_receiver(done: anyio.Event) -> None:
        # Once the first record is delivered, the redrive holds every failure record.
        await wait_until(lambda: delivered(sink), 15, "the first record redriven", interval=0.05)
        async with aws_client("sqs", moto_url) as sqs:
            while not done.is_set():
                response = await sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
                )
                stolen.extend(m["MessageId"] for m in response.get("Messages", []))
                await anyio.sleep(0.2)

    done = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second_receiver, done)
            code = await anyio.to_thread.run_sync(redrive_command.main, args)
            done.set()

    assert code == 0
    assert sorted(delivered(sink), key=int) == written
    assert stolen == [], f"{len(set(stolen))} failure record(s) handed to a second receiver"


async def test_after_a_killed_redrive_the_next_one_does_not_report_nothing_to_do(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """A redrive is SIGKILLed after its first failure record: the others stay invisible for
    the visibility timeout (15 minutes), so nothing is lost. The operator runs it again at
    once: it must redrive them, or at least not end with exit 0 and "failure records read: 0"
    (done, nothing left) while they still wait in the queue."""
    stream = unique("review15killed")
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(3)])
    url, arn = await make_queue(moto_url, unique("failures"))
    bodies = [failure_body(stream_arn(stream), SHARD, [seq], age=60) for seq in written]
    await send_all(moto_url, url, bodies)
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))
    await anyio.to_thread.run_sync(killed_after_its_first_record, path, sink)
    assert len(delivered(sink)) < len(written)

    code, out, err = await redrive(path)

    everything = sorted(set(delivered(sink)), key=int) == written
    assert everything or code != 0, out + err


def killed_after_its_first_record(path: Path, sink: Path) -> None:
    """Run ``poller redrive`` with slow batches; SIGKILL it once it delivered a record."""
    command = [sys.executable, "-m", "poller", "redrive", "--config", str(path), "--mapping", "m"]
    slow = {**os.environ, "POLLER_TEST_SLEEP": "1.0"}
    with subprocess.Popen(command, cwd=REPO, env=slow, stdout=subprocess.DEVNULL) as proc:
        try:
            wait_for(lambda: delivered(sink), 15, "the first record redriven")
        finally:
            proc.kill()


async def test_s3_objects_that_are_not_this_mappings_failure_records_are_left_alone(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Guard: under the mapping's prefix, another stream's failure record and an object that is
    no failure record stay where they are (reported, exit 1); a failure record under another
    prefix of the bucket is not read at all."""
    stream = unique("review15others")
    written = await stream_with(moto_url, stream, [("k1", b"a")])
    bucket = unique("failures")
    raw = config(moto_url, stream, tmp_path, f"arn:aws:s3:::{bucket}")
    path = write_config(tmp_path / "poller.yaml", raw)
    mapping = parse_settings(raw).mappings[0]
    assert isinstance(mapping, KinesisMapping)
    prefix = f"aws/lambda/{mapping.mapping_uuid}/{SHARD}/2026/12/05/"
    objects = {
        prefix + "a-other-stream": failure_body(stream_arn("another"), SHARD, written, age=60),
        prefix + "b-not-a-record": "\x00\xff binary",
        "elsewhere/" + prefix + "c": failure_body(stream_arn(stream), SHARD, written, age=60),
    }
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            await s3.put_object(Bucket=bucket, Key=key, Body=body.encode("latin-1"))

    code, out, err = await redrive(path)

    assert code == 1, out + err
    assert out.count("MALFORMED") == 2, out
    assert "failure records read: 2" in out, out
    async with aws_client("s3", moto_url) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in listing.get("Contents", [])) == sorted(objects)
    assert delivered(sink) == []


async def test_an_override_naming_a_missing_handler_is_refused_before_anything(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Guard: ``--target-override no_such_module:handler`` is bad input (exit 2, one line), and
    the failure record stays visible."""
    stream = unique("review15override")
    written = await stream_with(moto_url, stream, [("k1", b"a")])
    url, arn = await make_queue(moto_url, unique("failures"))
    await send_all(moto_url, url, [failure_body(stream_arn(stream), SHARD, written, age=60)])
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))

    code, out, err = await redrive(path, "--target-override", "no_such_module_r15:handler")

    assert code == 2, out + err
    assert "Traceback" not in err, err[-1500:]
    assert "no_such_module_r15" in err, err
    assert len(await queue_bodies(moto_url, url)) == 1


async def test_a_record_whose_end_is_before_its_start_is_not_discarded_as_expired(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """A failure record with its first and last sequence numbers swapped (a hand-edited or
    corrupt record) points at records the stream still holds; it is malformed, not expired,
    so ``--discard-expired`` must not delete it."""
    stream = unique("review15swapped")
    written = await stream_with(moto_url, stream, [("k1", b"a"), ("k2", b"b"), ("k3", b"c")])
    url, arn = await make_queue(moto_url, unique("failures"))
    swapped = json.loads(failure_body(stream_arn(stream), SHARD, written, age=60))
    info = swapped["KinesisBatchInfo"]
    info["startSequenceNumber"], info["endSequenceNumber"] = written[-1], written[0]
    await send_all(moto_url, url, [json.dumps(swapped)])
    path = write_config(tmp_path / "poller.yaml", config(moto_url, stream, tmp_path, arn))

    code, out, err = await redrive(path, "--discard-expired")

    assert code == 1, out + err
    assert "expired and discarded 0" in out, out + err
    assert len(await queue_bodies(moto_url, url)) == 1


async def test_two_redrives_of_one_s3_prefix_do_not_both_deliver_a_failure_record(
    moto_url: str, tmp_path: Path, sink: Path
) -> None:
    """Two operators (or a retried job) run the same redrive at once on an S3 destination.
    An SQS source hides what one run received from the other; S3 keeps nothing of the kind,
    so both list the same objects: each failure record's records must still be delivered
    once (plus at most what a crash repeats), and neither run may crash on the other's move."""
    stream = unique("review15s3twice")
    written = await stream_with(moto_url, stream, [(f"k{i}", b"x") for i in range(4)])
    bucket = unique("failures")
    raw = config(moto_url, stream, tmp_path, f"arn:aws:s3:::{bucket}")
    path = write_config(tmp_path / "poller.yaml", raw)
    mapping = parse_settings(raw).mappings[0]
    assert isinstance(mapping, KinesisMapping)
    prefix = f"aws/lambda/{mapping.mapping_uuid}/{SHARD}/2026/12/05/"
    async with aws_client("s3", moto_url) as s3:
        await s3.create_bucket(Bucket=bucket)
        for index, seq in enumerate(written):
            body = failure_body(stream_arn(stream), SHARD, [seq], age=60)
            await s3.put_object(Bucket=bucket, Key=f"{prefix}{index:03d}", Body=body.encode())

    outcomes = await anyio.to_thread.run_sync(two_redrives_at_once, path, tmp_path)

    counts = Counter(delivered(sink))
    assert set(counts) == set(written), outcomes
    twice = [seq for seq, n in counts.items() if n > 1]
    assert twice == [], f"{len(twice)} of {len(written)} delivered twice; {outcomes}"
    assert all("Traceback" not in out for _, out in outcomes), outcomes


def two_redrives_at_once(path: Path, tmp: Path) -> list[tuple[int, str]]:
    """Start two ``poller redrive`` with slow batches together; their exit codes and output."""
    command = [sys.executable, "-m", "poller", "redrive", "--config", str(path), "--mapping", "m"]
    slow = {**os.environ, "POLLER_TEST_SLEEP": "0.3"}
    logs = [tmp / "first.log", tmp / "second.log"]
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(command, cwd=REPO, env=slow, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        wait_for(lambda: all(p.poll() is not None for p in procs), 60, "both redrives end")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return [(p.returncode, log.read_text()[-1500:]) for p, log in zip(procs, logs, strict=True)]
