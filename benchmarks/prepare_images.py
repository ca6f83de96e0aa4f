"""CPU of image preparation per kind of image: prints figures, asserts nothing.

Run: ``python -m benchmarks.prepare_images [--runs 7]`` from the project root (with the
package importable). Each figure is a median of ``--runs`` calls, in CPU ms of the calling
thread (``time.thread_time``: Pillow decodes, resizes and encodes on it), so other work on
the machine does not inflate it. Sections:

1. ``prepare_image`` per kind against its alternatives: JPEG draft to the exact target box
   (the behaviour before ``DRAFT_FLOOR``) and no draft at all.
2. The encode of what is sent, with and without ``optimize`` (JPEG: an extra Huffman pass;
   PNG: zlib level 9 and a filter search).
3. Shrinking a decoded 3000x2000 PNG to 1024 px: ``thumbnail``'s ``reducing_gap`` (a cheap
   integer ``reduce`` first), a cheaper filter, and the k x k ``reduce`` that ``prepare_image``
   does (to 1000x667, within ``DRAFT_FLOOR``).

Against an older checkout (``PYTHONPATH=<old>/src``), the variants it lacks are skipped.
4. What sending an already small image as it is could save at most: decoding it (still
   needed to detect truncation) against preparing it.
5. 12 MP photos on one and two threads: wall images/s.
6. The gallery thumbnail (``thumbnail_jpeg``) of what is sent.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from prefect_ig1.sandbox.sample_images import _scene
from prefect_ig1.tasks.images import (
    DEFAULT_MAX_IMAGE_SIDE,
    PreparedImage,
    _prepare,
    prepare_image,
    thumbnail_jpeg,
)

from .corpus import hd_jpeg, hd_png, large_png, photo

Prepare = Callable[[bytes], PreparedImage]

# The photo mix of the issue and of the suite's ``mix`` (equal parts), an image already within
# the limit, a see-through one, and the suite's 6 MP PNG.
KINDS: list[tuple[str, Callable[[], bytes]]] = [
    ("12 MP JPEG", lambda: photo("bench-12mp")),
    ("1080p JPEG", lambda: hd_jpeg("bench-1080p")),
    ("720p PNG", lambda: hd_png("bench-720p")),
    ("800x600 JPEG", lambda: photo("bench-small", 800, 600)),
    ("alpha PNG", lambda: _alpha_png(1024, 768)),
    ("6 MP PNG", lambda: large_png("bench-6mp")),  # as in the suite's photos scenario
]
MIX = ("12 MP JPEG", "1080p JPEG", "720p PNG")

_OPTIONS = inspect.signature(_prepare).parameters
VARIANTS: list[tuple[str, Prepare]] = [
    ("prepare_image", prepare_image),
    *([("no 10 % floor", functools.partial(_prepare, draft_floor=1.0))]
      if "draft_floor" in _OPTIONS else []),
    ("no draft", functools.partial(_prepare, use_draft=False)),
]


def _alpha_png(width: int, height: int) -> bytes:
    """A cut-out: a smooth scene whose alpha fades from left to right (sent as PNG)."""
    image = _scene(width, height, seed=12).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").rotate(90).resize((width, height)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def cpu_ms(call: Callable[[], object], runs: int) -> float:
    """Median CPU ms of ``call`` on this thread, after one warm-up call."""
    call()
    times = []
    for _ in range(runs):
        start = time.thread_time()
        call()
        times.append(time.thread_time() - start)
    return statistics.median(times) * 1000


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        copy: Image.Image = image.copy()
    return copy


def _encoded_size(image: Image.Image, **options: object) -> int:
    out = io.BytesIO()
    if image.mode == "RGBA":
        image.save(out, format="PNG", **options)
    else:
        image.save(out, format="JPEG", quality=85, **options)
    return out.tell()


def prepare_table(inputs: dict[str, bytes], runs: int) -> None:
    print(f"1. prepare_image and alternatives, median CPU ms of {runs} calls")
    print(f"   {'kind':<13} {'bytes in':>10} {'variant':<16} {'CPU ms':>7} {'bytes out':>10}  sent")
    mix: list[float] = []
    for kind, data in inputs.items():
        for label, prepare in VARIANTS:
            ms = cpu_ms(functools.partial(prepare, data), runs)
            out = prepare(data)
            if label == "prepare_image" and kind in MIX:
                mix.append(ms)
            print(f"   {kind:<13} {len(data):>10,} {label:<16} {ms:>7.1f} {len(out.data):>10,}  "
                  f"{out.width}x{out.height}")
    print(f"   photo mix ({' + '.join(MIX)}, equal parts): {statistics.fmean(mix):.1f} ms "
          "per image")


def encode_table(inputs: dict[str, bytes], runs: int) -> None:
    print("\n2. Encode of what is sent (JPEG q85, or PNG): optimize=True vs False")
    for kind, data in inputs.items():
        prepared = prepare_image(data)
        image = _decoded(prepared.data)
        row = []
        for optimize in (True, False):
            ms = cpu_ms(functools.partial(_encoded_size, image, optimize=optimize), runs)
            size = _encoded_size(image, optimize=optimize)
            row.append(f"optimize={optimize!s:<5} {ms:5.1f} ms {size:>8,} B")
        print(f"   {kind:<13} {prepared.mime_type:<10} {image.width}x{image.height}: "
              + "   ".join(row))


def resize_table(inputs: dict[str, bytes], runs: int) -> None:
    image = _decoded(inputs["6 MP PNG"])
    side = DEFAULT_MAX_IMAGE_SIDE
    print(f"\n3. thumbnail of a decoded {image.width}x{image.height} PNG to {side} px")
    bicubic, bilinear = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR
    for label, resample, gap in (("bicubic, reducing_gap=2 (default)", bicubic, 2.0),
                                 ("bicubic, reducing_gap=1", bicubic, 1.0),
                                 ("bicubic, reducing_gap=3", bicubic, 3.0),
                                 ("bilinear, reducing_gap=2", bilinear, 2.0)):
        def shrink(resample: Image.Resampling = resample, gap: float = gap) -> None:
            image.copy().thumbnail((side, side), resample, reducing_gap=gap)
        print(f"   {label:<34} {cpu_ms(shrink, runs):6.1f} ms")
    print(f"   {'reduce(3), as prepare_image does':<34} "
          f"{cpu_ms(lambda: image.copy().reduce(3), runs):6.1f} ms -> 1000x667")
    print("   (each row includes one copy of the decoded image)")


def pass_through_table(inputs: dict[str, bytes], runs: int) -> None:
    print("\n4. images within the limit: decode only (the truncation check) vs prepare_image")
    for kind, data in inputs.items():
        with Image.open(io.BytesIO(data)) as header:
            if max(header.size) > DEFAULT_MAX_IMAGE_SIDE:
                continue
        decode = cpu_ms(functools.partial(_decoded, data), runs)
        full = cpu_ms(functools.partial(prepare_image, data), runs)
        print(f"   {kind:<13} decode {decode:.1f} ms, prepare {full:.1f} ms: a pass-through "
              f"saves at most {full - decode:.1f} ms")


def throughput(data: bytes, images: int) -> None:
    """Wall images/s on 1 and 2 threads (Pillow releases the GIL while it decodes, resizes and
    encodes); on a shared machine the load average says how much of the cores it had."""
    prepare_image(data)
    print(f"\n5. {images} x 12 MP JPEG, load average before {os.getloadavg()[0]:.2f}:")
    for threads in (1, 2):
        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(prepare_image, [data] * images))
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        print(f"   {threads} thread(s): {images / wall:5.1f} images/s wall, "
              f"{used / images * 1000:.1f} ms CPU per image: 2 free cores would do "
              f"{2 / used * images:.0f} images/s")


def thumbnail_table(inputs: dict[str, bytes], runs: int) -> None:
    print("\n6. gallery thumbnail of what is sent")
    for kind, data in inputs.items():
        prepared = prepare_image(data)
        ms = cpu_ms(functools.partial(thumbnail_jpeg, prepared), runs)
        with Image.open(io.BytesIO(thumbnail_jpeg(prepared))) as thumbnail:
            size = thumbnail.size
        print(f"   {kind:<13} from {prepared.width}x{prepared.height}: {ms:5.2f} ms -> "
              f"{size[0]}x{size[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    inputs = {kind: make() for kind, make in KINDS}
    prepare_table(inputs, args.runs)
    encode_table(inputs, args.runs)
    resize_table(inputs, args.runs)
    pass_through_table(inputs, args.runs)
    throughput(inputs["12 MP JPEG"], images=4 * args.runs)
    thumbnail_table(inputs, args.runs)


if __name__ == "__main__":
    main()
