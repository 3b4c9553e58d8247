"""Creates every aiobotocore client of the service, once, and closes them together.

The composition root (``poller.app``) owns one :class:`ClientFactory`; sources, targets and
stores receive ready clients and never build their own. Credentials come from botocore's
standard chain (environment, profile, ECS task role, instance profile), so nothing here reads
secrets. The endpoint for a service is its override if one is set, else the shared
``endpoint_url``, else AWS's public endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.utils import parse_timestamp


def client_config(*, attempts: int, read_timeout: float, pool: int) -> AioConfig:
    """The botocore settings every poller client shares, with what varies by purpose.

    Args:
        attempts: botocore's total attempts; 1 where the pipeline owns retries and backoff.
        read_timeout: seconds to wait for a response, past the longest the call may block.
        pool: connections the client may hold at once; one per concurrent caller.
    """
    retries: dict[str, Any] = {"total_max_attempts": attempts}
    if attempts > 1:
        retries["mode"] = "standard"
    return AioConfig(
        retries=retries,
        connect_timeout=10,
        read_timeout=read_timeout,
        max_pool_connections=pool,
        tcp_keepalive=True,
    )


#: Stream and queue reads: the pipeline owns retries and backoff, so botocore's are off.
SOURCE_CLIENT_CONFIG = client_config(attempts=1, read_timeout=30, pool=100)

#: Enhanced fan-out subscriptions (SubscribeToShard): each holds its connection for up to five
#: minutes, so the pool must have room for every shard a replica reads. An event comes at
#: least every few seconds (AWS: about 5 s on an idle shard), so a read that waits longer than
#: the timeout is a dead connection.
SUBSCRIBE_CLIENT_CONFIG = client_config(attempts=1, read_timeout=30, pool=100_000)

#: Control-plane and store calls (ListShards, DynamoDB, SQS, SNS, S3): a few quick retries.
CONTROL_CLIENT_CONFIG = client_config(attempts=3, read_timeout=30, pool=50)


#: Purposes whose clients read records: timestamps as epoch floats, blobs as base64 text.
SOURCE_PURPOSES = frozenset({"source", "subscribe"})


def epoch_seconds(value: Any) -> float:
    """Timestamp parser for source clients: the wire's epoch seconds, as a float.

    botocore's default turns every timestamp into a ``tzlocal`` datetime through dateutil,
    which costs more than the rest of a record's handling; Lambda's events want epoch seconds
    anyway. ISO strings (other protocols) are still understood.
    """
    if isinstance(value, int | float):
        return float(value)
    return float(parse_timestamp(value).timestamp())


def keep_base64(value: str) -> str:
    """Blob parser for source clients: keep the wire's base64 text.

    Lambda's events carry record data (Kinesis ``data``, DynamoDB ``B`` attributes) as base64,
    exactly as the source sent it, so decoding and re-encoding every record is wasted work.
    """
    return value


def _source_session() -> AioSession:
    """A session whose clients leave timestamps and blobs as they came over the wire."""
    session = get_session()
    factory = session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=epoch_seconds, blob_parser=keep_base64)
    return session


class ClientFactory:
    """Opens aiobotocore clients on demand and caches one per (service, purpose).

    Args:
        region: the AWS region of every client.
        endpoint_url: an endpoint for every service (LocalStack, moto), or None for AWS.
        endpoints: per-service endpoint overrides, by botocore service name.
        credentials: explicit static credentials (embedded mode only); None uses the chain.
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        endpoints: Mapping[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.region = region
        self._endpoint_url = endpoint_url
        self._endpoints = dict(endpoints or {})
        self._credentials = dict(credentials or {})
        self._session: AioSession = get_session()
        # Source clients (purpose "source") parse responses differently; see keep_base64.
        self._source_session: AioSession = _source_session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str, str], Any] = {}

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint URL used for ``service``, or None for AWS's default."""
        return self._endpoints.get(service, self._endpoint_url)

    async def client(
        self,
        service: str,
        *,
        purpose: str = "control",
        config: AioConfig | None = None,
        region: str | None = None,
    ) -> Any:
        """The shared client for ``service`` and ``purpose``, created on first use.

        ``purpose`` separates clients that need different botocore settings, such as the
        Lambda invoke client with its 15-minute read timeout. Clients with purpose ``source``
        (and ``subscribe``, enhanced fan-out's) return timestamps as epoch-second floats and
        blobs as their base64 text. ``region`` defaults to the factory's; a mapping passes its
        resource's own region.
        """
        region = region or self.region
        key = (service, purpose, region)
        if key not in self._clients:
            chosen = config or (
                SOURCE_CLIENT_CONFIG if purpose == "source" else CONTROL_CLIENT_CONFIG
            )
            session = self._source_session if purpose in SOURCE_PURPOSES else self._session
            creator = session.create_client(
                service,
                region_name=region,
                endpoint_url=self.endpoint_for(service),
                config=chosen,
                **self._credentials,
            )
            self._clients[key] = await self._stack.enter_async_context(creator)
        return self._clients[key]

    async def aclose(self) -> None:
        """Close every client, in reverse order of creation. Idempotent."""
        from poller.aws.lean import close_connections  # lean imports this module

        for client in self._clients.values():
            close_connections(client)
        self._clients.clear()
        await self._stack.aclose()
