"""Settings and results of stream mappings run in the test's event loop against moto: the
recorder handler, or a Lambda function behind the Invoke API double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poller.config import Settings, parse_settings
from tests.support import recorder
from tests.support.aws import stream_arn
from tests.support.invoke_api import InvokeApiServer
from tests.support.service_config import service_config, stream_mapping


def kinesis_settings(
    *,
    endpoint_url: str,
    stream: str,
    db: Path,
    name: str = "m",
    target: dict[str, Any] | None = None,
    endpoints: dict[str, str] | None = None,
    **mapping: Any,
) -> Settings:
    """Settings with one Kinesis mapping on ``stream`` delivering to the recorder handler."""
    return parse_settings(
        service_config(
            endpoint_url,
            stream_mapping(
                name, stream_arn(stream), target or "tests.support.recorder:record", **mapping
            ),
            checkpoints={"path": str(db)},
            endpoints=endpoints,
            shutdown={"drain_timeout_seconds": 10},
        )
    )


def lambda_settings(
    moto_url: str,
    server: InvokeApiServer,
    stream: str,
    db: Path,
    *,
    function: str = "fn",
    kinesis_url: str | None = None,
    sqs_url: str | None = None,
    destination: str | None = None,
    **mapping: Any,
) -> Settings:
    """:func:`kinesis_settings` for a Lambda ``function`` behind ``server``, with the on-failure
    ``destination`` (an ARN) if given. The destinations are moto's; Kinesis or SQS may be
    reached through a fault proxy instead (``kinesis_url``, ``sqs_url``)."""
    if destination is not None:
        mapping["destination_config"] = {"on_failure": {"destination_arn": destination}}
    return kinesis_settings(
        endpoint_url=kinesis_url or moto_url,
        endpoints={
            "lambda": server.url,
            "sqs": sqs_url or moto_url,
            "sns": moto_url,
            "s3": moto_url,
        },
        stream=stream,
        db=db,
        target={"type": "lambda", "function_name": function},
        **mapping,
    )


def delivered(stream: str) -> list[tuple[str, str]]:
    """(shard, sequence) of every record the recorder got for ``stream``."""
    return recorder.sequence_numbers(stream_arn(stream))


def batches(stream: str) -> list[list[dict[str, Any]]]:
    return list(recorder.BATCHES[stream_arn(stream)])
