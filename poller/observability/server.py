"""The observability endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for ECS.

Role in the data flow: pipeline hooks fill the registry of
:class:`~poller.observability.metrics.PrometheusMetrics`; this server renders it at
``/metrics`` when Prometheus scrapes. For health, the service marks its start-up steps on a
:class:`HealthState`, and :func:`heartbeat_loop`, a task in the service's event loop, stamps
it every second; the server only reads that state.

The server runs in a dedicated daemon thread (:class:`http.server.ThreadingHTTPServer`), not
on the event loop, so that every endpoint answers while the loop is overloaded or blocked.
That is what makes liveness meaningful: ``/healthz`` fails because the heartbeat stopped, not
because the probe itself could not be served.

* ``/healthz`` (liveness): 200 while the last heartbeat is younger than
  ``observability.liveness_timeout_seconds``, else 503. A failing liveness check should
  restart the task.
* ``/readyz`` (readiness): 200 once the configuration is loaded, the AWS clients and the
  checkpoint store (the lease table) are open and start-up is over, until shutdown begins;
  else 503. Start-up is over when every mapping has started, or when the service gave up
  waiting for the ones that cannot reach their source (``poller.app``: 10 s); those keep
  retrying and are listed as ``down`` in the body (and ``poller_mapping_up`` is 0), but they
  do not make the service unready: a restart cannot bring back a missing stream, and an
  orchestrator that replaced the task for it would only stop the mappings that work. Both
  answers carry the same JSON, which names what is missing.
* ``/metrics``: the Prometheus text format.

Requests are never logged above debug level: a probe every few seconds is not news.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import structlog
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST

from poller.config import ObservabilitySettings
from poller.errors import ConfigError
from poller.observability.metrics import PrometheusMetrics

log = structlog.get_logger("poller.observability")

#: How often the heartbeat task stamps :class:`HealthState`, seconds.
HEARTBEAT_INTERVAL_SECONDS: Final = 1.0
#: How long stopping the server may hold up the shutdown (it closes the port; a request
#: handler stuck past this is abandoned with its daemon thread).
SERVER_STOP_SECONDS: Final = 5.0
#: How long a client may take to send its request before its connection is dropped, seconds.
REQUEST_TIMEOUT_SECONDS: Final = 10.0
#: How often the server thread checks for a stop request, seconds; bounds :meth:`stop`.
_POLL_INTERVAL_SECONDS: Final = 0.1
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Liveness:
    """The answer of ``/healthz``.

    Attributes:
        alive: the heartbeat is younger than the timeout.
        loop_lag_seconds: seconds since the event loop last ran the heartbeat task; below the
            heartbeat interval (1 s) while the loop is healthy.
        timeout_seconds: the age at which the loop is judged stuck.
    """

    alive: bool
    loop_lag_seconds: float
    timeout_seconds: float

    def as_json(self) -> dict[str, Any]:
        """The response body."""
        return {
            "status": "ok" if self.alive else "unresponsive",
            "loop_lag_seconds": round(self.loop_lag_seconds, 3),
            "timeout_seconds": self.timeout_seconds,
        }


@dataclass(frozen=True)
class Readiness:
    """The answer of ``/readyz``.

    Attributes:
        checks: each condition of readiness and whether it holds.
        missing_mappings: expected mappings that are not running (not started yet, cannot
            reach their source, or restarting after a crash), sorted.
        mappings: each expected mapping's state: ``up``, ``starting`` (start-up not over)
            or ``down``.
    """

    checks: dict[str, bool]
    missing_mappings: list[str] = field(default_factory=list)
    mappings: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Every check holds."""
        return all(self.checks.values())

    def as_json(self) -> dict[str, Any]:
        """The response body."""
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": self.checks,
            "missing_mappings": self.missing_mappings,
            "mappings": self.mappings,
        }


