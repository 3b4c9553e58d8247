"""Fuzzing the config loader: any text, structure or environment gives Settings or a ConfigError.

Every problem in a ConfigError must be one non-empty line; any other exception, or a hang
(pytest-timeout), fails the test. Three generators: YAML-ish text (token soup with anchors,
aliases, merge keys, tags, ``${...}`` and control characters), random structures shaped like a
config (the real field names, random values), and random ``POLLER_*`` overrides and ``${VAR}``
references over a valid file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import find, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import poller.config as config_module
from poller import cli
from poller.config import Settings, load_settings
from poller.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
VALID_MAPPING: dict[str, Any] = {
    "name": "orders",
    "event_source_arn": ARN,
    "starting_position": "TRIM_HORIZON",
    "target": {"type": "python", "handler": "examples.handlers:log_batch"},
}

#: Every field name of every settings model, so random structures reach deep into the models.
FIELD_NAMES = sorted(
    {
        name
        for model in vars(config_module).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields
    }
)

YAML_TOKENS = [
    "mappings:", "aws:", "checkpoints:", "target:", "headers:", "\n", "  ", "    ", "- ", ": ",
    "&a ", "&b ", "*a", "*b", "<<: ", "<<: *a", "{", "}", "[", "]", ", ", "? ", "!!str ",
    "!!int ", "!!binary ", "!!python/object:os.system ", "!custom ", "${X}", "${", "}",
    "${A:-${B}}", "$${", "${X:-d}", "\t", "'", '"', "#", "---\n", "...\n", "|\n", ">\n",
    "\x00", "\x07", "\ufeff", "\u2028", "\x85", "0", "1", "-1", "1e999", ".nan", "true",
    "null", "~", "2024-05-01", "name", "orders", ARN, "batch_size", "url",
    "http://u:p@h/", "%", "@", "`", "\\", "\r\n", "2024-13-45", "!!timestamp ", "!!float ",
    "!!set ", "!!omap ", "9" * 4400, "[" * 70, "{a: " * 70, "&c [*c]", "<<: 5",
]  # fmt: skip


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # One directory for the module: hypothesis reruns a test body many times, and a
    # function-scoped tmp_path would be shared by all of them anyway.
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def load_outcome(path: Path, environ: Mapping[str, str]) -> Settings | ConfigError:
    """Load ``path``; a ConfigError is returned after checking each problem is one line."""
    try:
        return load_settings(path, environ=environ)
    except ConfigError as exc:
        error = exc
    assert error.problems, "a ConfigError names at least one problem"
    for problem in error.problems:
        assert isinstance(problem, str)
        assert problem.strip(), error.problems
        assert "\n" not in problem, problem
        assert "\r" not in problem, problem
    assert "Traceback" not in str(error)
    return error


def write_text(workdir: Path, text: str) -> Path:
    path = workdir / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@given(st.text(max_size=300) | st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join))
def test_any_text_gives_settings_or_a_one_line_config_error(workdir: Path, text: str) -> None:
    load_outcome(write_text(workdir, text), {"X": "x", "A": ""})


@given(st.binary(max_size=200))
def test_any_bytes_give_settings_or_a_one_line_config_error(workdir: Path, data: bytes) -> None:
    path = workdir / "fuzz.yaml"
    path.write_bytes(b"mappings:\n  - name: " + data)
    load_outcome(path, {})


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    # Up to 4200 digits, which YAML can still write: beyond 4300 safe_dump raised and the
    # example was thrown away (28 % of them); the text generator covers longer numbers.
    | st.integers(min_value=-(10**4200), max_value=10**4200)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "python", "http", "lambda"])
    | st.sampled_from([ARN, "arn:aws:sqs:us-east-1:123456789012:q", "http://u:p@h/", "${X}"])
    | st.dates()
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=12) | st.integers() | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
# Values a mapping field plausibly takes, so that random mappings also load (and the code
# past validation runs), not only fail: with random values alone 2 in 130 did.
plausible = st.integers(min_value=-2, max_value=20_000) | st.sampled_from(
    [True, False, [], {}, "LATEST", ["ReportBatchItemFailures"], 0.5, "60"]
)
mappings = st.builds(
    lambda base, extra: {**base, **extra},
    st.just(VALID_MAPPING),
    st.dictionaries(st.sampled_from(FIELD_NAMES), plausible | values, max_size=4),
)
configs = st.fixed_dictionaries(
    {"mappings": st.lists(mappings | values, max_size=3)},
    optional={section: values for section in Settings.model_fields if section != "mappings"},
)


@given(configs | values)
def test_any_structure_gives_settings_or_a_one_line_config_error(workdir: Path, data: Any) -> None:
    try:
        text = yaml.safe_dump(data)
    except (yaml.YAMLError, ValueError):
        return  # not every generated value can be written as YAML; not the loader's business
    load_outcome(write_text(workdir, text), {"X": "x"})


segments = st.sampled_from([*FIELD_NAMES, "orders", "0", "1", "99", "", "MAPPINGS"]) | st.text(
    max_size=6
)
# Random segments, and names that address a real field, so that some overrides apply: with
# random segments alone no generated environment ever loaded with an override in effect.
override_names = st.lists(segments, min_size=1, max_size=5).map(
    lambda parts: "POLLER_" + "__".join(parts)
) | st.builds(
    "{}{}".format,
    st.sampled_from(["POLLER_MAPPINGS__orders__", "poller_mappings__orders__", "POLLER_AWS__"]),
    st.sampled_from(FIELD_NAMES),
)
env_values = st.text(max_size=30) | st.sampled_from(
    ["true", "false", "0", "1", "100", "[a, b]", "{a: 1}", "${X}", "us-east-1", "[" * 200]
)


@given(
    st.dictionaries(override_names | st.text(max_size=10), env_values, max_size=6),
    st.dictionaries(st.sampled_from(FIELD_NAMES), st.sampled_from(["${X}", "${A:-1}", "${"])),
)
def test_any_environment_gives_settings_or_a_one_line_config_error(
    workdir: Path, environ: dict[str, str], references: dict[str, str]
) -> None:
    text = yaml.safe_dump({"mappings": [{**VALID_MAPPING, **references}]})
    load_outcome(write_text(workdir, text), environ)


@given(
    st.text(max_size=40) | st.sampled_from(["/dev/null", "/", ".", "/proc/x/y", "a/../b"]),
    # Numeric hosts and hosts the config refuses only: a random name would be looked up in DNS.
    st.text(alphabet="0123456789.", max_size=16)
    | st.text(alphabet=" \t\n\x00\x7f.1", min_size=1, max_size=4)
    | st.sampled_from(["0.0.0.0", "::", "::1", "localhost", "256.1.1.1", "1.2.3.4"]),
)
def test_validate_host_checks_give_one_line_problems(workdir: Path, path: str, host: str) -> None:
    """`validate` probes the checkpoint path and the listen address named by the file: any
    value that loads gives one-line problems, never an exception."""
    data = {
        "checkpoints": {"path": path},
        "observability": {"host": host, "port": 0},
        "mappings": [VALID_MAPPING],
    }
    loaded = load_outcome(write_text(workdir, yaml.safe_dump(data)), {})
    if isinstance(loaded, Settings):
        for problem in cli.host_problems(loaded):
            assert problem.strip()
            assert "\n" not in problem


#: The searches below are derandomized, so "the generator reaches X" is not a coin toss.
SEARCH = settings(derandomize=True, max_examples=2000, database=None, deadline=None)


# The search runs up to 2,000 examples: past a minute under coverage on a slow 2-core machine.
@pytest.mark.timeout(300)
def test_the_structure_generator_reaches_both_outcomes(workdir: Path) -> None:
    """Not vacuous: the mappings that ``configs`` is built from load and fail, with extra
    fields set, so both the error paths and the models behind them are fuzzed."""
    strategy = st.builds(lambda item: {"mappings": [item]}, mappings)

    def outcome(data: Any) -> Settings | ConfigError:
        return load_outcome(write_text(workdir, yaml.safe_dump(data)), {"X": "x"})

    def loads_with_extra_fields(data: Any) -> bool:
        items = data["mappings"]
        extended = any(isinstance(item, dict) and len(item) > len(VALID_MAPPING) for item in items)
        return extended and isinstance(outcome(data), Settings)

    loads = find(strategy, loads_with_extra_fields, settings=SEARCH)
    assert isinstance(outcome(loads), Settings)
    fails = find(strategy, lambda d: isinstance(outcome(d), ConfigError), settings=SEARCH)
    assert isinstance(outcome(fails), ConfigError)


def test_the_environment_generator_reaches_both_outcomes(workdir: Path) -> None:
    """Not vacuous: some random overrides apply (the config loads with an override set)."""
    text = yaml.safe_dump({"mappings": [VALID_MAPPING]})
    path = write_text(workdir, text)
    found = find(
        st.dictionaries(override_names, env_values, min_size=1, max_size=6),
        lambda env: (
            isinstance(load_outcome(path, env), Settings)
            and any(k.upper().startswith("POLLER_") and "__" in k[7:] for k in env)
        ),
        settings=SEARCH,
    )
    assert isinstance(load_outcome(path, found), Settings)
