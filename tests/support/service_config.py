"""The service's configuration in tests: one mapping against an emulator, as the dict the YAML
file holds (written for a subprocess, or parsed into Settings for a service in the test's loop).

The defaults are what every test wants: region us-east-1 (the emulators' ARNs), the emulator
as the endpoint, and the observability server on a free loopback port, so parallel services
never collide on a port nor listen beyond the machine.
"""

from __future__ import annotations

from typing import Any

from tests.support.aws import REGION


def service_config(
    endpoint_url: str,
    mapping: dict[str, Any],
    *,
    checkpoints: dict[str, Any],
    endpoints: dict[str, str] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A configuration with one mapping; ``sections`` add top-level sections or replace the
    default ``observability``."""
    return {
        "aws": {"region": REGION, "endpoint_url": endpoint_url, "endpoints": endpoints or {}},
        "checkpoints": checkpoints,
        "observability": {"host": "127.0.0.1", "port": 0},
        **sections,
        "mappings": [mapping],
    }


def stream_mapping(
    name: str, source_arn: str, target: str | dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """A Kinesis or DynamoDB Streams mapping reading from TRIM_HORIZON (unless ``fields`` say
    otherwise); a string ``target`` names a Python handler, ``module:function``."""
    if isinstance(target, str):
        target = {"type": "python", "handler": target}
    return {
        "name": name,
        "event_source_arn": source_arn,
        "starting_position": "TRIM_HORIZON",
        "target": target,
        **fields,
    }
