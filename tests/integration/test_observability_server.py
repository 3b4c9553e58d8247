"""The observability server over real HTTP: /metrics, /healthz, /readyz, errors and lifecycle.

The server runs on 127.0.0.1 with port 0. Waits poll with a deadline; none sleeps blindly.
"""

from __future__ import annotations

import functools
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from poller.config import ObservabilitySettings
from poller.errors import ConfigError
from poller.observability.metrics import PrometheusMetrics
from poller.observability.server import HealthState, ObservabilityServer, serve_observability
from tests.support.waiting import wait_for

HOST = "127.0.0.1"
#: A request to the server must be answered within this, even with the event loop blocked.
ANSWER_WITHIN = 2.0


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(port: int = 0, liveness_timeout: float = 10.0) -> ObservabilitySettings:
    return ObservabilitySettings(host=HOST, port=port, liveness_timeout_seconds=liveness_timeout)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=ANSWER_WITHIN) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, headers, body = get(url)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, parsed with prometheus_client's parser."""
    status, headers, body = get(f"{url}/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics(process_metrics=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> HealthState:
    return HealthState(clock=clock)


@pytest.fixture
def server(metrics: PrometheusMetrics, health: HealthState) -> Iterator[ObservabilityServer]:
    srv = ObservabilityServer(settings(liveness_timeout=5.0), metrics, health)
    srv.start()
    yield srv
    srv.stop()


# -- /metrics ---------------------------------------------------------------------------------


def test_metrics_serves_the_hooks_values(
    server: ObservabilityServer, metrics: PrometheusMetrics
) -> None:
    metrics.records_polled("orders", 12)
    metrics.records_invoked("orders", 10)
    metrics.invocation("orders", "function_error", 0.2, 10)
    metrics.iterator_age("orders", "shardId-000000000000", 1234)
    metrics.destination_delivery_failed("orders", "sns")

    samples = scrape(server.url)

    def at(name: str, **labels: str) -> float:
        return samples[name, frozenset(labels.items())]

    assert at("poller_polled_events_total", mapping="orders") == 12.0
    assert at("poller_invoked_events_total", mapping="orders") == 10.0
    assert at("poller_invocations_total", mapping="orders", outcome="function_error") == 1.0
    assert at("poller_invocations_total", mapping="orders", outcome="success") == 0.0
    assert at("poller_invocation_duration_seconds_count", mapping="orders") == 1.0
    assert at("poller_invocation_duration_seconds_bucket", mapping="orders", le="0.25") == 1.0
    assert at("poller_invocation_duration_seconds_bucket", mapping="orders", le="0.1") == 0.0
    assert (
        at("poller_iterator_age_milliseconds", mapping="orders", shard="shardId-000000000000")
        == 1234.0
    )
    assert (
        at("poller_destination_delivery_failures_total", mapping="orders", destination_type="sns")
        == 1.0
    )

    metrics.records_polled("orders", 3)
    assert scrape(server.url)["poller_polled_events_total", frozenset({("mapping", "orders")})] == (
        15.0
    )


def test_metrics_ignores_a_query_string(server: ObservabilityServer) -> None:
    status, _, body = get(f"{server.url}/metrics?name[]=poller_info")
    assert status == 200
    assert b"poller_info" in body


def test_unknown_paths_are_404(server: ObservabilityServer) -> None:
    for path in ("/", "/metrics/extra", "/health", "/favicon.ico"):
        status, _, _ = get(f"{server.url}{path}")
        assert status == 404, path


def test_head_answers_without_a_body(server: ObservabilityServer) -> None:
    request = urllib.request.Request(f"{server.url}/readyz", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=ANSWER_WITHIN)
    with raised.value as error:
        assert error.code == 503
        assert error.read() == b""


# -- /readyz ----------------------------------------------------------------------------------


def test_readyz_needs_every_mark_and_fails_again_when_stopping(
    server: ObservabilityServer, health: HealthState
) -> None:
    url = f"{server.url}/readyz"
    status, body = get_json(url)
    assert status == 503
    assert body == {
        "status": "not_ready",
        "checks": {
            "config_loaded": False,
            "clients_connected": False,
            "mappings_started": False,
            "not_stopping": True,
        },
        "missing_mappings": [],
        "mappings": {},
    }

    health.mark_config_loaded()
    health.mark_clients_connected()
    health.expect_mappings(["orders", "payments"])
    health.mark_mapping_started("payments")
    status, body = get_json(url)
    assert status == 503
    assert body["checks"]["mappings_started"] is False
    assert body["missing_mappings"] == ["orders"]
    assert body["mappings"] == {"orders": "starting", "payments": "up"}

    health.mark_mapping_started("orders")
    status, body = get_json(url)
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {
            "config_loaded": True,
            "clients_connected": True,
            "mappings_started": True,
            "not_stopping": True,
        },
        "missing_mappings": [],
        "mappings": {"orders": "up", "payments": "up"},
    }

    health.mark_stopping()
    status, body = get_json(url)
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["not_stopping"] is False


def test_readyz_after_start_up_lists_down_mappings_and_stays_ready(
    server: ObservabilityServer, health: HealthState
) -> None:
    """Once start-up is over, a mapping that cannot start or crashed is listed as down, but
    the service stays ready (a restart would not bring back a missing stream)."""
    url = f"{server.url}/readyz"
    health.mark_config_loaded()
    health.mark_clients_connected()
    health.expect_mappings(["orders", "payments"])
    health.mark_mapping_started("payments")
    assert get_json(url)[0] == 503
    health.mark_startup_over()
    status, body = get_json(url)
    assert status == 200
    assert body["missing_mappings"] == ["orders"]
    assert body["mappings"] == {"orders": "down", "payments": "up"}
    health.mark_mapping_started("orders")
    health.mark_mapping_down("payments")
    status, body = get_json(url)
    assert status == 200
    assert body["mappings"] == {"orders": "up", "payments": "down"}


