"""The contiguous checkpoint watermark, by hand-written cases and against a naive model."""

from __future__ import annotations

import gc
import random
import weakref
from dataclasses import dataclass

import pytest

from poller.core.watermark import Watermark


def seqs(*numbers: int) -> list[str]:
    """Sequence numbers as the sources give them: decimal strings."""
    return [str(n) for n in numbers]


def test_empty() -> None:
    """A new watermark has nothing pending, no checkpoint, and cannot advance."""
    w: Watermark[str] = Watermark()
    assert w.pending == 0
    assert w.checkpoint is None
    assert w.first_unsettled() is None
    assert w.advance() is None
    assert w.checkpoint is None


def test_empty_calls_are_no_ops() -> None:
    """Tracking or settling nothing changes nothing."""
    w: Watermark[str] = Watermark()
    w.track([])
    w.settle([])
    assert w.pending == 0
    assert w.advance() is None


def test_in_order_settle() -> None:
    """Settling records in read order moves the checkpoint to each one in turn."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3))
    for n in (1, 2, 3):
        w.settle([str(n)])
        assert w.advance() == str(n)
        assert w.checkpoint == str(n)
    assert w.pending == 0
    assert w.first_unsettled() is None


def test_whole_batch_settle_jumps_to_its_last_record() -> None:
    """One advance passes the whole settled prefix and returns its last position."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3, 4))
    w.settle(seqs(1, 2, 3, 4))
    assert w.advance() == "4"
    assert w.pending == 0


def test_out_of_order_settle_waits_at_first_unsettled_then_jumps() -> None:
    """Later records settling first do not move the checkpoint past an unsettled one."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3, 4, 5))
    w.settle(seqs(5, 4, 3, 2))
    assert w.advance() is None
    assert w.checkpoint is None
    assert w.first_unsettled() == "1"
    assert w.pending == 5
    w.settle(["1"])
    assert w.advance() == "5"
    assert w.checkpoint == "5"
    assert w.pending == 0


def test_gap_in_the_middle() -> None:
    """The checkpoint stops just before the first unsettled record and resumes after it."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3, 4, 5))
    w.settle(seqs(1, 2, 4, 5))
    assert w.advance() == "2"
    assert w.first_unsettled() == "3"
    assert w.pending == 3
    assert w.advance() is None
    assert w.checkpoint == "2", "no progress keeps the previous checkpoint"
    w.settle(["3"])
    assert w.advance() == "5"


def test_partial_settles_across_reads() -> None:
    """Records of several reads settle in pieces; only complete prefixes are passed."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3))
    w.track(seqs(4, 5, 6))
    w.settle(seqs(1, 2))
    assert w.advance() == "2"
    w.settle(seqs(4, 6))
    assert w.advance() is None
    w.track(seqs(7))
    w.settle(seqs(3, 7))
    assert w.advance() == "4"
    assert w.first_unsettled() == "5"
    w.settle(["5"])
    assert w.advance() == "7"
    assert w.pending == 0


def test_lanes_interleaved() -> None:
    """Round-robin lanes settling at different speeds: the checkpoint is the contiguous prefix.

    Twelve records go to three lanes (record i to lane i % 3). Each lane settles its own records
    in order, lane 0 fastest and lane 2 slowest, as batches of partition-key lanes do.
    """
    records = list(range(12))
    lanes = {lane: [r for r in records if r % 3 == lane] for lane in range(3)}
    w: Watermark[int] = Watermark()
    w.track(records)
    settled: set[int] = set()

    def expected() -> int | None:
        """The last record of the settled prefix, by brute force."""
        prefix = 0
        while prefix < len(records) and records[prefix] in settled:
            prefix += 1
        return records[prefix - 1] if prefix else None

    # (lane, how many of its next records settle)
    steps = [(0, 2), (1, 1), (0, 2), (2, 1), (1, 1), (1, 2), (2, 1), (2, 2)]
    checkpoints = []
    for lane, count in steps:
        batch, lanes[lane] = lanes[lane][:count], lanes[lane][count:]
        w.settle(batch)
        settled.update(batch)
        w.advance()
        assert w.checkpoint == expected()
        checkpoints.append(w.checkpoint)
    assert checkpoints == [0, 1, 1, 3, 4, 4, 7, 11]
    assert w.pending == 0


def test_idempotent_settle() -> None:
    """Settling a settled pending record again, or twice in one call, changes nothing."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    w.settle(seqs(2, 2))
    w.settle(["2"])
    assert w.advance() is None
    assert w.first_unsettled() == "1"
    w.settle(seqs(1, 1, 2))
    assert w.advance() == "2"


