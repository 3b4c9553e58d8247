"""What the benchmarks share: ``poller run`` as a subprocess set up for a measurement.

The emulator side comes from the tests' support code (``tests/support``): moto's server in a
process of its own, stream and queue helpers. Here: the configuration every benchmark's
service gets (one mapping, WARNING-level JSON logs so logging costs little, a fresh checkpoint
file) and the environment it runs in (the emulator's dummy credentials, the repository
importable for the benchmark handlers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.process import write_config
from tests.support.service_config import service_config

REPO = Path(__file__).resolve().parents[1]
#: Dummy credentials for the emulator; never a real profile.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def start_service(
    workdir: Path,
    endpoint_url: str,
    mapping: dict[str, Any],
    env: dict[str, str],
    **sections: Any,
) -> subprocess.Popen[bytes]:
    """Start ``poller run`` with ``mapping`` (named ``bench``) against the emulator; ``env``
    holds the handler's variables, ``sections`` replace parts of the configuration."""
    config = service_config(
        endpoint_url,
        {"name": "bench", **mapping},
        checkpoints={"path": str(workdir / f"ckpt-{time.monotonic_ns()}.db")},
        logging={"level": "WARNING", "format": "json"},
        **sections,
    )
    path = write_config(workdir / "bench.yaml", config)
    command = [sys.executable, "-m", "poller", "run", "--config", str(path)]
    return subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO), **env}
    )
