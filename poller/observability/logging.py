"""Logging setup: structlog, JSON in production and readable lines on a terminal.

Configured once by the CLI before the service starts. Every pipeline stage logs through
structlog with stable dotted event names (``batch.processed``, ``shard.started``); the mapping
and shard are bound through contextvars by the task that runs them, so every line of a shard
carries them without passing loggers around. Record data, message bodies and credentials are
never logged: the pipeline logs counts, sequence numbers and durations only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


class LogSink:
    """The stream log lines are written to, where a failing write never reaches the engine.

    A log collector that goes away (a broken pipe) or a handler that closes ``sys.stdout``
    must not stop the service: an outage of the log sink is no reason to exit. Lines that
    cannot be written are dropped and counted; the first failure is reported once on stderr.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        #: Writes that failed (each log line is two: the text and its newline).
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._failed(exc)
            return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.dropped += 1
        if self.dropped == 1:
            # If stderr is gone too, there is nothing left to tell.
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"poller: log output failed ({exc}); dropping log lines\n")


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
        logger_factory=structlog.PrintLoggerFactory(LogSink(sys.stdout)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # Libraries (botocore, aiohttp, moto) log through the standard library; keep only warnings.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)
