"""Partial batch responses (ReportBatchItemFailures) for streams and queues.

Case ids ending in ``_success`` or ``_failure`` without a ``derived_`` prefix are the
scenarios AWS was recorded answering in ``esm-kinesis.json``
(``test_kinesis_report_batch_item_success_scenarios`` and ``..._failure_scenarios``), with the
response the function returned there. ``derived_`` cases extend the same rules (aws-esm.md
§1.3) to shapes AWS was not recorded on.
"""

from __future__ import annotations

from typing import Any

import pytest

from poller.core.responses import (
    MAX_VALUE_CHARS,
    QueueResponse,
    StreamResponse,
    parse_queue_response,
    parse_stream_response,
)

#: Kinesis sequence numbers of a three-record batch, in batch order.
SEQS = [
    "49590338271490256608559692538361571095921575989136588898",
    "49590338271490256608559692540925702759324208523137515618",
    "49590338271490256608559692541314731734285193107486064738",
]
#: SQS message ids of a three-message batch, in batch order.
MSG_IDS = [
    "059f36b4-87a3-44ab-83d2-661975830a7d",
    "2e1424d4-f796-459a-8184-9c92662be6da",
    "c80e8021-a70a-42c7-a470-796e1186f753",
]


def failures(*identifiers: Any) -> dict[str, Any]:
    """A response reporting each identifier under ``itemIdentifier``."""
    return {"batchItemFailures": [{"itemIdentifier": i} for i in identifiers]}


# --- Complete success: the same for streams and queues ----------------------------------------

SUCCESS = [
    pytest.param("", id="empty_string_success"),
    pytest.param([], id="empty_list_success"),
    pytest.param(None, id="null_success"),
    pytest.param({}, id="empty_dict_success"),
    pytest.param({"batchItemFailures": []}, id="empty_batch_item_failure_success"),
    pytest.param({"batchItemFailures": None}, id="null_batch_item_failure_success"),
    pytest.param("ok", id="derived_string_response_success"),
    pytest.param(42, id="derived_number_response_success"),
    pytest.param(True, id="derived_boolean_response_success"),
    pytest.param(
        [{"itemIdentifier": "not-looked-at"}], id="derived_failures_outside_an_object_success"
    ),
    pytest.param({"statusCode": 200, "body": "done"}, id="derived_other_keys_success"),
]


@pytest.mark.parametrize("payload", SUCCESS)
def test_stream_success(payload: Any) -> None:
    assert parse_stream_response(payload, payload_is_json=True, item_ids=SEQS) == StreamResponse(
        "success"
    )


@pytest.mark.parametrize("payload", SUCCESS)
def test_queue_success(payload: Any) -> None:
    assert parse_queue_response(payload, payload_is_json=True, item_ids=MSG_IDS) == QueueResponse(
        "success"
    )


# --- Complete failure ("invalid"): the same for streams and queues ----------------------------
# Each case names a function of the batch's ids (so the same table serves both parsers), and
# the fragments the reason must contain to name the offending item and value.

INVALID = [
    pytest.param(
        lambda ids: failures(123),
        ["batchItemFailures[0].itemIdentifier must be a string, not 123"],
        id="item_identifier_not_present_failure",
    ),
    pytest.param(
        lambda ids: failures(""),
        ['batchItemFailures[0].itemIdentifier "" is not in the batch'],
        id="empty_string_item_identifier_failure",
    ),
    pytest.param(
        lambda ids: failures(None),
        ["batchItemFailures[0].itemIdentifier must be a string, not null"],
        id="null_item_identifier_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{"foo": 123}]},
        ['batchItemFailures[0] has no itemIdentifier (keys: "foo")'],
        id="invalid_key_foo_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{"foo": None}]},
        ['batchItemFailures[0] has no itemIdentifier (keys: "foo")'],
        id="invalid_key_foo_null_value_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{}]},
        ["batchItemFailures[0] has no itemIdentifier (keys: none)"],
        id="derived_empty_item_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{k: 1 for k in "abcdefg"}]},
        ['(keys: "a", "b", "c", "d", "e", ...)'],
        id="derived_many_keys_no_identifier_failure",
    ),
    pytest.param(
        lambda ids: failures("not-in-batch"),
        ['batchItemFailures[0].itemIdentifier "not-in-batch" is not in the batch'],
        id="derived_unknown_identifier_failure",
    ),
    pytest.param(
        lambda ids: failures(True),
        ["itemIdentifier must be a string, not true"],
        id="derived_boolean_identifier_failure",
    ),
    pytest.param(
        lambda ids: failures([ids[0]]),
        ["itemIdentifier must be a string, not an array (1 items)"],
        id="derived_array_identifier_failure",
    ),
    pytest.param(
        lambda ids: failures(ids[0], 7, ids[1]),
        ["batchItemFailures[1].itemIdentifier must be a string, not 7"],
        id="derived_one_bad_item_among_valid_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [ids[0]]},
        ["batchItemFailures[0] must be an object, not"],
        id="derived_item_is_a_string_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [None]},
        ["batchItemFailures[0] must be an object, not null"],
        id="derived_item_is_null_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": {"itemIdentifier": ids[0]}},
        ["batchItemFailures must be a list or null, not an object (1 keys)"],
        id="derived_failures_is_an_object_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": ids[0]},
        ["batchItemFailures must be a list or null, not"],
        id="derived_failures_is_a_string_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": False},
        ["batchItemFailures must be a list or null, not false"],
        id="derived_failures_is_false_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{"itemIdentifier": 1.5}]},
        ["itemIdentifier must be a string, not 1.5"],
        id="derived_float_identifier_failure",
    ),
    pytest.param(
        lambda ids: {"batchItemFailures": [{"itemIdentifier": ("a", "b")}]},
        ["itemIdentifier must be a string, not tuple"],
        id="derived_python_handler_tuple_identifier_failure",
    ),
]


