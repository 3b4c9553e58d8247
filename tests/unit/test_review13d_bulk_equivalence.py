"""Review 13d: the bulk fast paths of 6f07009 and bb662fd against the one-at-a-time
definitions they replace.

* ``BatchBuilder.fill_from`` (whole-run shortcut) cuts exactly where repeated ``try_add``
  cuts: oversized first record, a byte limit hit exactly, overhead, a builder already holding
  records or already refused.
* ``Watermark.advance`` (bulk head pass) returns what a reference model (pass the settled
  head one record at a time) returns, with out-of-order settlement and re-settlement.
* ``balance._answer_requests`` (a heap of askers) grants and declines exactly what the
  previous ``min()`` over every request did (the previous body is kept below as the oracle).
* The handler's private copy (``_copied``) is isolated from the event for any JSON-ish value,
  odd keys included.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from poller.core.balance import LeaseView, _answer_requests
from poller.core.batching import BatchBuilder
from poller.core.watermark import Watermark
from poller.targets.python.runs import _private_copy


@dataclass(frozen=True, slots=True)
class Item:
    size: int


# -- BatchBuilder.fill_from ----------------------------------------------------------------


def fill_by_try_add(builder: BatchBuilder[Item], pending: deque[Item]) -> None:
    """The definition ``fill_from`` inlines: ``try_add`` from the front while it accepts."""
    while pending and builder.try_add(pending[0]):
        pending.popleft()


_sizes = st.lists(st.integers(min_value=0, max_value=40), max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    before=_sizes,
    after=_sizes,
    max_records=st.integers(min_value=0, max_value=8),
    max_bytes=st.integers(min_value=0, max_value=120),
    overhead=st.integers(min_value=0, max_value=30),
)
def test_fill_from_cuts_where_try_add_cuts(
    before: list[int], after: list[int], max_records: int, max_bytes: int, overhead: int
) -> None:
    """Two builders fed the same items: one with ``try_add`` first then ``fill_from``, the
    other with ``try_add`` only; same records, same size, same fullness, same leftovers."""
    fast: BatchBuilder[Item] = BatchBuilder(max_records, max_bytes, overhead)
    slow: BatchBuilder[Item] = BatchBuilder(max_records, max_bytes, overhead)
    for size in before:  # a builder that may already hold records, or be refused
        fast.try_add(Item(size))
        slow.try_add(Item(size))
    fast_pending = deque(Item(s) for s in after)
    slow_pending = deque(Item(s) for s in after)
    fast.fill_from(fast_pending)
    fill_by_try_add(slow, slow_pending)
    assert fast.records == slow.records
    assert fast.oversized == slow.oversized
    assert fast.size_bytes == slow.size_bytes
    assert fast.is_full == slow.is_full
    assert list(fast_pending) == list(slow_pending)
    # And both go on the same way afterwards (the refused state carried over).
    assert fast.try_add(Item(0)) == slow.try_add(Item(0))


def test_fill_from_exact_byte_limit_takes_the_whole_run() -> None:
    """A run whose event is exactly ``max_bytes`` fits (``try_add`` refuses only above)."""
    builder: BatchBuilder[Item] = BatchBuilder(10, max_bytes=14 + 10 + 10 + 1)
    pending = deque([Item(10), Item(10)])
    builder.fill_from(pending)
    assert (len(builder.records), builder.size_bytes, builder.is_full) == (2, 35, False)


def test_fill_from_sets_an_oversized_first_record_aside() -> None:
    builder: BatchBuilder[Item] = BatchBuilder(10, max_bytes=20)
    pending = deque([Item(100), Item(1)])
    builder.fill_from(pending)
    assert builder.oversized == [Item(100)]
    assert builder.records == [Item(1)]
    assert not pending


# -- Watermark.advance ---------------------------------------------------------------------


class ReferenceWatermark:
    """The definition: the checkpoint is the last record of the longest settled prefix."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.settled: set[int] = set()
        self.checkpoint: int | None = None

    def advance(self) -> int | None:
        passed = None
        while self.order and self.order[0] in self.settled:
            passed = self.order.pop(0)
            self.settled.discard(passed)
        if passed is not None:
            self.checkpoint = passed
        return passed


