"""The HTTP target: delivers a batch as a JSON ``POST`` to a URL.

Data flow::

    ShardProcessor --event dict--> HttpTarget.invoke --POST application/json--> endpoint
    ShardProcessor <--InvokeResult-- classify(status, body or connection error)

An HTTP endpoint stands in for a function, so its answers map onto Lambda's outcome classes:
2xx is success and its JSON body is the function's response (partial batch responses work
the same way), 429 is a throttle, any other status is a function error, running past the
timeout is a function timeout, an answer that is not valid HTTP (bad framing, a body shorter
than its ``Content-Length``, headers over aiohttp's limits) is a function error, and a request
that never got through (refused, DNS, reset, connect timeout, the connection closed with no
answer) is a service error that the pipeline retries without counting. A body over
Lambda's 6 MB response limit is a function error that names its size: it is read in chunks
and given up at the limit, so an endpoint can never make the service hold more than that.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.targets.lambda_ import decode_payload, encode_event
from poller.types import InvokeResult, Outcome

#: The header that carries the invocation's request id, for correlation on the server side.
REQUEST_ID_HEADER = "X-Poller-Request-Id"

#: The longest the TCP connect may take, within the overall timeout.
_CONNECT_TIMEOUT = 10.0

#: Connections an owned session keeps; the pipeline, not the pool, bounds concurrency.
_POOL_SIZE = 1000

#: The largest response body kept: Lambda's synchronous response limit, 6 MB.
MAX_RESPONSE_BYTES = MAX_PAYLOAD_BYTES

#: The size of each read of a response body.
_CHUNK_BYTES = 64 * 1024

#: Headers the target sets itself; a configured header of the same name (in any case) is
#: dropped rather than sent twice.
_OWN_HEADERS = frozenset({"content-type", REQUEST_ID_HEADER.lower()})


class _BodyTooLarge(Exception):
    """The endpoint's answer is over :data:`MAX_RESPONSE_BYTES`."""

    def __init__(self, size: str) -> None:
        super().__init__(size)
        self.size = size


def _display_url(url: str) -> str:
    """The URL without credentials, query or fragment, which may hold secrets."""
    parsed = URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


class HttpTarget:
    """POSTs each event to one URL and classifies the answer.

    Args:
        session: a shared aiohttp session, or None to have the target open (and close) its own.
        url: the endpoint.
        headers: extra request headers, such as an ``Authorization``; never logged.
        timeout_seconds: the whole request, including reading the answer, must fit in this.
        function_arn: the identifier used in logs and failure records; defaults to the URL
            without credentials or query.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        *,
        url: str,
        headers: Mapping[str, str],
        timeout_seconds: float,
        function_arn: str | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._url = url
        self._headers = {k: v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_seconds, sock_connect=min(_CONNECT_TIMEOUT, timeout_seconds)
        )
        self.function_arn = function_arn or _display_url(url)

    def _client(self) -> aiohttp.ClientSession:
        """The session, opened on first use because aiohttp needs a running event loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_POOL_SIZE),
                # Redirects would turn the POST into a GET; a 3xx is reported instead.
                raise_for_status=False,
            )
        return self._session

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        """POST ``event`` once; never raises for a failed invocation."""
        request_id = str(uuid.uuid4())
        # Ours come last: the body is always JSON and the id always the one reported.
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            REQUEST_ID_HEADER: request_id,
        }
        try:
            async with self._client().post(
                self._url,
                data=encode_event(event),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                try:
                    body = await _read_capped(response)
                except _BodyTooLarge as exc:
                    return _too_large(status, exc.size, request_id)
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            # The request reached the endpoint, which answered something that is not HTTP
            # (a bad status line, headers too big, broken chunking, a body shorter than its
            # Content-Length, an encoding that does not decode). The function ran and its
            # answer is unusable: a function error, so the retries are counted and end.
            return _malformed(exc, request_id)
        except aiohttp.ConnectionTimeoutError:
            # Checked before TimeoutError, its base: the request was never sent.
            return _failure(Outcome.SERVICE_ERROR, request_id, "connect to endpoint timed out")
        except TimeoutError:
            return _failure(Outcome.TIMEOUT, request_id, "endpoint timed out")
        except aiohttp.ClientError as exc:
            return _failure(
                Outcome.SERVICE_ERROR, request_id, f"endpoint unreachable: {type(exc).__name__}"
            )
        return _classify(status, body, request_id)

    async def aclose(self) -> None:
        """Close the session if the target opened it. Idempotent."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The response body, read in chunks up to :data:`MAX_RESPONSE_BYTES`.

    Raises:
        _BodyTooLarge: the declared length or the bytes read pass the limit; the connection
            is closed, since the rest of the body is never read.
    """
    declared = response.content_length
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        response.close()
        raise _BodyTooLarge(f"{declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            raise _BodyTooLarge(f"more than {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(status: int, size: str, request_id: str) -> InvokeResult:
    """The function error for a body over the limit, shaped like Lambda's."""
    message = (
        f"Response payload size ({size}) exceeded maximum allowed payload size "
        f"({MAX_RESPONSE_BYTES} bytes)."
    )
    return InvokeResult(
        outcome=Outcome.FUNCTION_ERROR,
        payload={"errorType": "Function.ResponseSizeTooLarge", "errorMessage": message},
        status_code=status,
        function_error="Unhandled",
        request_id=request_id,
        error=f"endpoint response too large: {size}, over the {MAX_RESPONSE_BYTES}-byte limit",
    )


def _classify(status: int, body: bytes, request_id: str) -> InvokeResult:
    """Sort an HTTP answer into success, throttle or function error."""
    payload, is_json = decode_payload(body)
    if 200 <= status < 300:
        outcome, function_error, error = Outcome.SUCCESS, None, None
    elif status == 429:
        outcome, function_error, error = Outcome.THROTTLE, None, "endpoint throttled (HTTP 429)"
    else:
        outcome, function_error = Outcome.FUNCTION_ERROR, "Unhandled"
        error = f"endpoint answered HTTP {status}"
    return InvokeResult(
        outcome=outcome,
        payload=payload,
        payload_is_json=is_json,
        status_code=status,
        function_error=function_error,
        request_id=request_id,
        error=error,
    )


def _malformed(exc: aiohttp.ClientError, request_id: str) -> InvokeResult:
    """The function error for an answer aiohttp could not parse; names the error, not the
    answer (which may quote the request's headers)."""
    kind = type(exc).__name__
    return InvokeResult(
        outcome=Outcome.FUNCTION_ERROR,
        payload={"errorType": "Function.MalformedResponse", "errorMessage": kind},
        function_error="Unhandled",
        request_id=request_id,
        error=f"endpoint sent a malformed response: {kind}",
    )


def _failure(outcome: Outcome, request_id: str, error: str) -> InvokeResult:
    """A result for a request that got no HTTP answer."""
    return InvokeResult(outcome=outcome, request_id=request_id, error=error)
