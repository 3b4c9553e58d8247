"""poller/batch.py works as a lone file copied into a Lambda package: stdlib only, no poller.

A fresh interpreter in isolated mode (``-I``: no PYTHONPATH, no user site, no script
directory on the path) and without site-packages (``-S``) gets only a temporary directory
holding a copy of ``batch.py``. It imports the module as ``batch``, processes one FIFO batch,
and prints the response and every module it had to import; anything outside the standard
library would either fail to import or show up in that list.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import poller.batch

SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import batch

event = {"Records": [
    {"messageId": m, "eventSource": "aws:sqs",
     "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q.fifo",
     "attributes": {"MessageGroupId": m[0]}}
    for m in ("x1", "y1", "x2", "y2")
]}

def handle(record):
    if record["messageId"] == "x1":
        raise ValueError("no")

response = batch.process_batch(event, handle, skip_group_on_failure=True)
imported = sorted({name.partition(".")[0] for name in set(sys.modules) - before})
print(json.dumps({"response": response, "imported": imported, "file": batch.__file__}))
"""


def test_a_copy_of_batch_py_runs_alone_on_the_standard_library(tmp_path: Path) -> None:
    shutil.copy(poller.batch.__file__, tmp_path / "batch.py")
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["file"] == str(tmp_path / "batch.py")
    assert result["response"] == {
        "batchItemFailures": [{"itemIdentifier": "x1"}, {"itemIdentifier": "x2"}]
    }
    outside = [n for n in result["imported"] if n != "batch" and n not in sys.stdlib_module_names]
    assert outside == []
