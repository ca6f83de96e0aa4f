"""One throttle for rate limits: calls/s and 429s at a gateway limit, throttled or not.

    python -m benchmarks.rate_limit [--rate 20] [--concurrency 16] [--latency 0.2] [--calls 300]

The emulator accepts ``--rate`` requests per second (a bucket of one second's worth) and
answers 429 with the wait until the next would pass. The engine sends ``--calls``
distinct prompts with ``--concurrency`` in flight, real backoff, first with the client's
shared throttle, then with it switched off (each 429 delays only its own request).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import stamina
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import Throttle
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import CallEngine, respond_many

KEY = "sk-bench-rate-limit"


def one_run(emulator: EmulatorServer, args: argparse.Namespace,
            throttled: bool) -> tuple[float, int, int, int]:
    """(calls/s, 429s, requests, failed calls) of one run."""
    emulator.reset()
    emulator.configure(rate_limit_rps=args.rate, latency=args.latency)
    credentials = IG1Credentials(api_key=SecretStr(KEY), base_url=emulator.base_url)
    client = credentials.get_client()
    client.throttle = Throttle(max_pause=client.retry_policy.max_retry_after)
    if not throttled:
        client.throttle.turn = lambda: 0.0  # type: ignore[method-assign]
    tag = uuid.uuid4().hex[:8]
    with CallEngine(max_concurrency=args.concurrency, retry_delay_seconds=1.0) as engine:
        started = time.monotonic()  # the engine (its cache store) is ready: time the calls
        results = list(respond_many([f"q{i} [{tag}]" for i in range(args.calls)],
                                    credentials=credentials, engine=engine))
        elapsed = time.monotonic() - started
    stats = emulator.stats
    failed = sum(not result.ok for result in results)
    return (args.calls - failed) / elapsed, stats.rate_limited, stats.requests, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stamina.set_testing(False)
    print(f"R = {args.rate:g}/s, C = {args.concurrency}, latency {args.latency:g} s, "
          f"{args.calls} calls, median of {args.runs}")
    print("| throttle | calls/s ÷ R | 429s / requests | failed calls |")
    print("|---|---|---|---|")
    with EmulatorServer(api_key=KEY) as emulator:
        for throttled in (True, False):
            runs = [one_run(emulator, args, throttled) for _ in range(args.runs)]
            rate = statistics.median(r[0] for r in runs) / args.rate
            share = statistics.median(r[1] / r[2] for r in runs)
            failed = statistics.median(r[3] for r in runs)
            print(f"| {'shared' if throttled else 'per request'} | {rate:.2f} | "
                  f"{share:.1%} | {failed:g} |")


if __name__ == "__main__":
    main()