@pytest.mark.parametrize(("make", "fragments"), INVALID)
def test_stream_invalid(make: Any, fragments: list[str]) -> None:
    result = parse_stream_response(make(SEQS), payload_is_json=True, item_ids=SEQS)
    assert result.kind == "invalid"
    assert result.failed_from is None
    assert result.reason is not None
    for fragment in fragments:
        assert fragment in result.reason


@pytest.mark.parametrize(("make", "fragments"), INVALID)
def test_queue_invalid(make: Any, fragments: list[str]) -> None:
    result = parse_queue_response(make(MSG_IDS), payload_is_json=True, item_ids=MSG_IDS)
    assert result.kind == "invalid"
    assert result.failed_ids == frozenset()
    assert result.reason is not None
    for fragment in fragments:
        assert fragment in result.reason


# --- Partial failure --------------------------------------------------------------------------
# Reported batch positions -> the stream's failed_from (the lowest) and the queue's failed_ids.

PARTIAL = [
    pytest.param([1], 1, id="one_middle_item"),
    pytest.param([2], 2, id="last_item"),
    pytest.param([0], 0, id="first_item"),
    pytest.param([2, 0], 0, id="lowest_reported_wins_in_any_order"),
    pytest.param([1, 2], 1, id="two_items"),
    pytest.param([1, 1], 1, id="duplicate_identifier"),
    pytest.param([0, 1, 2], 0, id="every_item"),
]


@pytest.mark.parametrize(("positions", "failed_from"), PARTIAL)
def test_stream_partial(positions: list[int], failed_from: int) -> None:
    payload = failures(*(SEQS[p] for p in positions))
    assert parse_stream_response(payload, payload_is_json=True, item_ids=SEQS) == StreamResponse(
        "partial", failed_from=failed_from
    )


@pytest.mark.parametrize(("positions", "failed_from"), PARTIAL)
def test_queue_partial(positions: list[int], failed_from: int) -> None:
    payload = failures(*(MSG_IDS[p] for p in positions))
    result = parse_queue_response(payload, payload_is_json=True, item_ids=MSG_IDS)
    assert result == QueueResponse("partial", failed_ids=frozenset(MSG_IDS[p] for p in positions))


def test_extra_keys_in_an_item_are_ignored() -> None:
    """Only itemIdentifier matters; Powertools-style extra fields do not invalidate an item."""
    payload = {"batchItemFailures": [{"itemIdentifier": SEQS[1], "reason": "boom"}]}
    assert parse_stream_response(payload, payload_is_json=True, item_ids=SEQS).failed_from == 1
    payload = {"batchItemFailures": [{"itemIdentifier": MSG_IDS[1], "reason": "boom"}]}
    result = parse_queue_response(payload, payload_is_json=True, item_ids=MSG_IDS)
    assert result.failed_ids == {MSG_IDS[1]}


def test_stream_repeated_batch_id_retries_from_its_first_record() -> None:
    """Should a batch ever hold an id twice, the earliest record is where retries start."""
    ids = ["a", "b", "a", "c"]
    result = parse_stream_response(failures("a"), payload_is_json=True, item_ids=ids)
    assert result == StreamResponse("partial", failed_from=0)


def test_identifier_of_the_other_source_kind_is_not_in_the_batch() -> None:
    """A sequence number reported to a queue (or a message id to a stream) is invalid."""
    stream = parse_stream_response(failures(MSG_IDS[0]), payload_is_json=True, item_ids=SEQS)
    queue = parse_queue_response(failures(SEQS[0]), payload_is_json=True, item_ids=MSG_IDS)
    assert stream.kind == queue.kind == "invalid"


def test_empty_batch_cannot_report_items() -> None:
    """With no items, any reported identifier is invalid and an empty list is success."""
    assert parse_stream_response(failures("x"), payload_is_json=True, item_ids=[]).kind == (
        "invalid"
    )
    assert parse_queue_response(failures(), payload_is_json=True, item_ids=[]).kind == "success"


# --- Bodies that are not JSON (HTTP targets) ---------------------------------------------------

RAW_BODY = "<html>secret record data</html>"


def test_stream_non_json_body_success() -> None:
    """Streams only look inside a JSON object, so a non-JSON body is complete success."""
    result = parse_stream_response(RAW_BODY, payload_is_json=False, item_ids=SEQS)
    assert result == StreamResponse("success")