def test_first_unsettled_skips_settled_head_before_advance() -> None:
    """first_unsettled() names the record waited on even when advance() was not called."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3))
    assert w.first_unsettled() == "1"
    w.settle(seqs(1, 2))
    assert w.first_unsettled() == "3"
    assert w.pending == 3, "first_unsettled() does not pass records"
    w.settle(["3"])
    assert w.first_unsettled() is None
    assert w.advance() == "3"


def test_duplicate_track_of_pending_position() -> None:
    """Tracking a pending position again is refused, naming it, and tracks nothing."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    w.settle(["2"])
    with pytest.raises(ValueError, match=r"'2' is already tracked"):
        w.track(seqs(3, 2, 4))
    assert w.pending == 2
    with pytest.raises(KeyError, match="'3'"):
        w.settle(["3"])
    w.settle(["1"])
    assert w.advance() == "2", "the refused call kept '2' settled"
    w.track(seqs(3, 4))
    assert w.pending == 2


def test_duplicate_within_one_track_call() -> None:
    """A position twice in one batch is refused, naming it, and tracks nothing."""
    w: Watermark[str] = Watermark()
    w.track(["1"])
    with pytest.raises(ValueError, match=r"'3' is already tracked"):
        w.track(seqs(2, 3, 4, 3))
    assert w.pending == 1
    assert w.first_unsettled() == "1"
    w.track(seqs(2, 3))
    assert w.pending == 3


def test_first_offender_is_named() -> None:
    """With several offenders, the message names the first in read order."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2, 3))
    w.settle(["1"])
    w.advance()
    with pytest.raises(ValueError, match=r"'3' is already tracked"):
        w.track(seqs(4, 3, 1, 2))
    with pytest.raises(ValueError, match=r"'1' was already passed"):
        w.track(seqs(4, 1, 3))


def test_track_of_the_checkpoint_is_refused() -> None:
    """Re-reading the checkpoint (resuming AT it instead of AFTER it) is refused."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    w.settle(seqs(1, 2))
    assert w.advance() == "2"
    with pytest.raises(ValueError, match=r"'2' was already passed: it is the checkpoint"):
        w.track(seqs(2, 3))
    assert w.pending == 0
    w.track(["3"])
    assert w.first_unsettled() == "3"


def test_older_passed_position_is_not_remembered() -> None:
    """Passed records are forgotten, so only the checkpoint itself is caught on re-track.

    This pins the documented trade-off: remembering every passed position would grow without
    bound on a long-lived shard.
    """
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    w.settle(seqs(1, 2))
    w.advance()
    w.track(["1"])
    assert w.pending == 1


