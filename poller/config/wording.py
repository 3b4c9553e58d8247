"""The wording shared by every configuration problem: values shown as written, one line each.

Where it sits in the data flow::

    a model validator, the YAML loader, ${VAR} expansion, a POLLER_* override
        --own_error() / show() / one_line()--> one line of a ConfigError

A validator raises :func:`own_error`, whose message is already a complete sentence; its error
type starts with :data:`OWN_ERROR`, so :mod:`poller.config.messages` passes it through as it
is. :func:`show` renders a bad value the way the user wrote it, cut when long, and
:func:`suggestion` offers the closest known name for a misspelt one.
"""

from __future__ import annotations

import difflib
from datetime import date, datetime
from typing import Any

from pydantic_core import PydanticCustomError

# Error types raised by poller's own validators start with this; their text is complete.
OWN_ERROR = "poller_"
UNSUPPORTED_SOURCE = "poller_unsupported_event_source"


def own_error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose message is already a complete, readable sentence."""
    return PydanticCustomError(OWN_ERROR + kind, message, context)


def one_line(text: str) -> str:
    """``text`` with line breaks escaped, so each problem stays on its own line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters ending in "..." when it is longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def suggestion(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """``; did you mean 'x'?`` for the closest candidate, or an empty string."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


#: The longest quoted value a message shows; longer ones are cut and end with "...".
SHOW_CHARS = 300


def show(value: Any) -> str:
    """A value as a user wrote it: strings quoted, null/true/false as in YAML, long ones cut."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return repr(value.isoformat())
    text = repr(value)
    limit = SHOW_CHARS if isinstance(value, str) else 80
    return text if len(text) <= limit else text[: limit - 3] + "..."
