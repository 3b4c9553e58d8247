"""The control API's HTTP server (aiohttp): routing, limits, authentication, error bodies.

Data flow::

    HTTP request --bounded body read--> auth (SigV4 or none) --route (raw path)-->
        poller.control.operations --> JSON reply (x-amzn-RequestId; x-amzn-ErrorType on errors)

Routing reads the raw path, as sent: a tag call's resource ARN arrives percent-encoded
(``arn%3Aaws%3Alambda...``) and is decoded here, once, and the signature check needs the path
undecoded anyway. Every failure becomes one of AWS's error answers; nothing a client sends can
stop the server: a store outage is a 500 that every SDK retries, and an unexpected exception is
a logged 500. Bodies are read up to a limit and within a deadline, and idle keep-alive
connections are closed, so a slow or hostile client holds a connection, never the service.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote
from uuid import uuid4

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from poller.control import operations, wire
from poller.control.auth import (
    CredentialResolver,
    RequestToVerify,
    access_key_of,
    authenticate,
)
from poller.control.context import ControlContext
from poller.control.errors import ApiError, service_error
from poller.errors import CheckpointError

log = structlog.get_logger("poller.control")

#: The largest body accepted: about five 4 KiB filter patterns and 50 tags, with room to spare.
MAX_BODY_BYTES = 256 * 1024
#: A body must arrive within this; a client that trickles it is cut off.
BODY_READ_SECONDS = 10.0
#: An idle keep-alive connection is closed after this.
KEEPALIVE_SECONDS = 15.0
#: At shutdown, requests in flight get this long to finish.
SHUTDOWN_GRACE_SECONDS = 5.0
#: Requests handled at once; more are answered 429 at once (every SDK backs off and retries), so
#: a crowd of slow clients holds at most this many body reads.
MAX_IN_FLIGHT = 64
#: An authentication failure is logged at most once per access key and code in this window.
AUTH_LOG_WINDOW_SECONDS = 60.0
#: How many (code, access key) pairs that window remembers: the keys come from unauthenticated
#: requests, so without a bound a client inventing a new key per request grows memory forever.
AUTH_LOG_MEMORY = 4096

_MAPPINGS = "/2015-03-31/event-source-mappings"
_TAGS = "/2017-03-31/tags/"
_MUTATING = frozenset({"create", "update", "delete", "tag", "untag"})


@dataclass(frozen=True, slots=True)
class ControlServer:
    """A running control API: where it listens."""

    url: str


@dataclass(frozen=True, slots=True)
class _Route:
    """What a request asks for: the operation's name and its path parameter (UUID or ARN)."""

    op: str
    param: str = ""


def route(method: str, raw_path: str) -> _Route:
    """The operation a method and raw path (no query) name; 404 UnknownOperationException."""
    if raw_path.rstrip("/") == _MAPPINGS:
        found = {"POST": "create", "GET": "list"}.get(method)
        if found:
            return _Route(found)
    elif raw_path.startswith(_MAPPINGS + "/"):
        uuid = unquote(raw_path[len(_MAPPINGS) + 1 :])
        found = {"GET": "get", "PUT": "update", "DELETE": "delete"}.get(method)
        if found and uuid and "/" not in uuid:
            return _Route(found, uuid)
    elif raw_path.startswith(_TAGS):
        resource = unquote(raw_path[len(_TAGS) :])
        found = {"POST": "tag", "GET": "list_tags", "DELETE": "untag"}.get(method)
        if found and resource:
            return _Route(found, resource)
    raise ApiError(404, "UnknownOperationException", f"Unknown operation: {method} {raw_path}")


class OncePerWindow:
    """Which keys were seen within ``window`` seconds, remembering at most ``capacity`` of
    them (the oldest are forgotten first)."""

    def __init__(self, window: float, capacity: int) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: dict[Any, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, key: Any, now: float) -> bool:
        """Whether ``key`` was not seen within the window before ``now`` (and remember it)."""
        last = self._seen.pop(key, None)
        if last is not None and now - last < self._window:
            self._seen[key] = last
            return False
        while len(self._seen) >= self._capacity:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = now
        return True


@dataclass(slots=True)
class _Seen:
    """What a request turned out to be, as far as it got: for the audit log."""

    route: _Route | None = None
    caller: str | None = None