def test_stream_non_json_body_that_looks_like_failures_success() -> None:
    """The body's text is not parsed again, even when it resembles a partial response."""
    text = '{"batchItemFailures": [{"itemIdentifier": 123}]'  # truncated JSON
    assert parse_stream_response(text, payload_is_json=False, item_ids=SEQS).kind == "success"


def test_queue_non_json_body_failure() -> None:
    """SQS treats an invalid JSON response as a complete failure, without quoting the body."""
    result = parse_queue_response(RAW_BODY, payload_is_json=False, item_ids=MSG_IDS)
    assert result == QueueResponse("invalid", reason="invalid JSON response")


# --- Reasons stay short and free of record data ------------------------------------------------


def test_long_identifier_is_truncated_in_the_reason() -> None:
    """A huge bogus identifier cannot flood the logs."""
    huge = "x" * 10_000
    result = parse_queue_response(failures(huge), payload_is_json=True, item_ids=MSG_IDS)
    assert result.reason is not None
    assert "(10002 chars)" in result.reason  # the JSON rendering adds two quotes
    assert len(result.reason) < MAX_VALUE_CHARS + 100


def test_containers_are_described_not_dumped() -> None:
    """An item that is an object or array is named by kind, not by its contents."""
    payload = {"batchItemFailures": [["record", "data"]]}
    result = parse_stream_response(payload, payload_is_json=True, item_ids=SEQS)
    assert result.reason == "batchItemFailures[0] must be an object, not an array (2 items)"


def test_result_defaults() -> None:
    """Verdicts carry only what their kind needs."""
    assert StreamResponse("success") == StreamResponse("success", failed_from=None, reason=None)
    assert QueueResponse("success").failed_ids == frozenset()
    assert QueueResponse("success").reason is None


# KPL: a user record's identifier is ``seq:sub``; the aggregate's plain ``seq`` also names it.

KPL_IDS = ["100:0", "100:1", "200:0", "200:1", "300"]
KPL_AGGREGATES = ["100", "100", "200", "200", None]


@pytest.mark.parametrize(
    ("identifier", "failed_from"),
    [("200", 2), ("100", 0), ("200:1", 3), ("300", 4)],
)
def test_stream_plain_sequence_of_an_aggregate(identifier: str, failed_from: int) -> None:
    result = parse_stream_response(
        failures(identifier), payload_is_json=True, item_ids=KPL_IDS, aggregates=KPL_AGGREGATES
    )
    assert result == StreamResponse("partial", failed_from=failed_from)


def test_stream_plain_sequence_without_aggregates_is_not_in_the_batch() -> None:
    """Without the aggregates (de-aggregation off), only the batch's identifiers count."""
    result = parse_stream_response(failures("200"), payload_is_json=True, item_ids=KPL_IDS)
    assert result.kind == "invalid"
    assert result.reason == 'batchItemFailures[0].itemIdentifier "200" is not in the batch'


# -- KPL identifiers, attacked (issue 11 review) ----------------------------------------------

#: Plain 10, aggregate 20 with user records 0-2, aggregate 30 whose user record 0 was settled
#: in an earlier batch (only 1 and 2 are here), plain 40.
MIXED_IDS = ["10", "20:0", "20:1", "20:2", "30:1", "30:2", "40"]
MIXED_AGGREGATES = [None, "20", "20", "20", "30", "30", None]


@pytest.mark.parametrize(
    ("reported", "failed_from"),
    [
        (["30", "20:1"], 2),  # both forms: the lowest record wins, whatever the order
        (["20:2", "20"], 1),  # the plain number is the aggregate's first user record here
        (["30", "30", "30:2"], 4),  # duplicates
        (["30"], 4),  # an aggregate only partly in the batch: its first record in it
        (["40", "10"], 0),  # plain records by their plain number, lowest wins
    ],
)
def test_kpl_identifiers_fail_from_the_lowest_record_named(
    reported: list[str], failed_from: int
) -> None:
    payload = {"batchItemFailures": [{"itemIdentifier": i} for i in reported]}
    response = parse_stream_response(
        payload, payload_is_json=True, item_ids=MIXED_IDS, aggregates=MIXED_AGGREGATES
    )
    assert (response.kind, response.failed_from) == ("partial", failed_from)


@pytest.mark.parametrize(
    "identifier",
    ["20:9", "30:0", "10:0", "40:0", "020", " 20", "20:", ":1", "30:01"],
)
def test_kpl_identifiers_not_in_the_batch_are_malformed(identifier: str) -> None:
    """A sub-record out of range, one settled in an earlier batch, a sub-record of a plain
    record, and near-misses of a valid number are not in the batch: the whole batch fails."""
    payload = {"batchItemFailures": [{"itemIdentifier": identifier}]}
    response = parse_stream_response(
        payload, payload_is_json=True, item_ids=MIXED_IDS, aggregates=MIXED_AGGREGATES
    )
    assert response.kind == "invalid"
    assert identifier in (response.reason or "")
