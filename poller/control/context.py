"""What the API's operations need from the running service, in one value.

Data flow::

    poller.app builds a ControlContext --> poller.control.server --> poller.control.operations

The operations never reach into the service: they get the store, the settings, the file
mappings as they are now (a SIGHUP may have reloaded them), and a way to wake this replica's
reconciler after a write, so that a change made here applies here at once rather than at the
next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from poller.config import AnyMapping, ControlApiSettings
    from poller.control.store import MappingStore


@dataclass(frozen=True, slots=True)
class ControlContext:
    """The service as the API sees it.

    Attributes:
        settings: the ``control_api`` section.
        region: the region ARNs are formed in and signatures are checked for
            (``control_api.region``, else ``aws.region``).
        store: the mapping store.
        file_mappings: the mappings of the configuration file now; read-only through the API.
        changed: wakes this replica's reconciler (called after every successful write).
        clock: epoch seconds (``LastModified``, ack ages); a parameter for tests.
    """

    settings: ControlApiSettings
    region: str
    store: MappingStore
    file_mappings: Callable[[], Sequence[AnyMapping]]
    changed: Callable[[], None]
    clock: Callable[[], float] = field(default=time.time)
