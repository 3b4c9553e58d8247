"""A handler that fails on some records with the record's data in its exception message.

Used by the log-leak test: the service must report the failure without ever writing that
message (or any record data) to its logs.
"""

from __future__ import annotations

import base64
import os
from typing import Any


def handler(event: dict[str, Any], context: Any) -> None:
    marker = os.environ["POLLER_TEST_MARKER"]
    for record in event["Records"]:
        data = base64.b64decode(record["kinesis"]["data"]).decode()
        if data.endswith(('-3"}', '-17"}')) and marker in data:
            raise ValueError(f"cannot process {data}")
