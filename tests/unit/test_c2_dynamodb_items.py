"""The mapping store's lease table items and transaction actions, without I/O: what
``DynamoDBMappingStore`` writes, and how it reads it back (the behaviour against real
emulators is in ``tests/integration/test_c2_store_contract.py``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from poller.checkpoints.dynamodb.calls import is_refusal
from poller.control.store import MappingRecord, ReplicaAck, pair_key
from poller.control.store_dynamodb import (
    HEAD_KEY,
    REGISTRY_KEY,
    ack_value,
    acks_from_item,
    head_update,
    pair_digest,
    pair_owner,
    record_delete,
    record_from_item,
    record_item,
    record_key,
    record_put,
    record_update,
    registry_entry,
    registry_from_item,
    registry_put,
    registry_set,
)

FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"
SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
RECORD = MappingRecord(
    uuid="a1b2c3d4-5678-90ab-cdef-1234567890ab",
    revision=3,
    created_revision=1,
    written=4,
    request={"EventSourceArn": SOURCE, "BatchSize": 10, "FilterCriteria": {"Filters": []}},
    tags={"team": "payments"},
    desired="Enabled",
    change="update",
    function_arn=FUNCTION,
    pair_key=pair_key(FUNCTION, SOURCE),
    last_modified=1_700_000_000.25,
)


def test_a_record_item_round_trips_and_stays_out_of_lease_scans() -> None:
    item = record_item(RECORD, "token-1")
    assert item["leaseKey"] == {"S": "__esm__#" + RECORD.uuid}
    assert "mapping" not in item  # the view index and every Scan on ``mapping`` skip it
    assert (item["revision"], item["written"], item["desired"]) == (
        {"N": "3"},
        {"N": "4"},
        {"S": "Enabled"},
    )
    assert item["writeId"] == {"S": "token-1"}
    assert "lastProcessingResult" not in item
    assert record_from_item(item) == RECORD


def test_the_processing_result_kept_apart_wins_over_the_json() -> None:
    item = record_item(replace(RECORD, last_processing_result="OK"), "t")
    assert item["lastProcessingResult"] == {"S": "OK"}
    item["lastProcessingResult"] = {"S": "PROBLEM: Function call failed"}
    assert record_from_item(item).last_processing_result == "PROBLEM: Function call failed"


def test_keys_never_look_like_a_mapping_name() -> None:
    for key in (HEAD_KEY, REGISTRY_KEY, record_key("u")):
        assert key.startswith("__esm__#")  # mapping names start with a letter or digit


def test_the_registry_keeps_a_short_digest_of_the_pair() -> None:
    digest = pair_digest(RECORD.pair_key)
    assert len(digest) == 32
    assert digest == pair_digest(pair_key(FUNCTION, SOURCE))
    assert digest != pair_digest(pair_key(FUNCTION, SOURCE + "-2"))
    assert registry_entry(RECORD) == {"M": {"r": {"N": "4"}, "p": {"S": digest}}}
    entries = {"u-2": digest, "u-1": digest, "u-3": "other"}
    assert pair_owner(entries, RECORD.pair_key) == "u-1"
    assert pair_owner(entries, RECORD.pair_key, excluding="u-1") == "u-2"
    assert pair_owner({"u-3": "other"}, RECORD.pair_key) is None


def test_registry_items_read_back() -> None:
    assert registry_from_item(None) == (0, {})
    put = registry_put(7, {RECORD.uuid: registry_entry(RECORD)})["Put"]["Item"]
    assert put["leaseKey"] == {"S": REGISTRY_KEY}
    assert "mapping" not in put
    assert registry_from_item(put) == (7, {RECORD.uuid: pair_digest(RECORD.pair_key)})
    assert registry_from_item({"revision": {"N": "2"}}) == (2, {})


def test_registry_updates_set_or_remove_one_entry() -> None:
    set_one = registry_set(5, "u-1", registry_entry(RECORD))["Update"]
    assert set_one["UpdateExpression"] == "SET #revision = :revision, #registry.#uuid = :entry"
    assert set_one["ExpressionAttributeNames"]["#uuid"] == "u-1"
    assert "ConditionExpression" not in set_one  # the head's condition serializes
    removed = registry_set(6, "u-1", None)["Update"]
    assert removed["UpdateExpression"] == "SET #revision = :revision REMOVE #registry.#uuid"
    assert ":entry" not in removed["ExpressionAttributeValues"]


def test_the_head_update_is_conditional_on_the_revision_read() -> None:
    first = head_update(0, 1, "t")["Update"]
    assert first["ConditionExpression"] == "attribute_not_exists(#revision)"
    assert ":previous" not in first["ExpressionAttributeValues"]
    later = head_update(4, 5, "t")["Update"]
    assert later["ConditionExpression"] == "#revision = :previous"
    assert later["ExpressionAttributeValues"][":previous"] == {"N": "4"}
    assert later["ExpressionAttributeValues"][":revision"] == {"N": "5"}
    assert later["ExpressionAttributeValues"][":token"] == {"S": "t"}


def test_a_record_is_created_only_where_none_is() -> None:
    put = record_put(RECORD, "t")["Put"]
    assert put["ConditionExpression"] == "attribute_not_exists(#leaseKey)"
    assert put["Item"] == record_item(RECORD, "t")


def test_an_update_is_conditional_on_written_and_leaves_the_result_alone() -> None:
    new = replace(RECORD, written=9, revision=9, request={"BatchSize": 1})
    update = record_update(RECORD, new, "t")["Update"]
    assert update["ConditionExpression"] == "#written = :read"
    assert update["ExpressionAttributeValues"][":read"] == {"N": "4"}
    assert "#result" not in update["ExpressionAttributeNames"]
    assert "REMOVE" not in update["UpdateExpression"]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, "OK", "SET"),
        ("OK", None, "REMOVE"),
        ("OK", "PROBLEM: x", "SET"),
    ],
)
def test_an_update_writes_the_result_only_when_the_change_changed_it(
    before: str | None, after: str | None, expected: str
) -> None:
    current = replace(RECORD, last_processing_result=before)
    update = record_update(current, replace(current, last_processing_result=after), "t")
    expression = update["Update"]["UpdateExpression"]
    assert update["Update"]["ExpressionAttributeNames"]["#result"] == "lastProcessingResult"
    if expected == "SET":
        assert "#result = :result" in expression
        assert update["Update"]["ExpressionAttributeValues"][":result"] == {"S": after}
    else:
        assert expression.endswith(" REMOVE #result")


def test_a_delete_is_conditional_on_written_and_deleted() -> None:
    delete = record_delete(RECORD)["Delete"]
    assert delete["ConditionExpression"] == "#written = :read AND #desired = :deleted"
    assert delete["ExpressionAttributeValues"] == {
        ":read": {"N": "4"},
        ":deleted": {"S": "Deleted"},
    }


def test_acks_read_back() -> None:
    assert acks_from_item(None) == {}
    item = {"esmReplicas": {"M": {"a": ack_value(3, 1_700_000_000.5), "b": ack_value(1, 2.0)}}}
    assert acks_from_item(item) == {
        "a": ReplicaAck(applied=3, beat_at=1_700_000_000.5),
        "b": ReplicaAck(applied=1, beat_at=2.0),
    }
    assert acks_from_item({"leaseKey": {"S": "x"}}) == {}


@pytest.mark.parametrize(
    ("reasons", "refused"),
    [
        (("ConditionalCheckFailed", "None", "None"), True),
        (("None", "TransactionConflict"), True),
        (("ConditionalCheckFailed", "ValidationError"), False),  # a bug, not an answer
        (("None", "ThrottlingError"), False),
        ((), False),
        (("None",), False),
    ],
)
def test_which_cancellations_are_refusals(reasons: tuple[str, ...], refused: bool) -> None:
    assert is_refusal(reasons) is refused
