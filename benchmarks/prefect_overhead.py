"""What one Prefect task run costs, in a process of its own: prints one JSON line.

N no-op task runs timed inside a flow, divided by N (the flow run's own start and end
vary more than a task costs, so they are left out); run once against the ephemeral
server and once against a real ``prefect server start`` (PREFECT_API_URL).
The flagship flow runs one task per window of 50 images, so its Prefect cost per
image is this figure divided by 50.

    python -m benchmarks.prefect_overhead --tasks 100 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from prefect import flow, task


@task
def _noop(i: int) -> int:
    return i


@flow
def _tasks(n: int) -> float:
    """Seconds that ``n`` task runs took, one after another."""
    start = time.perf_counter()
    for i in range(n):
        _noop(i)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    _tasks(1)  # the first flow run starts the ephemeral server, if there is one
    startup = time.perf_counter() - start
    per_task = [_tasks(args.tasks) / args.tasks for _ in range(args.runs)]
    print(json.dumps({"startup_s": startup, "per_task_ms": [t * 1000 for t in per_task],
                      "median_ms": statistics.median(per_task) * 1000}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