_ops = st.lists(
    st.tuples(st.sampled_from(["track", "settle", "advance"]), st.integers(0, 6), st.randoms()),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_advance_matches_the_settled_prefix(ops: list[tuple[str, int, Any]]) -> None:
    """Random tracks, settlements in any order (some repeated), and advances: every advance
    returns what the reference returns, and pending counts agree."""
    mark: Watermark[int] = Watermark()
    ref = ReferenceWatermark()
    next_position = 0
    for op, n, rng in ops:
        if op == "track":
            batch = list(range(next_position, next_position + n))
            next_position += n
            mark.track(batch)
            ref.order.extend(batch)
        elif op == "settle" and ref.order:
            chosen = [rng.choice(ref.order) for _ in range(n)]  # duplicates included
            chosen += [p for p in chosen if rng.random() < 0.3]
            mark.settle(chosen)
            ref.settled.update(chosen)
        else:
            assert mark.advance() == ref.advance()
        assert mark.pending == len(ref.order)
        assert mark.checkpoint == ref.checkpoint
        first = next((p for p in ref.order if p not in ref.settled), None)
        assert mark.first_unsettled() == first


# -- balance._answer_requests ----------------------------------------------------------------


def answer_requests_before(
    live: list[LeaseView], *, me: str, have: int, target: int, standing: Set[str] | None
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """``_answer_requests`` as it was before bb662fd (b90a07b), the oracle."""
    counts = Counter(lease.owner for lease in live)
    asked = sorted(
        (
            lease
            for lease in live
            if lease.owner == me
            and lease.pending_owner not in (None, me)
            and (standing is None or lease.shard_id in standing)
        ),
        key=lambda lease: lease.shard_id,
    )
    grant: list[tuple[str, str]] = []
    decline: list[str] = []
    while asked:
        lease = min(asked, key=lambda lease: (counts[lease.pending_owner], lease.shard_id))
        asked.remove(lease)
        asker = lease.pending_owner or ""
        if counts[asker] < target and have - counts[asker] >= 2:
            grant.append((lease.shard_id, asker))
            counts[asker] += 1
            have -= 1
        else:
            decline.append(lease.shard_id)
    return tuple(grant), tuple(decline)


_owners = st.sampled_from(["me", "a", "b", "c", "d"])


@st.composite
def _live(draw: st.DrawFn) -> list[LeaseView]:
    count = draw(st.integers(min_value=0, max_value=30))
    shard_ids = draw(st.permutations([f"s{i:02d}" for i in range(count)]))
    return [
        LeaseView(
            shard_id,
            draw(_owners | st.none()),
            draw(st.booleans()),
            draw(_owners | st.none()),
        )
        for shard_id in shard_ids
    ]


@settings(max_examples=500, deadline=None)
@given(
    live=_live(),
    have=st.integers(min_value=0, max_value=30),
    target=st.integers(min_value=0, max_value=15),
    standing_all=st.booleans(),
    standing_pick=st.sets(st.integers(min_value=0, max_value=29)),
)
def test_answer_requests_heap_matches_the_min_loop(
    live: list[LeaseView], have: int, target: int, standing_all: bool, standing_pick: set[int]
) -> None:
    standing = None if standing_all else {f"s{i:02d}" for i in standing_pick}
    kwargs: dict[str, Any] = {"me": "me", "have": have, "target": target, "standing": standing}
    assert _answer_requests(live, **kwargs) == answer_requests_before(live, **kwargs)


# -- the handler's private copy --------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutate_everything(value: Any) -> None:
    """Change every container reachable from ``value``."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _mutate_everything(item)
        value["__mutated__"] = True
    elif isinstance(value, list):
        for item in value:
            _mutate_everything(item)
        value.append("__mutated__")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _json, max_size=4))
def test_private_copy_is_equal_and_isolated(event: dict[str, Any]) -> None:
    """The copy equals the event (int keys kept as ints, like marshal), and mutating every
    container of the copy leaves the event unchanged."""
    before = json.dumps(event, sort_keys=True, default=repr) if _str_keys(event) else None
    snapshot = _deep_snapshot(event)
    copied = _private_copy(event)
    assert copied == event
    _mutate_everything(copied)
    assert _deep_snapshot(event) == snapshot
    if before is not None:
        assert json.dumps(event, sort_keys=True, default=repr) == before


def _str_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _str_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_str_keys(v) for v in value)
    return True


def _deep_snapshot(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _deep_snapshot(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_deep_snapshot(v) for v in value))
    return ("leaf", repr(value))


# -- the lean parser against botocore's ---------------------------------------------------

_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=4)
_odd = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_kinesis_record = st.fixed_dictionaries(
    {
        "SequenceNumber": st.sampled_from(
            ["1", "49590338271490256608559692538361571095921575989136588898"]
        ),
        "ApproximateArrivalTimestamp": st.floats(0, 4e9)
        | st.integers(0, 4_000_000_000)
        | st.none(),
        "Data": st.sampled_from(["", "bnVsbA==", "null", "AAEC/w=="]),
        "PartitionKey": st.sampled_from(["k", "null", 'a"b', "ключ", ""]),
    },
    optional={
        "EncryptionType": st.sampled_from(["NONE", "KMS"]) | st.none(),
        "Unknown": _odd,
    },
)
_child = st.fixed_dictionaries(
    {
        "ShardId": st.text(max_size=3),
        "ParentShards": st.lists(st.text(max_size=3), max_size=2),
        "HashKeyRange": st.fixed_dictionaries(
            {"StartingHashKey": st.just("0"), "EndingHashKey": st.just("9")},
            optional={"Extra": _odd},
        ),
    },
    optional={"Unknown": _odd},
)


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(_kinesis_record, max_size=5),
    children=st.none() | st.lists(_child, max_size=2),
    behind=st.none() | st.integers(0, 10**6),
    extra=st.none() | _odd,
)
def test_lean_page_parse_matches_botocore_with_odd_members(
    records: list[dict[str, Any]], children: Any, behind: Any, extra: Any
) -> None:
    """Unknown members holding nested nulls and lists, the text ``null`` inside strings and
    base64 data, int and float timestamps, null timestamps: both parsers (the one chosen
    when the body holds ``null`` and the null-free one otherwise) give botocore's answer."""
    import copy

    import botocore.session
    from botocore.parsers import JSONParser

    from poller.aws.clients import epoch_seconds, keep_base64
    from poller.aws.lean import compile_output

    output = (
        botocore.session.get_session()
        .get_service_model("kinesis")
        .operation_model("GetRecords")
        .output_shape
    )
    page: dict[str, Any] = {"Records": records, "NextShardIterator": "it"}
    if children is not None:
        page["ChildShards"] = children
    if behind is not None:
        page["MillisBehindLatest"] = behind
    if extra is not None:
        page["Extra"] = extra
    body = json.dumps(page).encode()
    parser = JSONParser(timestamp_parser=epoch_seconds, blob_parser=keep_base64)
    expected = parser.parse({"body": body, "headers": {}, "status_code": 200}, output)
    expected.pop("ResponseMetadata", None)
    # The lean path's own choice (``b"null"`` also matches inside strings: a safe miss).
    lean = compile_output(output, null_free=b"null" not in body)
    assert lean(copy.deepcopy(json.loads(body))) == expected
    if not any(v is None for v in _values(page)):  # no JSON null, whatever the strings hold
        null_free = compile_output(output, null_free=True)
        assert null_free(copy.deepcopy(json.loads(body))) == expected


def _values(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in [item, *_values(item)]]
    if isinstance(value, list):
        return [v for item in value for v in [item, *_values(item)]]
    return []