class ControlApp:
    """The request handler: one instance per server, holding what every request needs."""

    def __init__(self, ctx: ControlContext, credentials: CredentialResolver | None) -> None:
        self.ctx = ctx
        self.credentials = credentials if ctx.settings.auth == "sigv4" else None
        self._auth_logged = OncePerWindow(AUTH_LOG_WINDOW_SECONDS, AUTH_LOG_MEMORY)
        #: Set when the server stops: requests still arriving get 503 (SDKs retry it).
        self.closing = False
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request; never raises."""
        request_id = str(uuid4())
        seen = _Seen()
        error: str | None = None
        self._in_flight += 1
        try:
            status, payload = await self._answer(request, seen)
        except ApiError as exc:
            self._log_refusal(exc, request, seen.caller)
            status, payload, error = _answer_of(exc)
        except CheckpointError as exc:
            log.warning("control.store_unavailable", error=str(exc), request_id=request_id)
            status, payload, error = _answer_of(
                service_error("The mapping store did not answer; retry.")
            )
        except Exception:  # A bug must cost one request, never the server.
            log.exception("control.request_failed", request_id=request_id, path=request.path)
            status, payload, error = _answer_of(
                service_error("An internal error occurred; it was logged. Retry the request.")
            )
        finally:
            self._in_flight -= 1
        if seen.route is not None and seen.route.op in _MUTATING:
            self._audit(seen, request, status, payload, error)
        return _response(status, payload, request_id, error)

    async def _answer(self, request: web.Request, seen: _Seen) -> operations.Answer:
        """Read, authenticate, route and run the request; raises ApiError (and others)."""
        if self.closing:
            raise ApiError(503, "ServiceException", "poller is shutting down; retry.")
        if self._in_flight > MAX_IN_FLIGHT:
            raise ApiError(429, "TooManyRequestsException", "Rate exceeded")
        path, _, query = request.raw_path.partition("?")
        body = await _read_body(request)
        seen.caller = authenticate(
            _to_verify(request, body),
            resolver=self.credentials,
            region=self.ctx.region,
            now=self.ctx.clock(),
        )
        seen.route = route(request.method, path)
        return await self._dispatch(seen.route, query, body)

    async def _dispatch(self, found: _Route, query: str, body: bytes) -> operations.Answer:
        ctx = self.ctx
        if found.op == "create":
            return await operations.create_mapping(ctx, wire.parse_body(body))
        if found.op == "list":
            return await operations.list_mappings(ctx, dict(parse_qsl(query)))
        if found.op == "get":
            return await operations.get_mapping(ctx, found.param)
        if found.op == "update":
            return await operations.update_mapping(ctx, found.param, wire.parse_body(body))
        if found.op == "delete":
            return await operations.delete_mapping(ctx, found.param)
        if found.op == "tag":
            return await operations.tag_resource(ctx, found.param, wire.parse_body(body))
        if found.op == "untag":
            keys = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "tagKeys"]
            return await operations.untag_resource(ctx, found.param, keys)
        return await operations.list_tags(ctx, found.param)

    def _audit(
        self,
        seen: _Seen,
        request: web.Request,
        status: int,
        payload: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        """``control.request``: who changed what. Never the secret, signature or body."""
        assert seen.route is not None
        log.info(
            "control.request",
            op=seen.route.op,
            uuid=seen.route.param or (payload or {}).get("UUID"),
            access_key_id=seen.caller,
            source_ip=request.remote,
            status=status,
            error=error,
        )

    def _log_refusal(self, exc: ApiError, request: web.Request, caller: str | None) -> None:
        """Authentication failures, once per key and code a minute (a client retrying a bad
        signature would flood the log); other refusals are the audit log's."""
        if exc.status != 403:
            return
        key = access_key_of(request.headers.get("Authorization")) or caller
        if not self._auth_logged.first((exc.code, key), time.monotonic()):
            return
        log.warning(
            "control.auth_refused", code=exc.code, access_key_id=key, source_ip=request.remote
        )


def _answer_of(exc: ApiError) -> tuple[int, dict[str, Any], str]:
    return exc.status, dict(exc.body()), exc.code


async def _read_body(request: web.Request) -> bytes:
    """The body, up to MAX_BODY_BYTES and within BODY_READ_SECONDS; a larger one is refused
    without being read in full."""
    too_large = ApiError(
        413,
        "RequestEntityTooLargeException",
        f"Request must be smaller than {MAX_BODY_BYTES} bytes for the "
        "EventSourceMapping operations.",
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(BODY_READ_SECONDS) as deadline:
        try:
            while chunk := await request.content.read(64 * 1024):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_large
                chunks.append(chunk)
        except ConnectionError:
            # The client left mid-body: nobody reads the answer; no traceback for it.
            raise wire.invalid_content("The connection closed before the body arrived.") from None
    if deadline.cancelled_caught:
        raise wire.invalid_content(
            f"The request body did not arrive within {BODY_READ_SECONDS:g} seconds."
        )
    return b"".join(chunks)


def _to_verify(request: web.Request, body: bytes) -> RequestToVerify:
    headers: dict[str, str] = {}
    for name in request.headers:
        lname = name.lower()
        if lname not in headers:
            headers[lname] = ",".join(request.headers.getall(name))
    return RequestToVerify(
        method=request.method, target=request.raw_path, headers=headers, body=body
    )


def _response(
    status: int, payload: dict[str, Any] | None, request_id: str, error: str | None
) -> web.Response:
    headers = {"x-amzn-RequestId": request_id}
    if error is not None:
        headers["x-amzn-ErrorType"] = error
    if payload is None:
        return web.Response(status=status, headers=headers)
    return web.json_response(payload, status=status, headers=headers)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve_control_api(
    ctx: ControlContext,
    *,
    credentials: CredentialResolver | None = None,
    task_status: TaskStatus[ControlServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on ``ctx.settings.host``/``port`` until cancelled, then close (requests
    in flight get a short grace). ``task_status.started`` gets the bound URL.

    With ``auth: sigv4``, ``credentials`` is required: its keys are read here, before the
    port opens (a missing environment variable is a ConfigError at start), and unread
    Secrets Manager secrets are retried in the background while the server runs.
    """
    if ctx.settings.auth == "sigv4":
        if credentials is None:
            raise ValueError("control_api.auth sigv4 needs a CredentialResolver")
        await credentials.load()
    handler = ControlApp(ctx, credentials)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=KEEPALIVE_SECONDS,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        handler_cancellation=False,  # a write a client gave up on still completes whole
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, ctx.settings.host, ctx.settings.port)
        await site.start()
        port = int(runner.addresses[0][1])
        url = _url(ctx.settings.host, port)
        log.info("control.listening", url=url, auth=ctx.settings.auth)
        task_status.started(ControlServer(url))
        async with anyio.create_task_group() as tasks:
            if handler.credentials is not None:
                tasks.start_soon(handler.credentials.run)
            await anyio.sleep_forever()
    finally:
        handler.closing = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_GRACE_SECONDS + 2):
            await runner.cleanup()
        log.info("control.stopped")
