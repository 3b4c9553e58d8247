"""The lean call path: GetRecords for Kinesis and DynamoDB Streams, and SQS's ReceiveMessage,
DeleteMessageBatch and ChangeMessageVisibilityBatch, without botocore's per-call machinery,
falling back to the full client for anything it does not know.

An idle shard is polled once a second (Kinesis) or four times a second (DynamoDB Streams), and
most of an empty poll's CPU went to botocore's handler chain (events, user agent, endpoint
rules, parameter validation, the response shape walk), not to the request; an SQS mapping
makes two or three such calls per batch of at most ten messages, and botocore's chain cost
more than the rest of the batch's handling. :class:`LeanCall` sends the same request itself,
keeping what matters from botocore:

* the endpoint and signing context its endpoint rules resolve, once per distinct stream ARN;
* its credentials, frozen per call (refreshable credentials keep refreshing), and its SigV4
  signer (``SigV4Auth.add_auth``) on every request;
* its service model: the answer is projected on the operation's output shape, compiled once
  (:mod:`poller.aws.shapes`), with the client's own timestamp and blob parsers (the source
  clients', or botocore's defaults for SQS's clients), so a page equals what the client would
  return (without ``ResponseMetadata``).

The request goes out over a small keep-alive HTTP/1.1 client (:mod:`poller.aws.http1`). A
known AWS error becomes the same ``SourceError`` the full path raises; a connection failure or
timeout is ``SourceUnavailable``. Any other answer (not JSON, an unknown error code, a missing
field, an HTTP shape the client does not read) is not guessed at: that one call is made again
through the full client, and the fallback is counted and logged once at debug. An error of a
service that answers errors in its old query protocol's codes too (SQS: the
``x-amzn-query-error`` header) takes the header's code as botocore does, where the HTTP
client passes the header on (see :data:`QUERY_ERROR_HEADER`).

A call whose answer hands something out (ReceiveMessage: its messages turn invisible) cannot
be made twice for free: when such an answer arrived and could not be read, the lean path is
switched off for that call for good (logged at warning), so that at most one answer's
messages wait out their visibility timeout.

``POLLER_LEAN_READS=0`` in the environment turns the lean path off (every call goes through the
full client).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import weakref
from collections.abc import Mapping
from itertools import repeat
from typing import Any
from urllib.parse import urlsplit

import botocore
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path
from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

from poller.aws.clients import epoch_seconds, keep_base64
from poller.aws.http1 import HttpPool, UnsupportedAnswer
from poller.aws.shapes import Malformed, Parser, compile_shape, keep
from poller.aws.sigv4 import SigV4Signer
from poller.aws.translate import KNOWN_CODES, source_call, translate_client_error
from poller.errors import SourceUnavailable

log = structlog.get_logger("poller.aws")

#: Error codes that are not in an operation's model but that AWS answers any call with.
COMMON_ERROR_CODES = frozenset(
    {
        "AccessDeniedException",
        "ThrottlingException",
        "InternalFailure",
        "ServiceUnavailable",
        "ValidationException",
    }
)
#: The header in which query-compatible services (SQS) give an error's old query-protocol code
#: and fault, ``Code;Sender``; botocore reports that code. The HTTP client returns only the
#: headers it reads (:mod:`poller.aws.http1`): where this one is not among them, the JSON code
#: stands (the shape's name, e.g. ``QueueDoesNotExist`` for ``AWS.SimpleQueueService.
#: NonExistentQueue``; callers that test SQS codes accept both).
QUERY_ERROR_HEADER = "x-amzn-query-error"
#: Proxy settings botocore honours; the lean path does not speak to proxies.
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
#: Keep-alive connections by client and endpoint URL, shared by every lean call of a client.
_POOLS: weakref.WeakKeyDictionary[Any, dict[str, HttpPool]] = weakref.WeakKeyDictionary()
#: Sent (unsigned) so that server-side logs can tell the lean path's calls apart.
USER_AGENT = f"poller-lean-reads Botocore/{botocore.__version__}"
#: The escape hatch: set to 0 to send every read through the full client.
ENV_SWITCH = "POLLER_LEAN_READS"
#: Built once: ``json.dumps`` with separators builds an encoder per call, and ``json.loads``
#: of bytes sniffs the encoding first (AWS answers UTF-8; anything else falls back).
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_DECODE = json.JSONDecoder().decode


def compile_output(shape: Any, *, null_free: bool = False) -> Parser:
    """The parser of an operation's output as a source client reads it (``epoch_seconds``
    for timestamps, ``keep_base64`` for blobs: ``LeanCall.for_client`` checks the client's
    parsers are these), cheaper per value: ``keep_base64`` is the identity, and a JSON
    timestamp is already the float ``epoch_seconds`` would make of it. ``null_free``: for
    answers that hold no null (see :func:`poller.aws.shapes.compile_shape`)."""
    return compile_shape(
        shape, _epoch_seconds, keep, null_free=null_free, timestamp_keeps=frozenset({float})
    )


def compile_botocore_output(shape: Any, *, null_free: bool = False) -> Parser:
    """The parser of an operation's output as a client with botocore's default parsers reads
    it: timestamps through ``parse_timestamp``, blobs decoded to bytes."""
    return compile_shape(shape, DEFAULT_TIMESTAMP_PARSER, base64.b64decode, null_free=null_free)


def _epoch_seconds(value: Any) -> float:
    """The source clients' timestamp parser (``epoch_seconds``), without a second call for
    the float that JSON answers carry."""
    return value if type(value) is float else epoch_seconds(value)


def _header_safe(value: str) -> bool:
    """Whether ``value`` may go into a header line as it is (no control characters)."""
    return value.isprintable() and value.isascii()


def lean_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the lean path is on: unless ``POLLER_LEAN_READS`` is 0, false, no or off."""
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


