"""DynamoDB Local's stream ARNs (region ``ddblocal``): accepted with an endpoint and a region,
refused without either (each error names the fields to set), and read with clients in
``aws.region`` while the ARN itself stays verbatim. Kinesis and SQS ARNs take no ``ddblocal``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiobotocore.config import AioConfig

from poller.aws.clients import ClientFactory
from poller.config import DynamoDBStreamMapping, Settings, load_settings, parse_settings
from poller.config.arns import client_region, is_dynamodb_local
from poller.errors import ConfigError
from poller.mappings import build_mapping_target, stream_api
from poller.observability.metrics import NullMetrics
from poller.sources.dynamodb_streams import DynamoDBStreamApi

LOCAL = "arn:aws:dynamodb:ddblocal:000000000000:table/Orders/stream/2026-12-05T12:07:59.149"
AWS = "arn:aws:dynamodb:eu-west-1:123456789012:table/Orders/stream/2024-05-01T00:00:00.000"
URL = "http://127.0.0.1:8000"


def config(aws: dict[str, Any], arn: str = LOCAL, **sections: Any) -> dict[str, Any]:
    entry = {
        "name": "local",
        "event_source_arn": arn,
        "starting_position": "TRIM_HORIZON",
        "target": {"type": "lambda", "function_name": "fn"},
    }
    return {"aws": aws, **sections, "mappings": [entry]}


def refusal(tree: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(tree)
    return str(caught.value)


@pytest.mark.parametrize(
    "aws",
    [
        {"region": "eu-central-2", "endpoints": {"dynamodbstreams": URL}},
        {"region": "eu-central-2", "endpoint_url": URL},
    ],
)
def test_accepted_with_an_endpoint_and_a_region(aws: dict[str, Any]) -> None:
    (mapping,) = parse_settings(config(aws)).mappings
    assert isinstance(mapping, DynamoDBStreamMapping)
    assert mapping.event_source_arn == LOCAL
    assert mapping.stream_arn == LOCAL


def test_refused_without_an_endpoint_naming_the_fields() -> None:
    message = refusal(config({"region": "eu-central-2"}))
    assert "mappings[0].event_source_arn" in message
    assert LOCAL in message
    assert "aws.endpoints.dynamodbstreams" in message
    assert "aws.endpoint_url" in message


def test_an_endpoint_for_another_service_is_not_enough() -> None:
    message = refusal(config({"region": "eu-central-2", "endpoints": {"dynamodb": URL}}))
    assert "aws.endpoints.dynamodbstreams" in message


def test_refused_without_a_region_naming_the_field() -> None:
    """aws.region has a default, but DynamoDB Local keeps a database per region: the user
    must say which one the table is in."""
    message = refusal(config({"endpoints": {"dynamodbstreams": URL}}))
    assert "set aws.region" in message
    assert "mappings[0].event_source_arn" in message


def test_the_region_may_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "poller.yaml"
    path.write_text(yaml.safe_dump(config({"endpoints": {"dynamodbstreams": URL}})))
    settings = load_settings(path, environ={"POLLER_AWS__REGION": "ap-south-1"})
    assert settings.aws.region == "ap-south-1"
    assert settings.mappings[0].event_source_arn == LOCAL


def test_refused_in_the_embedded_mode() -> None:
    tree = config({"region": "eu-central-2", "endpoint_url": URL}, embedded={"enabled": True})
    message = refusal(tree)
    assert "embedded.enabled" in message
    assert "aws.endpoints.dynamodbstreams" in message


def test_a_later_mapping_is_named_by_its_index() -> None:
    tree = config({"region": "eu-central-2"}, arn=AWS)
    tree["mappings"].append({**tree["mappings"][0], "name": "local", "event_source_arn": LOCAL})
    tree["mappings"][0]["name"] = "aws"
    assert "mappings[1].event_source_arn" in refusal(tree)


def test_an_aws_stream_needs_neither() -> None:
    (mapping,) = parse_settings(config({}, arn=AWS)).mappings
    assert mapping.event_source_arn == AWS


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kinesis:ddblocal:000000000000:stream/orders",
        "arn:aws:sqs:ddblocal:000000000000:jobs",
        "arn:aws:dynamodb:local:000000000000:table/Orders/stream/2026-12-05T12:07:59.149",
        "arn:aws:dynamodb:ddblocal:0000:table/Orders/stream/2026-12-05T12:07:59.149",
    ],
)
def test_other_sources_and_forms_take_no_ddblocal(arn: str) -> None:
    tree = config({"region": "eu-central-2", "endpoint_url": URL}, arn=arn)
    if ":sqs:" in arn:
        del tree["mappings"][0]["starting_position"]
    message = refusal(tree)
    assert "event_source_arn" in message
    assert "is not valid" in message


def test_is_dynamodb_local() -> None:
    assert is_dynamodb_local(LOCAL)
    assert not is_dynamodb_local(AWS)
    assert not is_dynamodb_local("arn:aws:kinesis:ddblocal:000000000000:stream/orders")
    assert not is_dynamodb_local("ddblocal")


def test_client_region() -> None:
    assert client_region(LOCAL, "eu-central-2") == "eu-central-2"
    assert client_region(AWS, "eu-central-2") == "eu-west-1"


# -- the wiring: which region the mapping's clients sign for ----------------------------------


class RecordingFactory(ClientFactory):
    """The service's client factory, noting the region each client is asked for."""

    def __init__(self, settings: Settings) -> None:
        aws = settings.aws
        super().__init__(region=aws.region, endpoint_url=aws.endpoint_url, endpoints=aws.endpoints)
        self.asked: list[tuple[str, str]] = []

    async def client(
        self,
        service: str,
        *,
        purpose: str = "control",
        config: AioConfig | None = None,
        region: str | None = None,
    ) -> Any:
        self.asked.append((service, region or self.region))
        return await super().client(service, purpose=purpose, config=config, region=region)


