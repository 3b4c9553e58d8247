"""The documented keys of ``poller status --json`` (its schema is in ``poller/status.py``'s
docstring), shared by the fast and the integration status tests."""

from __future__ import annotations

MAPPING_KEYS = {
    "name",
    "source",
    "event_source_arn",
    "event_source_mapping_arn",
    "tags",
    "state",
    "error",
    "checkpoints_error",
    "failures_waiting",
    "shards",
}
FAILURE_KEYS = {"destination", "kind", "count", "in_flight", "capped", "note", "error"}
SHARD_KEYS = {
    "shard_id",
    "owner",
    "pending_owner",
    "checkpoint",
    "checkpoint_age_seconds",
    "finished",
    "closed",
    "iterator_age_seconds",
    "millis_behind_latest",
    "unread_record_age_seconds",
    "iterator_error",
    "counter",
    "owner_switches",
    "parent_ids",
}
