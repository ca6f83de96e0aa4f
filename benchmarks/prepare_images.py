"""How much JPEG draft decoding saves on a 12 MP photo: prints figures, asserts nothing.

Run: ``python benchmarks/prepare_images.py`` from the project root.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_ig1.sandbox.sample_images import large_jpeg
from prefect_ig1.tasks.images import PreparedImage, _prepare

RUNS = 7


def _median_ms(data: bytes, *, use_draft: bool) -> tuple[float, PreparedImage]:
    _prepare(data, use_draft=use_draft)  # warm up: plugin registration, caches
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        prepared = _prepare(data, use_draft=use_draft)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, prepared


def main() -> None:
    name, data = large_jpeg()
    drafted_ms, drafted = _median_ms(data, use_draft=True)
    full_ms, full = _median_ms(data, use_draft=False)
    print(f"{name}: {len(data):,} bytes in, median of {RUNS} runs")
    for label, ms, prepared in (("draft", drafted_ms, drafted), ("no draft", full_ms, full)):
        print(
            f"  {label:>8}: {ms:7.1f} ms -> {prepared.width}x{prepared.height} "
            f"{len(prepared.data):,} bytes (ratio {len(prepared.data) / len(data):.3f})"
        )
    print(f"  speed-up: {full_ms / drafted_ms:.2f}x")


if __name__ == "__main__":
    main()
