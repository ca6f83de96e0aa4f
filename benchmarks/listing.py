"""What listing costs the flow's process, per 1,000 keys (boto3's paginator, as the flow lists).

A rerun with nothing new lists the images and the records and little else, so this is
most of its own work. Measured through ``list_objects`` against moto's S3 in a process of
its own; CPU is this process's, wall includes moto's time to answer.

    python -m benchmarks.listing [--keys 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING, Any

from prefect_ig1.flows.storage import list_objects

if TYPE_CHECKING:
    from .services import Services
    from .suite import Bench

PREFIX = "listing/"


def seed(services: Services, keys: int) -> None:
    """``keys`` one-byte objects under PREFIX in the bucket ``bench``."""
    services.seed("bench", (f"{PREFIX}{i:06d}.png" for i in range(keys)), lambda _: b"x")


def measure(client: Any, keys: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per 1,000 keys of one full listing."""
    cpu, wall = time.process_time(), time.perf_counter()
    listed = sum(1 for _ in list_objects(client, "bench", PREFIX))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert listed == keys, (listed, keys)
    return cpu * 1e6 / keys, wall * 1e6 / keys


def listing_cost(bench: Bench, *, keys: int) -> None:
    """Rows: CPU and wall ms per 1,000 keys listed (the client warmed up first)."""
    seed(bench.services, keys)
    client = bench.services.s3()
    cpu = bench.row(f"[listing {keys} keys] CPU ms per 1,000 keys listed, flow process",
                    unit="ms", digits=1)
    wall = bench.row(f"[listing {keys} keys] wall ms per 1,000 keys listed (moto answering)",
                     unit="ms", digits=1)
    measure(client, keys)  # connections, credentials
    for _ in range(bench.runs):
        spent, elapsed = measure(client, keys)
        cpu.values.append(spent)
        wall.values.append(elapsed)


def main() -> int:
    from .services import Services

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with Services() as services:
        seed(services, args.keys)
        client = services.s3()
        measure(client, args.keys)
        runs = [measure(client, args.keys) for _ in range(args.runs)]
        print(f"{args.keys} keys: CPU {statistics.median(r[0] for r in runs):6.1f} ms, wall "
              f"{statistics.median(r[1] for r in runs):6.1f} ms per 1,000 keys "
              f"(median of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
