"""LastProcessingResult bookkeeping (poller.reconcile.ProcessingResultLog and the
poller.mappings.ProcessingResults tee): what is written, and how often."""

from __future__ import annotations

import pytest

from poller.control.store import MappingRecord
from poller.control.store_memory import MemoryMappingStore
from poller.mappings import ProcessingResults
from poller.observability.metrics import RecordingMetrics
from poller.reconcile import PROCESSING_RESULT_SECONDS, ProcessingResultLog

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(uuid: str) -> MappingRecord:
    return MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={},
        tags={},
        desired="Enabled",
        change="create",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:f",
        pair_key=uuid,
        last_modified=0.0,
    )


async def result(store: MemoryMappingStore, uuid: str) -> str | None:
    record = await store.get(uuid)
    assert record is not None
    return record.last_processing_result


async def test_the_first_result_is_written_at_once_and_changes_at_most_every_interval() -> None:
    store, clock = MemoryMappingStore(), Clock()
    await store.create(stored("m"), limit=10)
    results = ProcessingResultLog(clock=clock)
    results.note("m", "success")
    await results.flush(store, {"m"})
    assert await result(store, "m") == "OK"

    results.note("m", "function_error")
    clock.now += PROCESSING_RESULT_SECONDS - 1
    await results.flush(store, {"m"})
    assert await result(store, "m") == "OK"  # too soon
    clock.now += 1
    await results.flush(store, {"m"})
    assert await result(store, "m") == "PROBLEM: Function call failed"


async def test_a_partial_failure_is_a_function_that_answered() -> None:
    store = MemoryMappingStore()
    await store.create(stored("m"), limit=10)
    results = ProcessingResultLog(clock=Clock())
    results.note("m", "partial_failure")
    await results.flush(store, {"m"})
    assert await result(store, "m") == "OK"


async def test_results_of_mappings_not_in_the_store_are_never_written() -> None:
    store = MemoryMappingStore()
    await store.create(stored("api"), limit=10)
    results = ProcessingResultLog(clock=Clock())
    results.note("file-mapping", "function_error")
    results.problem("api", "HandlerImportError: no module")
    await results.flush(store, {"api"})
    assert await result(store, "api") == "PROBLEM: HandlerImportError: no module"
    assert await store.get("file-mapping") is None


def test_the_tee_passes_every_hook_on_and_notes_invocation_outcomes() -> None:
    inner = RecordingMetrics()
    noted: list[tuple[str, str]] = []
    tee = ProcessingResults(inner, lambda mapping, outcome: noted.append((mapping, outcome)))
    tee.records_polled("m", 3)
    tee.invocation("m", "timeout", 1.0, 3)
    assert noted == [("m", "timeout")]
    assert [c["count"] for c in inner.calls_to("records_polled", "m")] == [3]
    assert len(inner.calls_to("invocation", "m")) == 1
