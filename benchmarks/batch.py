"""The data-team batch measured: text rows/s against the limit, a rerun against a cold run,
and peak RSS at 10 000 and 100 000 rows (each in a process of its own).

Part of ``make bench`` (scenario ``batch``); alone, one probe prints one JSON line:

    python -m benchmarks.batch --probe 10000 --concurrency 64
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .services import PrefectServer
    from .suite import Bench


def write_rows(path: Path, rows: int, tag: str) -> Path:
    """A CSV of ``rows`` distinct tickets, written a line at a time (nothing held)."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["ticket_id", "text"])
        for n in range(rows):
            writer.writerow([f"T{n:07d}", f"Ticket {n} [{tag}]: the invoice shows the wrong VAT"])
    return path


def _run(source: Path, concurrency: int, prompt: str) -> Any:
    from prefect_ig1.flows import run_batch

    return run_batch(str(source), prompt=prompt + " {text}", id_column="ticket_id",
                     max_concurrency=concurrency)


def throughput(bench: Bench, *, rows: int, latency: float = 0.2, cap: int = 16) -> None:
    """Cold batch run over ``rows`` text rows, then the rerun (every row from the cache)."""
    bench.services.configure(latency=latency, max_in_flight=cap, max_throughput=cap)
    limit = cap / latency
    ratio = bench.row(f"[batch C={cap}, {latency * 1000:.0f} ms] text rows/s ÷ limit "
                      f"({limit:.0f}/s)", target=">= 0.90", check=lambda v: v >= 0.9, digits=3)
    warm = bench.row("[batch] rerun wall ÷ cold wall", target="<= 0.05",
                     check=lambda v: v <= 0.05, digits=3)
    calls = bench.row("[batch] rerun IG1 calls", target="= 0", check=lambda v: v == 0, digits=0)
    body = bench.row("[batch] rerun: flow body ms per row", digits=3)
    prefect = bench.row("[batch] rerun: Prefect's flow call around the body (s)")
    folder = Path(tempfile.mkdtemp(prefix="ig1-bench-batch-"))
    for run in range(bench.runs):
        source = write_rows(folder / f"rows-{run}.csv", rows, uuid.uuid4().hex)
        prompt = f"Classify this ticket. {uuid.uuid4().hex}"
        start = time.perf_counter()
        report = _run(source, cap, prompt)
        cold = time.perf_counter() - start
        assert report.counts == {"completed": rows}, report.headline()
        ratio.values.append(rows / cold / limit)
        before = bench.calls()
        start = time.perf_counter()
        rerun = _run(source, cap, prompt)
        rerun_wall = time.perf_counter() - start
        warm.values.append(rerun_wall / cold)
        calls.values.append(bench.calls() - before)
        body.values.append(rerun.timings["total_s"] * 1000 / rows)
        prefect.values.append(rerun_wall - rerun.timings["total_s"])
        assert rerun.counts == {"cached": rows}, rerun.headline()


def memory(bench: Bench, server: PrefectServer, *, sizes: tuple[int, int],
           concurrency: int = 64) -> None:
    """Peak RSS of a whole batch at each size, each in a fresh process."""
    from .suite import _probe

    bench.services.configure(latency=0.01, max_in_flight=concurrency,
                             max_throughput=concurrency)
    env = {**server.client_env(), **bench.services.env}
    rss = {}
    for n in sizes:
        rss[n] = bench.row(f"[batch N={n}] peak RSS", unit="MiB", digits=0)
        per_row = bench.row(f"[batch N={n}] wall ms per row (C={concurrency}, 10 ms)")
        result = _probe("benchmarks.batch", "--probe", str(n), "--concurrency",
                        str(concurrency), env=env)
        assert result["rows"] == n, result
        rss[n].values.append(result["peak_rss_kib"] / 1024)
        per_row.values.append(result["wall_s"] * 1000 / n)
    small, large = sizes
    ratio = bench.row(f"[batch] peak RSS N={large} ÷ N={small}", target="<= 1.3",
                      check=lambda v: v <= 1.3, digits=3)
    ratio.values = [b / rss[small].median for b in rss[large].values]


def _peak_rss_kib() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--probe", type=int, required=True, help="rows in the batch")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ig1-batch-probe-"))
    tag = uuid.uuid4().hex
    _run(write_rows(folder / "warmup.csv", 2, tag), args.concurrency, "Warm up.")
    source = write_rows(folder / "rows.csv", args.probe, tag)
    cpu, wall = time.process_time(), time.perf_counter()
    report = _run(source, args.concurrency, f"Classify. {tag}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"rows": report.rows, "requests": report.requests, "wall_s": wall,
                      "cpu_s": cpu, "peak_rss_kib": _peak_rss_kib(), "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
