"""``poller replay``: not written yet (issue 15)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
    parser.add_argument("--config", "-c", required=True, help="path to the YAML configuration")
    parser.add_argument("--mapping", required=True, help="the mapping's name")


def main(args: argparse.Namespace) -> int:
    """Run the command; the exit status."""
    raise NotImplementedError("poller replay")
