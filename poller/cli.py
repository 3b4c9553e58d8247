"""Command line: ``poller run``, ``poller validate``, ``poller status``, and the operator
commands of :mod:`poller.operations` (``redrive``, ``replay``, ``rewind``).

The CLI is the only place that turns user errors into exit codes: configuration problems are
printed as one line per bad field, without a traceback, and exit with status 2. A clean
shutdown after SIGTERM or SIGINT exits 0. ``run`` gives the service its file's path, read
again on SIGHUP (:meth:`poller.app.Service.reload_config`).

``validate`` checks what ``run`` would refuse at start-up without touching AWS: the file, and
(unless ``--config-only``) on this host that each Python handler imports (those of
``control_api.functions`` too), that the SQLite checkpoint file can be created or written, and
that the observability and control API addresses can be bound. A file with no mapping is valid
when the control API is on.
It cannot check AWS resources, credentials or permissions, and says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import prometheus_client

from poller import __version__
from poller.config import (
    CheckpointSettings,
    ObservabilitySettings,
    PythonTargetConfig,
    Settings,
    load_settings,
    redacted_settings,
)
from poller.errors import ConfigError, HandlerImportError, PollerError
from poller.operations import OPERATIONS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poller", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"poller {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the event source mappings of a config file")
    run.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    validate = commands.add_parser("validate", help="check a config file without running it")
    validate.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    validate.add_argument(
        "--print",
        action="store_true",
        help="print the effective configuration as JSON, secrets hidden",
    )
    validate.add_argument(
        "--config-only",
        action="store_true",
        help="check the file only, not this host (handler imports, checkpoint path, address)",
    )
    status = commands.add_parser(
        "status", help="print each shard's owner, checkpoint and age, and waiting failures"
    )
    status.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    for name, summary in OPERATIONS.items():
        _operation(name).add_arguments(commands.add_parser(name, help=summary))
    return parser


def _operation(name: str) -> Any:
    """The module of an operator command (imported when the parser is built: each is small)."""
    return importlib.import_module(f"poller.operations.{name}")


def _load(path: str) -> Settings:
    return load_settings(path)


#: What ``validate`` leaves unchecked, printed after a pass so nobody reads more into it.
NOT_CHECKED = (
    "not checked (needs AWS): streams, queues, functions, destinations, the lease table, "
    "credentials and permissions"
)


def _validate(path: str, print_config: bool, config_only: bool = False) -> int:
    settings = _load(path)
    if not config_only:
        problems = host_problems(settings)
        if problems:
            raise ConfigError(
                [*problems, "(--config-only checks the file without these checks of this host)"],
                source=path,
            )
    if print_config:
        print(json.dumps(redacted_settings(settings), indent=2))  # noqa: T201 - CLI output
    print(f"{path}: valid ({_mappings_summary(settings)})")  # noqa: T201 - CLI output
    print(NOT_CHECKED)  # noqa: T201 - CLI output
    return EXIT_OK


def _mappings_summary(settings: Settings) -> str:
    """The mappings ``validate`` found, or why none is fine (the control API is on)."""
    if not settings.mappings:
        return "0 mappings: they are created through the control API"
    names = ", ".join(m.name for m in settings.mappings)
    return f"{len(settings.mappings)} mapping(s): {names}"


def host_problems(settings: Settings) -> list[str]:
    """What ``run`` would refuse at start-up on this host, found without touching AWS."""
    return [
        *_handler_problems(settings),
        *_checkpoint_problems(settings.checkpoints),
        *_address_problems(settings.observability),
        *_control_api_problems(settings),
    ]


#: How long ``validate`` waits for one handler module to import. Importing runs the module's
#: top-level code; one that blocks (a network call, a loop) must not hang ``validate``.
HANDLER_IMPORT_SECONDS = 30.0


def _handler_problems(settings: Settings) -> list[str]:
    """Import every Python handler, as ``run`` does before it reads a record."""
    problems = []
    for index, mapping in enumerate(settings.mappings):
        if isinstance(mapping.target, PythonTargetConfig):
            problem = _import_problem(mapping.target.handler, HANDLER_IMPORT_SECONDS)
            if problem:
                where = f"mappings[{index}] ({mapping.name[:80]}).target.handler"
                problems.append(_one_line(f"{where}: {problem}"))
    return problems


def _control_api_problems(settings: Settings) -> list[str]:
    """With the control API on: the Python handlers its ``functions`` name must import, and
    its address must be free, as for the mappings' handlers and the observability address."""
    control = settings.control_api
    if not control.enabled:
        return []
    problems = []
    for name, target in control.functions.items():
        if isinstance(target, PythonTargetConfig):
            problem = _import_problem(target.handler, HANDLER_IMPORT_SECONDS)
            if problem:
                problems.append(_one_line(f"control_api.functions.{name}.handler: {problem}"))
    problem = _bind_problem(control.host, control.port)
    if problem:
        problems.append(
            f"control_api: {problem}; free the port or set control_api.host/control_api.port"
        )
    return problems


