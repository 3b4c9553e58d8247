"""``poller rewind``'s plan and positions: parsing the operator's input, which shards move, and
the checkpoint each target becomes (poller.operations.rewind_plan, poller.checkpoints.rewinds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from poller import cli
from poller.checkpoints.rewinds import RewindTarget, describe_checkpoint
from poller.core.lineage import ShardInfo
from poller.errors import ConfigError
from poller.operations.rewind_plan import parse_instant, parse_sequences, plan_rewind
from poller.ports import StartPosition
from poller.streams.start import start_position
from poller.types import SHARD_END, Checkpoint
from tests.component.harness import mapping_config
from tests.support.service_config import service_config

NOW = 1_764_925_200.0  # 2025-12-05T09:00:00Z


def test_instants_read_iso_8601_with_or_without_zone_and_epoch_seconds() -> None:
    assert parse_instant("2025-12-05T08:00:00Z", now=NOW) == NOW - 3600
    assert parse_instant("2025-12-05T08:00:00", now=NOW) == NOW - 3600  # no zone: UTC
    assert parse_instant("2025-12-05T09:00:00+01:00", now=NOW) == NOW - 3600
    assert parse_instant(str(NOW - 10), now=NOW) == NOW - 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2025-12-05T09:05:00Z", "in the future"),
        ("tomorrow", "not a time"),
        ("-5", "before 1970"),
    ],
)
def test_bad_instants_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_instant(text, now=NOW)
    assert message in refused.value.problems[0]


def test_sequences_parse_shard_equals_decimal_sequence() -> None:
    targets = parse_sequences(["shardId-1=495", " shardId-2 = 7 "])
    assert targets == {
        "shardId-1": RewindTarget("sequence", sequence_number="495"),
        "shardId-2": RewindTarget("sequence", sequence_number="7"),
    }


@pytest.mark.parametrize("item", ["shardId-1", "=5", "shardId-1=", "shardId-1=12a", "s=1=2"])
def test_malformed_sequences_are_refused(item: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_sequences([item])
    assert "expected SHARD=SEQ" in refused.value.problems[0]


def test_a_shard_named_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="named twice"):
        parse_sequences(["s=1", "s=2"])


def test_targets_become_the_checkpoints_the_engine_starts_from() -> None:
    mapping = mapping_config()
    cases = {
        RewindTarget("timestamp", timestamp=NOW - 60): StartPosition(
            "AT_TIMESTAMP", timestamp=NOW - 60
        ),
        RewindTarget("trim_horizon"): StartPosition("AT_TIMESTAMP", timestamp=0.0),
        RewindTarget("latest"): StartPosition("AT_TIMESTAMP", timestamp=NOW),
        RewindTarget("sequence", sequence_number="42"): StartPosition(
            "AT_SEQUENCE_NUMBER", "42", settled_through=-1
        ),
    }
    for target, position in cases.items():
        assert start_position(mapping, target.checkpoint(NOW)) == position
        assert RewindTarget.decode(target.encode()) == target


def test_describe_names_positions_as_iterator_types() -> None:
    assert describe_checkpoint(Checkpoint(start_timestamp=0.0)) == "TRIM_HORIZON"
    assert describe_checkpoint(Checkpoint(sequence_number="9")) == "AFTER_SEQUENCE_NUMBER 9"
    assert describe_checkpoint(Checkpoint("9", sub_sequence_number=-1)) == "AT_SEQUENCE_NUMBER 9"
    assert describe_checkpoint(Checkpoint(start_timestamp=NOW)) == (
        "AT_TIMESTAMP 2025-12-05T09:00:00.000Z"
    )
    assert describe_checkpoint(None).startswith("none")
    with pytest.raises(ValueError, match="not a rewind target"):
        RewindTarget.decode('{"kind":"sideways"}')


OPEN = [ShardInfo("s-0"), ShardInfo("s-1")]
AFTER = Checkpoint(sequence_number="100")


def test_a_time_target_moves_every_open_shard_listed_or_stored() -> None:
    plan = plan_rewind(
        target=RewindTarget("trim_horizon"),
        sequences={},
        stored={"s-0": AFTER, "s-2": AFTER},  # s-1 never checkpointed; s-2 not listed
        listed=OPEN,
    )
    assert sorted(plan.targets) == ["s-0", "s-1", "s-2"]
    assert plan.current == {"s-0": AFTER, "s-1": None, "s-2": AFTER}


def test_sequence_targets_move_only_the_named_shards() -> None:
    sequences = parse_sequences(["s-1=5"])
    plan = plan_rewind(target=None, sequences=sequences, stored={"s-0": AFTER}, listed=OPEN)
    assert plan.targets == sequences


def test_an_unknown_shard_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as refused:
        plan_rewind(target=None, sequences=parse_sequences(["s-9=5"]), stored={}, listed=OPEN)
    assert refused.value.problems == ["--to-sequence: unknown shard s-9 (known: s-0, s-1)"]


RESHARDED = [
    ShardInfo("s-0", closed=True),
    ShardInfo("s-1", parent_ids=("s-0",)),
    ShardInfo("s-2", parent_ids=("s-0",)),
]
ENDED = {"s-0": Checkpoint(sequence_number=SHARD_END), "s-1": AFTER}


def test_after_a_reshard_a_time_target_is_refused_unless_open_shards_only() -> None:
    for target in (RewindTarget("trim_horizon"), RewindTarget("timestamp", timestamp=NOW)):
        with pytest.raises(ConfigError, match="closed shards s-0"):
            plan_rewind(target=target, sequences={}, stored=ENDED, listed=RESHARDED)
        plan = plan_rewind(
            target=target, sequences={}, stored=ENDED, listed=RESHARDED, open_shards_only=True
        )
        assert sorted(plan.targets) == ["s-1", "s-2"]
        assert plan.closed == ("s-0",)


def test_latest_leaves_closed_shards_finished_without_asking() -> None:
    plan = plan_rewind(target=RewindTarget("latest"), sequences={}, stored=ENDED, listed=RESHARDED)
    assert sorted(plan.targets) == ["s-1", "s-2"]


def test_a_closed_shard_named_by_sequence_is_refused() -> None:
    with pytest.raises(ConfigError, match="shard s-0 is closed"):
        plan_rewind(
            target=None, sequences=parse_sequences(["s-0=1"]), stored=ENDED, listed=RESHARDED
        )


def test_an_sqs_mapping_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rewind has no meaning for a queue: refused before any AWS call, exit 2."""
    queue = {
        "name": "jobs",
        "event_source_arn": "arn:aws:sqs:us-east-1:123456789012:jobs",
        "target": {"type": "python", "handler": "tests.support.recorder:record"},
    }
    config = tmp_path / "sqs.yaml"
    config.write_text(
        yaml.safe_dump(
            service_config(
                "http://127.0.0.1:1", queue, checkpoints={"path": str(tmp_path / "c.db")}
            )
        )
    )
    status = cli.main(["rewind", "--config", str(config), "--mapping", "jobs", "--to-latest"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert "mapping 'jobs' reads an SQS queue: it has no checkpoints to move" in err[0]
    assert not (tmp_path / "c.db").exists()


def test_a_child_of_an_ended_parent_may_be_moved_by_sequence() -> None:
    """The refusal of a child mid-reshard (review 15r) is for unfinished parents only."""
    plan = plan_rewind(
        target=None, sequences=parse_sequences(["s-1=5"]), stored=ENDED, listed=RESHARDED
    )
    assert list(plan.targets) == ["s-1"]


def test_allow_skip_accepts_a_sequence_ahead_of_the_checkpoint() -> None:
    stored: dict[str, Checkpoint | None] = {"s-0": Checkpoint(sequence_number="100")}
    with pytest.raises(ConfigError, match="--allow-skip"):
        plan_rewind(
            target=None,
            sequences=parse_sequences(["s-0=200"]),
            stored=stored,
            listed=[ShardInfo("s-0")],
        )
    plan = plan_rewind(
        target=None,
        sequences=parse_sequences(["s-0=200"]),
        stored=stored,
        listed=[ShardInfo("s-0")],
        allow_skip=True,
    )
    assert plan.targets["s-0"].sequence_number == "200"


@pytest.mark.parametrize("timeout", ["-5", "nan"])
def test_a_negative_timeout_is_refused_before_the_config_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    missing = tmp_path / "absent.yaml"
    args = ["rewind", "--config", str(missing), "--mapping", "m", "--to-latest"]
    status = cli.main([*args, "--timeout", timeout])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert "--timeout" in err[0]
