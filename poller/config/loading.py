"""Loading: a YAML file, or data already loaded, into validated :class:`Settings`.

Where it sits in the data flow::

    config/*.yaml --read (file checks)--> text --load_yaml--> tree --expand_tree--> tree
        --apply_overrides--> tree --Settings.model_validate--> Settings
                     any problem --format_error, redact--> one ConfigError

The CLI calls :func:`load_settings` once at start-up; tests and tools with data in hand call
:func:`parse_settings`, which only validates. The file must be a regular file (not a FIFO or a
device) of at most :data:`~poller.config.limits.MAX_CONFIG_BYTES`, UTF-8 without control
characters; it is checked with ``fstat`` on the open descriptor, so nothing can block or race.
Every problem becomes one line of a :class:`~poller.errors.ConfigError`, with secrets hidden.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poller.config.expansion import expand_tree
from poller.config.limits import MAX_CONFIG_BYTES
from poller.config.messages import format_error
from poller.config.models.settings import Settings
from poller.config.overrides import apply_overrides
from poller.config.redaction import redact, secrets_in
from poller.config.wording import one_line
from poller.config.yaml_loader import load_yaml, yaml_kind
from poller.errors import ConfigError


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand, override and validate a YAML configuration file.

    Args:
        path: the YAML file.
        environ: the environment for ``${VAR}`` and ``POLLER_*`` overrides; default
            ``os.environ``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML, or any value is invalid;
            ``problems`` lists every problem found.
    """
    source = str(path)
    env = os.environ if environ is None else environ
    raw = _parse_yaml(_read_text(Path(path), source), source)
    data, problems = expand_tree(raw, env)
    override_problems, origins = apply_overrides(data, env)
    problems += override_problems
    secrets = secrets_in(data, env)
    if problems:
        raise ConfigError([redact(one_line(p), secrets) for p in problems], source=source)
    try:
        return _validate(data, source, origins)
    except ConfigError as exc:
        lines = [redact(one_line(p), secrets) for p in exc.problems]
        raise ConfigError(lines, source=source) from None


def parse_settings(data: Mapping[str, Any], *, source: str | None = None) -> Settings:
    """Validate configuration that is already loaded (no expansion, no overrides).

    Args:
        data: the configuration as a mapping of sections.
        source: where it came from, for the error message.

    Raises:
        ConfigError: any value is invalid; ``problems`` lists every problem found.
    """
    return _validate(dict(data) if isinstance(data, Mapping) else data, source, {})


def _validate(data: Any, source: str | None, origins: Mapping[str, str]) -> Settings:
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [format_error(error, data, origins) for error in exc.errors()]
        raise ConfigError(problems, source=source) from None
    return settings


def _read_text(path: Path, source: str) -> str:
    """The file's text, refusing what is not a regular UTF-8 file of at most 1 MiB.

    The file is opened non-blocking and checked with ``fstat`` before it is read, so a FIFO
    (which would block until a writer came), a device such as ``/dev/zero`` (which never ends)
    or a directory is refused at once, without a race between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(["file not found"], source=source) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([f"cannot read the file: {reason}"], source=source) from None
    try:
        _require_regular_file(os.fstat(fd).st_mode, source)
        with os.fdopen(fd, "rb", closefd=False) as file:
            content = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], source=source) from None
    finally:
        os.close(fd)
    if len(content) > MAX_CONFIG_BYTES:
        limit = MAX_CONFIG_BYTES / 1024 / 1024
        raise ConfigError(
            [f"the file is larger than {limit:g} MiB; a configuration is far smaller"],
            source=source,
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"the file is not UTF-8 text: {exc.reason} at byte {exc.start}"], source=source
        ) from None


def _require_regular_file(mode: int, source: str) -> None:
    if stat.S_ISDIR(mode):
        raise ConfigError(["is a directory, not a file"], source=source)
    if not stat.S_ISREG(mode):
        raise ConfigError(
            [f"is {_file_kind(mode)}, not a regular file; give the path of a YAML file"],
            source=source,
        )


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    data = load_yaml(text, source)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {yaml_kind(data)}"
        sections = ", ".join(Settings.model_fields)
        problem = f"the top level must be a mapping of sections ({sections}); got {got}"
        raise ConfigError([problem], source=source)
    return data
