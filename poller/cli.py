"""Command line: ``poller run`` and ``poller validate``.

The CLI is the only place that turns user errors into exit codes: configuration problems are
printed as one line per bad field, without a traceback, and exit with status 2. A clean
shutdown after SIGTERM or SIGINT exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import anyio
import prometheus_client

from poller import __version__
from poller.config import Settings, load_settings
from poller.errors import ConfigError, HandlerImportError, PollerError

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
        "--print", action="store_true", help="print the effective configuration as JSON"
    )
    status = commands.add_parser("status", help="print lease owners, checkpoints and lease ages")
    status.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    return parser


def _load(path: str) -> Settings:
    return load_settings(path)


def _validate(path: str, print_config: bool) -> int:
    settings = _load(path)
    if print_config:
        print(json.dumps(settings.model_dump(mode="json"), indent=2))  # noqa: T201 - CLI output
    names = ", ".join(m.name for m in settings.mappings)
    print(f"{path}: valid ({len(settings.mappings)} mapping(s): {names})")  # noqa: T201 - CLI output
    return EXIT_OK


def _status(path: str) -> int:
    """Print every stream mapping's leases: owner, checkpoint, lease age, handoffs."""
    from poller.status import print_status

    settings = _load(path)
    if settings.checkpoints.backend != "dynamodb":
        print(  # noqa: T201 - CLI output
            "poller: status reads the lease table; this configuration uses the"
            f" {settings.checkpoints.backend} backend (one replica, no leases)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    anyio.run(print_status, settings)
    return EXIT_OK


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
        anyio.run(Service(settings).run)
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
            return _validate(args.config, args.print)
        if args.command == "status":
            return _status(args.config)
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
