"""ministack (PyPI, a pure-Python AWS emulator) as a test backend: fast Kinesis polling and the
only emulator whose SubscribeToShard (enhanced fan-out) works from aiobotocore as is.

It pins its own botocore, so ``scripts/test`` installs it into a venv of its own,
``.work/ministack-venv``; tests start it as a subprocess on a free loopback port (it binds
0.0.0.0 unless told). Its subscriptions last 300 s (a constant in its source), so tests shorten
them through the fault proxy (:meth:`~tests.support.fault_proxy.FaultProxy.end_subscriptions`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from tests.support.aws import ACCOUNT
from tests.support.process import REPO, free_port, spawned
from tests.support.waiting import wait_until

MINISTACK = REPO / ".work" / "ministack-venv" / "bin" / "ministack"


def ministack_available() -> str | None:
    """Why ministack cannot run here, or None if it can."""
    if not MINISTACK.exists():
        return (
            f"ministack is not installed at {MINISTACK}: python3 -m venv .work/ministack-venv"
            " && .work/ministack-venv/bin/pip install ministack==1.5.33 (scripts/test does it)"
        )
    return None


@contextlib.contextmanager
def ministack() -> Iterator[str]:
    """ministack on a free loopback port; yield its URL."""
    reason = ministack_available()
    if reason is not None:
        raise RuntimeError(reason)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ministack-") as tmp:
        env = {**os.environ, "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "TMPDIR": tmp}
        env["MINISTACK_ACCOUNT_ID"] = ACCOUNT  # the account of the ARNs the tests build
        with spawned([str(MINISTACK)], port, "ministack", env=env, cwd=tmp) as url:
            yield url


async def active_consumer(kinesis: Any, stream_arn: str, name: str, limit: float = 10.0) -> str:
    """Register an enhanced fan-out consumer and wait until it is ACTIVE; return its ARN.

    Works on any emulator with consumers (kinesis-local takes about 0.6 s to activate one)."""
    registered = await kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName=name)
    arn: str = registered["Consumer"]["ConsumerARN"]

    async def active() -> bool:
        described = await kinesis.describe_stream_consumer(ConsumerARN=arn)
        return bool(described["ConsumerDescription"]["ConsumerStatus"] == "ACTIVE")

    await wait_until(active, limit, f"consumer {name} to become ACTIVE")
    return arn
