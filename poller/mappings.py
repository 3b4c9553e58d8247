"""From a validated mapping to its running parts: its target, its source adapter, its runner.

Data flow (called by the composition root, :mod:`poller.app`)::

    enabled mapping --build_target--> Target (one per mapping; the service closes it)
    Kinesis / DynamoDB Streams mapping
        --stream_api--> KinesisStreamApi | DynamoDBStreamApi (the embedded stream created first)
        --subscriptions_for--> ConsumerSubscriptions, for a Kinesis mapping read through
            enhanced fan-out (its consumer resolved, or registered, on first use)
        --build_destination--> its on-failure destination, if any
        --ownership_for(checkpoints)--> ShardOwnership (solo or leased)
        --> StreamMappingRunner (reading within the service's one ReadBudget)
    SQS mapping --build_sqs_runner--> SqsMappingRunner

Nothing here runs anything: a runner is built afresh for every run of a mapping (a crashed
runner's state is dropped), and the service supervises it.

A stream mapping created through the control API reports to a :class:`ProcessingResults` tee:
every hook goes on to the service's metrics, and each invocation's outcome is also noted for
the mapping's ``LastProcessingResult`` (written to the store by :mod:`poller.reconcile`, off
the invoke path).

Every client here is in the region of the mapping's source ARN, except for a DynamoDB Local
stream (region ``ddblocal``): its clients and its target take ``aws.region`` (the client
factory's), while the ARN itself still goes verbatim into every request, checkpoint and event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from poller.aws.clients import SUBSCRIBE_CLIENT_CONFIG, ClientFactory
from poller.aws.embedded import ensure_streams, traffic_loop
from poller.checkpoints import Checkpoints
from poller.config import AnyMapping, DynamoDBStreamMapping, KinesisMapping, Settings, SqsMapping
from poller.config.arns import client_region
from poller.destinations import build_destination
from poller.observability.metrics import Metrics
from poller.ports import StreamApi
from poller.queues import SqsMappingRunner, build_sqs_runner
from poller.sources.dynamodb_streams import DynamoDBStreamApi
from poller.sources.efo_consumer import ConsumerSubscriptions
from poller.sources.kinesis import KinesisStreamApi
from poller.streams import StreamMappingRunner
from poller.streams.budget import ReadBudget
from poller.streams.ownership import ownership_for
from poller.targets import build_target
from poller.types import Target

Runner = StreamMappingRunner | SqsMappingRunner


class ProcessingResults(Metrics):
    """A tee of a runner's metrics: every hook goes on to ``inner`` unchanged, and each
    invocation's outcome (``success``, ``function_error``...) also goes to
    ``note(mapping, outcome)``, which must only record it (it runs on the invoke path)."""

    def __init__(self, inner: Metrics, note: Callable[[str, str], None]) -> None:
        self._inner = inner
        self._note = note

    def _report(self, hook: str, args: tuple[Any, ...]) -> None:
        self._inner._report(hook, args)
        if hook == "invocation":
            self._note(args[0], args[1])

    def _wrong_call(self, hook: str, error: TypeError) -> None:
        self._inner._wrong_call(hook, error)


async def build_mapping_target(
    mapping: AnyMapping, *, clients: ClientFactory, metrics: Metrics
) -> Target:
    """The mapping's target. Nothing here calls AWS, so a bad target (a handler that does not
    import) is a configuration error that stops start-up."""
    return await build_target(
        mapping.target,
        clients=clients,
        partition=mapping.partition,
        region=client_region(mapping.event_source_arn, clients.region),
        account_id=mapping.account_id,
        mapping=mapping.name,
        metrics=metrics,
        mapping_config=mapping,
    )


async def build_runner(
    mapping: AnyMapping,
    target: Target,
    *,
    settings: Settings,
    clients: ClientFactory,
    checkpoints: Checkpoints,
    stopping: anyio.Event,
    metrics: Metrics,
    budget: ReadBudget | None = None,
) -> Runner:
    """A fresh runner for one run of ``mapping``, delivering to ``target``; a stream
    mapping's shards read within ``budget``, the process's one read budget."""
    if isinstance(mapping, KinesisMapping | DynamoDBStreamMapping):
        return StreamMappingRunner(
            mapping,
            api=await stream_api(mapping, clients, settings),
            kind=mapping.source,
            target=target,
            ownership=ownership_for(checkpoints, mapping, metrics=metrics),
            stopping=stopping,
            destination=(
                None
                if mapping.on_failure_arn is None
                else await build_destination(mapping.on_failure_arn, clients=clients)
            ),
            metrics=metrics,
            budget=budget,
            subscriptions=await subscriptions_for(mapping, clients),
        )
    assert isinstance(mapping, SqsMapping)
    return await build_sqs_runner(
        mapping, clients=clients, target=target, stopping=stopping, metrics=metrics
    )


async def stream_api(
    mapping: KinesisMapping | DynamoDBStreamMapping, clients: ClientFactory, settings: Settings
) -> StreamApi:
    """The service adapter the shared stream engine reads through."""
    if isinstance(mapping, KinesisMapping):
        kinesis = await clients.client("kinesis", purpose="source", region=mapping.region)
        if settings.embedded.enabled:
            await ensure_streams(kinesis, [mapping], settings.embedded.shard_count)
        return KinesisStreamApi(
            kinesis,
            stream_arn=mapping.stream_arn,
            region=mapping.region,
            identity_arn=mapping.identity_arn,
            deaggregate=mapping.deaggregate_records,
        )
    streams = await clients.client(
        "dynamodbstreams",
        purpose="source",
        region=client_region(mapping.event_source_arn, clients.region),
    )
    # The region is only the events' awsRegion when a record lacks one: the ARN's, as AWS.
    return DynamoDBStreamApi(streams, stream_arn=mapping.stream_arn, region=mapping.region)


async def subscriptions_for(
    mapping: KinesisMapping | DynamoDBStreamMapping, clients: ClientFactory
) -> ConsumerSubscriptions | None:
    """Enhanced fan-out for a Kinesis mapping on a consumer ARN or with ``enhanced_fan_out``;
    None (polling) otherwise. Its client holds a connection per subscribed shard for minutes,
    so it has a pool of its own, sized for every shard a replica may hold."""
    if not isinstance(mapping, KinesisMapping) or not mapping.reads_pushed:
        return None
    client = await clients.client(
        "kinesis", purpose="subscribe", config=SUBSCRIBE_CLIENT_CONFIG, region=mapping.region
    )
    fan_out = mapping.enhanced_fan_out
    return ConsumerSubscriptions(
        client,
        stream_arn=mapping.stream_arn,
        consumer_arn=mapping.consumer_arn,
        consumer_name=None if fan_out is None else fan_out.consumer_name,
    )


async def run_sample_traffic(
    settings: Settings,
    clients: ClientFactory,
    stopping: anyio.Event,
    *,
    task_status: TaskStatus[None],
) -> None:
    """The embedded mode's sample traffic: one producer per region of its Kinesis mappings,
    stopped with intake (``stopping``)."""
    by_region: dict[str, list[KinesisMapping]] = {}
    for mapping in settings.mappings:
        if mapping.enabled and isinstance(mapping, KinesisMapping):
            by_region.setdefault(mapping.region, []).append(mapping)
    task_status.started()
    async with anyio.create_task_group() as tg:
        for region, mappings in by_region.items():
            kinesis = await clients.client("kinesis", purpose="traffic", region=region)
            tg.start_soon(traffic_loop, kinesis, mappings, settings.embedded)
        await stopping.wait()
        tg.cancel_scope.cancel()
