"""The embedded local mode: an in-process AWS emulator, its resources, and sample traffic.

With ``embedded.enabled`` the service needs no AWS account and no Docker: before anything else
it starts moto's server in a thread on loopback, points every client at it with dummy
credentials, creates each mapping's missing stream, and (optionally) runs a small traffic
generator that puts JSON records into those streams while the service consumes them.

moto is an optional dependency (``pip install 'poller[embedded]'``): production images do not
carry it, and asking for embedded mode without it is a clear configuration error.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import count
from typing import Any

import anyio
import structlog
from botocore.exceptions import ClientError

from poller.config import EmbeddedSettings, KinesisMapping
from poller.errors import ConfigError

log = structlog.get_logger("poller.embedded")

#: Dummy credentials for the emulator; moto accepts any.
EMBEDDED_CREDENTIALS = {"aws_access_key_id": "embedded", "aws_secret_access_key": "embedded"}


class EmbeddedAws:
    """moto's server on loopback, running in a daemon thread of this process."""

    def __init__(self, settings: EmbeddedSettings) -> None:
        self._settings = settings
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> str:
        """Start the emulator and return its endpoint URL."""
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ConfigError(
                [
                    "embedded.enabled: true needs the emulator;"
                    " install it with pip install 'poller[embedded]'"
                ]
            ) from exc
        # werkzeug logs every emulator request at INFO; the service's own logs tell the story.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(
            ip_address=self._settings.host, port=self._settings.port, verbose=False
        )
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        log.info("embedded.started", endpoint_url=self.endpoint_url)
        return self.endpoint_url

    def stop(self) -> None:
        """Stop the emulator. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()


async def ensure_streams(kinesis: Any, mappings: list[KinesisMapping], shard_count: int) -> None:
    """Create every mapping's stream that does not exist yet, and wait until it is active."""
    for name in sorted({m.stream_name for m in mappings}):
        try:
            await kinesis.create_stream(StreamName=name, ShardCount=shard_count)
            log.info("embedded.stream_created", stream=name, shards=shard_count)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
        waiter = kinesis.get_waiter("stream_exists")
        await waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})


async def traffic_loop(
    kinesis: Any, mappings: list[KinesisMapping], settings: EmbeddedSettings
) -> None:
    """Put sample JSON records into every mapping's stream until cancelled.

    One sequential producer: emulators lose records under concurrent puts to one shard.
    """
    traffic = settings.traffic
    streams = sorted({m.stream_name for m in mappings})
    interval = 1.0 / traffic.records_per_second
    for n in count():
        key = f"key-{n % traffic.partition_keys}"
        body = json.dumps({"n": n, "key": key, "sent_at": round(time.time(), 3)}).encode()
        for stream in streams:
            try:
                await kinesis.put_record(StreamName=stream, PartitionKey=key, Data=body)
            except ClientError as exc:
                log.warning("embedded.put_failed", stream=stream, error=str(exc))
        await anyio.sleep(interval)
