"""What one call of a Python handler produced, settled where the handler ran.

The calling machinery (:mod:`.calls`) runs the handler in a worker thread or on the handler
loop and, right there, turns its return value or exception into a :class:`_Run`: the value
serialized as Lambda does (JSON, at most 6 MB), or Lambda's error payload with the handler's
own stack. Neither a huge return value nor an exception's ``__str__`` ever runs on the
service's event loop. :mod:`.verdicts` then classifies the run.
"""

from __future__ import annotations

import json
import marshal
import os
import traceback
from dataclasses import dataclass
from typing import Any

import anyio

from poller.core.batching import MAX_PAYLOAD_BYTES
from poller.targets import handler_loop, threads

#: Where anyio lives, so its frames can be left out of handler stack traces.
_ANYIO_DIR = os.path.dirname(anyio.__file__)

#: This package's own call machinery, also left out of handler stack traces: its modules and
#: the thread pool and handler loop it calls through.
_OWN_DIR = os.path.dirname(__file__)
_OWN_FILES = frozenset({threads.__file__, handler_loop.__file__})

#: Lambda's limit on a function's response, which a handler's return value must fit in.
MAX_RESPONSE_BYTES = MAX_PAYLOAD_BYTES


@dataclass(slots=True)
class _Run:
    """How one call of the handler went, worked out where the handler ran (its thread or the
    handler loop), so that neither a huge return value nor an exception's ``__str__`` ever
    runs on the service's event loop.

    Attributes:
        payload: the return value as JSON types, when it marshalled within the size limit.
        error: Lambda's error payload (``errorType``, ``errorMessage``...) otherwise.
        raised: the stack of a handler that raised, for the log; None for a marshal error.
        elapsed: seconds the handler ran.
        deadline_fired: the timeout's cancellation was delivered to an async handler.
    """

    payload: Any = None
    error: dict[str, Any] | None = None
    raised: str | None = None
    elapsed: float = 0.0
    deadline_fired: bool = False


def _private_copy(event: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the event, so a handler that mutates it cannot corrupt the records the
    pipeline retries or sends to a failure destination.

    This is on the per-record path. Events hold JSON types: only their containers are copied
    (:func:`_copied`), their strings and numbers are immutable and shared: no more CPU than a
    marshal round trip, without a second copy of every string (2.3 against 2.4 us per Kinesis
    record on a slow machine; 3.5 us when each dict's keys were checked apart), and five times
    less than a JSON one. Anything else goes through marshal, then JSON's own rules.
    """
    copied: dict[str, Any]
    try:
        copied = _copied(event)
    except (ValueError, RecursionError):  # marshal nests deeper than Python's recursion limit
        pass
    else:
        return copied
    try:
        # S302: marshal only reads bytes it produced itself one line earlier.
        copied = marshal.loads(marshal.dumps(event))  # noqa: S302
    except ValueError:  # a type marshal does not know: fall back to JSON's own rules
        copied = json.loads(json.dumps(event))
    return copied


#: The types whose values a copy shares: nothing can change them.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _copied(value: Any) -> Any:
    """``value`` with its dicts and lists copied; any other container is marshalled (a type
    marshal refuses raises ValueError)."""
    kind = type(value)
    if kind is dict:
        out = value.copy()
        # One pass for keys and values: checking the keys apart (a set of their types) cost
        # more than the copy itself.
        for key, item in value.items():
            if type(key) is not str:
                # A key of another type (a number, a str subclass, a custom object): marshal's
                # and JSON's rules, as before, rather than sharing a key that might be mutable.
                return marshal.loads(marshal.dumps(value))  # noqa: S302 - bytes it made itself
            if type(item) not in _IMMUTABLE:
                out[key] = _copied(item)
        return out
    if kind is list:
        return [item if type(item) in _IMMUTABLE else _copied(item) for item in value]
    if kind in _IMMUTABLE:
        return value
    return marshal.loads(marshal.dumps(value))  # noqa: S302 - bytes it made itself


def _returned(value: Any, elapsed: float) -> _Run:
    """Serialize a return value as Lambda does: JSON, at most 6 MB, or an error.

    Runs where the handler ran. Whatever serializing raises (a ``default`` that is not JSON, a
    cycle, nesting too deep, a ``dict`` subclass whose ``items()`` raises anything at all) is
    Lambda's ``Runtime.MarshalError``.
    """
    try:
        text = json.dumps(value)
    except BaseException as exc:  # noqa: BLE001 - the handler's object, the handler's error
        error = {
            "errorMessage": f"Unable to marshal response: {_message(exc)}",
            "errorType": "Runtime.MarshalError",
            "stackTrace": [],
        }
        return _Run(error=error, elapsed=elapsed)
    # ensure_ascii (the default) makes every character one byte.
    if len(text) > MAX_RESPONSE_BYTES:
        message = (
            f"Response payload size ({len(text)} bytes) exceeded maximum allowed payload size "
            f"({MAX_RESPONSE_BYTES} bytes)."
        )
        error = {"errorMessage": message, "errorType": "Function.ResponseSizeTooLarge"}
        return _Run(error=error, elapsed=elapsed)
    # Round trip so the pipeline sees what Lambda would return (tuples as lists, keys as
    # strings), detached from any object the handler keeps.
    return _Run(payload=json.loads(text), elapsed=elapsed)


def _failed(exc: BaseException, elapsed: float) -> _Run:
    """The error payload of a handler that raised, shaped like the Lambda runtime's.

    Built where the handler ran: the exception's ``__str__`` is the handler's code too.
    """
    error_type = "Runtime.ExitError" if isinstance(exc, SystemExit) else type(exc).__name__
    stack = _user_stack(exc)
    # The stack names code, never data; the exception message may quote records, so it goes
    # into the payload (as on Lambda) but not into the log.
    error = {"errorMessage": _message(exc), "errorType": error_type, "stackTrace": stack}
    return _Run(error=error, raised="".join(stack), elapsed=elapsed)


def _message(exc: BaseException) -> str:
    """``str(exc)``, or what ``traceback`` prints for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ is the handler's bug, not ours
        return f"<unprintable {type(exc).__name__} object>"


def _user_stack(exc: BaseException) -> list[str]:
    """The traceback of ``exc`` from the handler's frame on, as Lambda's ``stackTrace``."""
    frames = traceback.extract_tb(exc.__traceback__)
    # Drop the leading frames of this package's call machinery and of anyio's.
    while frames and _is_machinery(frames[0].filename):
        frames.pop(0)
    return traceback.format_list(frames)


def _is_machinery(filename: str) -> bool:
    """Whether a frame's file is ours or anyio's rather than the handler's."""
    return filename in _OWN_FILES or os.path.dirname(filename) == _OWN_DIR or _ANYIO_DIR in filename
