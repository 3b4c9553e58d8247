"""A mapping's ``State``, computed when it is read, from the replicas' acks.

Data flow::

    MappingStore.acks() + a MappingRecord --mapping_state--> "Creating" | "Enabled" | ...
        --> poller.control.operations (the API's answers)
        --> poller.reconcile (a delete is finalized once every live replica drained it)

No state is stored. A change is *settled* once every live replica has acked a head revision at
least the record's ``revision``: each has then applied it at a batch boundary. Until then the
state names the change (``Creating``, ``Updating``, ``Enabling``, ``Disabling``, ``Deleting``),
as AWS's does, so a waiter (Terraform, a script) that sees ``Enabled`` knows every replica
runs the new configuration. A replica is live while its last ack is at most
:data:`REPLICA_LIVE_SECONDS` old: a crashed replica stops holding states back once it is dead,
and its leases expire on their own.
"""

from __future__ import annotations

from collections.abc import Mapping

from poller.control.store import MappingRecord, ReplicaAck

#: How often a replica acks even when nothing changed (its heartbeat).
ACK_INTERVAL_SECONDS = 5.0
#: A replica whose last ack is older than this is dead for the computed state.
REPLICA_LIVE_SECONDS = 3 * ACK_INTERVAL_SECONDS

_TRANSITIONAL = {
    "create": "Creating",
    "update": "Updating",
    "enable": "Enabling",
    "disable": "Disabling",
    "delete": "Deleting",
}


def live_acks(acks: Mapping[str, ReplicaAck], now: float) -> dict[str, ReplicaAck]:
    """The acks of the replicas alive at ``now`` (epoch seconds)."""
    return {
        replica: ack for replica, ack in acks.items() if now - ack.beat_at <= REPLICA_LIVE_SECONDS
    }


def settled(record: MappingRecord, acks: Mapping[str, ReplicaAck], now: float) -> bool:
    """Whether every live replica has applied the record's last change. With no live replica
    at all nothing has applied it (a create with every replica down stays ``Creating``)."""
    live = live_acks(acks, now)
    return bool(live) and min(ack.applied for ack in live.values()) >= record.revision


def mapping_state(record: MappingRecord, acks: Mapping[str, ReplicaAck], now: float) -> str:
    """The record's ``State`` as AWS names it."""
    if not settled(record, acks, now):
        return _TRANSITIONAL[record.change]
    return "Deleting" if record.desired == "Deleted" else record.desired