class HealthState:
    """What the service has reached, written by the service and read by the server thread.

    Readiness needs every step: :meth:`mark_config_loaded`, :meth:`mark_clients_connected`,
    :meth:`expect_mappings` (even with an empty list, so that readiness never passes before
    the service knows its mappings), and then either :meth:`mark_mapping_started` for each
    expected mapping or :meth:`mark_startup_over` (the service stopped waiting for mappings
    that cannot start; they are reported down). :meth:`mark_mapping_down` reports a mapping
    that crashed or cannot reach its source. :meth:`mark_stopping` makes it not ready for
    good. Liveness is the age of the last :meth:`beat`; construction counts as the first beat.

    Args:
        clock: monotonic seconds; tests inject a fake one.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._config_loaded = False
        self._clients_connected = False
        self._expected: frozenset[str] | None = None
        self._started: set[str] = set()
        self._startup_over = False
        self._stopping = False

    # -- written by the service -------------------------------------------------------------
    def beat(self) -> None:
        """The event loop is running: called by :func:`heartbeat_loop`."""
        self._last_beat = self._clock()

    def mark_config_loaded(self) -> None:
        """The configuration was loaded and validated."""
        with self._lock:
            self._config_loaded = True

    def mark_clients_connected(self) -> None:
        """The AWS clients (and the checkpoint store) are open."""
        with self._lock:
            self._clients_connected = True

    def expect_mappings(self, names: Iterable[str]) -> None:
        """Name the mappings that must start before the service is ready (replaces any
        earlier list)."""
        with self._lock:
            self._expected = frozenset(names)

    def mark_mapping_started(self, name: str) -> None:
        """The mapping's runner started."""
        with self._lock:
            self._started.add(name)

    def mark_mapping_down(self, name: str) -> None:
        """The mapping's runner crashed, or cannot start; it is being retried."""
        with self._lock:
            self._started.discard(name)

    def mark_startup_over(self) -> None:
        """Start-up is over: readiness no longer waits for mappings that are down."""
        with self._lock:
            self._startup_over = True

    def mark_stopping(self) -> None:
        """Shutdown began: not ready from now on, so that traffic and checks drain."""
        with self._lock:
            self._stopping = True

    # -- read by the server -----------------------------------------------------------------
    def liveness(self, timeout_seconds: float) -> Liveness:
        """Whether the event loop ran the heartbeat within ``timeout_seconds``."""
        lag = max(0.0, self._clock() - self._last_beat)
        return Liveness(
            alive=lag < timeout_seconds, loop_lag_seconds=lag, timeout_seconds=timeout_seconds
        )

    def readiness(self) -> Readiness:
        """Each readiness condition, and the state of each mapping."""
        with self._lock:
            expected = self._expected
            missing = sorted(expected - self._started) if expected is not None else []
            waiting = "down" if self._startup_over else "starting"
            states = {
                name: "up" if name in self._started else waiting for name in sorted(expected or ())
            }
            checks = {
                "config_loaded": self._config_loaded,
                "clients_connected": self._clients_connected,
                "mappings_started": expected is not None and (not missing or self._startup_over),
                "not_stopping": not self._stopping,
            }
        return Readiness(checks=checks, missing_mappings=missing, mappings=states)


async def heartbeat_loop(health: HealthState, interval: float = HEARTBEAT_INTERVAL_SECONDS) -> None:
    """Stamp ``health`` every ``interval`` seconds, forever; run it in the service's loop.

    If the loop is blocked or overloaded the stamps stop or come late, and ``/healthz`` fails
    once the last one is older than the liveness timeout.
    """
    while True:
        health.beat()
        await anyio.sleep(interval)


