"""Hostile handlers and targets: whatever they raise or however they block, the invocation ends
in an :class:`~poller.types.Outcome` and never in an exception out of ``invoke``.

The Python target runs real handlers from ``tests.support.handlers`` in this process (their
threads are real threads); the guard is driven by in-memory fakes of the Target port. Only a
genuine cancellation of the caller may leave ``invoke``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest
import structlog.testing

from poller.aws.clients import ClientFactory
from poller.config import HttpTargetConfig, PythonTargetConfig
from poller.errors import HandlerImportError
from poller.observability.metrics import RecordingMetrics
from poller.targets import build_target, handler_loop
from poller.targets.guard import GuardedTarget
from poller.targets.python import PythonTarget, load_handler
from poller.types import InvokeResult, Outcome
from tests.support import handlers
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

EVENT: dict[str, Any] = {"Records": [{"kinesis": {"sequenceNumber": "1", "data": "e30="}}]}


class RaisingTarget:
    """A fake target that raises ``exc`` from ``invoke``."""

    function_arn = "fake:raising"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        await anyio.lowlevel.checkpoint()
        raise self.exc

    async def aclose(self) -> None:
        """Nothing to close."""


class SleepingTarget:
    """A fake target whose invocation never ends by itself."""

    function_arn = "fake:sleeping"

    def __init__(self) -> None:
        self.started = anyio.Event()

    async def invoke(self, event: dict[str, Any]) -> InvokeResult:
        self.started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Nothing to close."""


async def invoke_cancelled_from_outside(
    target: Any, event: dict[str, Any] = EVENT
) -> list[InvokeResult]:
    """Invoke ``target`` and cancel the caller's scope once the invocation started; returns
    what ``invoke`` returned (nothing, when the cancellation propagated as it must)."""
    returned: list[InvokeResult] = []
    started = anyio.Event()

    async def call(scope: anyio.CancelScope) -> None:
        with scope:
            started.set()
            returned.append(await target.invoke(event))
            await anyio.sleep(5)  # reached only if invoke swallowed the cancellation

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, scope)
        await started.wait()
        await anyio.sleep(0.05)
        scope.cancel()
    return returned


# -- HTTP targets that can never work are refused by validation (defect 13) ------------------


@pytest.mark.parametrize(
    ("url", "headers", "message"),
    [
        (
            "https://user:pw@example.com/hook",
            {"authorization": "Bearer SECRET"},
            "the URL carries credentials (user:password@) and headers has Authorization",
        ),
        (
            "https://example.com/hook",
            {"X-Api-Key": "SECRET\r\nX-Injected: 1"},
            "header 'X-Api-Key': the value holds a control character (CR, LF, NUL...)",
        ),
        ("https://example.com/hook", {"X-Api-Key": "SECRET\x00"}, "control character"),
        (
            "https://example.com/hook\r\nX-Injected: 1",
            {},
            "the URL holds '\\r' at position 24; a URL cannot contain control characters",
        ),
        ("https://example.com/a b", {}, "the URL holds ' ' at position 21"),
        ("https://example.com/", {"X Api": "SECRET"}, "'X Api' is not an HTTP header name"),
        ("https://example.com/", {"X:Api": "SECRET"}, "'X:Api' is not an HTTP header name"),
        ("https://example.com/", {"Content-Length": "5"}, "header 'Content-Length' is set by"),
        ("https://example.com/", {"transfer-encoding": "x"}, "frames the request body"),
        ("https://example.com/", {"X-Key": "SECRET", "x-key": "SECRET"}, "given twice"),
        # Hosts IDNA or the resolver refuse: every request (or the target's start) would fail.
        ("https://a..b/hook", {}, "the URL's host 'a..b' is not a host name"),
        ("https://" + "a" * 64 + ".com/", {}, "is not a host name a request can be sent to"),
        ("https://exa\u2028mple.com/", {}, "host 'exa\\u2028mple.com' is not a host name"),
        ("https://exa\u00a0mple.com/", {}, "host 'exa\\xa0mple.com' is not a host name"),
        ("https://\ud800/", {}, "is not a host name"),
    ],
)
def test_http_target_config_refuses_what_no_request_can_carry(
    url: str, headers: dict[str, str], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        HttpTargetConfig(type="http", url=url, headers=headers)

    assert message in str(caught.value)
    [error] = caught.value.errors()
    assert "SECRET" not in error["msg"], "header values may be secrets: never quoted"


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("https://user:pw@example.com/hook", {"X-Team": "data"}),
        ("https://example.com/hook", {"Authorization": "Bearer t", "X-Note": "tab\tand é"}),
        ("https://example.com/hook?q=%0D%0A", {"Content-Type": "application/json"}),
        ("https://bücher.example/hook", {}),
        ("https://[fe80::1%25eth0]:8443/hook", {}),
        ("http://10.0.0.1:8080/hook", {}),
    ],
)
def test_http_target_config_accepts_what_http_can_send(url: str, headers: dict[str, str]) -> None:
    assert HttpTargetConfig(type="http", url=url, headers=headers).headers == headers


