"""The mixed photo set: what preparing images costs the user, and what it saves them.

A folder as people fill it (12 MP phone JPEGs, 1080p JPEGs, 720p PNGs, a third of
each) described cold by the flow and by the naive script in the same run: wall
time, each one's own CPU per image, and the input tokens each pays, which the
emulator bills like IG1's vision models (one token per 28x28 patch, at most 16 384
an image). Uniform small images would hide the preparation cost; this set does not.

Part of ``make bench`` (scenario ``mix``).
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .corpus import MIX_KINDS, mixed_image

if TYPE_CHECKING:
    from .suite import Bench

PHOTO = "12mp.jpg"
"""The key suffix of the 12 MP photos, whose tokens are reported."""


@dataclass(frozen=True)
class Cost:
    """One side's run: wall seconds, its own process CPU seconds, the emulator's CPU
    seconds, and the input tokens the emulator billed (its counter)."""

    wall: float
    cpu: float
    emulator_cpu: float
    input_tokens: int


def _measure(bench: Bench, run: Callable[[], Any]) -> Cost:
    services = bench.services
    tokens, emulator = services.stats()["input_tokens"], services.cpu()["ig1"]
    cpu, start = time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Cost(wall, cpu, services.cpu()["ig1"] - emulator,
                services.stats()["input_tokens"] - tokens)


def _photo_tokens(bench: Bench, output_prefix: str, keys: list[str]) -> float:
    """Median input tokens of one 12 MP photo, from the usage in each image's record."""
    s3 = bench.services.s3()
    tokens: list[int] = []
    for key in keys:
        record = json.loads(s3.get_object(Bucket="bench", Key=f"{output_prefix}{key}.json")
                            ["Body"].read())
        tokens.append(int(record["usage"]["input_tokens"]))
    return float(statistics.median(tokens))


def mixed(bench: Bench, *, images: int, concurrencies: tuple[int, ...] = (8,),
          latency: float = 0.2) -> None:
    """Flow (cold) then naive script on the same mixed set, at each concurrency."""
    from .naive_script import describe_bucket
    from .suite import _flow

    keys = [f"mix/{n:04d}-{kind}" for n, kind in zip(range(images), itertools.cycle(MIX_KINDS),
                                                      strict=False)]
    photos = [key for key in keys if key.endswith(PHOTO)]
    sizes: dict[str, list[int]] = {suffix: [] for suffix in MIX_KINDS}

    def make(key: str) -> bytes:
        data = mixed_image(key)
        sizes[next(suffix for suffix in MIX_KINDS if key.endswith(suffix))].append(len(data))
        return data

    bench.services.seed("bench", keys, make)
    for cap in concurrencies:
        bench.services.configure(latency=latency, max_in_flight=cap, max_throughput=cap)
        label = f"[mix C={cap}, {latency * 1000:.0f} ms]"
        versus = bench.row(f"{label} flow wall ÷ naive script wall (cold)", target="<= 0.85",
                           check=lambda v: v <= 0.85, digits=3)
        flow_cpu = bench.row(f"{label} CPU ms per image: flow process", target="<= 25",
                             check=lambda v: v <= 25, digits=1)
        naive_cpu = bench.row(f"{label} CPU ms per image: naive script", digits=1)
        cpu_ratio = bench.row(f"{label} CPU per image: flow ÷ naive script", target="<= 1.0",
                              check=lambda v: v <= 1.0, digits=3)
        emulator_cpu = bench.row(f"{label} emulator CPU ms per image: flow's run", digits=1)
        emulator_naive = bench.row(f"{label} emulator CPU ms per image: naive script's run",
                                   digits=1)
        flow_tokens = bench.row(f"{label} input tokens per 12 MP photo: flow", digits=0)
        naive_tokens = bench.row(f"{label} input tokens per 12 MP photo: naive script",
                                 digits=0)
        token_ratio = bench.row(f"{label} input tokens per 12 MP photo: flow ÷ naive",
                                target="<= 0.1", check=lambda v: v <= 0.1, digits=3)
        run_tokens = bench.row(f"{label} input tokens, whole run with summary: flow ÷ naive",
                               digits=3)
        for run in range(bench.runs):
            prompt = f"Describe the photo. {uuid.uuid4().hex}"
            out, naive_out = f"out-mix-{cap}-{run}/", f"naive-mix-{cap}-{run}/"
            flow = _measure(bench, functools.partial(_flow, "bench", "mix/", out, prompt, cap))
            naive = _measure(bench, functools.partial(
                describe_bucket, "bench", "mix/", naive_out, workers=cap, prompt=prompt))
            versus.values.append(flow.wall / naive.wall)
            flow_cpu.values.append(flow.cpu * 1000 / images)
            naive_cpu.values.append(naive.cpu * 1000 / images)
            cpu_ratio.values.append(flow.cpu / naive.cpu)
            emulator_cpu.values.append(flow.emulator_cpu * 1000 / images)
            emulator_naive.values.append(naive.emulator_cpu * 1000 / images)
            flow_tokens.values.append(_photo_tokens(bench, out, photos))
            naive_tokens.values.append(_photo_tokens(bench, naive_out, photos))
            token_ratio.values.append(flow_tokens.values[-1] / naive_tokens.values[-1])
            run_tokens.values.append(flow.input_tokens / naive.input_tokens)
    mb = {suffix: statistics.median(lengths) / 1e6 for suffix, lengths in sizes.items()}
    bench.notes.append(f"Mix: {images} images, a third each of 4000x3000 JPEGs (median "
                       f"{mb[PHOTO]:.1f} MB), 1920x1080 JPEGs ({mb['1080p.jpg']:.2f} MB) and "
                       f"1280x720 PNGs ({mb['720p.png']:.1f} MB); input tokens as Qwen2.5-VL "
                       "bills them (28x28 patches, at most 16 384 an image); CPU of the flow "
                       "and of the naive script measured in the same process, one after the "
                       "other.")
