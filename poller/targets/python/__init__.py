"""The Python target: delivers a batch to a handler function in this process.

Data flow::

    engine (streams, queues) --event dict--> PythonTarget.invoke --handler(event, context)--> code
    engine (streams, queues) <--InvokeResult-- classify(return value, exception or timeout)

The handler sees what a Lambda Python handler sees: a freshly decoded copy of the event (so
it may mutate it without touching the records the pipeline retries) and a context object
with the attributes of the Lambda runtime's. Results are shaped like Lambda's too: an
exception becomes an ``Unhandled`` function error with ``errorType``/``errorMessage``, a run
past the timeout becomes ``Sandbox.Timedout``, a return value that is not JSON becomes
``Runtime.MarshalError`` and one over 6 MB ``Function.ResponseSizeTooLarge``.

No handler code runs on the service's event loop. Sync handlers run in daemon worker threads
(:mod:`poller.targets.threads`); async handlers run on the handler loop, an event loop of
their own in a daemon thread (:mod:`poller.targets.handler_loop`). A handler that blocks,
hangs, or swallows its cancellation therefore never stalls the other shards, the lease
renewal or the health server, never holds its invocation past its timeout (plus
:data:`ABANDON_GRACE` for an async one), and never keeps the process alive after shutdown.
The return value is serialized, and an exception's message built, where the handler ran.

Whatever a handler raises is its own failure, ``BaseException`` included (``KeyboardInterrupt``,
``GeneratorExit``, a cancellation exception it raised by itself): only a genuine cancellation
of the caller propagates. The timeout is measured on the wall clock too, because an async
handler that blocks its loop cannot be cancelled while it blocks: a run past the timeout is a
timeout whenever it returns, and ``handler.blocked_event_loop`` is logged.

Modules: :mod:`.loading` (importing the handler), :mod:`.context` (Lambda's ``context``),
:mod:`.calls` (running it on threads or the handler loop), :mod:`.runs` (what a call produced,
settled where it ran), :mod:`.verdicts` (the ``InvokeResult``) and :mod:`.target` (the target
that owns them). Names with a leading underscore are private to this package.
"""

from __future__ import annotations

from poller.targets.python.calls import ABANDON_GRACE
from poller.targets.python.context import LambdaContext
from poller.targets.python.loading import Handler, load_handler
from poller.targets.python.runs import MAX_RESPONSE_BYTES
from poller.targets.python.target import DEFAULT_MAX_ABANDONED, DEFAULT_MAX_THREADS, PythonTarget
from poller.targets.python.verdicts import BLOCKED_LOOP_MARGIN

__all__ = [
    "ABANDON_GRACE",
    "BLOCKED_LOOP_MARGIN",
    "DEFAULT_MAX_ABANDONED",
    "DEFAULT_MAX_THREADS",
    "MAX_RESPONSE_BYTES",
    "Handler",
    "LambdaContext",
    "PythonTarget",
    "load_handler",
]