def test_http_target_timeout_is_a_number_not_a_boolean() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        HttpTargetConfig(type="http", url="https://example.com/", timeout_seconds=True)

    assert "true is not a number" in str(caught.value)


# -- the guard around every target (defect 13) ------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("Cannot combine AUTHORIZATION header with AUTH argument"),
        KeyboardInterrupt(),
        GeneratorExit(),
        handlers.HandlerBaseError(),
        SystemExit(3),
    ],
    ids=type,
)
async def test_guard_turns_anything_a_target_raises_into_a_function_error(
    exc: BaseException,
) -> None:
    with structlog.testing.capture_logs() as logs:
        result = await GuardedTarget(RaisingTarget(exc)).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.error == f"target raised {type(exc).__name__}"
    [entry] = [e for e in logs if e["event"] == "target.raised"]
    assert entry["error_type"] == type(exc).__name__
    assert "AUTHORIZATION" not in str(entry)  # messages may quote headers: never logged


async def test_guard_reports_a_cancellation_the_target_raised_by_itself() -> None:
    exc = anyio.get_cancelled_exc_class()("not ours")

    result = await GuardedTarget(RaisingTarget(exc)).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.error == f"target raised {type(exc).__name__}"


async def test_guard_lets_a_genuine_cancellation_through() -> None:
    target = SleepingTarget()

    returned = await invoke_cancelled_from_outside(GuardedTarget(target))

    assert target.started.is_set()
    assert returned == []


async def test_build_target_wraps_every_target_in_the_guard() -> None:
    config = PythonTargetConfig(type="python", handler="tests.support.handlers:ok")
    factory = ClientFactory(region="us-east-1", credentials={})

    target = await build_target(
        config, clients=factory, partition="aws", region="us-east-1", account_id="1" * 12
    )

    assert isinstance(target, GuardedTarget)
    assert isinstance(target.inner, PythonTarget)
    await target.aclose()


# -- Python handlers that raise what they should not (defects 14 and 15) ---------------------