class Fallback(Exception):
    """This call is made through the full client; the message says why.

    ``answered``: the service answered and may have acted on the request (an answer that
    could not be read), as opposed to a call that never left or was refused.
    """

    def __init__(self, reason: str, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered


class LeanCall:
    """One JSON-protocol read operation of one source client, sent by hand.

    Build it with :meth:`for_client`, which returns None when the client is not one the lean
    path can stand in for (another protocol or signer, a proxy, custom parsers, switched off).

    Args:
        client: the aiobotocore client: a source client (``ClientFactory.client(...,
            purpose="source")``), or, with ``plain_parsers``, one with botocore's parsers.
        operation: the operation's name in the service model, e.g. ``GetRecords``.
        required: per item of the output's list ``items``, the keys that must be present.
        items: the output's list whose items ``required`` applies to; None for no check.
        plain_parsers: the client reads answers with botocore's default parsers (with
            :meth:`for_client`: it may, and the client's settings tell).
        hands_out: the answer hands something out (see the module's doc): an answer that
            could not be read switches the lean path off for this call.
        any_error_code: a JSON error is answered with its code whatever the code (as botocore
            does), not only the codes the model and :data:`COMMON_ERROR_CODES` list: a call
            that must not be sent twice for an error (a retried delete counts its attempts).
    """

    def __init__(
        self,
        client: Any,
        operation: str,
        required: frozenset[str],
        *,
        items: str | None = "Records",
        plain_parsers: bool = False,
        hands_out: bool = False,
        any_error_code: bool = False,
    ) -> None:
        self._client = client
        self._method = getattr(client, _snake(operation))
        model = client.meta.service_model
        self._operation = model.operation_model(operation)
        compiler = compile_botocore_output if plain_parsers else compile_output
        self._parse = compiler(self._operation.output_shape)
        self._parse_null_free = compiler(self._operation.output_shape, null_free=True)
        modeled = {shape.name for shape in self._operation.error_shapes}
        self._known_errors = COMMON_ERROR_CODES | KNOWN_CODES | modeled
        self._query_compatible = "awsQueryCompatible" in model.metadata
        self._required = required
        self._items = items
        self._hands_out = hands_out
        self._any_error_code = any_error_code
        #: False once an answer that handed something out could not be read.
        self.enabled = True
        self._target = f"{model.metadata['targetPrefix']}.{operation}"
        content_type = f"application/x-amz-json-{model.metadata['jsonVersion']}"
        headers = [("Content-Type", content_type), ("X-Amz-Target", self._target)]
        if self._query_compatible:  # botocore's serializer adds it for such services
            headers.append(("x-amzn-query-mode", "true"))
        self._headers = tuple(headers)
        config = client.meta.config
        self._timeouts = (float(config.connect_timeout), float(config.read_timeout))
        self._max_connections = int(config.max_pool_connections or 10)
        self._routes: dict[str, _Route | None] = {}
        #: Calls made through the full client because the lean path did not know the answer.
        self.fallbacks = 0
        self._logged: set[str] = set()

    @classmethod
    def for_client(
        cls,
        client: Any,
        operation: str,
        required: frozenset[str],
        *,
        items: str | None = "Records",
        plain_parsers: bool = False,
        hands_out: bool = False,
        any_error_code: bool = False,
    ) -> LeanCall | None:
        """A lean call for ``client``, or None where only the full client will do.

        The client must read answers with the source clients' parsers, or, when
        ``plain_parsers`` is set, it may read them with botocore's defaults (no parser set
        at all); the lean parse then uses the same ones as the client."""
        if not lean_enabled() or any(os.environ.get(name) for name in _PROXY_VARIABLES):
            return None
        try:
            model = client.meta.service_model
            # The parser settings the client's responses are read with (ClientFactory's
            # source session, or botocore's defaults): the lean path applies the same.
            parsing = client._endpoint._response_parser_factory._defaults
            if (
                model.protocol != "json"
                or "targetPrefix" not in model.metadata
                or client.meta.config.proxies
                or not _parsers_known(parsing, plain=plain_parsers)
            ):
                return None
            return cls(
                client,
                operation,
                required,
                items=items,
                plain_parsers=not parsing,
                hands_out=hands_out,
                any_error_code=any_error_code,
            )
        except (Malformed, KeyError, AttributeError, TypeError, ValueError):
            return None

    async def call(self, params: dict[str, Any]) -> dict[str, Any]:
        """The operation's parsed output; raises ``SourceError`` as the full path does."""
        if self.enabled:
            try:
                return await self._lean(params)
            except Fallback as exc:
                self._fell_back(str(exc), answered=exc.answered)
        async with source_call(self._operation.name):
            response: dict[str, Any] = await self._method(**params)
        response.pop("ResponseMetadata", None)
        return response

    async def _lean(self, params: dict[str, Any]) -> dict[str, Any]:
        body = _ENCODE(params).encode()
        try:
            route = await self._route(params)
            request = await self._signed(route, body)
        except BotoCoreError as exc:  # endpoint rules or credentials: botocore says it better
            raise Fallback(f"not signed by hand: {exc!r}") from exc
        try:
            answer = await route.pool.request(request)
        except UnsupportedAnswer as exc:
            raise Fallback(f"HTTP answer not read by hand: {exc}", answered=True) from exc
        except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            name = self._operation.name
            raise SourceUnavailable(f"{name} could not reach the service: {exc!r}") from exc
        if answer.status != 200:
            raise self._error(answer.status, answer.body, answer.headers)
        return self._page(answer.body)

    async def _route(self, params: dict[str, Any]) -> _Route:
        """Endpoint, Host and signing context, from botocore's endpoint rules (cached per
        stream ARN: the rules read only the ARN and the client's settings)."""
        key = str(params.get("StreamARN", ""))
        if key not in self._routes:
            self._routes[key] = await self._resolve(params)
        route = self._routes[key]
        if route is None:
            raise Fallback("endpoint or signer not supported by the lean path")
        return route

    async def _resolve(self, params: dict[str, Any]) -> _Route | None:
        context: dict[str, Any] = {}
        url, headers, _ = await self._client._resolve_endpoint_ruleset(
            self._operation, params, context
        )
        signer = self._client._request_signer
        auth_type = context.get("auth_type") or signer.signature_version
        if headers or auth_type != "v4" or urlsplit(url).path not in ("", "/"):
            return None  # extra headers, another signer, or a path: the full client's work
        signing = context.get("signing", {})
        pools = _POOLS.setdefault(self._client, {})
        if url not in pools:
            connect, read = self._timeouts
            tls = _tls_context() if url.startswith("https:") else None
            pools[url] = HttpPool(
                url,
                connect_timeout=connect,
                read_timeout=read,
                ssl_context=tls,
                max_connections=self._max_connections,
            )
        name = signing.get("signing_name", signer.signing_name)
        region = signing.get("region", signer.region_name)
        return _Route(
            url=url,
            pool=pools[url],
            signing_name=name,
            region=region,
            signer=SigV4Signer(
                host=pools[url].host, region=region, service=name, headers=self._headers
            ),
        )

    async def _signed(self, route: _Route, body: bytes) -> bytes:
        """The whole HTTP request, SigV4-signed with the credentials botocore froze for it."""
        signer = self._client._request_signer
        auth = await signer.get_auth_instance(
            signing_name=route.signing_name, region_name=route.region, signature_version="v4"
        )
        credentials = auth.credentials
        if credentials is None:
            raise Fallback("no credentials")
        if not _header_safe(credentials.access_key) or not _header_safe(credentials.token or ""):
            # A CR or LF would write extra headers (or a second request) onto the connection;
            # botocore refuses such a request with its own error, so let it.
            raise Fallback("a control character in the credentials")
        headers = route.signer.sign(
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            token=credentials.token,
            body=body,
        )
        head = [f"POST / HTTP/1.1\r\nHost: {route.pool.host}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers]
        head.append(f"User-Agent: {USER_AGENT}\r\nContent-Length: {len(body)}\r\n\r\n")
        return "".join(head).encode("latin-1") + body

    def _page(self, body: bytes) -> dict[str, Any]:
        # A JSON null is the bytes "null": an answer without them holds none, and its parse
        # need not look for them in every record (the search costs less than the looking).
        parse = self._parse if b"null" in body else self._parse_null_free
        try:
            # An empty body is botocore's empty output (its JSON parser reads it as {}).
            page = parse(_DECODE(body.decode()) if body else {})
            if self._items is not None:
                records = page[self._items]
                if records:  # an idle poll's empty page has nothing to check
                    self._check_required(records)
        except (ValueError, UnicodeDecodeError, Malformed, KeyError, TypeError) as exc:
            raise Fallback(f"answer not read by hand: {exc!r}", answered=True) from exc
        return dict(page)

    def _check_required(self, records: list[dict[str, Any]]) -> None:
        """Every record has the fields the source reads: key by key over the whole page, in C,
        rather than record by record."""
        for key in self._required:
            if not all(map(dict.__contains__, records, repeat(key))):
                raise Fallback("a record without a required field", answered=True)

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> Exception:
        """The SourceError of a known AWS error, else a Fallback."""
        if self._any_error_code and (plain := _plain_error(status, body)) is not None:
            # not a JSON error (a load balancer's or proxy's page, or nothing): read as
            # botocore reads it, since such a call must not be sent a second time for an error
            return self._client_error(*plain)
        try:
            error = json.loads(body)
            code = error["__type"]
            message = error.get("message", error.get("Message", ""))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            return Fallback(f"HTTP {status} without a JSON error")
        if not isinstance(code, str) or not isinstance(message, str):
            return Fallback(f"HTTP {status} with an unexpected error body")
        code = code.split(":", 1)[0].rsplit("#", 1)[-1]
        if code not in self._known_errors and not self._any_error_code:
            return Fallback(f"HTTP {status} with unknown error code {code}")
        response: Any = {"Error": {"Code": code, "Message": message}}
        if self._query_compatible:
            _query_error(response["Error"], headers.get(QUERY_ERROR_HEADER, ""))
        return self._client_error(code, message, response)

    def _client_error(self, code: str, message: str, response: Any = None) -> Exception:
        """The SourceError the full path raises for this error."""
        response = response or {"Error": {"Code": code, "Message": message}}
        client_error = ClientError(response, self._operation.name)
        translated = translate_client_error(self._operation.name, client_error)
        translated.__cause__ = client_error
        return translated

    def _fell_back(self, reason: str, *, answered: bool) -> None:
        self.fallbacks += 1
        if answered and self._hands_out:
            self.enabled = False
            log.warning(
                "lean.switched_off",
                operation=self._target,
                reason=reason,
                hint="what that answer handed out (messages) is delivered again once its "
                "visibility timeout lapses; every later call goes through the full client",
            )
            return
        if reason not in self._logged and len(self._logged) < 100:
            self._logged.add(reason)
            log.debug("lean.fallback", operation=self._target, reason=reason)


def _plain_error(status: int, body: bytes) -> tuple[str, str] | None:
    """botocore's code and message for an error answer whose body is not a JSON object (its
    generic error for a 5xx page or none, else the status as code and the text as message);
    None for a JSON object, which the caller reads."""
    page = body.strip()
    if status >= 500 and (not page or page.startswith(b"<html>")):
        return str(status), http.client.responses.get(status, "")
    if not page:
        return str(status), ""
    try:
        if isinstance(json.loads(body), dict):
            return None
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        return str(status), body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _query_error(error: dict[str, str], header: str) -> None:
    """Apply a query-compatible service's ``x-amzn-query-error: Code;Fault`` header to a
    parsed error as botocore's JSON parser does: that code replaces the JSON one."""
    parts = header.split(";")
    if len(parts) == 2 and parts[0]:
        error["QueryErrorCode"] = error["Code"]
        error["Type"] = parts[1]
        error["Code"] = parts[0]


def _parsers_known(parsing: Mapping[str, Any], *, plain: bool) -> bool:
    """Whether a client's parser settings are ones the lean path reproduces: the source
    clients' two, or (``plain``) botocore's defaults, that is none set."""
    timestamps, blobs = parsing.get("timestamp_parser"), parsing.get("blob_parser")
    if timestamps is epoch_seconds and blobs is keep_base64:
        return True
    return plain and timestamps is None and blobs is None and not parsing


def _tls_context() -> ssl.SSLContext:
    """The CA bundle botocore verifies with: ``AWS_CA_BUNDLE``, else its default bundle."""
    return ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True))


def close_connections(client: Any) -> None:
    """Close the lean path's idle connections for ``client`` (when the client is closed)."""
    for pool in _POOLS.pop(client, {}).values():
        pool.close()


class _Route:
    """Where one lean call goes and how it is signed."""

    __slots__ = ("pool", "region", "signer", "signing_name", "url")

    def __init__(
        self, *, url: str, pool: HttpPool, signing_name: str, region: str, signer: SigV4Signer
    ) -> None:
        self.signer = signer
        self.url = url
        self.pool = pool
        self.signing_name = signing_name
        self.region = region


def _snake(operation: str) -> str:
    """``GetRecords`` -> ``get_records``: the client's method for an operation."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
