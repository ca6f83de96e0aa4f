"""One throttle for rate limits: calls/s and 429s at a gateway limit, throttled or not.

    python -m benchmarks.rate_limit [--rate 20] [--concurrency 16] [--latency 0.2] [--calls 300]
                                    [--runs 3] [--workers 2] [--only-workers] [--window 5]

The emulator accepts ``--rate`` requests per second (a bucket of one second's worth) and
answers 429 with the wait until the next would pass (with ``--window``: a quota of
rate x window requests per fixed window, 429 with the wait until the window ends). The
engine sends ``--calls`` distinct prompts with ``--concurrency`` in flight, real backoff,
first with the client's shared throttle, then with it switched off (each 429 delays only
its own request).

Then ``--workers`` processes, ``--concurrency / workers`` in flight each, send the same
calls between them under one Prefect global concurrency limit (``--concurrency`` slots,
on a ``prefect server start`` of its own): with the 429s' pause shared through the
limit's Prefect Variable, then with each process pacing on its own 429s only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import stamina
from pydantic import SecretStr

from prefect_ig1.blocks import IG1Credentials
from prefect_ig1.client import Throttle
from prefect_ig1.sandbox.emulator import EmulatorServer
from prefect_ig1.tasks import CallEngine, respond_many
from prefect_ig1.tasks.pause import SharedPause

KEY = "sk-bench-rate-limit"


def one_run(emulator: EmulatorServer, args: argparse.Namespace,
            throttled: bool) -> tuple[float, int, int, int]:
    """(calls/s, 429s, requests, failed calls) of one run."""
    emulator.reset()
    emulator.configure(rate_limit_rps=args.rate, rate_limit_window=args.window or 0.0,
                       latency=args.latency)
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


def worker(args: argparse.Namespace) -> None:
    """One process of the many-worker run: ready, wait for "go", send, report as JSON."""
    if not args.share:  # each process paces on its own 429s only
        SharedPause.watch = lambda self, throttle: None  # type: ignore[method-assign]
    credentials = IG1Credentials(api_key=SecretStr(KEY), base_url=args.base_url)
    prompts = [f"w{args.index} q{i} [{args.tag}]" for i in range(args.calls)]
    with CallEngine(max_concurrency=args.concurrency, concurrency_limit_name=args.limit,
                    retry_delay_seconds=1.0) as engine:
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.time()
        results = list(respond_many(prompts, credentials=credentials, engine=engine))
        ended = time.time()
        pause = engine.shared_pause
    print(json.dumps({"ok": sum(result.ok for result in results), "started": started,
                      "ended": ended, "writes": pause.writes if pause else 0,
                      "reads": pause.reads if pause else 0}), flush=True)


def workers_run(emulator: EmulatorServer, args: argparse.Namespace, env: dict[str, str],
                limit: str, share: bool) -> dict[str, Any]:
    """Combined calls/s, 429s, requests, failed calls, Variable writes/reads of one run."""
    emulator.reset()
    emulator.configure(rate_limit_rps=args.rate, rate_limit_window=args.window or 0.0,
                       latency=args.latency)
    tag = uuid.uuid4().hex[:8]
    each = args.calls // args.workers
    processes = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.rate_limit", "--worker", "--index", str(index),
         "--base-url", emulator.base_url, "--limit", limit, "--tag", tag,
         "--calls", str(each), "--concurrency", str(args.concurrency // args.workers)]
        + ([] if share else ["--no-share"]),
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for index in range(args.workers)]
    for process in processes:  # imported, engine open: start them together
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    reports = [json.loads(process.communicate(timeout=600)[0].strip().splitlines()[-1])
               for process in processes]
    ok = sum(report["ok"] for report in reports)
    elapsed = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    stats = emulator.stats
    return {"rate": ok / elapsed, "limited": stats.rate_limited, "requests": stats.requests,
            "failed": each * args.workers - ok,
            "writes": sum(r["writes"] for r in reports),
            "reads": sum(r["reads"] for r in reports)}


def workers_rows(emulator: EmulatorServer, args: argparse.Namespace) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from .services import PrefectServer

    server = PrefectServer()
    try:
        env = {**server.client_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
        limit = f"ig1-bench-{uuid.uuid4().hex[:6]}"
        with temporary_settings({PREFECT_API_URL: server.api_url}), \
                get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=limit, limit=args.concurrency))
        per = args.concurrency // args.workers
        for share in (True, False):
            runs = [workers_run(emulator, args, env, limit, share) for _ in range(args.runs)]
            rate = statistics.median(r["rate"] for r in runs) / args.rate
            ratio = statistics.median(r["limited"] / r["requests"] for r in runs)
            failed = statistics.median(r["failed"] for r in runs)
            how = (f"shared via Prefect ({statistics.median(r['writes'] for r in runs):g} "
                   f"writes, {statistics.median(r['reads'] for r in runs):g} reads)"
                   if share else "per process")
            print(f"| {args.workers} processes x {per}, one limit, pause {how} | {rate:.2f} | "
                  f"{ratio:.1%} | {failed:g} |")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=None,
                        help="a quota of rate x window per fixed window (Retry-After up to "
                             "the window) instead of the one-second bucket")
    parser.add_argument("--workers", type=int, default=2, help="0: no many-worker rows")
    parser.add_argument("--only-workers", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-share", dest="share", action="store_false", help=argparse.SUPPRESS)
    for hidden in ("--index", "--base-url", "--limit", "--tag"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    stamina.set_testing(False)
    if args.worker:
        worker(args)
        return
    limit = f"{args.rate * args.window:g} per {args.window:g} s window, " if args.window else ""
    print(f"R = {args.rate:g}/s, {limit}C = {args.concurrency}, latency {args.latency:g} s, "
          f"{args.calls} calls, median of {args.runs}")
    print("| throttle | calls/s ÷ R | 429s / requests | failed calls |")
    print("|---|---|---|---|")
    with EmulatorServer(api_key=KEY) as emulator:
        for throttled in () if args.only_workers else (True, False):
            runs = [one_run(emulator, args, throttled) for _ in range(args.runs)]
            rate = statistics.median(r[0] for r in runs) / args.rate
            share = statistics.median(r[1] / r[2] for r in runs)
            failed = statistics.median(r[3] for r in runs)
            print(f"| {'shared' if throttled else 'per request'} | {rate:.2f} | "
                  f"{share:.1%} | {failed:g} |")
        if args.workers > 1:
            workers_rows(emulator, args)


if __name__ == "__main__":
    main()
