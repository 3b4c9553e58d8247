"""Tumbling windows end to end on moto: state carried through a window, final invocations,
answers without state retried as counted failures, and the state surviving a restart.

The handler below counts records into the window's state, so the final invocation of each
window must carry exactly the number of records whose arrival falls in that window. Windows
are computed from the arrival timestamps the function received, so the assertions hold
wherever the window boundaries fall.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from poller.config import Settings
from poller.core.windows import CLOSE_GRACE_SECONDS
from tests.integration.kinesis_harness import kinesis_settings
from tests.support.aws import create_stream, put_records, stream_arn, unique
from tests.support.service import running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.anyio

HANDLER = {"type": "python", "handler": "tests.integration.test_tumbling_windows:count"}

_lock = threading.Lock()
#: Every event the handler got, by eventSourceARN.
EVENTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
#: Streams whose handler answers record invocations without a state.
STATELESS: set[str] = set()


def count(event: dict[str, Any], context: Any) -> Any:
    """Count the window's records into its state; answer without state when told to."""
    arn = event["eventSourceARN"]
    with _lock:
        EVENTS[arn].append(event)
    if event["Records"] and arn in STATELESS:
        return {"batchItemFailures": []}
    return {"state": {"count": event["state"].get("count", 0) + len(event["Records"])}}


@pytest.fixture
def stream() -> Any:
    name = unique("tw")
    yield name
    with _lock:
        EVENTS.pop(stream_arn(name), None)
        STATELESS.discard(stream_arn(name))


def events(stream: str) -> list[dict[str, Any]]:
    with _lock:
        return list(EVENTS[stream_arn(stream)])


def finals(stream: str) -> list[dict[str, Any]]:
    return [e for e in events(stream) if e["isFinalInvokeForWindow"]]


def records_by_window(stream: str, seconds: int) -> dict[str, set[str]]:
    """Delivered sequence numbers by the ISO start of the window their arrival falls in."""
    windows: dict[str, set[str]] = defaultdict(set)
    for event in events(stream):
        for record in event["Records"]:
            kinesis = record["kinesis"]
            start = int(kinesis["approximateArrivalTimestamp"]) // seconds * seconds
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
            assert event["window"]["start"] == iso, "a record outside its event's window"
            windows[iso].add(kinesis["sequenceNumber"])
    return windows


def delivery_counts(stream: str) -> Counter[str]:
    return Counter(
        r["kinesis"]["sequenceNumber"]
        for e in events(stream)
        if not e["isFinalInvokeForWindow"]
        for r in e["Records"]
    )


async def put(kinesis: Any, stream: str, start: int, count: int) -> list[tuple[str, str]]:
    return await put_records(
        kinesis,
        stream,
        ((f"pk-{n}", json.dumps({"n": n}).encode(), None) for n in range(start, start + count)),
    )