def _import_problem(handler: str, seconds: float) -> str | None:
    """Why ``handler`` does not import within ``seconds``, or None when it does.

    The import runs in a daemon thread: one that never returns is reported and abandoned,
    and cannot keep the process alive after ``validate`` has answered.
    """
    from poller.targets.python import load_handler

    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load_handler(handler)
        except BaseException as exc:  # noqa: BLE001 - user code: any failure is the answer
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=attempt, name="validate-import", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return (
            f"importing {handler!r} did not finish within {seconds:g} s; the module's top-level "
            "code blocks (a network call, a loop?), and run would hang the same way"
        )
    failure = outcome[0]
    if failure is None:
        return None
    return str(failure) if isinstance(failure, HandlerImportError) else repr(failure)


def _one_line(text: str) -> str:
    """``text`` with line breaks escaped: a problem is one line, whatever an import raised."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _checkpoint_problems(checkpoints: CheckpointSettings) -> list[str]:
    """The SQLite file must be writable, or creatable with its directories (the store writes
    a -wal file beside it, so its directory must be writable too). Nothing is created."""
    if checkpoints.backend != "sqlite":
        return []
    where = f"checkpoints.path: {str(checkpoints.path)!r}"
    try:
        problem = _unwritable_because(Path(os.path.abspath(checkpoints.path)))
    except OSError as exc:  # a directory on the way that this user may not look into
        problem = f"cannot be checked: {exc.strerror}"
    return [f"{where} {problem}"] if problem else []


def _unwritable_because(path: Path) -> str | None:
    if path.is_dir():
        return "is a directory; give the path of the checkpoint file"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "is not readable and writable by this user"
    directory = path.parent
    while not directory.exists():
        directory = directory.parent
    if not directory.is_dir():
        return f"cannot be created: {str(directory)!r} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot be written: directory {str(directory)!r} is not writable"
    return None


def _address_problems(observability: ObservabilitySettings) -> list[str]:
    """Bind the observability address for a moment, as the server will (port 0 checks the
    host only). The server uses SO_REUSEADDR, so the check does too."""
    if not observability.enabled:
        return []
    problem = _bind_problem(observability.host, observability.port)
    if problem:
        return [
            f"observability: {problem}; free the port or set observability.host/observability.port"
        ]
    return []


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host``:``port`` cannot be listened on now, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except (OSError, ValueError, TypeError) as exc:  # not a host name at all (bad IDNA...)
        written = repr(host)[1:-1]  # escaped, so the problem stays on one line
        shown = f"[{written}]:{port}" if ":" in host else f"{written}:{port}"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return f"cannot listen on {shown}: {reason}"
    return None


def _status(path: str, as_json: bool) -> int:
    """Print every mapping's source state and every stream shard's owner and checkpoint.

    With ``--json`` stdout is always one JSON document, even when the configuration does not
    load: ``{"error": ..., "problems": [...], "mappings": []}`` (exit 2; the error goes to
    stderr too), so a script reading it never parses nothing."""
    from poller.status import status_command

    try:
        settings = _load(path)
    except ConfigError as exc:
        if as_json:
            document = {"error": str(exc), "problems": list(exc.problems), "mappings": []}
            print(json.dumps(document))  # noqa: T201 - CLI output
        raise
    return status_command(settings, as_json=as_json)


def _run(path: str) -> int:
    from poller.app import Service
    from poller.observability.logging import configure_logging

    settings = _load(path)
    configure_logging(settings.logging.level, settings.logging.format)
    # A `_created` gauge beside every counter and histogram doubles the series Prometheus
    # stores and says nothing `poller_start_time_seconds` does not. The switch is
    # process-wide, so it is thrown here, where the process is the service.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        anyio.run(Service(settings, own_process=True, config_path=path).run)
    except BaseExceptionGroup as group:
        # An error of ours raised inside the task groups (a taken port, a missing lease table,
        # no credentials) arrives wrapped; show it as one clear line, not a traceback.
        ours = group.subgroup(lambda e: isinstance(e, PollerError))
        if ours is None:
            raise
        raise _first_leaf(ours) from None
    except KeyboardInterrupt:
        # Only reachable before the service installed its handlers or after they closed.
        return EXIT_INTERRUPTED
    return EXIT_OK


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``poller`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args.config, args.print, args.config_only)
        if args.command == "status":
            return _status(args.config, args.json)
        if args.command in OPERATIONS:
            return int(_operation(args.command).main(args))
        return _run(args.config)
    except ConfigError as exc:
        print(f"poller: {exc}", file=sys.stderr)  # noqa: T201 - user-facing error
        return EXIT_USAGE
    except HandlerImportError as exc:
        print(f"poller: {exc}", file=sys.stderr)  # noqa: T201 - user-facing error
        return EXIT_USAGE
    except PollerError as exc:
        # Start-up could not reach a service it needs (credentials, endpoint, permissions).
        print(f"poller: cannot start: {exc}", file=sys.stderr)  # noqa: T201 - user-facing error
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