@pytest.mark.parametrize(
    ("handler", "error_type"),
    [
        (handlers.raise_keyboard_interrupt, "KeyboardInterrupt"),
        (handlers.raise_generator_exit, "GeneratorExit"),
        (handlers.raise_base_exception, "HandlerBaseError"),
        (handlers.async_raise_keyboard_interrupt, "KeyboardInterrupt"),
        (handlers.async_raise_base_exception, "HandlerBaseError"),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
async def test_python_base_exception_is_a_function_error(
    handler: Callable[..., Any], error_type: str
) -> None:
    result = await PythonTarget(handler, timeout_seconds=5).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.function_error == "Unhandled"
    assert result.payload["errorType"] == error_type
    assert result.payload["errorMessage"] == "raised by the handler"
    assert "handlers.py" in result.payload["stackTrace"][0]


async def test_python_cancellation_raised_by_the_handler_is_a_function_error() -> None:
    with structlog.testing.capture_logs() as logs:
        result = await PythonTarget(handlers.async_raise_cancelled, timeout_seconds=5).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "CancelledError"
    assert result.error == "function error (Unhandled): CancelledError"
    assert [e["error_type"] for e in logs if e["event"] == "python_handler_raised"] == [
        "CancelledError"
    ]


async def test_python_genuine_cancellation_of_the_caller_propagates() -> None:
    returned = await invoke_cancelled_from_outside(
        PythonTarget(handlers.async_sleep, timeout_seconds=5), {"sleep": 5}
    )

    assert returned == []


async def test_python_sync_handler_cancelled_by_the_caller_is_abandoned_and_counted() -> None:
    """The drain deadline cancels a sync handler's invocation: the cancellation propagates (no
    result, so no checkpoint) and the thread left running is counted."""
    abandoned: list[bool] = []
    target = PythonTarget(
        handlers.sleep, timeout_seconds=5, on_thread_abandoned=lambda: abandoned.append(True)
    )

    returned = await invoke_cancelled_from_outside(target, {"sleep": 0.5})

    assert returned == []
    assert abandoned == [True]
    await wait_until(lambda: target.abandoned_threads == 0, 5, "the handler returned")


async def test_python_handler_that_turns_our_cancellation_into_an_error_stays_cancelled() -> None:
    async def convert(event: dict[str, Any], context: Any) -> None:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            raise ValueError("swallowed the cancellation") from None

    returned = await invoke_cancelled_from_outside(PythonTarget(convert, timeout_seconds=5))

    # invoke may report the ValueError, but the caller's scope still ends at its next await.
    assert [r.outcome for r in returned] in ([], [Outcome.FUNCTION_ERROR])


# -- async handlers that block the event loop (defect 17) ------------------------------------


@pytest.mark.parametrize("handler", [handlers.async_block, handlers.async_block_then_await])
async def test_python_async_handler_blocking_past_its_timeout_is_a_timeout(
    handler: Callable[..., Any],
) -> None:
    target = PythonTarget(handler, timeout_seconds=0.2)

    with structlog.testing.capture_logs() as logs:
        result = await target.invoke({"block": 1.0})

    assert result.outcome is Outcome.TIMEOUT
    assert result.payload == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"{result.request_id} Task timed out after 0.20 seconds",
    }
    [entry] = [e for e in logs if e["event"] == "handler.blocked_event_loop"]
    assert entry["duration_seconds"] >= 1.0
    assert entry["timeout_seconds"] == 0.2
    assert entry["request_id"] == result.request_id


async def test_python_async_timeout_without_blocking_is_not_reported_as_blocking() -> None:
    with structlog.testing.capture_logs() as logs:
        result = await PythonTarget(handlers.async_sleep, timeout_seconds=0.1).invoke({"sleep": 5})

    assert result.outcome is Outcome.TIMEOUT
    assert not [e for e in logs if e["event"] == "handler.blocked_event_loop"]


async def test_python_async_handler_blocking_within_its_timeout_succeeds() -> None:
    result = await PythonTarget(handlers.async_block, timeout_seconds=2).invoke({"block": 0.05})

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"blocked": 0.05}


# -- sync handler threads (defect 16) --------------------------------------------------------


async def test_python_sync_handlers_run_in_daemon_threads() -> None:
    """A daemon thread never keeps the interpreter alive at exit, whatever its handler does."""
    result = await PythonTarget(handlers.thread_kind, timeout_seconds=5).invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"daemon": True, "main": False}


async def test_python_async_handlers_blocking_code_runs_in_daemon_threads() -> None:
    """``asyncio.to_thread`` in an async handler: a thread that never keeps the process alive
    (the standard executor's threads are joined at exit, even when their call hangs)."""
    result = await PythonTarget(handlers.async_to_thread_kind, timeout_seconds=5).invoke(EVENT)

    assert result.outcome is Outcome.SUCCESS
    assert result.payload == {"daemon": True, "main": False}