class _HttpServer(ThreadingHTTPServer):
    """The HTTP server with what the handlers read. One daemon thread per connection."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        metrics: PrometheusMetrics,
        health: HealthState,
        liveness_timeout: float,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.liveness_timeout = liveness_timeout
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection failed (usually the client went away): not worth more than debug."""
        log.debug("observability.connection_error", client=str(client_address), exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Answers the three endpoints; anything else is 404."""

    server: _HttpServer
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "poller"
    sys_version = ""

    def do_GET(self) -> None:
        """Serve a request with its body."""
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        """Serve a request without its body (same status and headers as GET)."""
        self._respond(with_body=False)

    def _respond(self, *, with_body: bool) -> None:
        path = urlsplit(self.path).path
        try:
            status, content_type, body = self._route(path)
        except Exception:
            log.exception("observability.request_failed", path=path)
            status, content_type, body = HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, b"error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def _route(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        if path == "/metrics":
            return HTTPStatus.OK, CONTENT_TYPE_LATEST, self.server.metrics.render()
        if path == "/healthz":
            live = self.server.health.liveness(self.server.liveness_timeout)
            return _json(HTTPStatus.OK if live.alive else HTTPStatus.SERVICE_UNAVAILABLE, live)
        if path == "/readyz":
            ready = self.server.health.readiness()
            return _json(HTTPStatus.OK if ready.ready else HTTPStatus.SERVICE_UNAVAILABLE, ready)
        return HTTPStatus.NOT_FOUND, _TEXT, b"not found\n"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the stdlib from writing every request to stderr; debug level only."""
        log.debug("observability.http", message=format % args)


def _json(status: HTTPStatus, answer: Liveness | Readiness) -> tuple[HTTPStatus, str, bytes]:
    return status, _JSON, json.dumps(answer.as_json()).encode()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ObservabilityServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread.

    Args:
        settings: where to listen and the liveness timeout (``enabled`` is the caller's
            business: constructing the server means serving).
        metrics: the registry to expose.
        health: the state the health endpoints report.
    """

    def __init__(
        self, settings: ObservabilitySettings, metrics: PrometheusMetrics, health: HealthState
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._stopped = False

    def start(self) -> None:
        """Bind and start serving in a daemon thread.

        Raises:
            ConfigError: the address cannot be bound (port taken, unknown host, no
                permission); the message names host:port.
            RuntimeError: already started, or stopped.
        """
        if self._httpd is not None or self._stopped:
            raise RuntimeError(
                "an ObservabilityServer starts once: it was already started or stopped"
            )
        host, port = self.settings.host, self.settings.port
        try:
            httpd = _HttpServer(
                (host, port),
                metrics=self.metrics,
                health=self.health,
                liveness_timeout=self.settings.liveness_timeout_seconds,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                [
                    f"observability: cannot listen on {_host_port(host, port)}: {reason}; "
                    "free the port or set observability.host/observability.port"
                ]
            ) from exc
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_SECONDS},
            name="poller-observability",
            daemon=True,
        )
        self._thread.start()
        log.info("observability.listening", url=self.url)

    @property
    def port(self) -> int:
        """The bound port (the one picked when the settings say 0), also after :meth:`stop`.

        Raises:
            RuntimeError: the server was never started.
        """
        if self._port is None:
            raise RuntimeError("ObservabilityServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound address."""
        return f"http://{_host_port(self.settings.host, self.port)}"

    def stop(self) -> None:
        """Stop serving and close the socket; waits at most ~0.1 s. Idempotent."""
        self._stopped = True
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        log.debug("observability.stopped")


async def serve_observability(
    settings: ObservabilitySettings,
    metrics: PrometheusMetrics,
    health: HealthState,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL_SECONDS,
    task_status: TaskStatus[ObservabilityServer | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the endpoints and run the heartbeat until cancelled; for ``tg.start()``.

    ``task_status.started(server)`` is called once the port is bound, so a port clash fails
    ``tg.start()`` with :class:`~poller.errors.ConfigError`. On cancellation the server stops
    and the port is closed before this returns. With ``settings.enabled`` false nothing is
    served: it reports ``None`` as started and returns.
    """
    if not settings.enabled:
        task_status.started(None)
        return
    server = ObservabilityServer(settings, metrics, health)
    server.start()
    try:
        task_status.started(server)
        await heartbeat_loop(health, heartbeat_interval)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SERVER_STOP_SECONDS):
            await anyio.to_thread.run_sync(server.stop, abandon_on_cancel=True)
