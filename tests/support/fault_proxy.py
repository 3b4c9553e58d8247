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

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


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

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

        async def serve() -> None:
            self._session = aiohttp.ClientSession()
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await runner.cleanup()
            await self._session.close()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(serve(),), daemon=True
        )
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
