"""The exclusivity and order checker on synthetic histories: it passes a clean one and catches
each kind of violation (loss, disorder, concurrent invocation, unexplained duplicate)."""

from __future__ import annotations

from tests.support.checker import Batch, Interruption, Record, check

S1, S2 = "shardId-1", "shardId-2"


def records(shard: str, first: int, count: int, keys: int = 2) -> tuple[Record, ...]:
    return tuple(Record(shard, str(n), f"{shard}-k{n % keys}") for n in range(first, first + count))


def batch(
    process: str, shard: str, started: float, finished: float | None, first: int, count: int
) -> Batch:
    return Batch(process, shard, started, finished, records(shard, first, count))


WRITTEN = [*records(S1, 0, 10), *records(S2, 0, 10)]
CLEAN = [
    batch("a/1", S1, 0.0, 1.0, 0, 5),
    batch("a/1", S1, 1.0, 2.0, 5, 5),
    batch("b/2", S2, 0.5, 1.5, 0, 10),
]


def test_a_clean_history_passes_with_its_figures() -> None:
    report = check(WRITTEN, CLEAN)
    assert report.problems() == []
    assert report.figures() == {
        "written": 20,
        "delivered": 20,
        "distinct delivered": 20,
        "lost": 0,
        "duplicates": 0,
        "unexplained duplicates": 0,
        "order violations": 0,
        "concurrent invocations": 0,
    }


def test_a_record_never_delivered_is_lost() -> None:
    report = check(WRITTEN, CLEAN[:1] + CLEAN[2:])
    assert [r.sequence for r in report.lost] == ["5", "6", "7", "8", "9"]
    assert "5 lost" in report.problems()[0]


def test_a_batch_that_never_returned_delivered_nothing() -> None:
    history = [*CLEAN[:1], batch("a/1", S1, 1.0, None, 5, 5), CLEAN[2]]
    assert len(check(WRITTEN, history).lost) == 5


def test_a_later_record_first_delivered_before_an_earlier_one_of_its_key_breaks_order() -> None:
    swapped = [
        batch("a/1", S1, 0.0, 1.0, 2, 8),  # 2..9 first
        batch("a/1", S1, 1.0, 2.0, 0, 2),  # then 0 and 1
        CLEAN[2],
    ]
    report = check(WRITTEN, swapped)
    # Each of 2..9 was first delivered before the earlier record of its key (0 or 1).
    pairs = {(a.sequence, b.sequence) for a, b in report.order_violations}
    assert pairs == {(str(n % 2), str(n)) for n in range(2, 10)}


def test_order_is_per_key_not_per_shard() -> None:
    one_key_each = [Record(S1, str(n), f"key{n}") for n in range(4)]
    reversed_batches = [
        Batch("a/1", S1, float(i), float(i) + 0.5, (record,))
        for i, record in enumerate(reversed(one_key_each))
    ]
    assert check(one_key_each, reversed_batches).order_violations == []


def test_a_redelivery_after_a_first_delivery_keeps_order() -> None:
    replayed = [*CLEAN, batch("b/2", S1, 3.0, 4.0, 0, 10)]
    kill = Interruption("a/1", 2.5, window=5.0, died=True)
    report = check(WRITTEN, replayed, [kill])
    assert report.order_violations == []
    assert report.duplicates == 10
    assert report.unexplained_duplicates == []


def test_two_processes_running_one_shard_at_once_are_a_concurrent_invocation() -> None:
    overlapping = [*CLEAN, batch("c/3", S1, 1.5, 2.5, 5, 5)]
    report = check(WRITTEN, overlapping)
    ((first, second),) = report.concurrent_invocations
    assert (first.process, second.process) == ("a/1", "c/3")
    assert "concurrent invocations" in " ".join(report.problems())


def test_one_process_back_to_back_or_on_other_shards_is_not_concurrent() -> None:
    report = check(WRITTEN, [*CLEAN, batch("b/2", S2, 1.5, 3.0, 0, 1)])
    assert report.concurrent_invocations == []


def test_a_batch_that_never_returned_runs_until_its_process_died() -> None:
    history = [batch("a/1", S1, 0.0, None, 0, 5), batch("b/2", S1, 3.0, 4.0, 0, 10)]
    died_before = Interruption("a/1", 2.0, window=5.0, died=True)
    assert check(WRITTEN[:10], history, [died_before]).concurrent_invocations == []
    died_after = Interruption("a/1", 3.5, window=5.0, died=True)
    assert len(check(WRITTEN[:10], history, [died_after]).concurrent_invocations) == 1
    # A process with no recorded death still runs the batch (e.g. an abandoned drain thread).
    assert len(check(WRITTEN[:10], history).concurrent_invocations) == 1


def test_a_duplicate_with_no_interruption_is_unexplained() -> None:
    report = check(WRITTEN, [*CLEAN, batch("b/2", S1, 3.0, 4.0, 5, 5)])
    assert report.duplicates == 5
    assert len(report.unexplained_duplicates) == 5
    assert report.unexplained_duplicates[0][1] == "a/1"


def test_a_duplicate_is_explained_only_by_an_interruption_of_its_process_and_shard() -> None:
    redelivered = [*CLEAN, batch("b/2", S1, 3.0, 4.0, 5, 5)]
    for wrong in (
        Interruption("b/2", 2.0, window=5.0),  # another process
        Interruption("a/1", 2.0, window=5.0, shard=S2),  # another shard
        Interruption("a/1", 0.5, window=5.0),  # before the batch started
        Interruption("a/1", 9.0, window=5.0),  # long after it settled
    ):
        assert len(check(WRITTEN, redelivered, [wrong]).unexplained_duplicates) == 5, wrong
    for right in (
        Interruption("a/1", 2.5, window=1.0, died=True),  # killed just after the batch
        Interruption("a/1", 1.5, window=0.0),  # in flight at the interruption
        Interruption("a/1", 6.0, window=5.0, shard=S1),  # lease lost within the window
    ):
        assert check(WRITTEN, redelivered, [right]).unexplained_duplicates == [], right