async def test_python_abandoned_threads_are_bounded_and_counted() -> None:
    """Past ``max_abandoned`` hung handlers, invocations are throttled without a new thread;
    once the hung handlers return, their threads serve invocations again."""
    release = threading.Event()
    calls: list[float] = []
    abandoned: list[float] = []

    def stuck(event: dict[str, Any], context: Any) -> str:
        calls.append(time.monotonic())
        release.wait(30)
        return "done"

    target = PythonTarget(
        stuck,
        timeout_seconds=0.1,
        max_abandoned=2,
        on_thread_abandoned=lambda: abandoned.append(time.monotonic()),
    )
    try:
        first = [await target.invoke(EVENT) for _ in range(2)]
        with structlog.testing.capture_logs() as logs:
            refused = await target.invoke(EVENT)
    finally:
        release.set()

    assert [r.outcome for r in first] == [Outcome.TIMEOUT, Outcome.TIMEOUT]
    assert len(abandoned) == 2
    assert refused.outcome is Outcome.THROTTLE
    assert refused.error == "handler throttled: 2 abandoned handler threads are still running"
    assert len(calls) == 2, "the refused invocation must not start a thread"
    assert [e["abandoned_threads"] for e in logs if e["event"] == "handler.threads_exhausted"] == [
        2
    ]
    await wait_until(lambda: target.abandoned_threads == 0, 5, "the hung handlers returned")
    again = await target.invoke(EVENT)
    assert again.outcome is Outcome.SUCCESS
    await target.aclose()


async def test_build_target_counts_abandoned_threads_in_the_mapping_metric() -> None:
    config = PythonTargetConfig(
        type="python", handler="tests.support.handlers:sleep", timeout_seconds=0.1
    )
    metrics = RecordingMetrics()
    factory = ClientFactory(region="us-east-1", credentials={})
    target = await build_target(
        config,
        clients=factory,
        partition="aws",
        region="us-east-1",
        account_id="1" * 12,
        mapping="orders",
        metrics=metrics,
    )

    result = await target.invoke({"sleep": 0.5})

    assert result.outcome is Outcome.TIMEOUT
    assert metrics.count("handler_thread_abandoned", "orders") == 1
    await target.aclose()


# -- handlers that defeat cancellation or block the loop (adversarial review) ----------------


async def timed_invoke(target: Any, event: dict[str, Any]) -> tuple[InvokeResult, float]:
    started = time.monotonic()
    result = await target.invoke(event)
    return result, time.monotonic() - started


async def test_python_async_handler_that_swallows_cancellation_still_times_out() -> None:
    """A handler that catches every cancellation in a loop cannot hold its invocation (and with
    it the shard, the drain and the process exit) past its timeout plus a grace period."""
    target = PythonTarget(handlers.async_swallow_cancellation, timeout_seconds=0.2)

    with structlog.testing.capture_logs() as logs:
        # The handler holds out for 10 s; the invocation ends after its timeout plus the
        # abandon grace (1.2 s), with room for a loaded machine under coverage (3.8 s seen).
        result, took = await timed_invoke(target, {"swallow": 10})

    assert result.outcome is Outcome.TIMEOUT
    assert took < 6.0, f"the invocation took {took:.1f} s"
    [entry] = [e for e in logs if e["event"] == "handler.abandoned"]
    assert entry["request_id"] == result.request_id
    await wait_until(lambda: target.abandoned_threads == 0, 20, "the handler gave up")


async def test_python_caller_cancellation_is_not_held_by_a_handler_that_swallows_it() -> None:
    """The drain deadline cancels an invocation whose handler swallows the cancellation: the
    cancellation still propagates at once (no result, so no checkpoint)."""
    target = PythonTarget(handlers.async_swallow_cancellation, timeout_seconds=30)
    started = time.monotonic()

    returned = await invoke_cancelled_from_outside(target, {"swallow": 4})

    assert returned == []
    assert time.monotonic() - started < 2.5
    await wait_until(lambda: target.abandoned_threads == 0, 10, "the handler gave up")


