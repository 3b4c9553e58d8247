"""Adversarial regression tests of the config loader and ``poller validate``.

Each test is an attack a hostile file or environment made on the hardened loader (issue 11,
defects 18, 20 and 21) that broke it: a hang, a traceback, a secret printed, or a config
refused that AWS accepts. They fail on the loader before the fix that names them.

The linear-time tests measure the CPU time of this process (``time.process_time``), not the
wall clock: the quadratic paths they guard against took minutes to hours, while CI's load can
stretch a second of wall time to ten.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from poller import cli
from poller.config import load_settings, redacted_settings
from poller.errors import ConfigError
from tests.unit.test_config import MAPPING_YAML


def problems_of(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    path = tmp_path / "poller.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ or {})
    for problem in caught.value.problems:
        assert "\n" not in problem, problem
    return caught.value.problems


@pytest.mark.timeout(30)
def test_a_long_value_without_a_url_is_refused_in_linear_time(tmp_path: Path) -> None:
    """A 900 kB word made the search for URL userinfo backtrack quadratically (hours)."""
    text = MAPPING_YAML + "    note: " + "a" * 900_000 + "\n"
    started = time.process_time()
    problems = problems_of(tmp_path, text)
    assert time.process_time() - started < 5
    assert any("note: unknown field" in p for p in problems), problems


@pytest.mark.timeout(30)
def test_many_unclosed_references_are_one_error_in_linear_time(tmp_path: Path) -> None:
    """400,000 '${' in one value: each was matched again to the end of the text (quadratic)."""
    text = MAPPING_YAML.replace("orders\n", "'orders" + "${" * 400_000 + "'\n", 1)
    started = time.process_time()
    problems = problems_of(tmp_path, text)
    assert time.process_time() - started < 5
    unclosed = [p for p in problems if "is never closed" in p]
    assert len(unclosed) == 1, problems[:3]
    assert all(len(p) < 1000 for p in problems)


def test_an_invalid_reference_is_shown_cut_short(tmp_path: Path) -> None:
    """The bad reference was quoted whole: a 100 kB '${...}' made a 100 kB error line."""
    text = MAPPING_YAML.replace("orders\n", "'${" + "x " * 50_000 + "}'\n", 1)
    problems = problems_of(tmp_path, text)
    assert any("is not a valid reference" in p for p in problems), problems
    assert all(len(p) < 1000 for p in problems)


def test_an_override_nested_100000_deep_is_an_error_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    """The value of a POLLER_* variable went to plain yaml.safe_load: RecursionError."""
    environ = {"POLLER_MAPPINGS__orders__BATCH_SIZE": "[" * 100_000}
    problems = problems_of(tmp_path, MAPPING_YAML, environ)
    assert any("batch_size" in p and "POLLER_MAPPINGS__orders__BATCH_SIZE" in p for p in problems)


def test_an_override_of_5000_digits_is_an_error_not_a_value_error(tmp_path: Path) -> None:
    """int() refuses text of more than 4300 digits with a ValueError that escaped."""
    environ = {"POLLER_MAPPINGS__orders__BATCH_SIZE": "9" * 5000}
    problems = problems_of(tmp_path, MAPPING_YAML, environ)
    assert len(problems) == 1
    assert problems[0].startswith("mappings[0] (orders).batch_size: '999"), problems
    assert len(problems[0]) < 1000


@pytest.mark.timeout(30)
def test_references_that_expand_to_gigabytes_are_refused(tmp_path: Path) -> None:
    """A 1 MiB file of ${BIG}, BIG being 128 KiB (a Linux variable's limit), built 25 GB."""
    text = MAPPING_YAML + "    note: '" + "${BIG}" * 150_000 + "'\n"
    started = time.process_time()
    problems = problems_of(tmp_path, text, {"BIG": "x" * 128 * 1024})
    assert time.process_time() - started < 5
    assert problems == [
        "${VAR} references add more than 4 MiB to the values; a configuration needs far less "
        "(is a variable used many times, or much larger than meant?)"
    ]


@pytest.mark.timeout(30)
def test_an_alias_of_a_large_value_is_expanded_and_searched_once(tmp_path: Path) -> None:
    """10,000 aliases of a 500 kB value: each use was copied by ${...} expansion and searched
    for URL credentials again (5 GB of work), though the node graph is small."""
    levels = ["a: &a '" + "y" * 500_000 + "$${'"]
    for level, below in zip("bcd", "abc", strict=True):
        levels.append(f"{level}: &{level} [" + ", ".join([f"*{below}"] * 10) + "]")
    levels.append("e: [" + ", ".join(["*d"] * 10) + "]")
    started = time.process_time()
    problems = problems_of(tmp_path, "\n".join(levels) + "\n")
    assert time.process_time() - started < 5
    assert any(p.startswith("mappings: no mapping is configured") for p in problems)


def test_a_long_mapping_name_is_cut_short_in_every_problem(tmp_path: Path) -> None:
    """The mapping's name labels every problem: a 100 kB name made each line 100 kB."""
    text = MAPPING_YAML.replace("name: orders", "name: " + "n" * 100_000) + "    batch_size: 0\n"
    problems = problems_of(tmp_path, text)
    assert any(".batch_size: 0 is out of range" in p for p in problems), problems
    assert all(len(p) < 1000 for p in problems), [len(p) for p in problems]
    # An override naming no mapping lists the names there are: cut short too.
    problems = problems_of(tmp_path, text, {"POLLER_MAPPINGS__other__BATCH_SIZE": "5"})
    assert problems[0].startswith("POLLER_MAPPINGS__other__BATCH_SIZE: no mapping is named")
    assert all(len(p) < 1000 for p in problems), [len(p) for p in problems]


def test_a_long_secret_cut_short_in_a_message_is_still_hidden(tmp_path: Path) -> None:
    """Messages cut values after 300 characters; a longer secret then no longer matched
    itself and its first 297 characters were printed."""
    secret = "Z" * 500
    text = MAPPING_YAML + "    batch_size: ${API_TOKEN}\n"
    problems = problems_of(tmp_path, text, {"API_TOKEN": secret})
    assert problems == ["mappings[0] (orders).batch_size: '*** is not a whole number"]


def test_secret_query_parameters_are_hidden_by_validate_print(tmp_path: Path) -> None:
    """``?token=`` or a presigned ``X-Amz-Signature=`` in a target URL was printed as is."""
    text = MAPPING_YAML.replace(
        'python, handler: "examples.handlers:log_batch"',
        'http, url: "https://h/x?token=abcdef123&page=2&X-Amz-Signature=deadbeef99"',
    )
    path = tmp_path / "poller.yaml"
    path.write_text(text, encoding="utf-8")
    shown = redacted_settings(load_settings(path, environ={}), environ={})
    url = shown["mappings"][0]["target"]["url"]
    assert url == "https://h/x?token=***&page=2&X-Amz-Signature=***"
    # The same URL in an error message (made invalid by a space) hides them too.
    problems = problems_of(tmp_path, text.replace("page=2", "page= 2"))
    assert any("url" in p for p in problems), problems
    assert not any("abcdef123" in p or "deadbeef99" in p for p in problems), problems


HANDLER_MAPPING = MAPPING_YAML.replace("examples.handlers:log_batch", "{module}:handle")


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "poller.yaml"
    path.write_text(text + "observability: {enabled: false}\n", encoding="utf-8")
    code = cli.main(["validate", "--config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_validate_reports_a_multi_line_import_error_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception whose text spans lines split the handler's problem over several lines."""
    (tmp_path / "review_two_lines.py").write_text('raise RuntimeError("first\\nsecond")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    code, output = validate(
        tmp_path, HANDLER_MAPPING.replace("{module}", "review_two_lines"), capsys
    )
    assert code == cli.EXIT_USAGE
    problem = next(line for line in output.splitlines() if "target.handler" in line)
    assert problem.endswith("RuntimeError: first\\nsecond"), output
    assert "\nsecond" not in output


@pytest.mark.timeout(30)
def test_validate_gives_up_on_a_handler_module_that_never_finishes_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing runs the module's top-level code; a module that blocks hung validate."""
    release = tmp_path / "release"
    (tmp_path / "review_blocks.py").write_text(
        "import pathlib, time\n"
        f"deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "HANDLER_IMPORT_SECONDS", 1.0)
    try:
        started = time.monotonic()
        code, output = validate(
            tmp_path, HANDLER_MAPPING.replace("{module}", "review_blocks"), capsys
        )
        assert time.monotonic() - started < 10
    finally:
        release.touch()  # lets the abandoned import finish
    assert code == cli.EXIT_USAGE
    assert "target.handler: importing 'review_blocks:handle' did not finish within 1 s" in output


@pytest.mark.parametrize("seconds", ["1e300", "99999999999999999999", "253402300800"])
def test_a_timestamp_past_the_year_9999_is_a_one_line_error(tmp_path: Path, seconds: str) -> None:
    """The 'in the future' message formatted the time as a date: OverflowError (a traceback)
    for 1e300, or a pydantic 'Value error, year 10000 is out of range'."""
    text = MAPPING_YAML.replace("TRIM_HORIZON", "AT_TIMESTAMP")
    problems = problems_of(tmp_path, text + f"    starting_position_timestamp: {seconds}\n")
    assert len(problems) == 1
    assert problems[0].startswith("mappings[0] (orders).starting_position_timestamp: ")
    assert problems[0].endswith(
        "(past the year 9999) is in the future; allowed up to now "
        "(AWS: StartingPositionTimestamp cannot be in the future)"
    ), problems
