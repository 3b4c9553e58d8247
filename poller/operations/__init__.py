"""Operator commands: incident recovery on a mapping, beside the running service.

Each module is one ``poller`` sub-command, wired by :mod:`poller.cli`:

* :mod:`.redrive`: re-deliver the records that the failure records in a mapping's on-failure
  destination point at, then remove those failure records;
* :mod:`.replay`: re-deliver a time range of a stream mapping (to its target or another one),
  keeping its own progress and never touching the live checkpoints;
* :mod:`.rewind`: move a live mapping's checkpoints, applied by each shard's owner.

A module exposes ``add_arguments(parser)`` and ``main(args) -> int`` (the exit status). An error
of the operator's making (an unknown mapping, a bad time, a destination that does not exist)
is an :class:`~poller.operations.common.OperationError`: the command prints it as one line
naming the value and exits 2. A configuration that does not load is a
:class:`~poller.errors.ConfigError`, as for every command.
"""

from __future__ import annotations

#: The operator commands, by name: their one-line help.
OPERATIONS: dict[str, str] = {
    "redrive": "re-deliver the records that failure records in the on-failure destination point at",
    "replay": "re-deliver a time range of a stream mapping; live checkpoints are untouched",
    "rewind": "move a live mapping's checkpoints (applied by each shard's owner)",
}
