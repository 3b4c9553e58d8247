"""The ``context`` a Python handler receives, as Lambda's Python runtime builds it.

One per invocation, made by :class:`~poller.targets.python.target.PythonTarget` just before the
call; its deadline is reset where the handler starts to run (a thread, or the handler loop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class LambdaContext:
    """The ``context`` a handler receives, with the attributes of Lambda's Python runtime.

    ``memory_limit_in_mb`` is a string, as the runtime's is (it reads it from an environment
    variable), so a handler that works here works on Lambda.
    """

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    memory_limit_in_mb: str
    function_version: str = "$LATEST"
    identity: Any = None
    client_context: Any = None
    _deadline: float = field(default=0.0, repr=False)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation times out, never negative."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))