async def next_boundary(seconds: int, within: float = 0.5) -> None:
    """Wait until the *next* window has just begun (the first ``within`` seconds of it).

    The target is fixed before waiting, so two calls inside the same window's first
    ``within`` seconds still land in two different windows.
    """
    start = (time.time() // seconds + 1) * seconds
    await wait_until(
        lambda: start <= time.time() < start + within, seconds + 1, "the next window's start"
    )


def windowed(kinesis: Any, stream: str, db: Path, seconds: int, **mapping: Any) -> Settings:
    """Settings of a service that counts ``stream``'s records in tumbling windows of
    ``seconds`` with :func:`count`."""
    return kinesis_settings(
        endpoint_url=kinesis.meta.endpoint_url,
        stream=stream,
        db=db,
        target=HANDLER,
        tumbling_window_in_seconds=seconds,
        **mapping,
    )


def all_windows_closed(stream: str, seconds: int, expected: int) -> bool:
    windows = records_by_window(stream, seconds)
    closed = {e["window"]["start"] for e in finals(stream)}
    return sum(len(s) for s in windows.values()) == expected and closed >= set(windows)


async def test_state_is_carried_through_each_window_and_final_invokes_close_them(
    kinesis: Any, stream: str, tmp_path: Path
) -> None:
    """Two windows: each data invocation gets the state so far, each window gets one final
    invocation whose state counts exactly its records, and a window closes before the next
    one's records are delivered."""
    seconds = 2
    await create_stream(kinesis, stream, 1)
    settings = windowed(kinesis, stream, tmp_path / "c.db", seconds)
    async with running(settings):
        await next_boundary(seconds)
        await put(kinesis, stream, 0, 5)
        await wait_until(lambda: sum(delivery_counts(stream).values()) == 5, 10, "first records")
        await next_boundary(seconds)
        await put(kinesis, stream, 5, 3)
        await wait_until(
            lambda: all_windows_closed(stream, seconds, 8),
            2 * seconds + CLOSE_GRACE_SECONDS + 8,
            "every window's final invocation",
        )

    windows = records_by_window(stream, seconds)
    assert len(windows) >= 2
    assert set(delivery_counts(stream).values()) == {1}
    by_window = defaultdict(list)
    for event in finals(stream):
        by_window[event["window"]["start"]].append(event)
        assert event["Records"] == []
        assert event["isWindowTerminatedEarly"] is False
        assert event["shardId"] == "shardId-000000000000"
        assert event["eventSourceARN"] == stream_arn(stream)
    for start, sequences in windows.items():
        [final] = by_window[start]
        assert final["state"] == {"count": len(sequences)}
    # Order: a window's final invocation comes before any record of a later window.
    seen_final: set[str] = set()
    for event in events(stream):
        start = event["window"]["start"]
        if event["isFinalInvokeForWindow"]:
            seen_final.add(start)
        else:
            assert all(s in seen_final for s in windows if s < start)
            assert start not in seen_final
            assert event["isWindowTerminatedEarly"] is False
    # Within a window the state accumulates from {} invocation by invocation.
    for start in windows:
        data = [e for e in events(stream) if e["window"]["start"] == start and e["Records"]]
        assert data[0]["state"] == {}
        running_count = 0
        for event in data:
            assert event["state"].get("count", 0) == running_count
            running_count += len(event["Records"])


async def test_answer_without_state_is_a_counted_failure(
    kinesis: Any, stream: str, tmp_path: Path
) -> None:
    """With maximum_retry_attempts 1, a function that never answers with a state gets each
    record twice (the try and the one retry), then the records are given up; the window's
    final invocation carries the unchanged, empty state."""
    seconds = 2
    await create_stream(kinesis, stream, 1)
    STATELESS.add(stream_arn(stream))
    settings = windowed(
        kinesis, stream, tmp_path / "c.db", seconds, maximum_retry_attempts=1, batch_size=100
    )
    async with running(settings):
        await next_boundary(seconds)
        await put(kinesis, stream, 0, 4)
        await wait_until(
            lambda: all_windows_closed(stream, seconds, 4),
            seconds + CLOSE_GRACE_SECONDS + 10,
            "the records given up and their window closed",
        )

    assert dict(delivery_counts(stream)) == {seq: 2 for seq in delivery_counts(stream)}
    assert len(delivery_counts(stream)) == 4
    for event in finals(stream):
        assert event["state"] == {}


async def test_window_state_survives_a_restart(kinesis: Any, stream: str, tmp_path: Path) -> None:
    """Records delivered before a graceful stop are counted in the window's state once: the
    state is checkpointed with them, restored at the restart, and the final invocation after
    the restart counts them; nothing is delivered twice."""
    seconds = 4
    db = tmp_path / "c.db"
    await create_stream(kinesis, stream, 1)
    settings = windowed(kinesis, stream, db, seconds)
    async with running(settings):
        await next_boundary(seconds)
        first_window = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(time.time()) // seconds * seconds)
        )
        await put(kinesis, stream, 0, 3)
        await wait_until(lambda: sum(delivery_counts(stream).values()) == 3, 3, "first records")
    assert finals(stream) == [], "the window closed before the restart; the test is too slow"
    with sqlite3.connect(db) as conn:
        [(stored,)] = conn.execute("SELECT window_state FROM checkpoints").fetchall()
    assert json.loads(stored)["state"] == {"count": 3}

    async with running(settings):
        await put(kinesis, stream, 3, 2)
        await wait_until(
            lambda: all_windows_closed(stream, seconds, 5),
            2 * seconds + CLOSE_GRACE_SECONDS + 8,
            "every window's final invocation after the restart",
        )

    assert set(delivery_counts(stream).values()) == {1}
    windows = records_by_window(stream, seconds)
    assert len(windows[first_window]) >= 3
    for event in finals(stream):
        assert event["state"] == {"count": len(windows[event["window"]["start"]])}
    assert [e["window"]["start"] for e in finals(stream)].count(first_window) == 1
    with sqlite3.connect(db) as conn:
        [(stored,)] = conn.execute("SELECT window_state FROM checkpoints").fetchall()
    assert stored is None