def test_settle_of_never_tracked_position() -> None:
    """Settling an unknown position raises KeyError naming it and settles nothing."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    with pytest.raises(KeyError, match=r"'9' is not pending: never tracked, or already passed"):
        w.settle(seqs(1, 9))
    assert w.advance() is None, "'1' was not settled by the refused call"
    assert w.first_unsettled() == "1"


def test_settle_after_passed() -> None:
    """A record passed by advance() can no longer be settled."""
    w: Watermark[str] = Watermark()
    w.track(seqs(1, 2))
    w.settle(["1"])
    assert w.advance() == "1"
    with pytest.raises(KeyError, match="'1'"):
        w.settle(["1"])


def test_settle_on_empty_watermark() -> None:
    """Nothing tracked: every settle is unknown."""
    w: Watermark[str] = Watermark()
    with pytest.raises(KeyError, match="'1'"):
        w.settle(["1"])


def test_tuple_positions() -> None:
    """(sequence, subsequence) positions, as aggregated Kinesis records will use."""
    w: Watermark[tuple[str, int]] = Watermark()
    w.track([("100", 0), ("100", 1), ("100", 2), ("101", 0)])
    w.settle([("100", 1), ("101", 0)])
    assert w.advance() is None
    assert w.first_unsettled() == ("100", 0)
    w.settle([("100", 0)])
    assert w.advance() == ("100", 1)
    with pytest.raises(ValueError, match=r"\('100', 1\) was already passed"):
        w.track([("100", 1)])
    with pytest.raises(KeyError, match=r"\('100', 0\)"):
        w.settle([("100", 0)])
    w.settle([("100", 2)])
    assert w.advance() == ("101", 0)


def test_accepts_any_iterable() -> None:
    """Generators work for both track and settle; each is read once."""
    w: Watermark[int] = Watermark()
    w.track(n for n in range(5))
    w.settle(n for n in range(3))
    assert w.advance() == 2
    assert w.pending == 2


@dataclass(frozen=True)
class Position:
    """A hashable position that can be weakly referenced, to watch it being freed."""

    value: int


def test_memory_released_for_passed_records() -> None:
    """The watermark drops every passed record except the checkpoint it reports."""
    w: Watermark[Position] = Watermark()
    positions = [Position(i) for i in range(1000)]
    refs = [weakref.ref(p) for p in positions]
    w.track(positions)
    w.settle(positions[:600])
    del positions
    assert w.advance() == Position(599)
    gc.collect()
    alive = [p.value for r in refs if (p := r()) is not None]
    assert alive == [599, *range(600, 1000)]
    assert w.pending == 400


# --- Randomized model check -------------------------------------------------------------------


class NaiveWatermark:
    """The reference: every record ever tracked, checked from the start on each question."""

    def __init__(self) -> None:
        self.records: list[int] = []
        self.settled: set[int] = set()
        self.passed = 0
        self.checkpoint: int | None = None

    def advance(self) -> int | None:
        start = self.passed
        while self.passed < len(self.records) and self.records[self.passed] in self.settled:
            self.passed += 1
        if self.passed == start:
            return None
        self.checkpoint = self.records[self.passed - 1]
        return self.checkpoint

    def pending(self) -> list[int]:
        return self.records[self.passed :]

    def first_unsettled(self) -> int | None:
        return next((r for r in self.pending() if r not in self.settled), None)


def check_same(w: Watermark[int], model: NaiveWatermark) -> None:
    assert w.checkpoint == model.checkpoint
    assert w.pending == len(model.pending())
    assert w.first_unsettled() == model.first_unsettled()


def run_trial(rng: random.Random) -> None:
    """Random reads, random settles (some repeated, some bad), random advances."""
    w: Watermark[int] = Watermark()
    model = NaiveWatermark()
    # Positions are random unique ints, so read order is not numeric order.
    universe = rng.sample(range(10**6), rng.randint(1, 200))
    next_read = 0
    for _ in range(rng.randint(1, 120)):
        action = rng.random()
        pending = model.pending()
        if action < 0.25 and next_read < len(universe):
            chunk = universe[next_read : next_read + rng.randint(0, 15)]
            next_read += len(chunk)
            w.track(chunk)
            model.records.extend(chunk)
        elif action < 0.65 and pending:
            batch = rng.sample(pending, rng.randint(1, min(len(pending), 10)))
            w.settle(batch)
            model.settled.update(batch)
        elif action < 0.70 and model.passed:
            passed = model.records[rng.randrange(model.passed)]
            with pytest.raises(KeyError):
                w.settle([passed])
            if passed == model.checkpoint:
                with pytest.raises(ValueError, match="already passed"):
                    w.track([passed])
        elif action < 0.75 and pending:
            with pytest.raises(ValueError, match="already tracked"):
                w.track([rng.choice(pending)])
        else:
            assert w.advance() == model.advance()
        check_same(w, model)
    # Settle everything that is left: the watermark ends at the last record read.
    w.settle(model.pending())
    model.settled.update(model.pending())
    assert w.advance() == model.advance()
    check_same(w, model)
    assert w.pending == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_interleavings_match_naive_model(seed: int) -> None:
    """100 random histories per seed (500 in all) agree with the model after every step."""
    rng = random.Random(seed)
    for _ in range(100):
        run_trial(rng)


def run_lane_trial(rng: random.Random) -> None:
    """Records split into partition-key lanes; each lane settles its own in order, in batches."""
    n_lanes = rng.randint(1, 10)
    w: Watermark[int] = Watermark()
    model = NaiveWatermark()
    lanes: list[list[int]] = [[] for _ in range(n_lanes)]
    next_record = 0
    for _ in range(rng.randint(1, 60)):
        if rng.random() < 0.3:
            read = list(range(next_record, next_record + rng.randint(1, 30)))
            next_record += len(read)
            w.track(read)
            model.records.extend(read)
            for record in read:
                lanes[rng.randrange(n_lanes)].append(record)
        else:
            lane = lanes[rng.randrange(n_lanes)]
            count = rng.randint(1, 5)
            batch = lane[:count]
            del lane[:count]
            w.settle(batch)
            model.settled.update(batch)
            assert w.advance() == model.advance()
        check_same(w, model)


@pytest.mark.parametrize("seed", range(5))
def test_random_lanes_match_naive_model(seed: int) -> None:
    """100 random lane schedules per seed agree with the model after every settle."""
    rng = random.Random(1000 + seed)
    for _ in range(100):
        run_lane_trial(rng)