@pytest.fixture
async def local_factory() -> AsyncIterator[tuple[Settings, RecordingFactory]]:
    settings = parse_settings(
        config({"region": "eu-central-2", "endpoints": {"dynamodbstreams": URL}})
    )
    factory = RecordingFactory(settings)
    try:
        yield settings, factory
    finally:
        await factory.aclose()


@pytest.mark.anyio
async def test_the_stream_client_signs_for_the_configured_region(
    local_factory: tuple[Settings, RecordingFactory],
) -> None:
    settings, factory = local_factory
    (mapping,) = settings.mappings
    assert isinstance(mapping, DynamoDBStreamMapping)
    api = await stream_api(mapping, factory, settings)
    assert factory.asked == [("dynamodbstreams", "eu-central-2")]
    assert isinstance(api, DynamoDBStreamApi)
    assert api.stream_arn == LOCAL  # verbatim in every request: DynamoDB Local knows no other


@pytest.mark.anyio
async def test_the_target_is_in_the_configured_region(
    local_factory: tuple[Settings, RecordingFactory],
) -> None:
    settings, factory = local_factory
    target = await build_mapping_target(
        settings.mappings[0], clients=factory, metrics=NullMetrics()
    )
    try:
        assert factory.asked == [("lambda", "eu-central-2")]
        assert target.function_arn == "arn:aws:lambda:eu-central-2:000000000000:function:fn"
    finally:
        await target.aclose()


@pytest.mark.anyio
async def test_an_aws_stream_keeps_its_own_region() -> None:
    settings = parse_settings(config({"region": "eu-central-2"}, arn=AWS))
    factory = RecordingFactory(settings)
    try:
        (mapping,) = settings.mappings
        assert isinstance(mapping, DynamoDBStreamMapping)
        await stream_api(mapping, factory, settings)
    finally:
        await factory.aclose()
    assert factory.asked == [("dynamodbstreams", "eu-west-1")]
