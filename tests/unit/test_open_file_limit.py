"""The service raises its soft open-file limit to the hard one (a socket per subscribed shard
with enhanced fan-out); run in a child process, whose limits the test may change freely."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

import pytest

CHILD = """
import json, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, hard))
from poller.app import raise_open_file_limit
result = raise_open_file_limit()
print(json.dumps([result, resource.getrlimit(resource.RLIMIT_NOFILE), hard]))
"""


def run_child(low: int) -> list[Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(low=low)], capture_output=True, text=True, check=True
    )
    result: list[Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_low_soft_limit_is_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    (before, after), now, child_hard = run_child(256)
    wanted = 1 << 20 if child_hard == resource.RLIM_INFINITY else child_hard
    assert before == 256
    assert after == wanted
    assert now == [wanted, child_hard]


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("an unlimited hard limit cannot be the soft limit to start from here")
    (before, after), now, _ = run_child(hard)
    assert before == after == hard
    assert now == [hard, hard]
