"""The control API's foundations: its settings, its error bodies, the computed state and the
in-memory store (the reference the durable stores' contract tests hold to)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from poller.config import ControlApiSettings, is_loopback, load_settings
from poller.control.errors import (
    ApiError,
    conflict,
    in_use,
    invalid_parameter,
    not_found,
    service_error,
    validation,
)
from poller.control.state import REPLICA_LIVE_SECONDS, live_acks, mapping_state, settled
from poller.control.store import (
    MappingRecord,
    PairTaken,
    ReplicaAck,
    TooManyMappings,
    pair_key,
    tags_only,
)
from poller.control.store_memory import MemoryMappingStore
from poller.errors import ConfigError

SOURCE = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:orders"


def record(uuid: str = "u1", **changes: Any) -> MappingRecord:
    base = MappingRecord(
        uuid=uuid,
        revision=0,
        created_revision=0,
        written=0,
        request={"EventSourceArn": SOURCE, "FunctionName": "orders", "BatchSize": 100},
        tags={},
        desired="Enabled",
        change="create",
        function_arn=FUNCTION,
        pair_key=pair_key(FUNCTION, SOURCE + uuid),
        last_modified=1.0,
    )
    return replace(base, **changes)


def problems(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return caught.value.problems


# --- settings ---------------------------------------------------------------------------


def test_the_api_is_off_and_on_loopback_by_default() -> None:
    settings = ControlApiSettings()
    assert (settings.enabled, settings.host, settings.port, settings.auth) == (
        False,
        "127.0.0.1",
        10028,
        "none",
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("api.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_auth_none_is_refused_off_loopback(tmp_path: Path) -> None:
    found = problems(tmp_path, {"control_api": {"enabled": True, "host": "0.0.0.0"}})
    assert found == [
        "control_api: auth none is allowed only on loopback, and host is '0.0.0.0'; set "
        "auth: sigv4 with credentials, or bind to 127.0.0.1"
    ]


def test_sigv4_needs_credentials(tmp_path: Path) -> None:
    found = problems(tmp_path, {"control_api": {"enabled": True, "auth": "sigv4"}})
    assert found == [
        "control_api: auth sigv4 needs at least one entry in credentials (environment "
        "variable names or a secret_arn)"
    ]


@pytest.mark.parametrize(
    "credentials",
    [
        {"access_key_id_env": "KEY"},
        {"secret_access_key_env": "SECRET"},
        {},
        {
            "access_key_id_env": "KEY",
            "secret_access_key_env": "SECRET",
            "secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-AbCdEf",
        },
    ],
)
def test_a_credential_source_is_one_whole_source(
    tmp_path: Path, credentials: dict[str, str]
) -> None:
    data = {"control_api": {"enabled": True, "auth": "sigv4", "credentials": [credentials]}}
    [problem] = problems(tmp_path, data)
    assert problem.startswith("control_api.credentials[0]: give ")


def test_credentials_are_named_never_inline(tmp_path: Path) -> None:
    data = {
        "control_api": {
            "enabled": True,
            "auth": "sigv4",
            "credentials": [{"access_key_id": "AKIA", "secret_access_key": "shh"}],
        }
    }
    found = problems(tmp_path, data)
    assert any("access_key_id" in p and "not a known field" in p for p in found) or any(
        "access_key_id" in p for p in found
    )
    assert all("shh" not in p for p in found)


def test_sigv4_off_loopback_with_env_credentials_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    credentials = {"access_key_id_env": "API_KEY", "secret_access_key_env": "API_SECRET"}
    path.write_text(
        yaml.safe_dump(
            {
                "control_api": {
                    "enabled": True,
                    "host": "0.0.0.0",
                    "auth": "sigv4",
                    "credentials": [credentials],
                }
            }
        )
    )
    settings = load_settings(path, environ={})
    assert settings.control_api.credentials[0].access_key_id_env == "API_KEY"
    assert settings.mappings == []


def test_a_config_with_no_mapping_needs_the_api(tmp_path: Path) -> None:
    assert problems(tmp_path, {"control_api": {"enabled": False}}) == [
        "mappings: no mapping is configured; give at least one, or turn on control_api "
        "(enabled: true) to create mappings through the API"
    ]


# --- error bodies -----------------------------------------------------------------------


def test_error_bodies_follow_the_recordings() -> None:
    assert not_found().body() == {
        "Type": "User",
        "Message": "The resource you requested does not exist.",
    }
    assert invalid_parameter("Unrecognized event source.").body() == {
        "Type": "User",
        "message": "Unrecognized event source.",
    }
    assert validation("1 validation error detected").body() == {
        "message": "1 validation error detected"
    }
    assert conflict("taken").body() == {"Type": "User", "Message": "taken"}
    assert in_use("busy").status == 400
    assert service_error("down").body() == {"Type": "Service", "Message": "down"}
    assert str(not_found("gone")) == "ResourceNotFoundException: gone"
    assert isinstance(ApiError(403, "InvalidSignatureException", "bad"), Exception)
    assert ApiError(403, "InvalidSignatureException", "bad").body() == {"message": "bad"}


# --- computed state -------------------------------------------------------------------


def test_a_change_settles_once_every_live_replica_applied_it() -> None:
    rec = record(revision=5, change="update")
    now = 1_000.0
    acks = {"a": ReplicaAck(5, now), "b": ReplicaAck(4, now)}
    assert mapping_state(rec, acks, now) == "Updating"
    acks["b"] = ReplicaAck(6, now)
    assert mapping_state(rec, acks, now) == "Enabled"


def test_a_dead_replica_holds_no_state_back() -> None:
    rec = record(revision=5, change="disable", desired="Disabled")
    now = 1_000.0
    acks = {"a": ReplicaAck(5, now), "dead": ReplicaAck(1, now - REPLICA_LIVE_SECONDS - 1)}
    assert set(live_acks(acks, now)) == {"a"}
    assert mapping_state(rec, acks, now) == "Disabled"


def test_with_no_live_replica_nothing_settles() -> None:
    rec = record(revision=1)
    assert not settled(rec, {}, 10.0)
    assert mapping_state(rec, {}, 10.0) == "Creating"


@pytest.mark.parametrize(
    ("change", "desired", "pending", "done"),
    [
        ("create", "Enabled", "Creating", "Enabled"),
        ("create", "Disabled", "Creating", "Disabled"),
        ("enable", "Enabled", "Enabling", "Enabled"),
        ("disable", "Disabled", "Disabling", "Disabled"),
        ("delete", "Deleted", "Deleting", "Deleting"),
    ],
)
def test_state_names(change: str, desired: str, pending: str, done: str) -> None:
    rec = record(revision=3, change=change, desired=desired)
    assert mapping_state(rec, {"a": ReplicaAck(2, 0.0)}, 0.0) == pending
    assert mapping_state(rec, {"a": ReplicaAck(3, 0.0)}, 0.0) == done


# --- the in-memory store ------------------------------------------------------------------


def test_records_round_trip_through_json() -> None:
    rec = record(tags={"team": "a"}, last_processing_result="OK")
    assert MappingRecord.from_json(rec.to_json()) == rec


def test_the_memory_store_contract() -> None:
    async def main() -> None:
        store = MemoryMappingStore(clock=lambda: 42.0)
        assert await store.head() == 0
        first = await store.create(record("u1"), limit=2)
        assert (first.revision, first.created_revision, first.written) == (1, 1, 1)
        with pytest.raises(PairTaken) as taken:
            await store.create(record("u2", pair_key=first.pair_key), limit=2)
        assert taken.value.uuid == "u1"
        await store.create(record("u2"), limit=2)
        with pytest.raises(TooManyMappings):
            await store.create(record("u3"), limit=2)
        assert set(await store.records()) == {"u1", "u2"}

        head = await store.head()
        assert await store.update("u1", lambda current, rev: None) == first
        assert await store.head() == head  # a no-op writes nothing
        assert await store.update("nope", lambda current, rev: current) is None

        tagged = await store.update("u1", lambda current, rev: tags_only(current, {"k": "v"}))
        assert tagged is not None
        assert (tagged.tags, tagged.revision, tagged.written) == ({"k": "v"}, 1, head + 1)

        await store.set_processing_result("u1", "OK")
        await store.set_processing_result("gone", "OK")
        assert (await store.get("u1")).last_processing_result == "OK"  # type: ignore[union-attr]
        assert await store.head() == head + 1

        def delete(current: MappingRecord, rev: int) -> MappingRecord:
            return replace(current, desired="Deleted", change="delete", revision=rev)

        deleted = await store.update("u1", delete)
        assert deleted is not None
        assert not await store.finalize_delete("u1", deleted.revision - 1)
        assert not await store.finalize_delete("u2", 2)  # not deleted
        assert await store.finalize_delete("u1", deleted.revision)
        assert await store.get("u1") is None
        assert not await store.finalize_delete("u1", deleted.revision)

        await store.ack("a", 7)
        assert await store.acks() == {"a": ReplicaAck(7, 42.0)}
        await store.forget_replica("a")
        await store.forget_replica("a")
        assert await store.acks() == {}
        await store.aclose()

    anyio.run(main)


# --- a file mapping shadows a record of its UUID ------------------------------------------


def test_a_file_mapping_shadows_a_record_of_its_uuid_in_get_and_list() -> None:
    """The reconciler runs the file's mapping when a record has its UUID, so the API shows
    that one, once."""
    from pydantic import TypeAdapter

    from poller.config import AnyMapping, MappingConfig
    from poller.control import operations
    from poller.control.context import ControlContext

    uuid = "0f5b6c2e-8d1a-4c3b-9e7f-123456789abc"
    file_mapping: AnyMapping = TypeAdapter(MappingConfig).validate_python(
        {
            "name": "from-file",
            "uuid": uuid,
            "event_source_arn": SOURCE,
            "starting_position": "LATEST",
            "batch_size": 7,
            "target": {"type": "lambda", "function_name": "from-file-fn"},
        }
    )

    async def main() -> None:
        store = MemoryMappingStore()
        await store.create(record(uuid, request={**record().request, "BatchSize": 3}), limit=5)
        ctx = ControlContext(
            settings=ControlApiSettings(enabled=True),
            region="us-east-1",
            store=store,
            file_mappings=lambda: (file_mapping,),
            changed=lambda: None,
        )
        status, body = await operations.get_mapping(ctx, uuid)
        assert (status, body is not None and body["BatchSize"]) == (200, 7)
        status, listed = await operations.list_mappings(ctx, {})
        assert listed is not None
        assert [m["BatchSize"] for m in listed["EventSourceMappings"]] == [7]

    anyio.run(main)
