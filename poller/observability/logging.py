"""Logging setup: structlog, JSON in production and readable lines on a terminal.

Configured once by the CLI before the service starts. Every pipeline stage logs through
structlog with stable dotted event names (``batch.processed``, ``shard.started``); the mapping
and shard are bound through contextvars by the task that runs them, so every line of a shard
carries them without passing loggers around. Record data, message bodies and credentials are
never logged: the pipeline logs counts, sequence numbers and durations only.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(level: str = "INFO", fmt: LogFormat = "auto") -> None:
    """Route structlog (and the standard library's warnings) to stdout.

    Args:
        level: the minimum level, e.g. ``INFO``.
        fmt: ``json``, ``console``, or ``auto`` (console on a terminal, JSON otherwise).
    """
    numeric = logging.getLevelNamesMapping()[level.upper()]
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (botocore, aiohttp, moto) log through the standard library; keep only warnings.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
