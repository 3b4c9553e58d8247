"""What the operator commands share: the mapping, its target, its stream, and one delivery path.

Data flow (``redrive`` and ``replay``)::

    --config, --mapping --find_stream_mapping--> the validated mapping (or a one-line error)
    --target-override / the mapping's target --operation_target--> Target
    the mapping --open_stream--> StreamApi (poller.mappings.stream_api: the live adapters)
    records of one shard --deliver_shard--> ShardProcessor (the live engine: lanes, batch
        size, parallelization, retries, bisection, tumbling windows, the same events)
        --gave up--> GaveUpRecorder (never the mapping's destination)
        --settled--> the operation's own CheckpointStore (never the live checkpoints)

An operation never opens the mapping's checkpoint store or lease table, so it runs beside the
service without touching what the service owns. Records it gives up on are recorded, not sent
to the on-failure destination: the caller decides (a failed redrive leaves its failure record
where it was). Maximum record age does not apply (the records are old by definition; only the
retention bounds them), and an unbounded retry count is capped (:data:`UNBOUNDED_RETRY_CAP`),
or a redrive of a record that still fails would never end.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pydantic
from pydantic import TypeAdapter

from poller.aws.clients import ClientFactory
from poller.config import (
    AnyMapping,
    DynamoDBStreamMapping,
    KinesisMapping,
    Settings,
    SqsMapping,
    TargetConfig,
    load_settings,
)
from poller.errors import OperationError
from poller.mappings import build_mapping_target, stream_api
from poller.observability.metrics import NullMetrics
from poller.ports import StreamApi
from poller.streams.processor import BatchPolicy, ChunkSink, FailureRouting, ShardProcessor
from poller.streams.supervisor import batch_policy
from poller.types import CheckpointStore, StreamRecord, Target

StreamMapping = KinesisMapping | DynamoDBStreamMapping

#: Retries of a failing batch when the mapping retries without bound (-1): the live service
#: stops at the record age or the retention; an operation must end.
UNBOUNDED_RETRY_CAP = 2

#: AWS's own tool for an SQS mapping's failed messages, named wherever one is refused.
SQS_REDRIVE_NOTE = (
    "an SQS mapping's failed messages are in the queue's dead-letter queue, and AWS moves them "
    "back itself: StartMessageMoveTask (aws sqs start-message-move-task --source-arn <DLQ ARN>, "
    "or 'Start DLQ redrive' in the console); poller does not duplicate it"
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--mapping``, ``--target-override``, ``--dry-run``, ``--max-retries``."""
    parser.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    parser.add_argument("--mapping", required=True, help="the mapping's name")
    parser.add_argument(
        "--target-override",
        metavar="TARGET",
        help="deliver there instead of the mapping's target: a Python handler module:function, "
        "an http(s):// URL, or a Lambda function name or ARN",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be done only")
    parser.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="retries of a failing batch (default: the mapping's maximum_retry_attempts, "
        f"or {UNBOUNDED_RETRY_CAP} when that is -1)",
    )


def load(path: str) -> Settings:
    """The validated settings (a ConfigError names every bad field)."""
    return load_settings(path)


def find_mapping(settings: Settings, name: str) -> AnyMapping:
    """The mapping called ``name``; an error listing the names there are otherwise."""
    for mapping in settings.mappings:
        if mapping.name == name:
            return mapping
    names = ", ".join(m.name for m in settings.mappings) or "none"
    raise OperationError(f"no mapping named {name!r} in the configuration (mappings: {names})")


def find_stream_mapping(settings: Settings, name: str, command: str) -> StreamMapping:
    """The Kinesis or DynamoDB Streams mapping called ``name``; SQS mappings are refused with
    AWS's own way of doing it."""
    mapping = find_mapping(settings, name)
    if isinstance(mapping, SqsMapping):
        raise OperationError(f"{command} {name!r}: {SQS_REDRIVE_NOTE}")
    return mapping


def client_factory(settings: Settings) -> ClientFactory:
    """Clients on the configured AWS endpoints, as ``poller status`` makes them."""
    aws = settings.aws
    return ClientFactory(region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints)


async def open_stream(
    mapping: StreamMapping, clients: ClientFactory, settings: Settings
) -> StreamApi:
    """The live service's adapter of the mapping's stream (polled reads only)."""
    return await stream_api(mapping, clients, settings)


_NAME = "[A-Za-z_][A-Za-z0-9_]*"
_HANDLER = re.compile(f"^{_NAME}(?:\\.{_NAME})*:{_NAME}$")
_TARGET_CONFIG: TypeAdapter[Any] = TypeAdapter(TargetConfig)