async def test_python_async_handler_awaiting_uncancellable_work_still_times_out() -> None:
    target = PythonTarget(handlers.async_uncancellable_wait, timeout_seconds=0.2)

    result, took = await timed_invoke(target, {"sleep": 4})

    assert result.outcome is Outcome.TIMEOUT
    assert took < 2.5, f"the invocation took {took:.1f} s"


async def test_python_async_handler_blocking_its_loop_never_blocks_the_service_loop() -> None:
    """A blocking call in an async handler stalls only the handlers' loop: the service's own
    loop (readers, lease renewal, the health server) keeps running."""
    target = PythonTarget(handlers.async_block, timeout_seconds=0.3)
    ticks: list[float] = []

    async def tick(scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                ticks.append(time.monotonic())
                await anyio.sleep(0.02)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick, scope)
        result, took = await timed_invoke(target, {"block": 1.5})
        scope.cancel()

    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert result.outcome is Outcome.TIMEOUT
    assert max(gaps) < 0.25, f"the service loop stalled for {max(gaps):.2f} s"
    assert took < 1.5
    # Leave the shared handler loop free for the next test.
    await wait_until(lambda: handler_loop.SHARED.blocked_for() == 0, 5, "the handler loop")


async def test_python_abandoned_async_handlers_are_bounded_and_counted() -> None:
    abandoned: list[bool] = []
    target = PythonTarget(
        handlers.async_swallow_cancellation,
        timeout_seconds=0.1,
        max_abandoned=1,
        on_thread_abandoned=lambda: abandoned.append(True),
    )

    first = await target.invoke({"swallow": 3})
    refused = await target.invoke({"swallow": 3})

    assert first.outcome is Outcome.TIMEOUT
    assert refused.outcome is Outcome.THROTTLE
    assert abandoned == [True]
    await wait_until(lambda: target.abandoned_threads == 0, 10, "the handler gave up")
    assert (await target.invoke({"swallow": 0})).outcome is Outcome.SUCCESS


# -- what a handler returns or raises that JSON or str() cannot handle -----------------------


@pytest.mark.parametrize("handler", [handlers.return_bytes, handlers.async_return_bytes])
async def test_python_response_over_6_mb_is_a_function_error_naming_its_size(
    handler: Callable[..., Any],
) -> None:
    size = 7 * 1024 * 1024

    result = await PythonTarget(handler, timeout_seconds=10).invoke({"size": size})

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "Function.ResponseSizeTooLarge"
    assert f"({size + 2} bytes)" in result.payload["errorMessage"]


async def test_python_response_at_6_mb_is_accepted() -> None:
    size = 6 * 1024 * 1024 - 2  # plus the two quotes of the JSON string

    result = await PythonTarget(handlers.return_bytes, timeout_seconds=10).invoke({"size": size})

    assert result.outcome is Outcome.SUCCESS
    assert len(result.payload) == size


@pytest.mark.parametrize("handler", [handlers.return_items_raise, handlers.return_deep])
async def test_python_result_whose_serialisation_raises_is_a_marshal_error(
    handler: Callable[..., Any],
) -> None:
    result = await PythonTarget(handler, timeout_seconds=10).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "Runtime.MarshalError"
    assert result.payload["errorMessage"].startswith("Unable to marshal response: ")


async def test_python_exception_that_cannot_be_printed_keeps_its_type() -> None:
    result = await PythonTarget(handlers.raise_unprintable, timeout_seconds=5).invoke(EVENT)

    assert result.outcome is Outcome.FUNCTION_ERROR
    assert result.payload["errorType"] == "UnprintableError"
    assert result.payload["errorMessage"] == "<unprintable UnprintableError object>"


