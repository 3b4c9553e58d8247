"""The log sink: a log stream that fails (a broken pipe, a closed stdout) never raises into
the service; the lines are dropped and counted, and writing resumes when the stream does."""

from __future__ import annotations

import io

import pytest
import structlog

from poller.observability.logging import LogSink


class _FlakyStream(io.StringIO):
    """A text stream whose writes fail with ``error`` while ``broken`` is set."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.broken = True

    def write(self, text: str) -> int:
        if self.broken:
            raise self.error
        return super().write(text)

    def flush(self) -> None:
        if self.broken:
            raise self.error


@pytest.mark.parametrize(
    "error",
    [BrokenPipeError(32, "Broken pipe"), ValueError("I/O operation on closed file.")],
)
def test_a_failing_log_stream_drops_lines_instead_of_raising(error: Exception) -> None:
    stream = _FlakyStream(error)
    sink = LogSink(stream)
    logger = structlog.PrintLogger(sink)  # type: ignore[arg-type]
    logger.msg('{"event": "batch.processed"}')
    assert sink.dropped > 0
    stream.broken = False
    logger.msg('{"event": "shard.started"}')
    assert stream.getvalue() == '{"event": "shard.started"}\n'
