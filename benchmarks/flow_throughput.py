"""Throughput of describe_s3_images against the limit (in-flight cap / latency).

The IG1 emulator and moto's S3 server run as separate processes (as real
services would), the flow in this one. Prints, per run and as medians: IG1
calls per second, the ratio to the limit, and 429s seen. Each image costs two
S3 operations (read, record) and moto serves ~190 per second on this machine,
so keep the limit well under ~90 images/s or moto, not the flow, is measured.

    python -m benchmarks.flow_throughput [--images 800] [--latency 0.2] [--cap 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import httpx
from PIL import Image


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _image(i: int) -> bytes:
    """A small image unique to ``i`` even after JPEG re-encoding (so no cache hits)."""
    buffer = io.BytesIO()
    Image.frombytes("L", (64, 48), random.Random(i).randbytes(64 * 48)).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--cap", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="ig1-bench-")
    os.environ.update(PREFECT_HOME=home, PREFECT_LOCAL_STORAGE_PATH=f"{home}/storage",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    ig1_port, s3_port = _free_port(), _free_port()
    key = "sk-bench"
    services = [
        subprocess.Popen([sys.executable, "-m", "sandbox.emulator", "--port", str(ig1_port),
                          "--api-key", key, "--latency", str(args.latency),
                          "--max-in-flight", str(args.cap), "--max-throughput",
                          str(args.cap)], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(s3_port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        ig1, s3_url = f"http://127.0.0.1:{ig1_port}", f"http://127.0.0.1:{s3_port}"
        _wait(ig1 + "/_emulator/stats")
        _wait(s3_url)
        os.environ.update(IG1AI_API_KEY=key, IG1AI_BASE_URL=ig1 + "/v1",
                          AWS_ENDPOINT_URL=s3_url, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket="bench", Key=f"img/{i:06d}.png",
                                                  Body=_image(i)), range(args.images)))
        from flows import describe_s3_images

        limit = args.cap / args.latency
        ratios = []
        for run in range(args.runs):
            httpx.post(ig1 + "/_emulator/reset")
            report = describe_s3_images("bench", prefix="img/", output_prefix=f"out{run}/",
                                        prompt=f"Describe. {uuid.uuid4().hex}",
                                        max_concurrency=args.cap)
            stats = httpx.get(ig1 + "/_emulator/stats").json()
            rate = report.requests / report.timings["describe_s"]
            ratios.append(rate / limit)
            print(f"run {run + 1}: {report.requests} IG1 calls in "
                  f"{report.timings['describe_s']:.2f} s = {rate:.1f} calls/s, "
                  f"{rate / limit:.3f} of the limit ({limit:.0f}/s); "
                  f"429s: {stats['by_status'].get('429', 0)}, "
                  f"max in flight: {stats['max_in_flight_seen']}")
        print(f"median: {statistics.median(ratios):.3f} of the limit "
              f"({args.images} images, C={args.cap}, latency {args.latency} s)")
    finally:
        for service in services:
            service.terminate()
            service.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
