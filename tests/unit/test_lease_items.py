"""The lease table's wire format for protocol v2 (``poller/checkpoints/dynamodb/items.py``):
the member item, the view index's projection, and which items are not leases. Pure functions;
the tables that send them are tested on the emulators."""

from __future__ import annotations

from poller.checkpoints.dynamodb import Members, is_mapping_item, lease_from_item, members_key
from poller.checkpoints.dynamodb.items import (
    VIEW_ATTRIBUTES,
    mapping_item,
    members_from_item,
    new_lease_item,
    new_members_item,
    view_projection,
)
from poller.types import Checkpoint


def test_a_new_member_item_holds_one_beat_and_stays_out_of_the_index() -> None:
    item = new_members_item("m", "ip-10-0-0-1.ec2:1/a.b", 1764064981021000000)
    assert item == {
        "leaseKey": {"S": "m#__members__"},
        "membersOf": {"S": "m"},
        "members": {"M": {"ip-10-0-0-1.ec2:1/a.b": {"N": "1764064981021000000"}}},
        "generation": {"N": "0"},
    }
    assert "mapping" not in item  # the view index is keyed on ``mapping``
    assert members_key("m") == item["leaseKey"]["S"]
    assert members_from_item(item) == Members({"ip-10-0-0-1.ec2:1/a.b": 1764064981021000000}, 0)


def test_members_parse_a_missing_item_and_a_bumped_one() -> None:
    assert members_from_item(None) == Members({}, 0)
    bumped = {"leaseKey": {"S": "m#__members__"}, "generation": {"N": "3"}}
    assert members_from_item(bumped) == Members({}, 3)


def test_only_leases_are_leases() -> None:
    assert is_mapping_item(mapping_item("m", 1.0))
    assert is_mapping_item(new_members_item("m", "a", 1))
    assert not is_mapping_item(new_lease_item("m", "shardId-1", (), None))


def test_the_view_projection_drops_window_state_only() -> None:
    item = new_lease_item("m", "shardId-1", ["p"], Checkpoint("5"))
    item.update(
        {
            "leaseOwner": {"S": "a"},
            "windowState": {"S": '{"open": 1}'},
            "checkpointSubSequenceNumber": {"N": "2"},
            "renewedAt": {"N": "1.5"},
        }
    )
    projected = view_projection(item)
    assert set(item) - set(projected) == {"windowState"}
    assert set(projected) <= {"leaseKey", "mapping", "shardId", *VIEW_ATTRIBUTES}
    lease = lease_from_item(projected)
    assert lease.checkpoint == Checkpoint("5", sub_sequence_number=2)
    assert (lease.owner, lease.parent_ids, lease.renewed_at) == ("a", ("p",), 1.5)