async def test_python_handler_loop_survives_an_interrupt_escaping_a_handler_callback() -> None:
    """A ``KeyboardInterrupt`` raised by a callback a handler scheduled escapes asyncio's loop;
    the handler loop must go on running, or every later async invocation would time out."""
    target = PythonTarget(handlers.async_interrupt_the_loop, timeout_seconds=2)

    first = await target.invoke(EVENT)
    second = await PythonTarget(handlers.async_ok, timeout_seconds=2).invoke(EVENT)

    assert first.outcome in (Outcome.SUCCESS, Outcome.TIMEOUT)
    assert second.outcome is Outcome.SUCCESS


async def test_python_time_waiting_for_a_free_thread_is_not_counted_against_the_timeout() -> None:
    """The timeout starts when the handler starts, as on Lambda: an invocation queued behind
    ``max_threads`` running ones is not reported as a timeout of a handler that never ran."""
    target = PythonTarget(handlers.sleep, timeout_seconds=0.6, max_threads=1)
    results: list[InvokeResult] = []

    async def invoke() -> None:
        results.append(await target.invoke({"sleep": 0.4}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(invoke)
        tg.start_soon(invoke)

    assert [r.outcome for r in results] == [Outcome.SUCCESS, Outcome.SUCCESS]
    assert target.abandoned_threads == 0
    await target.aclose()


async def test_python_async_handler_the_blocked_loop_never_started_is_throttled_not_failed() -> (
    None
):
    """One mapping's handler blocks the shared handler loop: another mapping's invocation that
    never got to start is a throttle (retried, not counted), not a timeout of its handler."""
    blocker = PythonTarget(handlers.async_block, timeout_seconds=5)
    victim = PythonTarget(handlers.async_ok, timeout_seconds=0.2)
    results: dict[str, InvokeResult] = {}

    async def block() -> None:
        results["blocker"] = await blocker.invoke({"block": 2.0})

    async with anyio.create_task_group() as tg:
        tg.start_soon(block)
        await anyio.sleep(0.3)  # the blocker holds the handler loop by now
        results["victim"] = await victim.invoke(EVENT)

    assert results["victim"].outcome is Outcome.THROTTLE
    assert results["victim"].error == "handler throttled: the handlers' event loop is blocked"
    assert results["blocker"].outcome is Outcome.SUCCESS
    assert victim.abandoned_threads == 0
    assert (await victim.invoke(EVENT)).outcome is Outcome.SUCCESS


@pytest.mark.parametrize(
    ("statement", "error_type"),
    [("raise SystemExit(0)", "SystemExit"), ("raise KeyboardInterrupt", "KeyboardInterrupt")],
)
def test_handler_module_raising_a_base_exception_at_import_is_a_clear_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statement: str, error_type: str
) -> None:
    """``sys.exit(0)`` in a handler module's top level must not make ``poller run`` exit 0
    (as if it had succeeded) or look like Ctrl-C: it is a handler that does not import."""
    name = f"exiting_handler_{error_type.lower()}"
    (tmp_path / f"{name}.py").write_text(statement + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(HandlerImportError) as caught:
        load_handler(f"{name}:handle")

    assert str(caught.value).startswith(f"importing handler module {name!r} failed: {error_type}")


async def test_a_call_given_up_while_the_handler_loop_was_busy_never_starts() -> None:
    """A handler blocks the shared loop; a second call's caller gives up before the loop reaches
    it. That call must never run later: by then its shard may belong to another replica."""
    loop = handler_loop.HandlerLoop(name="test-gate")
    ran: list[float] = []

    async def blocker() -> None:
        time.sleep(0.6)  # noqa: ASYNC251 - blocks the handler loop, as a hostile handler does

    async def recorded() -> str:
        ran.append(time.monotonic())
        return "ran"

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: loop.run(blocker, patience=5))
        await anyio.sleep(0.05)
        assert await loop.run(recorded, patience=0.1) is None  # given up
    assert await loop.run(recorded, patience=5) == "ran"  # the loop is free again: runs
    assert len(ran) == 1, "the call given up while the loop was busy ran anyway"
