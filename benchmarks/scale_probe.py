"""One flow run in a process of its own, for its peak RSS: prints one JSON line.

The suite starts it with the services' environment; a first run on an empty prefix
starts Prefect's ephemeral server so the measured run is the flow alone.

    python -m benchmarks.scale_probe BUCKET PREFIX --concurrency 64
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path


def _peak_rss_kib() -> int:
    """VmHWM: this process's peak RSS. (getrusage's ru_maxrss would also count the parent's
    peak before exec, and the suite's parent holds the photo corpus.)"""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bucket")
    parser.add_argument("prefix")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    from prefect_ig1.flows import describe_s3_images

    describe_s3_images(args.bucket, prefix="nothing-here/", output_prefix="probe-warmup/",
                       max_concurrency=args.concurrency)
    rss_before = _peak_rss_kib()
    cpu, wall = time.process_time(), time.perf_counter()
    report = describe_s3_images(args.bucket, prefix=args.prefix,
                                output_prefix=f"probe-{uuid.uuid4().hex[:8]}/",
                                prompt=f"Describe. {uuid.uuid4().hex}",
                                max_concurrency=args.concurrency)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"images": report.new, "requests": report.requests, "wall_s": wall,
                      "cpu_s": cpu, "rss_before_kib": rss_before,
                      "peak_rss_kib": _peak_rss_kib()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
