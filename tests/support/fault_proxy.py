"""A fault-injecting HTTP proxy in front of an AWS emulator, for failure-path tests.

Emulators cannot be told to expire an iterator now or to throttle the next read, and tests
must not patch boto. So the service's clients are pointed at this proxy, which forwards every
request to the emulator unchanged, except that a test can make it answer the next N calls of
one operation (by ``X-Amz-Target``, e.g. ``Kinesis_20131202.GetRecords``) with an AWS-format
error, or rewrite the JSON of the emulator's answers to one operation (e.g. make records look
older than they are, to test record age without waiting a minute). The client sees real HTTP
and real AWS bodies. Every forwarded request is recorded (operation and JSON body).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.http_server import ThreadedServer


@dataclass
class Fault:
    operation: str
    status: int
    code: str
    message: str
    remaining: int


@dataclass
class FaultProxy:
    upstream: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _faulted: dict[str, int] = field(default_factory=dict)
    _rewrites: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    _server: ThreadedServer | None = None

    def fail(
        self,
        operation: str,
        *,
        code: str,
        status: int = 400,
        message: str = "injected",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` with an AWS JSON error."""
        with self._lock:
            self._faults.append(Fault(operation, status, code, message, times))

    def faulted(self, operation: str) -> int:
        """How many calls of ``operation`` were answered with an injected fault."""
        with self._lock:
            return self._faulted.get(operation, 0)

    def heal(self, operation: str) -> None:
        """Stop injecting faults into ``operation``."""
        with self._lock:
            self._faults = [f for f in self._faults if f.operation != operation]

    def rewrite(
        self, operation: str, change: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> None:
        """Pass every successful JSON answer to ``operation`` through ``change`` (None: stop)."""
        with self._lock:
            if change is None:
                self._rewrites.pop(operation, None)
            else:
                self._rewrites[operation] = change

    def calls(self, operation: str) -> list[dict[str, Any]]:
        """Bodies of the forwarded calls of ``operation``, in order."""
        with self._lock:
            return [body for op, body in self.requests if op == operation]

    def _take_fault(self, operation: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.operation == operation and fault.remaining > 0:
                    fault.remaining -= 1
                    self._faulted[operation] = self._faulted.get(operation, 0) + 1
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation = request.headers.get("X-Amz-Target", "")
        fault = self._take_fault(operation)
        if fault is not None:
            payload = {"__type": fault.code, "message": fault.message}
            return web.json_response(
                payload, status=fault.status, content_type="application/x-amz-json-1.1"
            )
        try:
            parsed = json.loads(body) if body else {}
        except ValueError:
            parsed = {}
        with self._lock:
            self.requests.append((operation, parsed))
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            data = await upstream.read()
            with self._lock:
                change = self._rewrites.get(operation)
            if change is not None and upstream.status == 200 and data:
                data = json.dumps(change(json.loads(data))).encode()
            passed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "x-amzn-requestid", "x-amz-id-2")
            }
            return web.Response(body=data, status=upstream.status, headers=passed)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.cleanup_ctx.append(self._upstream_session)
        return app

    async def _upstream_session(self, app: web.Application) -> AsyncIterator[None]:
        # Opened and closed in the server's own loop, the one that forwards through it.
        self._session = aiohttp.ClientSession()
        yield
        await self._session.close()

    def __enter__(self) -> FaultProxy:
        self._server = ThreadedServer(self._app, name="fault-proxy").start()
        self.url = self._server.url
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