def test_readyz_with_no_mappings_still_needs_them_declared(
    server: ObservabilityServer, health: HealthState
) -> None:
    health.mark_config_loaded()
    health.mark_clients_connected()
    assert get_json(f"{server.url}/readyz")[0] == 503
    health.expect_mappings([])
    assert get_json(f"{server.url}/readyz")[0] == 200


# -- /healthz ---------------------------------------------------------------------------------


def test_healthz_follows_the_heartbeat_age(
    server: ObservabilityServer, health: HealthState, clock: FakeClock
) -> None:
    url = f"{server.url}/healthz"
    health.beat()
    clock.now += 0.25
    status, body = get_json(url)
    assert status == 200
    assert body == {"status": "ok", "loop_lag_seconds": 0.25, "timeout_seconds": 5.0}

    clock.now += 5.0  # 5.25 s since the last beat, over the 5 s timeout
    status, body = get_json(url)
    assert status == 503
    assert body == {"status": "unresponsive", "loop_lag_seconds": 5.25, "timeout_seconds": 5.0}

    health.beat()
    assert get_json(url)[0] == 200


def test_healthz_answers_while_the_event_loop_is_blocked(metrics: PrometheusMetrics) -> None:
    """The service loop runs in its own thread; a task blocks it with a synchronous sleep."""
    health = HealthState()
    serve = functools.partial(
        serve_observability,
        settings(liveness_timeout=0.3),
        metrics,
        health,
        heartbeat_interval=0.02,
    )

    async def block_the_loop() -> None:
        time.sleep(1.5)  # noqa: ASYNC251 - blocking the loop is the point

    with start_blocking_portal(backend="asyncio") as portal:
        serving, srv = portal.start_task(serve)
        assert isinstance(srv, ObservabilityServer)
        url = f"{srv.url}/healthz"
        assert get_json(url)[0] == 200

        blocked = portal.start_task_soon(block_the_loop)
        answers: list[tuple[int, float]] = []

        def unhealthy() -> bool:
            started = time.monotonic()
            status, _ = get_json(url)
            answers.append((status, time.monotonic() - started))
            return status == 503

        wait_for(unhealthy, 1.2, "/healthz to report the blocked loop", interval=0.01)
        assert not blocked.done(), "the loop must still be blocked when 503 is reported"
        assert all(elapsed < ANSWER_WITHIN / 2 for _, elapsed in answers), answers
        # The other endpoints answer too.
        assert get_json(f"{srv.url}/readyz")[0] == 503
        assert get(f"{srv.url}/metrics")[0] == 200

        blocked.result(timeout=5)
        wait_for(lambda: get_json(url)[0] == 200, 5, "/healthz to recover", interval=0.01)

        # Cancelling the portal's future cancels the task; its finally stops the server.
        serving.cancel()
        wait_for(lambda: not accepts_connections(srv.port), 5, "the port to close", interval=0.01)


# -- errors and lifecycle ----------------------------------------------------------------------


def test_a_taken_port_is_a_config_error_naming_host_and_port(
    server: ObservabilityServer, metrics: PrometheusMetrics, health: HealthState
) -> None:
    clash = ObservabilityServer(settings(port=server.port), metrics, health)
    with pytest.raises(
        ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{server.port}"
    ) as raised:
        clash.start()
    assert "in use" in str(raised.value)
    clash.stop()  # harmless after a failed start
    assert get(f"{server.url}/healthz")[0] == 200  # the first server is unaffected


def test_port_and_url_report_the_bound_port(server: ObservabilityServer) -> None:
    assert server.port > 0
    assert server.url == f"http://{HOST}:{server.port}"
    assert accepts_connections(server.port)


def test_stop_is_idempotent_and_closes_the_port(
    metrics: PrometheusMetrics, health: HealthState
) -> None:
    srv = ObservabilityServer(settings(), metrics, health)
    srv.stop()  # before start: nothing to do
    srv = ObservabilityServer(settings(), metrics, health)
    srv.start()
    port = srv.port
    srv.stop()
    srv.stop()
    assert not accepts_connections(port)
    with pytest.raises(RuntimeError):
        srv.start()


@pytest.mark.anyio
async def test_serve_observability_heartbeats_and_stops_on_cancellation(
    metrics: PrometheusMetrics,
) -> None:
    health = HealthState()
    async with anyio.create_task_group() as tg:
        srv = await tg.start(serve_observability, settings(liveness_timeout=5.0), metrics, health)
        assert isinstance(srv, ObservabilityServer)
        port = srv.port
        status, body = await anyio.to_thread.run_sync(get_json, f"{srv.url}/healthz")
        assert status == 200
        assert body["loop_lag_seconds"] < 1.0
        tg.cancel_scope.cancel()
    # The server is stopped before serve_observability returns.
    assert not accepts_connections(port)


@pytest.mark.anyio
async def test_serve_observability_fails_start_when_the_port_is_taken(
    server: ObservabilityServer, metrics: PrometheusMetrics, health: HealthState
) -> None:
    with pytest.raises(ExceptionGroup) as raised:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_observability, settings(port=server.port), metrics, health)
    assert raised.group_contains(ConfigError, match=rf"127\.0\.0\.1:{server.port}")


@pytest.mark.anyio
async def test_serve_observability_does_nothing_when_disabled(
    metrics: PrometheusMetrics, health: HealthState
) -> None:
    disabled = ObservabilitySettings(enabled=False, host=HOST, port=0)
    async with anyio.create_task_group() as tg:
        assert await tg.start(serve_observability, disabled, metrics, health) is None
