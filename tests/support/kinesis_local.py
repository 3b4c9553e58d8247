"""kinesis-local (etspaceman's kinesis-mock, from npm) as a test backend for resharding.

moto cannot test resharding: after a split its writes still land in the closed parent, and it
never returns ``ChildShards``. kinesis-local closes parents, routes writes to children, returns
``NextShardIterator=None`` with ``ChildShards`` at a parent's end, and expires iterators.
``scripts/test`` installs it into ``.work/npm``. It binds 0.0.0.0 with no option to change
that, so the fixture runs a copy patched to bind 127.0.0.1 (exactly one occurrence is replaced;
the fixture fails loudly if the package ever changes). The copy is replaced atomically, so
parallel test workers may start kinesis-local at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.support.process import REPO, free_port, spawned

PACKAGE = REPO / ".work" / "npm" / "node_modules" / "kinesis-local"
_BIND_ALL = 'Host$().em("0.0.0.0")'
_BIND_LOOPBACK = 'Host$().em("127.0.0.1")'


def _patched_main() -> Path:
    main = PACKAGE / "main.js"
    if not main.exists():
        raise RuntimeError(
            f"kinesis-local is not installed at {PACKAGE}; run scripts/test, which installs it"
        )
    source = main.read_text()
    if source.count(_BIND_ALL) != 1:
        raise RuntimeError("kinesis-local changed: cannot patch it to bind 127.0.0.1")
    patched = PACKAGE / "main-127.js"
    wanted = source.replace(_BIND_ALL, _BIND_LOOPBACK)
    if not patched.exists() or patched.read_text() != wanted:
        # Written aside and renamed: a parallel test worker may be starting node on the file.
        aside = PACKAGE / f"main-127.js.{os.getpid()}"
        aside.write_text(wanted)
        aside.replace(patched)
    return patched


@contextlib.contextmanager
def kinesis_local() -> Iterator[str]:
    """Start kinesis-local on a free loopback port; yield its plain-HTTP URL."""
    port = free_port()
    env = {
        **os.environ,
        "KINESIS_MOCK_PLAIN_PORT": str(port),
        "KINESIS_MOCK_TLS_PORT": str(free_port()),
        "LOG_LEVEL": "WARN",
        "AWS_ACCOUNT_ID": "123456789012",
        "CREATE_STREAM_DURATION": "100ms",
        "SPLIT_SHARD_DURATION": "100ms",
        "MERGE_SHARDS_DURATION": "100ms",
        "UPDATE_SHARD_COUNT_DURATION": "100ms",
    }
    with spawned(
        ["node", str(_patched_main())], port, "kinesis-local", cwd=PACKAGE, env=env
    ) as url:
        yield url
