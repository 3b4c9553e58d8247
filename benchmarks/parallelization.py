"""Benchmark: ParallelizationFactor 1 against 10 with a function that takes 50 ms per batch.

Puts N records (100 partition keys) into a one-shard stream on moto's server (its own process),
then runs ``poller run`` twice over it, in the same run: PF 1 and PF 10, batch_size 10, with a
handler that sleeps 50 ms per batch. Prints records/s of each and the speed-up. With PF 1 the
shard has one batch in flight, so the function's latency bounds throughput; with PF 10 up to
ten batches of the shard (different partition keys) are in flight.

Run: ``.venv/bin/python benchmarks/parallelization.py [--records 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (see above): the repository's packages must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kinesis_throughput import fill_stream, run_service
from tests.support.aws import moto_server_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument(
        "--sleep", type=float, default=0.05, help="seconds the handler takes per batch"
    )
    args = parser.parse_args()
    with moto_server_process() as url:
        stream = f"pf-{os.getpid()}"
        asyncio.run(fill_stream(url, stream, args.records, shards=1, keys=100))
        rates = {}
        with tempfile.TemporaryDirectory() as tmp:
            for factor in (1, 10):
                started = time.monotonic()
                result = run_service(
                    url,
                    stream,
                    args.records,
                    Path(tmp),
                    mapping={
                        "batch_size": 10,
                        "parallelization_factor": factor,
                        "target": {"type": "python", "handler": "benchmarks.bench_handler:sleepy"},
                    },
                    env_extra={"POLLER_BENCH_SLEEP": str(args.sleep)},
                )
                rates[factor] = args.records / result["wall_s"]
                total = time.monotonic() - started
                print(
                    f"PF {factor:2}: {rates[factor]:8.0f} records/s"
                    f"  ({result['wall_s']:.1f} s; {total:.1f} s with start-up)"
                )
        print(f"speed-up PF 10 / PF 1: {rates[10] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