def override_config(value: str) -> Any:
    """The target config a ``--target-override`` names, validated as the config file's is:
    an http(s) URL, a ``module:function`` handler, else a Lambda function name or ARN."""
    if value.startswith(("http://", "https://")):
        raw: dict[str, Any] = {"type": "http", "url": value}
    elif _HANDLER.fullmatch(value):
        raw = {"type": "python", "handler": value}
    else:
        raw = {"type": "lambda", "function_name": value}
    try:
        return _TARGET_CONFIG.validate_python(raw)
    except pydantic.ValidationError as exc:
        reason = "; ".join(str(e.get("msg", "")) for e in exc.errors())
        raise OperationError(
            f"--target-override {value!r}: not a handler (module:function), an http(s) URL or "
            f"a Lambda function name or ARN ({reason})"
        ) from None


async def operation_target(
    mapping: StreamMapping, override: str | None, clients: ClientFactory
) -> Target:
    """The mapping's target, or the override's, built as the service builds targets."""
    if override is not None:
        mapping = mapping.model_copy(update={"target": override_config(override)})
    return await build_mapping_target(mapping, clients=clients, metrics=NullMetrics())


def target_name(mapping: StreamMapping, override: str | None) -> str:
    """How the summary names where records went."""
    if override is not None:
        return override
    target = mapping.target
    return str(
        getattr(target, "handler", None)
        or getattr(target, "url", None)
        or getattr(target, "function_name", "")
    )


def operation_policy(mapping: StreamMapping, max_retries: int | None) -> BatchPolicy:
    """The mapping's batching, retry and bisect rules, without a maximum record age, and with
    a bounded retry count (``max_retries``, else the mapping's, capped when unbounded)."""
    policy = batch_policy(mapping)
    retries = mapping.maximum_retry_attempts if max_retries is None else max_retries
    if retries < 0:
        retries = UNBOUNDED_RETRY_CAP
    retry = dataclasses.replace(
        policy.retry, maximum_retry_attempts=retries, maximum_record_age_seconds=-1
    )
    return dataclasses.replace(policy, retry=retry)


class GaveUpRecorder:
    """Stands where the on-failure destination would: keeps the records given up on."""

    arn = "arn:poller:operation:::gave-up"

    def __init__(self) -> None:
        self.batches: list[tuple[dict[str, Any], list[StreamRecord]]] = []

    async def send(
        self,
        record: dict[str, Any],
        *,
        records: Sequence[StreamRecord],
        mapping_uuid: str,
        shard_id: str,
    ) -> None:
        """Keep the failure record and its records (nothing leaves the process)."""
        self.batches.append((record, list(records)))

    @property
    def records(self) -> int:
        """How many records were given up on."""
        return sum(len(records) for _, records in self.batches)


@dataclasses.dataclass(slots=True)
class ShardDelivery:
    """What one shard's delivery came to."""

    sent: int = 0
    gave_up: GaveUpRecorder = dataclasses.field(default_factory=GaveUpRecorder)

    @property
    def delivered(self) -> int:
        """Records settled without being given up (filtered-out records included)."""
        return self.sent - self.gave_up.records


async def deliver_shard(
    mapping: StreamMapping,
    *,
    shard_id: str,
    key: str,
    target: Target,
    store: CheckpointStore,
    policy: BatchPolicy,
    read: Callable[[ChunkSink], Awaitable[None]],
    settled: Callable[[Sequence[StreamRecord]], None] | None = None,
) -> ShardDelivery:
    """Deliver what ``read`` sends through the live engine's shard processor, checkpointing in
    ``store`` under ``key`` (the operation's own name, never the mapping's)."""
    outcome = ShardDelivery()

    async def counted(sink: ChunkSink) -> None:
        await read(_CountingSink(sink, outcome))

    processor = ShardProcessor(
        mapping=key,
        shard_id=shard_id,
        target=target,
        store=store,
        policy=policy,
        routing=FailureRouting(
            kind=mapping.source,
            stream_arn=mapping.stream_arn,
            mapping_uuid=mapping.mapping_uuid,
            destination=outcome.gave_up,
        ),
        stopping=anyio.Event(),
        released=settled,
    )
    await processor.run_with(counted)
    return outcome


class _CountingSink:
    """Counts the records handed to the processor."""

    def __init__(self, sink: ChunkSink, outcome: ShardDelivery) -> None:
        self._sink, self._outcome = sink, outcome

    async def send(self, chunk: Any) -> None:
        if isinstance(chunk, list):
            self._outcome.sent += len(chunk)
        await self._sink.send(chunk)
