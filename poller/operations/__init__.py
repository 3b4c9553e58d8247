"""Operator commands: incident recovery on a mapping, beside the running service.

Each module is one ``poller`` sub-command, wired by :mod:`poller.cli`:

* :mod:`.redrive`: re-deliver the records that the failure records in a mapping's on-failure
  destination point at, then remove those failure records;
* :mod:`.replay`: re-deliver a time range of a stream mapping (to its target or another one),
  keeping its own progress and never touching the live checkpoints;
* :mod:`.rewind`: move a live mapping's checkpoints, applied by each shard's owner.

A module exposes ``add_arguments(parser)`` and ``main(args) -> int`` (the exit status). Errors
of the operator's making raise :class:`~poller.errors.ConfigError` (exit 2, one line per
problem); the CLI turns them into exit codes as for every command.
"""

from __future__ import annotations

#: The operator commands, by name: their one-line help.
OPERATIONS: dict[str, str] = {
    "redrive": "re-deliver the records that failure records in the on-failure destination point at",
    "replay": "re-deliver a time range of a stream mapping; live checkpoints are untouched",
    "rewind": "move a live mapping's checkpoints (applied by each shard's owner)",
}
